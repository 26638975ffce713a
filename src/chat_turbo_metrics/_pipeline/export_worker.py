"""One push exporter's worker thread and its one-snapshot slot, fed by the fan-out (``fanout.py``).

A worker exports on its own daemon thread, so a slow or hanging exporter delays neither the others nor the
collection. Its slot holds the newest snapshot not yet exported: snapshots are cumulative, so a newer one replaces
an older one without losing data, and an outage of any length holds at most the snapshot being exported and the
next one. Per exporter, it converts to delta when the exporter asks for it, times each export, logs an outage once
when it starts and once when it ends, and flushes and shuts the exporter down on its own thread at close.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from chat_turbo_metrics._pipeline.health import ExportStats
from chat_turbo_metrics._pipeline.temporality import DeltaConverter

_log = logging.getLogger("chat_turbo_metrics.export")

THREAD_NAME = "chat-turbo-metrics-fanout"


@dataclass
class _Job:
    generation: int
    data: MetricsData
    flush: bool


class ExportWorker:
    """One exporter, its own daemon thread and a one-snapshot slot."""

    def __init__(
        self,
        name: str,
        exporter: MetricExporter,
        *,
        timeout_s: float,
        clock: Callable[[], float],
        on_failure: Callable[[str], None],
        stats: ExportStats | None = None,
    ) -> None:
        self.name = name
        self.exporter = exporter
        self._timeout_s = timeout_s
        self._clock = clock
        self._on_failure = on_failure
        self._stats = stats or ExportStats()
        self._converter = DeltaConverter.for_exporter(exporter)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._slot: _Job | None = None
        self._done_generation = 0
        self._done_ok = True
        self._busy_since: float | None = None
        self._hang_reported = False
        self._closing = False
        self._retired = False
        self._close_deadline = 0.0
        self._finished = False
        self._failed_in_outage = 0

    def offer(self, generation: int, data: MetricsData, *, flush: bool) -> None:
        """Put a snapshot in the slot, replacing one not yet exported."""
        with self._cond:
            if self._closing:
                return
            flush = flush or (self._slot is not None and self._slot.flush)
            if self._slot is not None:  # not lost (snapshots are cumulative), but a sign of a slow exporter
                self._stats.count(self.name, "superseded")
            self._slot = _Job(generation, data, flush)
            self._report_hang()
            self._ensure_thread()
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Snapshots waiting for this exporter (0 or 1: a newer one replaces an older one)."""
        return 0 if self._slot is None else 1

    def wait_done(self, generation: int, deadline: float) -> bool:
        """Wait until a snapshot as new as ``generation`` or newer was handled; True if it was exported."""
        with self._cond:
            while self._done_generation < generation:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._done_ok

    def close(self, deadline: float) -> None:
        """Export what is in the slot, then flush and shut the exporter down, all on the worker thread."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._close_deadline = deadline
                self._ensure_thread()
                self._cond.notify_all()

    def retire(self) -> None:
        """Let the thread end after what it holds, without flushing or shutting the exporter down."""
        with self._cond:
            self._closing = True
            self._retired = True
            self._cond.notify_all()

    def join(self, deadline: float) -> None:
        thread = self._thread
        # An exporter may shut the pipeline down from its own export; a thread cannot join itself.
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - self._clock()))

    def after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its lock may have been held at the fork.
        self._cond = threading.Condition()
        # The parent's delta baselines describe the parent's series; the child's start afresh.
        self._converter = DeltaConverter.for_exporter(self.exporter)
        self._thread = None
        self._slot = None
        self._busy_since = None

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._finished:
            self._thread = threading.Thread(target=self._run, name=f"{THREAD_NAME}-{self.name}", daemon=True)
            self._thread.start()

    def _report_hang(self) -> None:
        if self._busy_since is None or self._hang_reported:
            return
        busy_s = self._clock() - self._busy_since
        if busy_s > self._timeout_s:
            self._hang_reported = True
            _log.warning(
                "exporter %s is still exporting after %.1f s (timeout %.1f s); newer snapshots wait for it",
                self.name,
                busy_s,
                self._timeout_s,
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._closing:
                    self._cond.wait()
                job, self._slot = self._slot, None
                if job is None:
                    self._finished = True
                    break
                self._busy_since = self._clock()
                self._hang_reported = False
            ok = self._export(job)
            with self._cond:
                self._busy_since = None
                self._done_generation = job.generation
                self._done_ok = ok
                self._cond.notify_all()
        if not self._retired:
            self._finish(self._close_deadline)

    def _export(self, job: _Job) -> bool:
        started = self._clock()
        error: BaseException | None = None
        try:
            data, pending = (job.data, None) if self._converter is None else self._converter.convert(job.data)
            ok = self.exporter.export(data, timeout_millis=self._timeout_s * 1000) is MetricExportResult.SUCCESS
            if ok and pending is not None and self._converter is not None:
                self._converter.commit(pending)
        except Exception as raised:
            ok, error = False, raised
        elapsed = self._clock() - started
        self._stats.record(self.name, ok=ok, seconds=elapsed, timeout_s=self._timeout_s)
        if elapsed > self._timeout_s:
            _log.warning(
                "exporter %s was slow: export took %.2f s (timeout %.2f s)",
                self.name,
                elapsed,
                self._timeout_s,
            )
        self._outage(ok, error)
        if not ok:
            self._on_failure(self.name)
        elif job.flush:
            ok = self._call("force_flush", self._timeout_s)
        return ok

    def _outage(self, ok: bool, error: BaseException | None) -> None:
        """Log once when exports start failing and once when they work again, not at every interval."""
        if not ok:
            self._failed_in_outage += 1
            if self._failed_in_outage == 1:
                _log.warning(
                    "exporter %s failed to export metrics (%s); retrying every interval, logged again on recovery",
                    self.name,
                    "returned failure" if error is None else f"{type(error).__name__}: {error}",
                    exc_info=error,
                )
        elif self._failed_in_outage:
            _log.warning("exporter %s exports again after %d failed exports", self.name, self._failed_in_outage)
            self._failed_in_outage = 0

    def _finish(self, deadline: float) -> None:
        self._call("force_flush", deadline - self._clock())
        self._call("shutdown", deadline - self._clock())

    def _call(self, method: str, timeout_s: float) -> bool:
        try:
            result = getattr(self.exporter, method)(timeout_millis=max(0.0, timeout_s) * 1000)
        except Exception:
            _log.exception("exporter %s raised in %s", self.name, method)
            return False
        return result is not False
