"""One periodic collection that feeds every push exporter.

Recording cost must not grow with the number of exporters, so the provider has a single cumulative reader and
this fan-out hands each snapshot to every push exporter. Each exporter has its own worker thread and
latest-snapshot slot (``export_worker``): snapshots are cumulative, so a newer one supersedes an older one that
was never exported without losing data, and a slow or hanging exporter delays neither the others nor the
collection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData

from chat_turbo_metrics._core import forks
from chat_turbo_metrics._pipeline.export_worker import THREAD_NAME, ExportWorker
from chat_turbo_metrics._pipeline.health import ExportStats

_log = logging.getLogger("chat_turbo_metrics.export")


class Fanout:
    """Collects the process's cumulative metrics periodically and hands each snapshot to every push exporter.

    Example:
        >>> from chat_turbo_metrics.exporters.file import FileExporter, read_metric_records
        >>> fanout = Fanout(pipeline.collect, interval_s=60, timeout_s=10)
        >>> fanout.add(FileExporter(tmp_path / "metrics.jsonl"))
        >>> monitor.increment_counter("jobs", value=2)
        >>> fanout.force_flush()
        True
        >>> [(record["name"], record["value"]) for record in read_metric_records(tmp_path / "metrics.jsonl")]
        [('jobs', 2)]
        >>> fanout.shutdown()
    """

    def __init__(
        self,
        collect: Callable[[], MetricsData | None],
        *,
        interval_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._collect = collect
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._on_failure = on_failure
        self._workers: tuple[ExportWorker, ...] = ()
        self._failures: dict[str, int] = {}
        self.stats = ExportStats()  # outcomes and durations per exporter, for the self-telemetry
        self._generation = 0
        self._shut_down = False
        self._ticker: threading.Thread | None = None
        self._reset_synchronisation()
        forks.register(self, forks.Phase.THREADS)

    @property
    def exporters(self) -> tuple[MetricExporter, ...]:
        """The exporters in the order they were added."""
        return tuple(worker.exporter for worker in self._workers)

    @property
    def failures(self) -> Mapping[str, int]:
        """Failed exports per exporter display name (live, read-only)."""
        return MappingProxyType(self._failures)

    @property
    def named_exporters(self) -> tuple[tuple[str, MetricExporter], ...]:
        """``(display name, exporter)`` in the order they were added."""
        return tuple((worker.name, worker.exporter) for worker in self._workers)

    def pending(self) -> dict[str, int]:
        """Snapshots waiting per exporter display name."""
        return {worker.name: worker.pending for worker in self._workers}

    def add(self, exporter: MetricExporter) -> None:
        """Feed ``exporter`` from the next collection on; starts the periodic thread on the first call."""
        with self._lock:
            if self._shut_down:
                _log.warning("exporter %r added after shutdown; it is ignored", exporter)
                return
            name = self._unique_name(str(getattr(exporter, "name", type(exporter).__name__)))
            self._failures[name] = 0
            self.stats.add(name)
            worker = ExportWorker(
                name,
                exporter,
                timeout_s=self._timeout_s,
                clock=self._clock,
                on_failure=self._count_failure,
                stats=self.stats,
            )
            self._workers = (*self._workers, worker)
            if self._ticker is None:
                self._start_ticker()

    def remove(self, exporter: MetricExporter) -> bool:
        """Stop feeding ``exporter`` (it is not shut down: the caller still owns it).

        Returns:
            True when it was being fed.
        """
        with self._lock:
            removed = [worker for worker in self._workers if worker.exporter is exporter]
            self._workers = tuple(worker for worker in self._workers if worker.exporter is not exporter)
        for worker in removed:
            worker.retire()
        return bool(removed)

    def collect_and_export(self) -> None:
        """Collect once now and hand the snapshot to every exporter's worker."""
        if self._shut_down:
            return
        try:
            self._offer_snapshot(flush=False, deadline=self._clock() + self._timeout_s)
        except Exception:
            _log.exception("collecting metrics for the push exporters failed")

    def force_flush(self, timeout_s: float | None = None) -> bool:
        """Collect once, then wait until every exporter has exported that snapshot and flushed.

        Args:
            timeout_s: Longest total wait; defaults to the export timeout.

        Returns:
            True when every exporter exported and flushed in time, or there was nothing to export.
        """
        if self._shut_down:
            return False
        deadline = self._clock() + (self._timeout_s if timeout_s is None else timeout_s)
        try:
            generation, workers = self._offer_snapshot(flush=True, deadline=deadline)
        except Exception:
            _log.exception("collecting metrics for the push exporters failed")
            return False
        # Wait for all of them, not just until the first failure: the deadline bounds the total.
        results = [worker.wait_done(generation, deadline) for worker in workers]
        return all(results)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Export a final snapshot, then flush and shut down every exporter once; later calls do nothing.

        Args:
            timeout_s: Longest total wait; defaults to the export timeout. A hanging exporter is left to its
                daemon thread when the time is up.
        """
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
            ticker, workers = self._ticker, self._workers
        deadline = self._clock() + (self._timeout_s if timeout_s is None else timeout_s)
        self._stop.set()
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(max(0.0, deadline - self._clock()))
        try:
            self._offer_snapshot(flush=False, deadline=deadline)
        except Exception:
            _log.exception("collecting the final metrics for the push exporters failed")
        for worker in workers:
            worker.close(deadline)
        for worker in workers:
            worker.join(deadline)

    def _offer_snapshot(self, *, flush: bool, deadline: float) -> tuple[int, tuple[ExportWorker, ...]]:
        # One collection at a time, offered under the same lock, so workers never see an older snapshot after
        # a newer one (that would look like a counter reset and double-count in the deltas).
        if not self._cycle_lock.acquire(timeout=max(0.0, deadline - self._clock())):
            raise TimeoutError("a previous collection is still running")
        try:
            data = self._collect()
            workers = self._workers
            if data is None:
                return 0, ()
            self._generation += 1
            for worker in workers:
                worker.offer(self._generation, data, flush=flush)
            return self._generation, workers
        finally:
            self._cycle_lock.release()

    def _count_failure(self, name: str) -> None:
        # Each worker only touches its own key, so the read-modify-write needs no lock.
        self._failures[name] += 1
        if self._on_failure is not None:
            try:
                self._on_failure(name)
            except Exception:
                _log.exception("on_failure callback raised for exporter %s", name)

    def _unique_name(self, name: str) -> str:
        taken = {worker.name for worker in self._workers}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}#{n}"
        return candidate

    def _start_ticker(self) -> None:
        self._ticker = threading.Thread(target=self._tick, name=THREAD_NAME, daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        stop = self._stop
        while not stop.wait(self._interval_s):
            self.collect_and_export()

    def _reset_synchronisation(self) -> None:
        self._lock = threading.Lock()
        self._cycle_lock = threading.Lock()
        self._stop = threading.Event()

    def after_fork_in_child(self) -> None:
        # Only the forking thread survives: locks another thread held would stay held forever, and the
        # ticker and workers are gone. Workers restart on their next snapshot; the ticker restarts now because
        # nothing else would drive the child's exports.
        self._reset_synchronisation()
        running = self._ticker is not None and not self._shut_down
        self._ticker = None
        for worker in self._workers:
            worker.after_fork_in_child()
        if running:
            self._start_ticker()
