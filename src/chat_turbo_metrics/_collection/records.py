"""Data points as self-describing records (name, kind, unit, attributes, value or buckets, times, resource)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    HistogramDataPoint,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.resources import Resource

from chat_turbo_metrics._collection.walk import walk


def _number_fields(point: NumberDataPoint) -> dict[str, Any]:
    return {"value": point.value}


def _summary(point: HistogramDataPoint | ExponentialHistogramDataPoint) -> dict[str, Any]:
    return {"count": point.count, "sum": point.sum, "min": point.min, "max": point.max}


def _histogram_fields(point: HistogramDataPoint) -> dict[str, Any]:
    # bucket_counts has one more entry than bucket_bounds: the last bucket is (last bound, +Inf].
    bounds, counts = list(point.explicit_bounds), list(point.bucket_counts)
    return {**_summary(point), "bucket_bounds": bounds, "bucket_counts": counts}


def _exponential_fields(point: ExponentialHistogramDataPoint) -> dict[str, Any]:
    # Only produced when a View asks for it; kept lossless rather than squeezed into "histogram".
    sides = {"positive": point.positive, "negative": point.negative}
    buckets = {side: {"offset": b.offset, "bucket_counts": list(b.bucket_counts)} for side, b in sides.items()}
    return {**_summary(point), "scale": point.scale, "zero_count": point.zero_count, **buckets}


# data type -> (kind of the metric, fields of one point). The one place a collected metric's kind is decided.
_ENCODINGS: dict[type, tuple[Callable[[Any], str], Callable[[Any], dict[str, Any]]]] = {
    Sum: (lambda data: "counter" if data.is_monotonic else "updowncounter", _number_fields),
    Gauge: (lambda data: "gauge", _number_fields),
    HistogramData: (lambda data: "histogram", _histogram_fields),
    ExponentialHistogram: (lambda data: "exponential_histogram", _exponential_fields),
}


def data_kind(data: Any) -> str | None:
    """The kind of a collected metric's data, or None for a data type this package does not know.

    Returns:
        ``counter`` (a monotonic sum), ``updowncounter``, ``gauge``, ``histogram`` or ``exponential_histogram``.

    Example:
        >>> from opentelemetry.sdk.metrics.export import AggregationTemporality, Sum
        >>> data_kind(Sum(data_points=[], aggregation_temporality=AggregationTemporality.DELTA, is_monotonic=False))
        'updowncounter'
    """
    encoding = _ENCODINGS.get(type(data))
    return None if encoding is None else encoding[0](data)


def _temporality(data: Any) -> str:
    # A gauge has no temporality; each point is the current value, which readers must not add
    # up, so it is labelled like a cumulative point.
    temporality = getattr(data, "aggregation_temporality", AggregationTemporality.CUMULATIVE)
    return "delta" if temporality == AggregationTemporality.DELTA else "cumulative"


def metric_records(metrics_data: MetricsData | None) -> Iterator[dict[str, Any]]:
    """One self-describing JSON-able dict per data point: the file exporter's line and the snapshot's record."""
    last: Resource | None = None
    resource: dict[str, Any] = {}
    for found in walk(metrics_data):
        if found.resource is not last:  # one dict per resource, shared by its records
            last, resource = found.resource, dict(found.resource.attributes)
        metric = found.metric
        kind_of, fields_of = _ENCODINGS[type(metric.data)]
        head = {
            "name": metric.name,
            "kind": kind_of(metric.data),
            "unit": metric.unit or "",
            "description": metric.description or "",
            "temporality": _temporality(metric.data),
        }
        for point in metric.data.data_points:
            yield {
                **head,
                "attributes": dict(point.attributes or {}),
                "start_time_unix_nano": point.start_time_unix_nano,
                "time_unix_nano": point.time_unix_nano,
                **fields_of(point),
                "resource": resource,
                "scope": found.scope.name,
            }
