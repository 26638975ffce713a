"""Self-telemetry: the pipeline's own health as metrics, read at collection time from counts its parts keep.

Nothing here runs while the application records. The fan-out counts each export's outcome and duration
(:class:`ExportStats`), the recording guard counts dropped measurements per cause (``Problems``), the fast
path counts measurements that fall into a metric's overflow series (:class:`Overflow`), and exporters with a
buffer of their own say what it holds and what they dropped (:class:`ReportsHealth`). :class:`HealthProducer`
turns those counts into metrics when the reader collects, so every exporter and the Prometheus scrape carry
them like any other metric (``METRICS_SELF_TELEMETRY=false`` leaves them out).

Overflow past the cardinality limit is counted and warned about in :mod:`chat_turbo_metrics._collection.overflow`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics._collection.overflow import OVERFLOW_METRIC, Overflow
from chat_turbo_metrics._collection.walk import add_metrics, walk
from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.version import __version__

_logger = logging.getLogger("chat_turbo_metrics.health")

PREFIX = "chat_turbo_metrics_"
EXPORTS = PREFIX + "exports_total"
EXPORT_DURATION = PREFIX + "export_duration_seconds"
DROPPED = PREFIX + "dropped_total"
OVERFLOW = OVERFLOW_METRIC
QUEUE_DEPTH = PREFIX + "queue_depth"
SERIES = PREFIX + "series"
MULTIPROCESS_DEGRADED = PREFIX + "multiprocess_degraded"
OUTCOMES = ("success", "failure", "timeout", "superseded")
# An export that failed after using this share of its timeout ran out of time (exporters stop a little early).
TIMEOUT_SHARE = 0.95
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_CUMULATIVE = AggregationTemporality.CUMULATIVE
SCOPE = InstrumentationScope("chat_turbo_metrics.health", __version__)
_INF = float("inf")


class _Durations:
    """One exporter's export durations: cumulative explicit-bucket histogram state."""

    __slots__ = ("count", "counts", "max", "min", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BOUNDS) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = _INF
        self.max = -_INF

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(DURATION_BOUNDS, seconds)] += 1
        self.count += 1
        self.sum += seconds
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)


class ExportStats:
    """Export outcomes and durations per exporter, kept by the fan-out's workers.

    Example:
        >>> stats = ExportStats()
        >>> stats.record("otlp", ok=False, seconds=0.2, timeout_s=10.0)
        >>> stats.outcomes()["otlp"]["failure"]
        1
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.start_ns = time.time_ns()
        self._outcomes: dict[str, Counter[str]] = {}
        self._durations: dict[str, _Durations] = {}
        forks.register(self, forks.Phase.PIPELINE)

    def after_fork_in_child(self) -> None:
        # The child exports on its own from now on; the parent's exports are the parent's to report.
        forks.reinit(self._lock)
        self.start_ns = time.time_ns()
        self._outcomes = {name: Counter() for name in self._outcomes}
        self._durations = {}

    def add(self, exporter: str) -> None:
        """Report ``exporter`` from now on, with zero counts until it exports."""
        with self._lock:
            self._outcomes.setdefault(exporter, Counter())

    def count(self, exporter: str, outcome: str) -> None:
        """Count one ``outcome`` without a duration (a snapshot superseded before it was exported)."""
        with self._lock:
            self._outcomes.setdefault(exporter, Counter())[outcome] += 1

    def record(self, exporter: str, *, ok: bool, seconds: float, timeout_s: float) -> None:
        """Count one finished export: success, failure, or timeout (a failure that used up its time)."""
        outcome = "success" if ok else "timeout" if seconds >= timeout_s * TIMEOUT_SHARE else "failure"
        with self._lock:
            self._outcomes.setdefault(exporter, Counter())[outcome] += 1
            self._durations.setdefault(exporter, _Durations()).observe(seconds)

    def outcomes(self) -> dict[str, dict[str, int]]:
        """exporter -> outcome -> count (every outcome, zeros included)."""
        with self._lock:
            return {name: {outcome: row[outcome] for outcome in OUTCOMES} for name, row in self._outcomes.items()}

    def durations(self) -> dict[str, tuple[int, float, float, float, tuple[int, ...]]]:
        """exporter -> (count, sum, min, max, bucket counts)."""
        with self._lock:
            return {n: (d.count, d.sum, d.min, d.max, tuple(d.counts)) for n, d in self._durations.items()}


@runtime_checkable
class ReportsHealth(Protocol):
    """An exporter with a buffer of its own: what it holds and what it dropped, by cause."""

    def queued_points(self) -> int: ...

    def dropped_points(self) -> Mapping[str, int]: ...


@runtime_checkable
class HealthQueue(Protocol):
    """A queue outside the export path (an alert notifier's): ``(queue, owner, depth)`` right now."""

    def health_queue(self) -> tuple[str, str, int]: ...


_queues: weakref.WeakSet[HealthQueue] = weakref.WeakSet()


_queues_lock = threading.Lock()  # a WeakSet must not grow while a collection copies it


def register_queue(queue: HealthQueue) -> None:
    """Report ``queue``'s depth in every pipeline's self-telemetry while it lives."""
    with _queues_lock:
        _queues.add(queue)


def _registered_queues() -> list[HealthQueue]:
    with _queues_lock:
        return list(_queues)


def _after_fork_in_child() -> None:
    forks.reinit(_queues_lock)  # another thread may have been registering


forks.register_function(_after_fork_in_child, forks.Phase.LOCKS)


class Sources:
    """What a pipeline's self-telemetry reads: each a callable, so nothing is copied until a collection."""

    def __init__(
        self,
        *,
        dropped_recordings: Callable[[], Mapping[str, int]],
        unexportable: Callable[[], int],
        overflow: Overflow,
        exports: ExportStats,
        export_queues: Callable[[], Mapping[str, int]],
        exporters: Callable[[], Iterable[tuple[str, object]]],
        multiprocess: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.dropped_recordings = dropped_recordings
        self.unexportable = unexportable
        self.overflow = overflow
        self.exports = exports
        self.export_queues = export_queues
        self.exporters = exporters
        self.multiprocess = multiprocess


def _sum(name: str, description: str, points: list[NumberDataPoint]) -> Metric:
    return Metric(
        name=name,
        description=description,
        unit="",
        data=Sum(data_points=points, aggregation_temporality=_CUMULATIVE, is_monotonic=True),
    )


def _gauge(name: str, description: str, points: list[NumberDataPoint]) -> Metric:
    return Metric(name=name, description=description, unit="", data=Gauge(data_points=points))


class HealthMetrics:
    """Builds the self-telemetry metrics from a pipeline's :class:`Sources` at one collection.

    Example:
        >>> pipeline.overflow.report("logins", 3)  # what the fast path does past the cardinality limit
        >>> [metric.name for metric in HealthMetrics(pipeline.health_sources()).metrics(None, 0)]
        ['chat_turbo_metrics_overflow_measurements_total']
    """

    def __init__(self, sources: Sources) -> None:
        self._sources = sources
        self._start_ns = time.time_ns()
        self._failed: set[tuple[str, type]] = set()

    def metrics(self, data: MetricsData | None, now: int) -> list[Metric]:
        """Every self-telemetry metric at ``now``; ``data`` is the collection they join (for series counts)."""
        builders: tuple[Callable[[], Metric | None], ...] = (
            lambda: self._exports(now),
            lambda: self._durations(now),
            lambda: self._dropped(now),
            lambda: self._overflow(now),
            lambda: self._queues(now),
            lambda: self._series(data, now),
            lambda: self._multiprocess(now),
        )
        built = []
        for index, build in enumerate(builders):
            try:
                metric = build()
            except Exception as error:  # whatever else breaks must not cost the collection
                self._report(f"building self-telemetry metric {index}", error)
                continue
            if metric is not None:
                built.append(metric)
        return built

    def _read(self, read: Callable[[], Any], default: Any) -> Any:
        """What a component reports about itself; ``default`` (and one error logged) if that raises."""
        try:
            return read()
        except Exception as error:  # a third-party exporter's accounting must not cost the other metrics
            self._report(getattr(read, "__qualname__", "a reading"), error)
            return default

    def _report(self, what: str, error: Exception) -> None:
        if (what, type(error)) not in self._failed:
            self._failed.add((what, type(error)))
            _logger.error("self-telemetry: %s failed: %r (not logged again)", what, error)

    def _exports(self, now: int) -> Metric | None:
        stats = self._sources.exports
        points = [
            NumberDataPoint({"exporter": name, "outcome": outcome}, stats.start_ns, now, count)
            for name, row in stats.outcomes().items()
            for outcome, count in row.items()
        ]
        return _sum(EXPORTS, "Push exports by exporter and outcome.", points) if points else None

    def _durations(self, now: int) -> Metric | None:
        stats = self._sources.exports
        points = [
            HistogramDataPoint({"exporter": name}, stats.start_ns, now, n, total, counts, DURATION_BOUNDS, lo, hi)
            for name, (n, total, lo, hi, counts) in stats.durations().items()
        ]
        if not points:
            return None
        data = Histogram(data_points=points, aggregation_temporality=_CUMULATIVE)
        return Metric(name=EXPORT_DURATION, description="Duration of push exports.", unit="s", data=data)

    def _dropped(self, now: int) -> Metric | None:
        causes: Counter[tuple[str, str]] = Counter()
        for cause, count in self._sources.dropped_recordings().items():
            causes["", cause] += count
        causes["", "unexportable"] += self._sources.unexportable()
        for name, exporter in self._sources.exporters():
            if isinstance(exporter, ReportsHealth):
                for cause, count in self._read(exporter.dropped_points, {}).items():
                    causes[name, cause] += count
        points = [
            NumberDataPoint({"cause": cause, **({"exporter": name} if name else {})}, self._start_ns, now, count)
            for (name, cause), count in sorted(causes.items())
            if count
        ]
        return _sum(DROPPED, "Measurements and points dropped, by cause (and exporter).", points) if points else None

    def _overflow(self, now: int) -> Metric | None:
        overflow = self._sources.overflow
        counts = overflow.snapshot()
        points = [NumberDataPoint({"metric": name}, self._start_ns, now, n) for name, n in sorted(counts.items())]
        description = "Measurements that went to a metric's overflow series (past the cardinality limit)."
        return _sum(OVERFLOW, description, points) if points else None

    def _queues(self, now: int) -> Metric | None:
        depths: Counter[tuple[str, str]] = Counter()
        for name, depth in self._sources.export_queues().items():
            depths["export", name] += depth
        for name, exporter in self._sources.exporters():
            if isinstance(exporter, ReportsHealth):
                depths["exporter_buffer", name] += self._read(exporter.queued_points, 0)
        for queue in _registered_queues():
            found = self._read(queue.health_queue, None)
            if found is not None:
                depths[found[0], found[1]] += found[2]
        points = [
            NumberDataPoint({"queue": kind, "owner": owner}, None, now, depth)  # type: ignore[arg-type]
            for (kind, owner), depth in sorted(depths.items())
        ]
        return _gauge(QUEUE_DEPTH, "Items waiting in the pipeline's queues and buffers.", points) if points else None

    def _series(self, data: MetricsData | None, now: int) -> Metric | None:
        series: Counter[str] = Counter()
        for found in walk(data):
            series[found.metric.name] += len(getattr(found.metric.data, "data_points", ()))
        points = [
            NumberDataPoint({"metric": name}, None, now, n)  # type: ignore[arg-type]
            for name, n in sorted(series.items())
        ]
        return _gauge(SERIES, "Series each metric holds in memory.", points) if points else None

    def _multiprocess(self, now: int) -> Metric | None:
        causes = self._sources.multiprocess()
        points = [
            NumberDataPoint({"cause": cause}, None, now, value)  # type: ignore[arg-type]
            for cause, value in sorted(causes.items())
        ]
        description = "1 while this process cannot share its metrics with its pre-fork group, by cause."
        return _gauge(MULTIPROCESS_DEGRADED, description, points) if points else None


class HealthProducer:
    """The ``self_telemetry`` step of the collection pass: adds the self-telemetry metrics, in their own scope.

    Its place in the pass (:data:`chat_turbo_metrics._collection.collector.STEPS`) comes after every step that
    adds metrics, so the series it counts are those every exporter gets.
    """

    def __init__(self, health: HealthMetrics, resource: Callable[[], Resource]) -> None:
        self._health = health
        self._resource = resource

    def __call__(self, data: MetricsData | None) -> MetricsData | None:
        return add_metrics(data, self._health.metrics(data, time.time_ns()), SCOPE, self._resource)
