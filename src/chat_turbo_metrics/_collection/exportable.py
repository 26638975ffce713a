"""Point values every exporter can encode: checked once per collection, before any exporter sees them.

Both recording paths normalise values at the call (:func:`chat_turbo_metrics._core.guard.number`),
but OpenTelemetry-API instruments (contrib instrumentations, libraries) record straight into the SDK, and a
sum of int64-sized increments can outgrow int64. One such point used to fail a whole scrape (``True`` or a
401-digit number in the text), a whole OTLP batch (int64 encoding) or every database export. Here a bool
becomes 1/0, an int outside int64 a float, another number type an int or float, and a point that still has
no finite value is dropped and counted, never the batch.

Attributes get the same treatment where the recording paths' tag check did not see them: on points of other
instrumentation scopes (OpenTelemetry-API instruments) and on the resource, a lone surrogate (which no UTF-8
encoder accepts) becomes U+FFFD and an int outside int64 its text, as the tag check does it.

Example:
    >>> unexportable = Unexportable()
    >>> exportable(None, unexportable) is None
    True
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
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

from chat_turbo_metrics._collection.walk import rewrite
from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.guard import INT64_LIMIT, number, short_repr, valid_text
from chat_turbo_metrics._recording.streams import SCOPE

_MAX_TEXT_INT_BITS = 6000  # an int whose text is at most about 1,800 digits

_logger = logging.getLogger("chat_turbo_metrics.exposition")
_MAX_LOGGED = 1000


class Unexportable:
    """Points dropped at collection because no exporter could encode them, per metric name; logged once each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        forks.register(self, forks.Phase.PIPELINE)

    def after_fork_in_child(self) -> None:
        forks.reinit(self._lock)
        # The parent reports what it dropped; the child counts its own (metrics already logged stay logged).
        self.counts = Counter(dict.fromkeys(self.counts, 0))

    @property
    def total(self) -> int:
        """Points dropped so far."""
        return sum(self.counts.values())

    def report(self, metric: str, value: object) -> None:
        with self._lock:
            first = metric not in self.counts
            if first and len(self.counts) >= _MAX_LOGGED:
                metric, first = "(other)", False
            self.counts[metric] += 1
        if first:
            _logger.warning(
                "%s: a point with value %s cannot be exported (not a finite number); dropped from every export "
                "(further ones are counted, not logged)",
                metric,
                short_repr(value),
            )


def _plain(value: Any) -> bool:
    kind = type(value)
    return (kind is int and -INT64_LIMIT <= value < INT64_LIMIT) or (kind is float and value - value == 0)


def _number_point(point: NumberDataPoint, metric: str, unexportable: Unexportable) -> NumberDataPoint | None:
    value, _ = number(point.value, non_negative=False)
    if value is None:
        unexportable.report(metric, point.value)
        return None
    return dataclasses.replace(point, value=value)


def _histogram_point(point: HistogramDataPoint, metric: str, unexportable: Unexportable) -> HistogramDataPoint | None:
    fields: dict[str, Any] = {}
    for name in ("sum", "min", "max"):
        value, _ = number(getattr(point, name), non_negative=False)
        if value is None:
            unexportable.report(metric, getattr(point, name))
            return None
        fields[name] = float(value)
    return dataclasses.replace(point, **fields)


def _clean_metric(metric: Metric, unexportable: Unexportable, own: bool) -> Metric | None:
    """``metric`` itself when every point is plain; a copy without the bad points; None if none is left.

    ``own``: recorded through the monitor, whose tag check already made the attributes plain.
    """
    cleaned = _clean_points(metric, unexportable)
    if not own:
        cleaned = _clean_attributes(cleaned)
    return cleaned if cleaned is metric or cleaned.data.data_points else None


def _plain_attribute(value: object) -> bool:
    kind = type(value)
    if kind is str:
        return valid_text(value) is value  # type: ignore[arg-type]
    if kind is int:
        return -INT64_LIMIT <= value < INT64_LIMIT  # type: ignore[operator]
    if kind in (tuple, list):
        return all(_plain_attribute(item) for item in value)  # type: ignore[attr-defined]
    return True  # bool, float; anything else the SDK itself refuses


def plain_attributes(attributes: Mapping[str, Any] | None) -> bool:
    """True when every exporter encodes ``attributes`` as they are."""
    return not attributes or all(valid_text(k) is k and _plain_attribute(v) for k, v in attributes.items())


def _exportable_attribute(value: Any) -> Any:
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, (tuple, list)):
        return tuple(_exportable_attribute(item) for item in value)
    if type(value) is int and not -INT64_LIMIT <= value < INT64_LIMIT:
        return str(value) if value.bit_length() <= _MAX_TEXT_INT_BITS else f"<an int of {value.bit_length()} bits>"
    return value


def exportable_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """``attributes`` as every exporter encodes them: valid text (U+FFFD for lone surrogates), int64 ints."""
    cleaned: dict[str, Any] = {}
    for key, value in attributes.items():
        cleaned.setdefault(valid_text(key), _exportable_attribute(value))
    return cleaned


def _clean_attributes(metric: Metric) -> Metric:
    data: Any = metric.data
    points = data.data_points
    if all(plain_attributes(point.attributes) for point in points):
        return metric
    cleaned = [
        point
        if plain_attributes(point.attributes)
        else dataclasses.replace(point, attributes=exportable_attributes(point.attributes or {}))
        for point in points
    ]
    return dataclasses.replace(metric, data=dataclasses.replace(data, data_points=cleaned))


def _clean_resource(resource: Resource) -> Resource:
    if plain_attributes(resource.attributes):
        return resource
    return Resource(exportable_attributes(resource.attributes), resource.schema_url)


def _clean_points(metric: Metric, unexportable: Unexportable) -> Metric:
    data = metric.data
    if isinstance(data, (Sum, Gauge)):
        if all(_plain(point.value) for point in data.data_points):
            return metric
        numbers = (_number_point(point, metric.name, unexportable) for point in data.data_points)
        return dataclasses.replace(
            metric, data=dataclasses.replace(data, data_points=[p for p in numbers if p is not None])
        )
    if isinstance(data, Histogram):
        points = data.data_points
        if all(_plain(p.sum) and _plain(p.min) and _plain(p.max) for p in points):
            return metric
        histograms = (_histogram_point(point, metric.name, unexportable) for point in points)
        return dataclasses.replace(
            metric, data=dataclasses.replace(data, data_points=[p for p in histograms if p is not None])
        )
    return metric


def exportable(data: MetricsData | None, unexportable: Unexportable) -> MetricsData | None:
    """``data`` with every point encodable by every exporter; the same object when nothing needed a change."""

    def clean(resource: Resource, scope: InstrumentationScope, metrics: Sequence[Metric]) -> Sequence[Metric]:
        own = scope.name == SCOPE.name
        cleaned = [_clean_metric(metric, unexportable, own) for metric in metrics]
        if all(new is old for new, old in zip(cleaned, metrics, strict=True)):
            return metrics
        return [metric for metric in cleaned if metric is not None]

    return rewrite(data, clean, _clean_resource)
