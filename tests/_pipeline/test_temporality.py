"""Cumulative-to-delta conversion per exporter: baselines, resets and what passes through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics._pipeline.temporality import DeltaConverter

DELTA = AggregationTemporality.DELTA
CUMULATIVE = AggregationTemporality.CUMULATIVE
START = 1_000


class PreferenceExporter(MetricExporter):
    """Only declares a temporality preference; the converter never calls it."""

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def converter_for(preference: dict[type, AggregationTemporality] | None) -> DeltaConverter:
    converter = DeltaConverter.for_exporter(PreferenceExporter(preferred_temporality=preference))
    assert converter is not None
    return converter


def all_delta() -> DeltaConverter:
    return converter_for({Counter: DELTA, UpDownCounter: DELTA, Histogram: DELTA})


def snapshot(data: Any, name: str = "m") -> MetricsData:
    metric = Metric(name=name, description=None, unit=None, data=data)
    scope = ScopeMetrics(scope=InstrumentationScope("t"), metrics=[metric], schema_url="")
    return MetricsData(resource_metrics=[ResourceMetrics(Resource.create({}), [scope], "")])


def number(value: float, time: int, start: int = START) -> NumberDataPoint:
    return NumberDataPoint(attributes={"k": "v"}, start_time_unix_nano=start, time_unix_nano=time, value=value)


def counter(value: float, time: int, start: int = START, *, monotonic: bool = True) -> MetricsData:
    return snapshot(Sum([number(value, time, start)], CUMULATIVE, is_monotonic=monotonic))


def histogram(buckets: Sequence[int], total: float, time: int, lo: float, hi: float) -> MetricsData:
    point = HistogramDataPoint(
        attributes={},
        start_time_unix_nano=START,
        time_unix_nano=time,
        count=sum(buckets),
        sum=total,
        bucket_counts=list(buckets),
        explicit_bounds=[1.0, 10.0],
        min=lo,
        max=hi,
    )
    return snapshot(HistogramData([point], CUMULATIVE))


def exported(converter: DeltaConverter, data: MetricsData) -> Any:
    """Convert and commit, as after a successful export; return the single data object."""
    delta, pending = converter.convert(data)
    converter.commit(pending)
    return delta.resource_metrics[0].scope_metrics[0].metrics[0].data


def test_exporter_wanting_only_cumulative_gets_no_converter() -> None:
    for preference in (None, {Counter: CUMULATIVE, Histogram: CUMULATIVE}):
        exporter = PreferenceExporter(preferred_temporality=preference)
        assert DeltaConverter.for_exporter(exporter) is None


def test_counter_delta_starts_at_previous_point_time() -> None:
    converter = all_delta()
    exported(converter, counter(5, time=2_000))
    data = exported(converter, counter(8, time=3_000))
    assert data.aggregation_temporality is DELTA
    assert data.data_points[0] == number(3, time=3_000, start=2_000)


def test_uncommitted_conversion_leaves_the_baseline() -> None:
    converter = all_delta()
    exported(converter, counter(5, time=2_000))
    converter.convert(counter(8, time=3_000))  # export failed: no commit
    assert exported(converter, counter(10, time=4_000)).data_points[0].value == 5


def test_counter_that_went_down_is_a_reset_reported_whole() -> None:
    converter = all_delta()
    exported(converter, counter(50, time=2_000))
    assert exported(converter, counter(7, time=3_000)).data_points[0] == number(7, time=3_000)


def test_new_start_time_is_a_reset_reported_whole() -> None:
    converter = all_delta()
    exported(converter, counter(50, time=2_000))
    point = exported(converter, counter(60, time=3_000, start=2_500)).data_points[0]
    assert point == number(60, time=3_000, start=2_500)


def test_up_down_counter_delta_may_be_negative() -> None:
    converter = all_delta()
    exported(converter, counter(5, time=2_000, monotonic=False))
    data = exported(converter, counter(2, time=3_000, monotonic=False))
    assert data.data_points[0].value == -3
    assert data.is_monotonic is False


def test_up_down_counter_stays_cumulative_unless_asked() -> None:
    converter = converter_for({Counter: DELTA})
    exported(converter, counter(5, time=2_000, monotonic=False))
    data = exported(converter, counter(7, time=3_000, monotonic=False))
    assert data.aggregation_temporality is CUMULATIVE
    assert data.data_points[0].value == 7


def test_monotonic_sum_follows_observable_counter_preference() -> None:
    converter = converter_for({ObservableCounter: DELTA})
    exported(converter, counter(5, time=2_000))
    assert exported(converter, counter(8, time=3_000)).data_points[0].value == 3


def test_histogram_delta_keeps_cumulative_min_and_max() -> None:
    converter = all_delta()
    exported(converter, histogram([1, 1, 0], 5.5, time=2_000, lo=0.5, hi=5.0))
    point = exported(converter, histogram([1, 3, 1], 30.0, time=3_000, lo=0.5, hi=20.0)).data_points[0]
    assert (list(point.bucket_counts), point.count, point.sum) == ([0, 2, 1], 3, 24.5)
    assert (point.min, point.max, point.start_time_unix_nano) == (0.5, 20.0, 2_000)


def test_histogram_with_a_shrinking_bucket_is_a_reset_reported_whole() -> None:
    converter = all_delta()
    exported(converter, histogram([4, 0, 0], 2.0, time=2_000, lo=0.5, hi=0.5))
    point = exported(converter, histogram([1, 3, 1], 30.0, time=3_000, lo=0.5, hi=20.0)).data_points[0]
    assert (list(point.bucket_counts), point.start_time_unix_nano) == ([1, 3, 1], START)


def test_gauge_passes_through_unchanged() -> None:
    converter = converter_for({Counter: DELTA, ObservableGauge: DELTA})
    gauge = Gauge([number(3, time=2_000)])
    assert exported(converter, snapshot(gauge)) is gauge


def test_series_are_kept_apart_by_metric_name() -> None:
    converter = all_delta()
    exported(converter, counter(5, time=2_000))
    other = snapshot(Sum([number(100, time=3_000)], CUMULATIVE, is_monotonic=True), name="other")
    assert exported(converter, other).data_points[0].value == 100


def test_series_whose_values_are_equal_but_of_other_types_are_kept_apart() -> None:
    # The SDK keeps {"k": 1} and {"k": True} as two series (they are equal dicts); so must the baseline.
    def both(one: float, true: float, time: int) -> MetricsData:
        points = [
            NumberDataPoint(attributes={"k": 1}, start_time_unix_nano=START, time_unix_nano=time, value=one),
            NumberDataPoint(attributes={"k": True}, start_time_unix_nano=START, time_unix_nano=time, value=true),
        ]
        return snapshot(Sum(points, CUMULATIVE, is_monotonic=True))

    converter = all_delta()
    exported(converter, both(5, 100, time=2_000))
    data = exported(converter, both(7, 130, time=3_000))
    assert [(point.attributes, point.value) for point in data.data_points] == [({"k": 1}, 2), ({"k": True}, 30)]
