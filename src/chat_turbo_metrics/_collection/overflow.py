"""Measurements past a metric's cardinality limit: warned about once per metric, counted per metric.

The fast path counts them at the call (the overflow branch of ``Stream.cell`` is already its slow path). The
OpenTelemetry SDK recording path (``recording = "sdk"``, and instruments of the OpenTelemetry API) keeps its
overflow series itself; :class:`OverflowWatcher` finds them in the SDK's collection, before the fast path's
metrics join it, so each overflow is warned about once whichever path recorded it. The counts become
``chat_turbo_metrics_overflow_measurements_total`` in :mod:`chat_turbo_metrics._pipeline.health`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._collection.walk import walk
from chat_turbo_metrics._core import forks

_logger = logging.getLogger("chat_turbo_metrics.health")

OVERFLOW_METRIC = "chat_turbo_metrics_overflow_measurements_total"
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"


class Overflow:
    """Measurements folded into each metric's overflow series; the first one of a metric is warned about.

    Example:
        >>> overflow = Overflow(limit=2)
        >>> overflow.report("api_requests")
        >>> overflow.report("api_requests", 2)
        >>> overflow.counts
        {'api_requests': 3}
    """

    def __init__(self, limit: int, logger: logging.Logger = _logger) -> None:
        self.limit = limit
        self._logger = logger
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        forks.register(self, forks.Phase.PIPELINE)

    def after_fork_in_child(self) -> None:
        forks.reinit(self._lock)
        # The parent reports what it counted; the child counts its own (warned-about metrics stay warned).
        self.counts = dict.fromkeys(self.counts, 0)

    def snapshot(self) -> dict[str, int]:
        """A copy: metric -> measurements that went to its overflow series."""
        with self._lock:
            return dict(self.counts)

    def report(self, metric: str, count: int = 1) -> None:
        """Count ``count`` measurements of ``metric`` that went to its overflow series; warn the first time."""
        with self._lock:
            first = metric not in self.counts
            self.counts[metric] = self.counts.get(metric, 0) + count
        if first:
            self._logger.warning(
                "%s: more than %d tag sets (the cardinality limit); measurements of new tag sets go to one series "
                'labelled otel.metric.overflow="true" (counted in %s). Raise METRICS_CARDINALITY_LIMIT (setting '
                "cardinality_limit) or keep fewer tags with a View (attribute_keys)",
                metric,
                self.limit,
                OVERFLOW_METRIC,
            )


class OverflowWatcher:
    """A reader producer that finds the SDK's overflow series in its collection and reports them.

    The ``overflow`` step of the collection pass, the first: it sees what the SDK collected before a fast
    recorder adds its own metrics (which count their overflow at the call). A sum or gauge does not say how many
    measurements it folded, so for those only the overflow itself is reported; a histogram's count is exact.
    """

    def __init__(self, overflow: Overflow) -> None:
        self._overflow = overflow
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()  # a scrape and a push export may collect at once: count each delta once
        forks.register(self, forks.Phase.PIPELINE)

    def after_fork_in_child(self) -> None:
        forks.reinit(self._lock)
        self._seen = {}  # the child's SDK series start again from zero (compat.forget_inherited_sums)

    def __call__(self, data: MetricsData | None) -> MetricsData | None:
        limit = self._overflow.limit
        for found in walk(data):
            points = getattr(found.metric.data, "data_points", ())
            if len(points) > limit:  # the SDK adds the overflow series beside `limit` others
                self._check(found.metric.name, points)
        return data

    def _check(self, name: str, points: Iterable[Any]) -> None:
        for point in points:
            if point.attributes and point.attributes.get(OVERFLOW_ATTRIBUTE):
                total = int(getattr(point, "count", 0))
                with self._lock:
                    delta = total - self._seen.get(name, 0)
                    self._seen[name] = max(total, self._seen.get(name, 0))
                if delta > 0 or name not in self._overflow.counts:
                    self._overflow.report(name, max(delta, 0))
                return
