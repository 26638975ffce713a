"""redis-py commands -> cache hits and misses (``GET``, ``MGET``, ``HGET``) and command latency."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics import ConfigurationError, PerformanceMonitor
from chat_turbo_metrics.instrumentation import (
    CACHE_HITS,
    CACHE_MISSES,
    DB_CLIENT_OPERATION_DURATION,
    Problems,
    define_metrics,
    semconv_mode,
    when_imported,
)

_instruments = ("redis >= 4.5",)
COMMAND_DURATION = "redis_command_duration_seconds"
OPERATION_DURATION = DB_CLIENT_OPERATION_DURATION.name  # the conventions' name, with db.system.name="redis"
OTHER = "other"
_perf_counter = time.perf_counter


def key_prefix(key: Any) -> str:
    """The cache a key belongs to by convention: its prefix before the first ``:`` (``redis`` without one).

    Example:
        >>> key_prefix(b"session:42"), key_prefix("plain")
        ('session', 'redis')
    """
    text = key.decode("utf-8", "replace") if isinstance(key, (bytes, bytearray)) else str(key)
    prefix, colon, _ = text.partition(":")
    return prefix if colon and prefix else "redis"


class _BoundedLabels:
    """At most ``limit`` distinct values of one label; later newcomers become ``other``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


def _single(args: tuple[Any, ...], response: Any) -> list[tuple[Any, bool]]:
    return [(args[1], response is not None)] if len(args) > 1 else []


def _multiple(args: tuple[Any, ...], response: Any) -> list[tuple[Any, bool]]:
    if not isinstance(response, (list, tuple)):
        return []
    return [(key, value is not None) for key, value in zip(args[1:], response, strict=False)]


# Commands whose reply tells a hit from a miss: (key, found) for each key looked up.
LOOKUPS: dict[str, Callable[[tuple[Any, ...], Any], list[tuple[Any, bool]]]] = {
    "GET": _single,
    "HGET": _single,
    "MGET": _multiple,
}


class _Recorder:
    """What every wrapped call records, and the label bounds it shares."""

    def __init__(self, monitor: PerformanceMonitor | None, cache_name: Callable[[Any], str], limit: int) -> None:
        self.monitor = monitor
        self.cache_name = cache_name
        self.caches = _BoundedLabels(limit)
        self.commands = _BoundedLabels(limit)
        self.active = True
        self.problems = Problems(logging.getLogger("chat_turbo_metrics.redis"))
        self.seed, self.semconv = True, False  # which names: asked of the monitor (``database`` signal)
        self.marker: Any = None  # the monitor's recorder they were asked for (configure() makes a new one)

    def resolve(self) -> PerformanceMonitor:
        """The process-wide monitor, held from the first command on: it stays the same object across
        ``configure()``, which rebinds its methods, and they are looked up on it at each call."""
        self.monitor = PerformanceMonitor.get_instance()
        return self.monitor

    def current(self) -> PerformanceMonitor:
        """The monitor to record into, with the names it asks for (asked again after ``configure()``)."""
        monitor = self.monitor or self.resolve()
        if monitor._recorder is not self.marker:
            mode = semconv_mode("database", monitor)
            if mode.semconv:
                define_metrics(monitor, DB_CLIENT_OPERATION_DURATION)
            self.seed, self.semconv, self.marker = mode.seed, mode.semconv, monitor._recorder
        return monitor

    def duration(self, monitor: PerformanceMonitor, elapsed: float, command: str, error: BaseException | None) -> None:
        """One command's (or pipeline's) duration, under the seed's name and/or the conventions'."""
        if self.seed:
            status = "success" if error is None else "error"
            monitor.record_histogram(COMMAND_DURATION, elapsed, {"command": command, "status": status})
        if self.semconv:
            tags = {"db.system.name": "redis", "db.operation.name": command}
            if error is not None:
                tags["error.type"] = type(error).__qualname__
            monitor.record_histogram(OPERATION_DURATION, elapsed, tags)

    def record(self, args: tuple[Any, ...], response: Any, start: float, error: BaseException | None) -> None:
        try:
            self._record(args, response, start, error)
        except Exception as problem:  # e.g. a cache_name function that fails: never the application's problem
            self.problems.report(("redis", type(problem)), "redis instrumentation failed to record: %r", problem)

    def _record(self, args: tuple[Any, ...], response: Any, start: float, error: BaseException | None) -> None:
        elapsed = _perf_counter() - start
        monitor = self.current()
        command = self.commands(_command_name(args))
        self.duration(monitor, elapsed, command, error)
        if error is None:
            self._count_lookups(monitor, command, args, response)

    def record_pipeline(
        self, stack: list[tuple[Any, Any]], responses: Any, start: float, error: BaseException | None
    ) -> None:
        """One latency sample for the round trip (``command="PIPELINE"``); lookups counted per queued command."""
        try:
            elapsed = _perf_counter() - start
            monitor = self.current()
            self.duration(monitor, elapsed, "PIPELINE", error)
            ok = error is None
            if not ok or not isinstance(responses, list):
                return
            for (args, _options), response in zip(stack, responses, strict=False):
                if not isinstance(response, Exception):  # raise_on_error=False leaves errors in the list
                    self._count_lookups(monitor, _command_name(args), args, response)
        except Exception as problem:
            self.problems.report(("redis", type(problem)), "redis instrumentation failed to record: %r", problem)

    def _count_lookups(self, monitor: PerformanceMonitor, command: str, args: tuple[Any, ...], response: Any) -> None:
        lookup = LOOKUPS.get(command)
        if lookup is not None:
            for key, found in lookup(args, response):
                name = CACHE_HITS if found else CACHE_MISSES
                monitor.increment_counter(name, {"cache": self.caches(self.cache_name(key))})


def _command_name(args: tuple[Any, ...]) -> str:
    raw = args[0] if args else ""
    return (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).upper()


def _wrap_sync(original: Callable[..., Any], recorder: _Recorder) -> Callable[..., Any]:
    @functools.wraps(original)
    def execute_command(self: Any, *args: Any, **options: Any) -> Any:
        if not recorder.active:
            return original(self, *args, **options)
        start = _perf_counter()
        try:
            response = original(self, *args, **options)
        except Exception as error:
            recorder.record(args, None, start, error)
            raise
        recorder.record(args, response, start, None)
        return response

    return execute_command


def _wrap_async(original: Callable[..., Any], recorder: _Recorder) -> Callable[..., Any]:
    @functools.wraps(original)
    async def execute_command(self: Any, *args: Any, **options: Any) -> Any:
        if not recorder.active:
            return await original(self, *args, **options)
        start = _perf_counter()
        try:
            response = await original(self, *args, **options)
        except Exception as error:
            recorder.record(args, None, start, error)
            raise
        recorder.record(args, response, start, None)
        return response

    return execute_command


def _wrap_pipeline(original: Callable[..., Any], recorder: _Recorder) -> Callable[..., Any]:
    @functools.wraps(original)
    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not recorder.active:
            return original(self, *args, **kwargs)
        stack, start = list(self.command_stack), _perf_counter()
        try:
            responses = original(self, *args, **kwargs)
        except Exception as error:
            recorder.record_pipeline(stack, None, start, error)
            raise
        recorder.record_pipeline(stack, responses, start, None)
        return responses

    return execute


def _wrap_async_pipeline(original: Callable[..., Any], recorder: _Recorder) -> Callable[..., Any]:
    @functools.wraps(original)
    async def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not recorder.active:
            return await original(self, *args, **kwargs)
        stack, start = list(self.command_stack), _perf_counter()
        try:
            responses = await original(self, *args, **kwargs)
        except Exception as error:
            recorder.record_pipeline(stack, None, start, error)
            raise
        recorder.record_pipeline(stack, responses, start, None)
        return responses

    return execute


_Wrap = Callable[[Callable[..., Any], _Recorder], Callable[..., Any]]
Undo = Callable[[], None]

# What is patched, by the module that defines it: each patched when (and if) the application imports it, the sync
# client without the asyncio one (redis-py before 5 loads redis.asyncio only when asked). redis.client is imported
# by the package's __init__ before it re-exports Redis: ``redis.Redis`` is the class patched here.
_PATCH_POINTS: dict[str, tuple[tuple[str, str, _Wrap], ...]] = {
    "redis.client": (
        ("Redis", "execute_command", _wrap_sync),
        ("Pipeline", "execute", _wrap_pipeline),
        # A pipeline between WATCH and MULTI sends each command at once, through this, not through execute().
        ("Pipeline", "immediate_execute_command", _wrap_sync),
    ),
    "redis.asyncio.client": (
        ("Redis", "execute_command", _wrap_async),
        ("Pipeline", "execute", _wrap_async_pipeline),
        ("Pipeline", "immediate_execute_command", _wrap_async),
    ),
}


def _patch(name: str, recorder: _Recorder) -> Callable[[ModuleType], Undo]:
    """The patch of module ``name``: wraps its :data:`_PATCH_POINTS`, and returns what puts them back."""

    def patch(module: ModuleType) -> Undo:
        patched: list[tuple[type, str, Callable[..., Any], Callable[..., Any]]] = []

        def restore() -> None:
            while patched:
                cls, attribute, original, wrapper = patched.pop()
                if cls.__dict__.get(attribute) is wrapper:  # if someone wrapped ours since, it stays: a pass-through
                    setattr(cls, attribute, original)

        try:
            for class_name, attribute, wrap in _PATCH_POINTS[name]:
                cls = getattr(module, class_name)
                original = getattr(cls, attribute)
                wrapper = wrap(original, recorder)
                setattr(cls, attribute, wrapper)
                patched.append((cls, attribute, original, wrapper))
        except BaseException:
            restore()
            raise
        return restore

    return patch


class RedisInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Counts redis-py cache hits and misses and times every command, for clients old and new, sync and async.

    ``GET``/``HGET`` replies of ``None`` are misses, anything else a hit; ``MGET`` counts each key; commands
    queued in a pipeline are counted when it executes (one ``PIPELINE`` latency sample per round trip), and
    those a pipeline sends at once while it watches keys (between ``WATCH`` and ``MULTI``) one by one. The
    ``cache`` label is the key's prefix before ``:`` (``instrument(cache_name=...)`` to choose), bounded
    to ``max_caches`` distinct values. Works beside ``opentelemetry-instrumentation-redis`` (spans).
    With ``OTEL_SEMCONV_STABILITY_OPT_IN=database`` (or the ``semconv_stability_opt_in`` setting) command
    latency is the conventions' ``db.client.operation.duration`` {db.system.name="redis", db.operation.name,
    error.type} instead of ``redis_command_duration_seconds``; ``database/dup`` emits both.

    Example:
        >>> RedisInstrumentor().instrument(monitor=monitor)  # doctest: +SKIP
        >>> redis.Redis().get("session:missing")  # doctest: +SKIP
        >>> monitor.snapshot().value("cache_misses", {"cache": "session"})  # doctest: +SKIP
        1
    """

    _recorder: _Recorder | None = None
    _undo: tuple[Undo, ...] = ()

    def instrumentation_dependencies(self) -> Collection[str]:
        """The redis-py versions this instrumentor covers."""
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        """Args (keywords of ``instrument()``):
        monitor: record into this monitor (default: the process-wide one, looked up per call).
        cache_name: a function from key to cache name (default :func:`key_prefix`).
        max_caches: distinct ``cache`` (and ``command``) label values before ``other`` (100).
        """
        cache_name, max_caches = kwargs.get("cache_name", key_prefix), kwargs.get("max_caches", 100)
        if not callable(cache_name):
            raise ConfigurationError(f"RedisInstrumentor: cache_name={cache_name!r} must be a function of the key")
        if isinstance(max_caches, bool) or not isinstance(max_caches, int) or max_caches < 1:
            raise ConfigurationError(f"RedisInstrumentor: max_caches={max_caches!r} must be a positive int")
        recorder = _Recorder(kwargs.get("monitor"), cache_name, max_caches)
        self._recorder = recorder
        self._undo = tuple(when_imported(name, _patch(name, recorder)) for name in _PATCH_POINTS)

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._recorder is not None:
            self._recorder.active = False  # if someone wrapped ours since, it stays in place as a pass-through
        undo, self._undo = self._undo, ()
        for restore in undo:
            restore()  # puts the client back, or cancels the patch if it was not imported since instrument()
        self._recorder = None
