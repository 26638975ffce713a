"""Cumulative-to-delta conversion for push exporters that prefer delta temporality.

The pipeline has one cumulative reader; an exporter that declares DELTA for an instrument kind gets its own
:class:`DeltaConverter`, which subtracts the last cumulative point that exporter exported *successfully*.
A failed export leaves the baseline where it was, so the next delta covers the failed interval too and
nothing is lost.

A collected :class:`Metric` does not say which instrument made it, so the exporter's preference is read by
data type: a monotonic ``Sum`` follows ``Counter``/``ObservableCounter``, a non-monotonic ``Sum`` follows
``UpDownCounter``/``ObservableUpDownCounter``, a ``Histogram`` follows ``Histogram``. When the two
instrument kinds of one data type disagree, DELTA wins; an ``ExponentialHistogram`` follows ``Histogram`` too (the
earlier point's buckets are brought down to the later point's scale, which a cumulative point only ever lowers,
then subtracted). Gauges always pass through unchanged.

An exporter's first delta for a series is its whole cumulative value since the series started, so an
exporter added later, or a new series, loses nothing recorded before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Buckets,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics._collection.walk import rewrite
from chat_turbo_metrics._core.compat import SdkGauge, exporter_temporality
from chat_turbo_metrics._recording.streams import attributes_key

# Every SDK instrument class, for readers and exporters that set a preference for all of them.
INSTRUMENT_CLASSES = (
    Counter,
    UpDownCounter,
    Histogram,
    SdkGauge,
    ObservableCounter,
    ObservableUpDownCounter,
    ObservableGauge,
)
_DELTA = AggregationTemporality.DELTA
_CUMULATIVE = AggregationTemporality.CUMULATIVE

# Scopes whose series leave a collection only when evicted for good (the pipeline's own meter and fast path,
# METRICS_SERIES_IDLE_TIMEOUT): their baselines follow each export, so evicted series do not stay in memory.
_EVICTING_SCOPES = frozenset({"chat_turbo_metrics"})
_Point = NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint
_SeriesKey = tuple[str, tuple[tuple[str, type, object], ...]]
# Keyed by (resource, scope) first: Resource hashes by serialising its attributes, so hash it once per scope.
_Baseline = dict[tuple[Resource, InstrumentationScope], dict[_SeriesKey, _Point]]


class DeltaConverter:
    """Turns one exporter's cumulative snapshots into deltas against what it last exported.

    Not thread-safe: each exporter's worker thread owns its converter.

    Example:
        >>> from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        >>> exporter = ConsoleMetricExporter(preferred_temporality={Counter: AggregationTemporality.DELTA})
        >>> converter = DeltaConverter.for_exporter(exporter)
        >>> monitor.increment_counter("jobs", value=5)
        >>> delta, pending = converter.convert(monitor.snapshot().data)
        >>> converter.commit(pending)  # once the exporter took ``delta``
        >>> monitor.increment_counter("jobs", value=2)
        >>> delta, pending = converter.convert(monitor.snapshot().data)
        >>> [point.value for point in delta.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points]
        [2]
    """

    def __init__(self, *, monotonic_sums: bool, non_monotonic_sums: bool, histograms: bool) -> None:
        self._monotonic_sums = monotonic_sums
        self._non_monotonic_sums = non_monotonic_sums
        self._histograms = histograms
        self._baseline: _Baseline = {}

    @classmethod
    def for_exporter(cls, exporter: MetricExporter) -> DeltaConverter | None:
        """Build the converter an exporter's temporality preference calls for.

        Returns:
            None when the exporter wants cumulative data for every kind, so it gets the snapshot untouched.
        """
        preferred = exporter_temporality(exporter)

        def wants_delta(*kinds: type) -> bool:
            return any(preferred.get(kind) == _DELTA for kind in kinds)

        converter = cls(
            monotonic_sums=wants_delta(Counter, ObservableCounter),
            non_monotonic_sums=wants_delta(UpDownCounter, ObservableUpDownCounter),
            histograms=wants_delta(Histogram),
        )
        wanted = converter._monotonic_sums or converter._non_monotonic_sums or converter._histograms
        return converter if wanted else None

    def convert(self, data: MetricsData) -> tuple[MetricsData, _Baseline]:
        """Return the delta view of a cumulative snapshot and the baseline to commit if it is exported.

        Min and max of a delta histogram point are the cumulative point's min and max: they cannot be
        subtracted, and the bounds since start still contain every value of the interval.
        """
        pending: _Baseline = {}

        def convert(resource: Resource, scope: InstrumentationScope, metrics: Sequence[Metric]) -> Sequence[Metric]:
            key = (resource, scope)
            previous = self._baseline.get(key, {})
            current: dict[_SeriesKey, _Point] = {}
            converted = [self._convert_metric(metric, previous, current) for metric in metrics]
            if current:
                pending[key] = current
            return converted if any(new is not old for new, old in zip(converted, metrics, strict=True)) else metrics

        return rewrite(data, convert) or data, pending

    def commit(self, pending: _Baseline) -> None:
        """Advance the baseline to the snapshot just exported successfully."""
        # Merge rather than replace: a series missing from one snapshot (an observable callback that skipped a
        # cycle) keeps its baseline, so its return is not counted again from zero. In our own scope a missing
        # series was evicted, and comes back (if ever) with a new start time: its baseline goes.
        for key, points in pending.items():
            if key[1].name in _EVICTING_SCOPES:
                self._baseline[key] = points
            else:
                self._baseline.setdefault(key, {}).update(points)

    def _convert_metric(
        self, metric: Metric, previous: Mapping[_SeriesKey, _Point], current: dict[_SeriesKey, _Point]
    ) -> Metric:
        data = metric.data
        if isinstance(data, Sum) and data.aggregation_temporality == _CUMULATIVE:
            wanted = self._monotonic_sums if data.is_monotonic else self._non_monotonic_sums
            if not wanted:
                return metric
            numbers: list[NumberDataPoint] = []
            for point in data.data_points:
                key = (metric.name, attributes_key(point.attributes))
                current[key] = point
                before = previous.get(key)
                before = before if isinstance(before, NumberDataPoint) else None
                numbers.append(_number_delta(point, before, monotonic=data.is_monotonic))
            return replace(metric, data=replace(data, data_points=numbers, aggregation_temporality=_DELTA))
        histogram = _HISTOGRAMS.get(type(data)) if self._histograms else None
        if histogram is not None and isinstance(data, (HistogramData, ExponentialHistogram)):
            if data.aggregation_temporality != _CUMULATIVE:
                return metric
            point_type, delta = histogram
            histograms: list[Any] = []
            for hpoint in data.data_points:
                key = (metric.name, attributes_key(hpoint.attributes))
                current[key] = hpoint
                hbefore = previous.get(key)
                histograms.append(delta(hpoint, hbefore if isinstance(hbefore, point_type) else None))
            cumulative: Any = data  # either histogram type: the same two fields are replaced
            return replace(metric, data=replace(cumulative, data_points=histograms, aggregation_temporality=_DELTA))
        return metric


def _number_delta(point: NumberDataPoint, before: NumberDataPoint | None, *, monotonic: bool) -> NumberDataPoint:
    # A new start time or a monotonic value that went down means the cumulative series restarted: all of its
    # current value belongs to this interval. A non-monotonic sum may go down legitimately.
    if (
        before is None
        or before.start_time_unix_nano != point.start_time_unix_nano
        or (monotonic and point.value < before.value)
    ):
        return point
    return replace(point, start_time_unix_nano=before.time_unix_nano, value=point.value - before.value)


def _histogram_delta(point: HistogramDataPoint, before: HistogramDataPoint | None) -> HistogramDataPoint:
    if (
        before is None
        or before.start_time_unix_nano != point.start_time_unix_nano
        or tuple(before.explicit_bounds) != tuple(point.explicit_bounds)
        or len(before.bucket_counts) != len(point.bucket_counts)
    ):
        return point
    buckets = [now - then for now, then in zip(point.bucket_counts, before.bucket_counts, strict=True)]
    if point.count < before.count or any(count < 0 for count in buckets):
        return point
    return _since(point, before, bucket_counts=buckets)


def _exponential_delta(
    point: ExponentialHistogramDataPoint, before: ExponentialHistogramDataPoint | None
) -> ExponentialHistogramDataPoint:
    # A cumulative exponential histogram only lowers its scale: the earlier buckets, brought to the current scale
    # (index >> difference), are each inside one current bucket. Anything else means the series restarted.
    if (
        before is None
        or before.start_time_unix_nano != point.start_time_unix_nano
        or before.scale < point.scale
        or point.count < before.count
        or point.zero_count < before.zero_count
    ):
        return point
    shift = before.scale - point.scale
    positive = _buckets_delta(point.positive, before.positive, shift)
    negative = _buckets_delta(point.negative, before.negative, shift)
    if positive is None or negative is None:
        return point
    return _since(point, before, zero_count=point.zero_count - before.zero_count, positive=positive, negative=negative)


_H = TypeVar("_H", HistogramDataPoint, ExponentialHistogramDataPoint)


def _since(point: _H, before: _H, **buckets: Any) -> _H:
    """A histogram point of either kind as the interval since ``before``: its count, sum and ``buckets``."""
    return replace(
        point,
        start_time_unix_nano=before.time_unix_nano,
        count=point.count - before.count,
        sum=point.sum - before.sum,
        **buckets,
    )


def _buckets_delta(now: Buckets, then: Buckets, shift: int) -> Buckets | None:
    counts = list(now.bucket_counts)
    for position, count in enumerate(then.bucket_counts):
        if count:
            index = ((then.offset + position) >> shift) - now.offset
            if not 0 <= index < len(counts):
                return None
            counts[index] -= count
    return None if any(count < 0 for count in counts) else Buckets(offset=now.offset, bucket_counts=counts)


# Histogram data type -> (its point type, the delta of a cumulative point against the one last exported).
_HISTOGRAMS: dict[type, tuple[type, Callable[[Any, Any], Any]]] = {
    HistogramData: (HistogramDataPoint, _histogram_delta),
    ExponentialHistogram: (ExponentialHistogramDataPoint, _exponential_delta),
}
