"""Datadog mapping of every instrument kind, through a real monitor and pipeline, checked by a strict intake."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from datadog_intake import DD_KEY, DatadogIntake, points, running_intake, total
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.exporters import DataDogExporter
from chat_turbo_metrics.exporters.datadog._mapping import bound_text, datadog_tag, metric_name, user_tag

MonitorFactory = Callable[..., PerformanceMonitor]


@pytest.fixture
def intake() -> Iterator[DatadogIntake]:
    with running_intake() as server:
        yield server


def _monitor(
    factory: MonitorFactory, intake: DatadogIntake, recording: str = "fast", **options: Any
) -> PerformanceMonitor:
    monitor = factory(recording=recording, service_name="chat-api")
    monitor.add_exporter(DataDogExporter(DD_KEY, endpoint=intake.url, **options))
    return monitor


def test_counter_is_a_count_with_interval_service_env_and_tags(
    intake: DatadogIntake, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = _monitor(monitor_factory, intake, recording)
    monitor.increment_counter("messages_sent", {"channel": "Public", "status": 200, "cached": False}, value=3)
    assert monitor.force_flush()
    [series] = points(intake.accepted_series(), "messages_sent")
    assert series["type"] == 1
    assert series["points"][0]["value"] == 3
    assert series["interval"] >= 1
    assert abs(series["points"][0]["timestamp"] - time.time()) < 60
    assert set(series["tags"]) == {"service:chat-api", "env:test", "channel:public", "status:200", "cached:false"}
    assert "resources" not in series  # no host.name in the resource and none configured


def test_gauge_and_up_down_counter_are_gauges_of_the_current_value(
    intake: DatadogIntake, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = _monitor(monitor_factory, intake, recording)
    monitor.record_gauge("memory_usage_mb", 10.0)
    monitor.record_gauge("memory_usage_mb", 12.5)
    assert monitor.pipeline is not None
    queue = monitor.pipeline.meter.create_up_down_counter("queue_depth")
    queue.add(5)
    queue.add(-2)
    assert monitor.force_flush()
    queue.add(1)
    assert monitor.force_flush()
    series = intake.accepted_series()
    memory = points(series, "memory_usage_mb")
    assert [one["type"] for one in memory] == [3, 3]
    assert memory[0]["points"][0]["value"] == 12.5
    assert "unit" not in memory[0]  # MBy is decimal; Datadog's unit list has only mebibyte
    depth = points(series, "queue_depth")
    assert [one["type"] for one in depth] == [3, 3]
    assert [one["points"][0]["value"] for one in depth] == [3, 4]  # the level, not the change
    assert all("interval" not in one for one in depth + memory)


def test_histogram_is_count_sum_min_max_with_unit(
    intake: DatadogIntake, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = _monitor(monitor_factory, intake, recording)
    for value in (0.003, 0.02, 0.3, 7.0):
        monitor.record_histogram("http_request_duration_seconds", value, {"route": "/api/messages/{id}"})
    assert monitor.force_flush()
    series = intake.accepted_series()
    name = "http_request_duration_seconds"
    by_suffix = {one["metric"].removeprefix(name): one for one in series if one["metric"].startswith(name)}
    assert set(by_suffix) == {".count", ".sum", ".min", ".max"}
    assert (by_suffix[".count"]["type"], by_suffix[".count"]["points"][0]["value"]) == (1, 4)
    assert by_suffix[".sum"]["type"] == 1
    assert by_suffix[".sum"]["points"][0]["value"] == pytest.approx(7.323)
    assert (by_suffix[".min"]["type"], by_suffix[".min"]["points"][0]["value"]) == (3, 0.003)
    assert (by_suffix[".max"]["type"], by_suffix[".max"]["points"][0]["value"]) == (3, 7.0)
    assert "unit" not in by_suffix[".count"]
    assert {by_suffix[s]["unit"] for s in (".sum", ".min", ".max")} == {"second"}
    assert "route:/api/messages/_id" in by_suffix[".count"]["tags"]


def test_histogram_buckets_when_enabled_are_counts_tagged_with_bounds(
    intake: DatadogIntake, monitor_factory: MonitorFactory
) -> None:
    monitor = _monitor(monitor_factory, intake, histogram_buckets=True)
    monitor.define("payload_size", "histogram", unit="By", buckets=(10.0, 100.0, 1000.0))
    for value in (5, 50, 50, 500, 5000):
        monitor.record_histogram("payload_size", value)
    assert monitor.force_flush()
    buckets = points(intake.accepted_series(), "payload_size.bucket")
    counts = {
        (
            next(t for t in one["tags"] if t.startswith("lower_bound:")),
            next(t for t in one["tags"] if t.startswith("upper_bound:")),
        ): one["points"][0]["value"]
        for one in buckets
    }
    assert counts == {
        ("lower_bound:-inf", "upper_bound:10.0"): 1,
        ("lower_bound:10.0", "upper_bound:100.0"): 2,
        ("lower_bound:100.0", "upper_bound:1000.0"): 1,
        ("lower_bound:1000.0", "upper_bound:inf"): 1,
    }
    assert all(one["type"] == 1 and "unit" not in one for one in buckets)
    assert points(intake.accepted_series(), "payload_size.sum")[0]["unit"] == "byte"


def test_histogram_buckets_are_off_by_default(intake: DatadogIntake, monitor_factory: MonitorFactory) -> None:
    monitor = _monitor(monitor_factory, intake)
    monitor.record_histogram("message_size", 10)
    assert monitor.force_flush()
    assert points(intake.accepted_series(), "message_size.bucket") == []
    assert total(intake.accepted_series(), "message_size.count") == 1


def test_histogram_min_max_are_sent_only_when_exact_for_the_interval(
    intake: DatadogIntake, monitor_factory: MonitorFactory
) -> None:
    monitor = _monitor(monitor_factory, intake)
    monitor.record_histogram("latency_ms", 50)
    assert monitor.force_flush()  # first interval: min = max = 50
    monitor.record_histogram("latency_ms", 20)
    assert monitor.force_flush()  # a new minimum: 20 is this interval's own; its max (20) is unknown
    monitor.record_histogram("latency_ms", 30)
    assert monitor.force_flush()  # neither extreme moved: the interval's are unknown, none sent
    monitor.record_histogram("latency_ms", 90)
    assert monitor.force_flush()  # a new maximum
    series = intake.accepted_series()
    assert [one["points"][0]["value"] for one in points(series, "latency_ms.min")] == [50, 20]
    assert [one["points"][0]["value"] for one in points(series, "latency_ms.max")] == [50, 90]
    assert [one["points"][0]["value"] for one in points(series, "latency_ms.count")] == [1, 1, 1, 1]


def test_observable_counter_and_gauge(intake: DatadogIntake, monitor_factory: MonitorFactory) -> None:
    monitor = _monitor(monitor_factory, intake)
    assert monitor.pipeline is not None
    reads = iter([10, 25, 25])

    def cpu_seconds(options: CallbackOptions) -> list[Observation]:
        return [Observation(next(reads), {"cpu": 0})]

    def threads(options: CallbackOptions) -> list[Observation]:
        return [Observation(7)]

    monitor.pipeline.meter.create_observable_counter("process.cpu.time", [cpu_seconds], unit="s")
    monitor.pipeline.meter.create_observable_gauge("process.thread.count", [threads])
    for _ in range(3):
        assert monitor.force_flush()
    series = intake.accepted_series()
    cpu = points(series, "process.cpu.time", "cpu:0")
    assert [(one["type"], one["points"][0]["value"]) for one in cpu] == [(1, 10), (1, 15), (1, 0)]
    assert {one["points"][0]["value"] for one in points(series, "process.thread.count")} == {7}


def test_dd_settings_override_the_resource_and_host_becomes_a_resource(
    intake: DatadogIntake, monitor_factory: MonitorFactory
) -> None:
    monitor = _monitor(
        monitor_factory,
        intake,
        service="checkout",
        env="Prod",
        version="1.2.3",
        tags=("team:Chat", "canary"),
        host="web-1.example.com",
    )
    monitor.increment_counter("jobs")
    assert monitor.force_flush()
    [series] = points(intake.accepted_series(), "jobs")
    assert set(series["tags"]) == {"service:checkout", "env:prod", "version:1.2.3", "team:chat", "canary"}
    assert series["resources"] == [{"type": "host", "name": "web-1.example.com"}]


def test_resource_host_name_and_service_version_are_used(
    intake: DatadogIntake, monitor_factory: MonitorFactory
) -> None:
    monitor = monitor_factory(resource_attributes={"host.name": "db-7", "service.version": "9.0"})
    monitor.add_exporter(DataDogExporter(DD_KEY, endpoint=intake.url))
    monitor.increment_counter("jobs")
    assert monitor.force_flush()
    [series] = points(intake.accepted_series(), "jobs")
    assert series["resources"] == [{"type": "host", "name": "db-7"}]
    assert "version:9.0" in series["tags"]


def _gauge_data(*values: float) -> MetricsData:
    now = time.time_ns()
    data_points = [NumberDataPoint({"i": i}, now - 10**9, now, value) for i, value in enumerate(values)]
    metric = Metric("temperature", None, "Cel", Gauge(data_points))
    return MetricsData(
        [
            ResourceMetrics(
                Resource.create({"service.name": "svc"}),
                [ScopeMetrics(InstrumentationScope("t"), [metric], None)],
                None,
            )
        ]
    )


def test_nan_and_infinities_are_never_sent(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url)
    result = exporter.export(_gauge_data(1.5, math.nan, math.inf, -math.inf, 2.5))
    assert result is MetricExportResult.SUCCESS
    values = sorted(one["points"][0]["value"] for one in points(intake.accepted_series(), "temperature"))
    assert values == [1.5, 2.5]
    assert exporter.non_finite_dropped == 3


def test_huge_integers_are_sent_as_numbers_or_dropped_not_crashing(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url)
    assert exporter.export(_gauge_data(10**30, 10**400)) is MetricExportResult.SUCCESS  # type: ignore[arg-type]
    values = [one["points"][0]["value"] for one in points(intake.accepted_series(), "temperature")]
    assert values == [1e30]
    assert exporter.non_finite_dropped == 1


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("Channel", "Public", "channel:public"),
        ("http.route", "/api/messages/{id}", "http.route:/api/messages/_id"),
        ("user agent", "Mozilla 5.0 (X11)", "user_agent:mozilla_5.0_x11"),
        ("2xx", "ok", "attr_2xx:ok"),
        ("_private", "x", "attr__private:x"),
        ("city", "Zürich 日本", "city:zürich_日本"),
        ("flag", True, "flag:true"),
        ("k8s:pod", "web:1", "k8s_pod:web:1"),
        ("empty", "", "empty:n/a"),
        ("ratio", 0.5, "ratio:0.5"),
        ("codes", (200, 404), "codes:200_404"),
        ("quote", 'say "hi" \\ back\nline', "quote:say_hi_back_line"),
    ],
)
def test_tags_follow_datadog_tag_rules(key: str, value: object, expected: str) -> None:
    assert datadog_tag(key, value) == expected


def test_tags_are_cut_at_200_characters() -> None:
    tag = datadog_tag("note", "x" * 500)
    assert len(tag) == 200
    assert tag.startswith("note:xxx")


def test_user_tags_and_metric_names() -> None:
    assert user_tag("Team:Chat") == "team:chat"
    assert user_tag("Canary") == "canary"
    assert user_tag("1st") == "tag_1st"
    assert metric_name("http.server.request-duration/x") == "http.server.request_duration_x"
    assert metric_name("a" * 300, ".count") == "a" * 194 + ".count"
    assert [bound_text(b) for b in (-math.inf, 0.0, 0.005, 10.0, math.inf)] == ["-inf", "0", "0.005", "10.0", "inf"]


def test_same_value_different_types_are_different_tags(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url)
    now = time.time_ns()
    data_points = [NumberDataPoint({"v": value}, now - 10**9, now, 1.0) for value in (True, 1, "1")]
    metric = Metric("flags", None, "", Gauge(data_points))
    data = MetricsData(
        [ResourceMetrics(Resource.create({}), [ScopeMetrics(InstrumentationScope("t"), [metric], None)], None)]
    )
    assert exporter.export(data) is MetricExportResult.SUCCESS
    tags = sorted(t for one in points(intake.accepted_series(), "flags") for t in one["tags"] if t.startswith("v:"))
    assert tags == ["v:1", "v:1", "v:true"]


def test_temporality_is_delta_for_counters_and_histograms_only() -> None:
    from opentelemetry.sdk.metrics import Counter, Histogram, ObservableCounter, ObservableGauge, UpDownCounter

    exporter = DataDogExporter(DD_KEY)
    preferred = exporter._preferred_temporality
    assert {kind for kind, temporality in preferred.items() if temporality is AggregationTemporality.DELTA} == {
        Counter,
        ObservableCounter,
        Histogram,
    }
    assert preferred[UpDownCounter] is AggregationTemporality.CUMULATIVE
    assert preferred[ObservableGauge] is AggregationTemporality.CUMULATIVE


def test_odd_host_names_and_unicode_tags_stay_valid_json(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, host='web "1" \\ ü\n', tags=("ville:Zürich",))
    assert exporter.export(_gauge_data(1.0)) is MetricExportResult.SUCCESS
    [series] = points(intake.accepted_series(), "temperature")
    assert series["resources"] == [{"type": "host", "name": 'web "1" \\ ü\n'}]
    assert "ville:zürich" in series["tags"]


def test_export_never_raises_into_the_pipeline(intake: DatadogIntake, caplog: pytest.LogCaptureFixture) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url)
    broken = Metric("broken", None, "", Gauge(None))  # type: ignore[arg-type]
    data = MetricsData(
        [ResourceMetrics(Resource.create({}), [ScopeMetrics(InstrumentationScope("t"), [broken], None)], None)]
    )
    with caplog.at_level(logging.ERROR, logger="chat_turbo_metrics"):
        assert exporter.export(data) is MetricExportResult.FAILURE
    assert [record.exc_info is not None for record in caplog.records] == [True]
    assert intake.requests == []


def test_histogram_extremes_remembered_are_bounded_least_recently_active_out(monitor_factory: MonitorFactory) -> None:
    from chat_turbo_metrics._pipeline.temporality import DeltaConverter
    from chat_turbo_metrics.exporters.datadog._mapping import MappingOptions, SeriesMapper

    mapper = SeriesMapper(MappingOptions(), max_extremes=2)
    to_delta = DeltaConverter(monotonic_sums=True, non_monotonic_sums=True, histograms=True)
    monitor = monitor_factory()

    def export() -> None:
        delta, baseline = to_delta.convert(monitor.snapshot().data)
        to_delta.commit(baseline)
        mapper.commit(mapper.map(delta)[1])

    for route in ("a", "b", "c"):
        monitor.record_histogram("latency_ms", 10, {"route": route})
        export()
    monitor.record_histogram("latency_ms", 5, {"route": "b"})
    export()
    assert [tags[-1] for _, tags in mapper._extremes] == ["route:c", "route:b"]  # route:a was least recently active
