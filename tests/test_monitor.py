"""The seed's documented API, on both recording paths."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from chat_turbo_metrics import PerformanceMonitor, ViewConfig


def prom(monitor: PerformanceMonitor) -> str:
    return monitor.snapshot().to_prometheus()


def test_counter_appears_with_total_suffix(monitor: PerformanceMonitor) -> None:
    monitor.increment_counter("messages_sent", {"channel": "public"})
    monitor.increment_counter("messages_sent", {"channel": "public"}, value=2)
    assert 'messages_sent_total{channel="public"} 3' in prom(monitor)


def test_counter_named_with_total_is_not_doubled(monitor: PerformanceMonitor) -> None:
    monitor.increment_counter("api_requests_total", {"method": "GET"})
    monitor.increment_counter("errors_total")
    text = prom(monitor)
    assert 'api_requests_total{method="GET"} 1' in text
    assert "errors_total 1" in text
    assert "_total_total" not in text


def test_gauge_keeps_last_value(monitor: PerformanceMonitor) -> None:
    monitor.record_gauge("active_connections", 10)
    monitor.record_gauge("active_connections", 7)
    assert "\nactive_connections 7\n" in prom(monitor)


@pytest.mark.parametrize(("name", "value"), [("memory_usage_mb", 512.5), ("cpu_usage_percent", 42)])
def test_seed_gauge_names_are_kept_in_prometheus(monitor: PerformanceMonitor, name: str, value: float) -> None:
    monitor.record_gauge(name, value)
    assert f"\n{name} {value}\n" in prom(monitor)


def test_seed_histogram_names_are_kept_in_prometheus(monitor: PerformanceMonitor) -> None:
    for name in ("http_request_duration_seconds", "database_query_duration_seconds", "message_processing_time_seconds"):
        monitor.record_histogram(name, 0.3)
    text = prom(monitor)
    for name in ("http_request_duration_seconds", "database_query_duration_seconds", "message_processing_time_seconds"):
        assert f"# TYPE {name} histogram" in text
        assert f"{name}_count 1" in text


def test_histogram_uses_semantic_convention_buckets(monitor: PerformanceMonitor) -> None:
    monitor.record_histogram("http_request_duration_seconds", 0.3)
    monitor.record_histogram("database_query_duration_seconds", 0.3)
    records = {r["name"]: r for r in monitor.snapshot().records()}
    assert records["http_request_duration_seconds"]["bucket_bounds"][:3] == [0.005, 0.01, 0.025]
    assert records["database_query_duration_seconds"]["bucket_bounds"][:3] == [0.001, 0.005, 0.01]
    assert records["http_request_duration_seconds"]["unit"] == "s"


def test_histogram_of_plain_name_has_no_unit(monitor: PerformanceMonitor) -> None:
    monitor.record_histogram("message_size", 120)
    record = monitor.snapshot().value("message_size")
    assert record["unit"] == ""
    assert record["sum"] == 120
    assert "# TYPE message_size histogram" in prom(monitor)


def test_timer_records_elapsed_seconds_as_duration_histogram(monitor: PerformanceMonitor) -> None:
    start = monitor.start_timer("api_request")
    time.sleep(0.02)
    monitor.record_timer("api_request", start, {"method": "GET", "endpoint": "/api/x", "status": 200})
    record = monitor.snapshot().value("api_request_duration", {"method": "GET", "endpoint": "/api/x", "status": 200})
    assert record["count"] == 1
    assert 0.02 <= record["sum"] < 1.0
    assert "# TYPE api_request_duration_seconds histogram" in prom(monitor)


def test_timer_context_manager_records_even_when_the_block_raises(monitor: PerformanceMonitor) -> None:
    timer = monitor.timer("job", {"kind": "cleanup"})
    with timer:
        time.sleep(0.01)
    with pytest.raises(KeyError), timer:
        raise KeyError("x")
    assert monitor.snapshot().value("job_duration", {"kind": "cleanup"})["count"] == 2


def test_timer_decorates_sync_functions(monitor: PerformanceMonitor) -> None:
    @monitor.timer("compute")
    def compute(x: int) -> int:
        return x * 2

    assert compute(4) == 8
    assert compute.__name__ == "compute"
    assert monitor.snapshot().value("compute_duration")["count"] == 1


def test_timer_decorates_async_functions(monitor: PerformanceMonitor) -> None:
    @monitor.timer("fetch", {"source": "db"})
    async def fetch() -> str:
        await asyncio.sleep(0.01)
        return "row"

    assert asyncio.run(fetch()) == "row"
    record = monitor.snapshot().value("fetch_duration", {"source": "db"})
    assert record["count"] == 1
    assert record["sum"] >= 0.01


def test_every_instrument_has_a_help_text(monitor: PerformanceMonitor) -> None:
    monitor.increment_counter("messages_sent")
    monitor.increment_counter("widgets_built")
    monitor.record_histogram("payload_bytes", 10)
    text = prom(monitor)
    assert "# HELP messages_sent_total Messages sent, by channel." in text
    assert "# HELP widgets_built_total Counter widgets built." in text
    assert "# HELP payload_bytes Histogram payload bytes (By)." in text


def test_define_sets_unit_description_and_buckets(monitor: PerformanceMonitor) -> None:
    monitor.define("queue_wait", "histogram", unit="s", description="Time in queue.", buckets=(1.0, 2.0))
    monitor.record_histogram("queue_wait", 1.5)
    text = prom(monitor)
    assert "# HELP queue_wait_seconds Time in queue." in text
    assert 'queue_wait_seconds_bucket{le="2"} 1' in text
    assert 'queue_wait_seconds_bucket{le="1"} 0' in text


def test_define_rejects_a_clash_with_an_existing_definition(monitor: PerformanceMonitor) -> None:
    monitor.define("depth", "gauge", unit="1")
    with pytest.raises(ValueError, match="already defined"):
        monitor.define("depth", "gauge", unit="By")


def test_view_sets_buckets(monitor_factory: Any, recording: str) -> None:
    view = ViewConfig(instrument="api_request_duration", buckets=(0.5, 1.0))
    monitor = monitor_factory(recording=recording, views=(view,))
    monitor.record_timer("api_request", time.perf_counter() - 0.7)
    assert monitor.snapshot().value("api_request_duration")["bucket_counts"] == [0, 1, 0]


def test_view_drops_attributes_and_merges_series(monitor_factory: Any, recording: str) -> None:
    view = ViewConfig(instrument="messages_sent", attribute_keys=("channel",))
    monitor = monitor_factory(recording=recording, views=(view,))
    monitor.increment_counter("messages_sent", {"channel": "public", "user": "a"})
    monitor.increment_counter("messages_sent", {"channel": "public", "user": "b"})
    assert monitor.snapshot().value("messages_sent", {"channel": "public"}) == 2


def test_view_renames_and_drops_metrics(monitor_factory: Any, recording: str) -> None:
    views = (ViewConfig(instrument="messages_sent", name="chat_messages"), ViewConfig(instrument="noise", drop=True))
    monitor = monitor_factory(recording=recording, views=views)
    monitor.increment_counter("messages_sent")
    monitor.increment_counter("noise")
    names = monitor.snapshot().names()
    assert "chat_messages" in names
    assert "messages_sent" not in names
    assert "noise" not in names


@pytest.mark.parametrize(
    ("call", "cause"),
    [
        (lambda m, n: m.increment_counter(n, value=float("nan")), "finite"),
        (lambda m, n: m.increment_counter(n, value=float("inf")), "finite"),
        (lambda m, n: m.increment_counter(n, value=-1), "negative"),
        (lambda m, n: m.increment_counter(n, value="7"), "'7'"),
        (lambda m, n: m.record_histogram(n, None), "None"),
        (lambda m, n: m.record_histogram(n, -2.0), "negative"),
        (lambda m, n: m.record_gauge(n, float("nan")), "finite"),
        (lambda m, n: m.increment_counter("", {"a": "b"}), "invalid"),
        (lambda m, n: m.increment_counter("9" + n), "invalid"),
        (lambda m, n: m.increment_counter(None), "invalid"),
        (lambda m, n: m.increment_counter(n, {1: "x"}), "tag key"),
        (lambda m, n: m.increment_counter(n, {"k": "x" * 100_000}), "characters"),
        (lambda m, n: m.increment_counter(n, {"k": object()}), "type object"),
        (lambda m, n: m.increment_counter(n, ["not", "a", "dict"]), "dict"),
        (lambda m, n: m.record_timer(n, "yesterday"), "'yesterday'"),
    ],
)
def test_bad_input_is_dropped_warned_once_and_never_raises(
    monitor: PerformanceMonitor, caplog: pytest.LogCaptureFixture, call: Any, cause: str, request: pytest.FixtureRequest
) -> None:
    # Causes are remembered per process, so every case records under a name of its own.
    name = "bad_" + re.sub(r"\W", "_", request.node.callspec.id)
    monitor.increment_counter("good", {"k": "v"})
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            call(monitor, name)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    # The cause (or, for a value that is not a number, the value itself as typed) is named in the warning.
    assert cause, "every case names what its warning must say"
    assert cause.lower() in warnings[0].getMessage().lower()
    if monitor.config.recording == "fast":
        assert monitor.dropped == 5
    snapshot = monitor.snapshot()
    assert snapshot.value("good", {"k": "v"}) == 1
    assert snapshot.value(name) is None
    assert snapshot.value(name + "_duration") is None


def test_a_name_used_as_two_kinds_keeps_the_first(
    monitor: PerformanceMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    monitor.increment_counter("jobs")
    with caplog.at_level(logging.WARNING):
        monitor.record_gauge("jobs", 5)
        monitor.record_gauge("jobs", 6)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "jobs" in warnings[0]
    assert monitor.snapshot().value("jobs") == 1


def test_sixteen_threads_give_exact_totals(monitor: PerformanceMonitor) -> None:
    per_thread = 2000

    def work(i: int) -> None:
        for n in range(per_thread):
            monitor.increment_counter("hits", {"shard": str(n % 4)})
            monitor.record_histogram("sizes", 1.0, {"shard": str(n % 4)})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = monitor.snapshot()
    total = sum(snapshot.value("hits", {"shard": str(s)}) for s in range(4))
    observed = sum(snapshot.value("sizes", {"shard": str(s)})["count"] for s in range(4))
    assert total == 16 * per_thread
    assert observed == 16 * per_thread


def test_bound_handles_record_into_the_same_series(monitor: PerformanceMonitor) -> None:
    sent = monitor.counter("messages_sent", {"channel": "public"})
    sizes = monitor.histogram("message_size", {"channel": "public"})
    depth = monitor.gauge("queue_depth", {"queue": "a"})
    sent.inc()
    sent.inc(4)
    monitor.increment_counter("messages_sent", {"channel": "public"})
    sizes.observe(10)
    depth.set(3)
    snapshot = monitor.snapshot()
    assert snapshot.value("messages_sent", {"channel": "public"}) == 6
    assert snapshot.value("message_size", {"channel": "public"})["count"] == 1
    assert snapshot.value("queue_depth", {"queue": "a"}) == 3


def test_sampling_applies_to_histograms_not_counters(monitor_factory: Any, recording: str) -> None:
    monitor = monitor_factory(recording=recording, sampling_rate=0.25)
    for _ in range(4000):
        monitor.increment_counter("events")
        monitor.record_histogram("latency_seconds", 0.1)
        monitor.record_timer("op", time.perf_counter())
    snapshot = monitor.snapshot()
    assert snapshot.value("events") == 4000
    assert 700 < snapshot.value("latency_seconds")["count"] < 1300
    assert 700 < snapshot.value("op_duration")["count"] < 1300


def test_disabled_monitoring_records_nothing_and_builds_no_pipeline(monitor_factory: Any) -> None:
    monitor = monitor_factory(enabled=False)
    monitor.increment_counter("messages_sent")
    monitor.record_histogram("h", 1)
    with monitor.timer("t"):
        pass
    monitor.counter("c").inc()
    assert monitor.pipeline is None
    assert monitor.snapshot().records() == []
    assert "disabled" in repr(monitor)


def test_snapshot_serializes_to_json(monitor: PerformanceMonitor) -> None:
    import json

    monitor.increment_counter("messages_sent", {"channel": 'é"\n'})
    monitor.record_histogram("message_size", 3)
    document = json.loads(monitor.snapshot().to_json())
    by_name = {m["name"]: m for m in document["metrics"]}
    assert by_name["messages_sent"]["value"] == 1
    assert by_name["messages_sent"]["attributes"] == {"channel": 'é"\n'}
    assert by_name["messages_sent"]["kind"] == "counter"
    assert by_name["message_size"]["kind"] == "histogram"
    assert by_name["message_size"]["count"] == 1
    assert by_name["message_size"]["resource"]["service.name"] == "chat-turbo"


class RecordingExporter(MetricExporter):
    """A push exporter that keeps what it was given and counts its shutdowns."""

    def __init__(self) -> None:
        super().__init__()
        self.exported: list[MetricsData] = []
        self.shutdowns = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.exported.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.shutdowns += 1


def test_shutdown_is_idempotent(monitor: PerformanceMonitor) -> None:
    exporter = RecordingExporter()
    monitor.add_exporter(exporter)
    monitor.increment_counter("x", value=3)
    monitor.shutdown()
    monitor.shutdown()
    monitor.increment_counter("x")  # recording after shutdown is harmless
    assert exporter.shutdowns == 1
    values = [
        point.value
        for data in exporter.exported
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "x"
        for point in metric.data.data_points
    ]
    assert values == [3]  # the last data went out once, before the exporter stopped
