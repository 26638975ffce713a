"""Cache hit ratios, derived at collection time from the ``cache_hits`` and ``cache_misses`` counters.

Recording a hit or a miss is one counter increment; the ratio costs nothing until something collects. This
producer runs after the recorder's own (in ``PipelineReader.producers``) and adds one gauge series
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
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)

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
    if data is None:
        return None
    changed = False
    resource_metrics = []
    for resource in data.resource_metrics:
        scopes = []
        for scope in resource.scope_metrics:
            ratio = _ratio_metric(scope.metrics)
            if ratio is None:
                scopes.append(scope)
                continue
            changed = True
            scopes.append(ScopeMetrics(scope=scope.scope, metrics=[*scope.metrics, ratio], schema_url=scope.schema_url))
        resource_metrics.append(
            ResourceMetrics(resource=resource.resource, scope_metrics=scopes, schema_url=resource.schema_url)
        )
    return MetricsData(resource_metrics=resource_metrics) if changed else data
