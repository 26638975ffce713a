"""The ``chat_turbo_system`` instrumentor: process readings as a collection hook of the monitor."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics import ConfigurationError, PerformanceMonitor
from chat_turbo_metrics.instrumentation import register_after_fork
from chat_turbo_metrics_system._readings import SPECS, ProcessReadings, psutil_sampler

_instruments: tuple[str, ...] = ()  # psutil is a dependency of this distribution, not an optional library
_current: list[ProcessReadings] = []


def _after_fork_in_child() -> None:
    for readings in _current:
        readings.after_fork_in_child()


register_after_fork(_after_fork_in_child)


def watch_event_loop(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Report ``event_loop_lag_seconds`` for ``loop`` (default: the running one); needs ``instrument()`` first.

    The instrumentor watches the first asyncio loop that runs by itself; call this for another loop
    (e.g. uvloop's, which does not go through asyncio's ``run_forever``).

    Raises:
        RuntimeError: no loop given and none running, or the instrumentor is not active.
    """
    if not _current:
        raise RuntimeError("watch_event_loop(): SystemInstrumentor().instrument() has not been called")
    _current[0].watch(loop or asyncio.get_running_loop())


class SystemInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """CPU, memory, threads, file descriptors, connections, GC and event-loop lag, read at collection time.

    Nothing runs between collections except a two-clock-read :data:`gc.callbacks` entry per garbage
    collection. After ``fork()`` the child measures itself (CPU from the fork, its own pid).

    Example:
        >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
        >>> monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))
        >>> SystemInstrumentor().instrument(monitor=monitor)
        >>> monitor.snapshot().value("memory_usage_mb") > 0
        True
        >>> SystemInstrumentor().uninstrument()
    """

    _readings: ProcessReadings | None = None
    _hooked: Any = None
    _loop_patch: tuple[Any, Any] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """Nothing optional: psutil comes with this distribution."""
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        """Args (keywords of ``instrument()``):
        monitor: record into this monitor (default: the process-wide one).
        sample: a callable returning a ``ProcessSample`` (default: psutil on this process).
        watch_loops: measure the lag of the first asyncio loop that runs (True); loops that are not
            ``asyncio``'s own (uvloop) need :func:`watch_event_loop`.
        clock, gc_stats: injected time and GC statistics (tests).
        """
        for option in ("sample", "clock", "gc_stats"):
            if kwargs.get(option) is not None and not callable(kwargs[option]):
                raise ConfigurationError(f"SystemInstrumentor: {option}={kwargs[option]!r} must be callable")
        # The process-wide monitor stays the same object across configure(); its methods are looked up
        # at each collection, and the hook follows it into the new pipeline.
        monitor = kwargs.get("monitor") or PerformanceMonitor.get_instance()
        options = {key: kwargs[key] for key in ("clock", "gc_stats") if key in kwargs}
        readings = ProcessReadings(monitor, sample=kwargs.get("sample") or psutil_sampler(), **options)
        for spec in SPECS:
            # ValueError: already recorded or defined by the application; its definition stays.
            with contextlib.suppress(ValueError):
                monitor.define(spec.name, spec.kind, unit=spec.unit, description=spec.description)
        monitor.add_collection_hook(readings.collect)
        gc.callbacks.append(readings.on_gc)
        _current[:] = [readings]
        self._readings, self._hooked = readings, monitor
        if kwargs.get("watch_loops", True):
            self._watch_loops(readings)

    def _watch_loops(self, readings: ProcessReadings) -> None:
        """Start measuring the lag of the first asyncio loop that runs (``asyncio.run``, uvicorn's loop, ...)."""
        original = asyncio.base_events.BaseEventLoop.run_forever

        @functools.wraps(original)
        def run_forever(loop: Any) -> None:
            readings.watch_if_none(loop)
            original(loop)

        asyncio.base_events.BaseEventLoop.run_forever = run_forever  # type: ignore[method-assign, assignment]
        self._loop_patch = (original, run_forever)

    def _uninstrument(self, **kwargs: Any) -> None:
        readings, self._readings = self._readings, None
        if readings is None:
            return
        self._hooked.remove_collection_hook(readings.collect)
        if readings.on_gc in gc.callbacks:
            gc.callbacks.remove(readings.on_gc)
        _current.clear()
        self._hooked = None
        if self._loop_patch is not None:
            original, wrapper = self._loop_patch
            if asyncio.base_events.BaseEventLoop.__dict__.get("run_forever") is wrapper:
                asyncio.base_events.BaseEventLoop.run_forever = original  # type: ignore[method-assign]
            self._loop_patch = None
