"""Celery task metrics for chat_turbo_metrics: entry point ``chat_turbo_celery``.

Listens to Celery's signals (no class is patched): ``before_task_publish`` stamps the message with the time it was
sent, ``task_prerun``/``task_postrun`` time the task in the process that runs it (a prefork child: its recordings
reach the scrape through the core's pre-fork merge, or a push exporter of its own), ``task_revoked`` counts a task
the worker revoked. Recorded through the process-wide monitor:

- ``celery_task_duration_seconds`` {task, outcome}: the task's run, ``outcome`` ``success``, ``failure`` or
  ``retry``.
- ``celery_tasks_total`` {task, outcome}: every run, and ``revoked`` for a task revoked before or while it ran.
- ``celery_task_queue_wait_seconds`` {task}: from the message's publication (the producer's clock) to the start
  of its run (the worker's): producers that are not instrumented send no stamp, and none is recorded.
- ``celery_tasks_in_flight`` {worker}: tasks running in this process now, read at each collection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.instrumentation import Problems, register_after_fork, when_imported

DURATION = "celery_task_duration_seconds"
TASKS = "celery_tasks_total"
QUEUE_WAIT = "celery_task_queue_wait_seconds"
IN_FLIGHT = "celery_tasks_in_flight"
SENT_AT = "chat_turbo_sent_at"  # the message header with the publication time (seconds since the epoch)
_OUTCOMES = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry"}
# Tasks last from milliseconds to many minutes; waits in a queue as long.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_DEFINITIONS: tuple[tuple[str, Any, str | None, str, tuple[float, ...] | None], ...] = (
    (DURATION, "histogram", "s", "Duration of Celery task runs.", BUCKETS),
    (QUEUE_WAIT, "histogram", "s", "Time Celery tasks waited between publication and their run.", BUCKETS),
    (TASKS, "counter", None, "Celery task runs by outcome, and tasks revoked.", None),
    (IN_FLIGHT, "gauge", None, "Celery tasks running in this process now.", None),
)
_perf_counter = time.perf_counter
_now = time.time
_logger = logging.getLogger("chat_turbo_metrics_celery")


class _Recorder:
    """The signal handlers of one instrumentation and the tasks it has seen start."""

    def __init__(self, monitor: PerformanceMonitor | None) -> None:
        self.fixed = monitor
        self.started: dict[str, tuple[float, str]] = {}  # task id -> (perf_counter at start, worker)
        self.problems = Problems(_logger)
        self.hooked: PerformanceMonitor | None = None
        self.lock = threading.Lock()
        self.workers: set[str] = set()  # the workers (hostnames) this process ran tasks for

    def monitor(self) -> PerformanceMonitor:
        monitor = self.fixed or PerformanceMonitor.get_instance()
        if monitor is not self.hooked:
            with self.lock:
                if monitor is not self.hooked:
                    for name, kind, unit, description, buckets in _DEFINITIONS:
                        try:
                            monitor.define(name, kind, unit=unit, description=description, buckets=buckets)
                        except ValueError as error:  # the application defined it its own way first: keep theirs
                            _logger.debug("keeping the application's definition of %s: %s", name, error)
                    monitor.add_collection_hook(self.read_in_flight)
                    self.hooked = monitor
        return monitor

    def forget_parents_tasks(self) -> None:
        """A forked child runs none of its parent's tasks."""
        self.started = {}

    # --- signals ------------------------------------------------------------------------------------
    def published(self, sender: Any = None, headers: Any = None, **extra: Any) -> None:
        try:
            if isinstance(headers, dict):
                headers[SENT_AT] = _now()
        except Exception as error:  # never fail the application's publication
            self.problems.report(("publish", type(error)), "cannot stamp a Celery message: %r", error)

    def prerun(self, task_id: Any = None, task: Any = None, **extra: Any) -> None:
        try:
            request = getattr(task, "request", None)
            worker = str(getattr(request, "hostname", None) or "local")
            self.started[str(task_id)] = (_perf_counter(), worker)
            if worker not in self.workers:
                self.workers.add(worker)
                self.monitor()  # the in-flight gauge is read from the first task on
            sent_at = getattr(request, SENT_AT, None)
            if sent_at is None:
                headers = getattr(request, "headers", None)
                sent_at = headers.get(SENT_AT) if isinstance(headers, dict) else None
            if isinstance(sent_at, (int, float)):
                self.monitor().record_histogram(QUEUE_WAIT, max(0.0, _now() - sent_at), {"task": _name(task)})
        except Exception as error:  # never fail the task
            self.problems.report(("prerun", type(error)), "cannot record a Celery task's start: %r", error)

    def postrun(self, task_id: Any = None, task: Any = None, state: Any = None, **extra: Any) -> None:
        try:
            started = self.started.pop(str(task_id), None)
            if started is None:
                return
            outcome = _OUTCOMES.get(str(state), "other")
            tags = {"task": _name(task), "outcome": outcome}
            monitor = self.monitor()
            monitor.record_histogram(DURATION, _perf_counter() - started[0], tags)
            monitor.increment_counter(TASKS, tags)
        except Exception as error:  # never fail the task
            self.problems.report(("postrun", type(error)), "cannot record a Celery task's end: %r", error)

    def revoked(self, request: Any = None, **extra: Any) -> None:
        try:
            name = getattr(request, "name", None) or getattr(request, "task", None) or "unknown"
            self.monitor().increment_counter(TASKS, {"task": str(name), "outcome": "revoked"})
        except Exception as error:
            self.problems.report(("revoked", type(error)), "cannot count a revoked Celery task: %r", error)

    def read_in_flight(self) -> None:
        monitor = self.hooked
        if monitor is None:
            return
        counts = dict.fromkeys(self.workers, 0)  # every worker seen: back to zero, not left at its last value
        for _, worker in list(self.started.values()):
            counts[worker] = counts.get(worker, 0) + 1
        for worker, count in counts.items():
            monitor.record_gauge(IN_FLIGHT, count, {"worker": worker})


def _name(task: Any) -> str:
    return str(getattr(task, "name", None) or "unknown")


Undo = Callable[[], None]
# (signal of celery.signals, handler of _Recorder, dispatch_uid)
_SIGNALS = (
    ("before_task_publish", "published", "chat_turbo_publish"),
    ("task_prerun", "prerun", "chat_turbo_prerun"),
    ("task_postrun", "postrun", "chat_turbo_postrun"),
    ("task_revoked", "revoked", "chat_turbo_revoked"),
)


def _connect(recorder: _Recorder) -> Callable[[ModuleType], Undo]:
    """The patch of ``celery.signals``: connect the recorder's handlers. Every part of Celery that sends a signal
    imports that module first, so no signal is sent before the handlers are connected; and it is the only part of
    Celery they need (not the app, Kombu or the worker)."""

    def connect(signals: ModuleType) -> Undo:
        def disconnect() -> None:
            for signal, _, uid in _SIGNALS:
                getattr(signals, signal).disconnect(dispatch_uid=uid)

        try:
            for signal, handler, uid in _SIGNALS:
                getattr(signals, signal).connect(getattr(recorder, handler), weak=False, dispatch_uid=uid)
        except BaseException:
            disconnect()
            raise
        return disconnect

    return connect


class CeleryInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Measures every Celery task run, publication and revocation: entry point ``chat_turbo_celery``.

    Example:
        >>> from celery import Celery
        >>> app = Celery("example", broker="memory://")
        >>> @app.task
        ... def add(a, b):
        ...     return a + b
        >>> CeleryInstrumentor().instrument(monitor=monitor)
        >>> add.apply(args=(2, 3)).get()
        5
        >>> monitor.snapshot().value("celery_tasks", {"task": add.name, "outcome": "success"})
        1
        >>> CeleryInstrumentor().uninstrument()

    ``instrument(monitor=...)`` records into another monitor than the process-wide one.
    """

    _recorder: _Recorder | None = None
    _undo: Undo | None = None
    _fork_repair_registered = False

    def instrumentation_dependencies(self) -> Collection[str]:
        """Celery 5.2 and later."""
        return ("celery >= 5.2",)

    def _instrument(self, **kwargs: Any) -> None:
        recorder = _Recorder(kwargs.get("monitor"))
        CeleryInstrumentor._recorder = recorder
        CeleryInstrumentor._undo = when_imported("celery.signals", _connect(recorder))
        if not CeleryInstrumentor._fork_repair_registered:
            register_after_fork(_after_fork)
            CeleryInstrumentor._fork_repair_registered = True

    def _uninstrument(self, **kwargs: Any) -> None:
        recorder, CeleryInstrumentor._recorder = CeleryInstrumentor._recorder, None
        undo, CeleryInstrumentor._undo = CeleryInstrumentor._undo, None
        if undo is not None:
            undo()  # disconnects, or cancels the connection if Celery was not imported since instrument()
        if recorder is not None and recorder.hooked is not None:
            recorder.hooked.remove_collection_hook(recorder.read_in_flight)


def _after_fork() -> None:
    recorder = CeleryInstrumentor._recorder
    if recorder is not None:
        recorder.forget_parents_tasks()


__all__ = ["DURATION", "IN_FLIGHT", "QUEUE_WAIT", "SENT_AT", "TASKS", "CeleryInstrumentor"]
