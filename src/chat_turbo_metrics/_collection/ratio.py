"""Cache hit ratios, derived at collection time from the ``cache_hits`` and ``cache_misses`` counters.

Recording a hit or a miss is one counter increment; the ratio costs nothing until something collects. This is
the ``hit_ratios`` step of the collection pass, after the recorder's metrics have joined: it adds one gauge series
``cache_hit_ratio`` per label set of the counters: ``hits / (hits + misses)`` since the process started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics._collection.walk import rewrite

HITS, MISSES, RATIO = "cache_hits", "cache_misses", "cache_hit_ratio"
RATIO_DESCRIPTION = "Share of cache lookups that found their entry, since the process started."


def _totals(metric: Metric | None) -> dict[frozenset[tuple[str, Any]], tuple[Mapping[str, Any], float, int]]:
    if metric is None or not isinstance(metric.data, Sum):
        return {}
    return {
        frozenset((point.attributes or {}).items()): (point.attributes or {}, point.value, point.time_unix_nano)
        for point in metric.data.data_points
    }


def _ratio_metric(metrics: Sequence[Metric]) -> Metric | None:
    by_name = {metric.name: metric for metric in metrics}
    if RATIO in by_name or (HITS not in by_name and MISSES not in by_name):
        return None
    hits, misses = _totals(by_name.get(HITS)), _totals(by_name.get(MISSES))
    points = []
    for key in hits.keys() | misses.keys():
        attributes, hit, now = hits.get(key, (None, 0, 0))
        missing = misses.get(key)
        if missing is not None:
            attributes, miss, now = missing[0], missing[1], max(now, missing[2])
        else:
            miss = 0
        total = hit + miss
        if total > 0:
            points.append(NumberDataPoint(dict(attributes or {}), None, now, hit / total))  # type: ignore[arg-type]
    if not points:
        return None
    return Metric(name=RATIO, description=RATIO_DESCRIPTION, unit="1", data=Gauge(data_points=points))


def add_hit_ratios(data: MetricsData | None) -> MetricsData | None:
    """``data`` with a ``cache_hit_ratio`` gauge beside every scope that has cache hit or miss counters.

    Example:
        >>> add_hit_ratios(None) is None
        True
    """
    return rewrite(data, _with_ratio)


def _with_ratio(resource: Resource, scope: InstrumentationScope, metrics: Sequence[Metric]) -> Sequence[Metric]:
    ratio = _ratio_metric(metrics)
    return metrics if ratio is None else [*metrics, ratio]
