"""OpenMetrics negotiation, ``_created``, exemplars and the ``otel_scope_*`` labels on /metrics.

Both formats are checked with prometheus_client's own parsers (the text one and the OpenMetrics one, which is
strict: it rejects a non-canonical ``le``, a ``_created`` on a gauge, a missing ``# EOF``), and with a real
Prometheus scraping each format.
"""

from __future__ import annotations

import gzip
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics.exporters._prometheus_http import respond, wants_openmetrics
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
from conftest import make_config

MonitorFactory = Callable[..., PerformanceMonitor]
# What Prometheus 2.x sends (scrape.go's acceptHeader), and what Prometheus 3 sends by default.
PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
tracer = TracerProvider().get_tracer("test_openmetrics")


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (PROMETHEUS_2, True),
        (PROMETHEUS_3, True),
        ("application/openmetrics-text", True),
        ("", False),
        ("*/*", False),
        ("text/plain", False),
        ("text/plain;version=0.0.4", False),
        ("application/openmetrics-text;q=0.2, text/plain;q=0.9", False),
        ("text/plain;q=0.2, application/openmetrics-text;q=0.9", True),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;version=2.0.0", False),
        ("application/openmetrics-text;q=nonsense, text/plain", False),
        ("APPLICATION/OpenMetrics-Text; Version=1.0.0", True),
    ],
)
def test_negotiation_honours_q_weights(accept: str, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


def record(monitor: PerformanceMonitor) -> None:
    monitor.increment_counter("messages_sent", {"channel": "public"}, value=3)
    monitor.record_gauge("memory_usage_mb", 256.5)
    monitor.record_histogram("payload_bytes", 512, {"compressed": True})
    monitor.record_timer("api_request", time.perf_counter() - 0.3, {"method": "GET"})


def get(url: str, accept: str | None = None, gzip_ok: bool = False) -> tuple[int, dict[str, str], str]:
    headers = {"Accept": accept} if accept is not None else {}
    if gzip_ok:
        headers["Accept-Encoding"] = "gzip"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return response.status, dict(response.headers), body.decode("utf-8")


@pytest.fixture
def served(monitor_factory: MonitorFactory, recording: str) -> tuple[PerformanceMonitor, PrometheusExporter]:
    monitor = monitor_factory(recording=recording)
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    monitor.add_exporter(exporter)
    record(monitor)
    return monitor, exporter


def samples(families: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
    return {(s.name, tuple(sorted(s.labels.items()))): s for family in families for s in family.samples}


def test_a_prometheus_scrape_gets_openmetrics_that_the_strict_parser_accepts(
    served: tuple[PerformanceMonitor, PrometheusExporter],
) -> None:
    _, exporter = served
    status, headers, body = get(exporter.url, PROMETHEUS_2, gzip_ok=True)
    assert status == 200
    assert headers["Content-Type"] == OPENMETRICS
    assert body.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(body)}
    assert families["messages_sent"].type == "counter"
    assert families["target"].type == "info"
    found = samples(families.values())
    scope = (("otel_scope_name", "chat_turbo_metrics"), ("otel_scope_version", exporter_version()))
    assert found["messages_sent_total", (("channel", "public"), *scope)].value == 3
    # _created where a cumulation starts (counters, histograms), in seconds; never on a gauge.
    created = found["messages_sent_created", (("channel", "public"), *scope)].value
    assert abs(created - time.time()) < 120
    assert ("payload_bytes_created", (("compressed", "true"), *scope)) in found
    assert not any(name.startswith("memory_usage_mb_") for name, _ in found)
    bucket = found["payload_bytes_bucket", (("compressed", "true"), ("le", "750.0"), *scope)]
    assert bucket.value == 1


def exporter_version() -> str:
    from chat_turbo_metrics import __version__

    return __version__


def test_a_plain_scrape_gets_the_text_format_that_the_text_parser_accepts(
    served: tuple[PerformanceMonitor, PrometheusExporter],
) -> None:
    _, exporter = served
    for accept in (None, "text/plain;version=0.0.4", "*/*"):
        status, headers, body = get(exporter.url, accept)
        assert (status, headers["Content-Type"]) == (200, TEXT)
        assert "# EOF" not in body
        assert "_created" not in body
        found = samples(parse_text(body))
        scope = (("otel_scope_name", "chat_turbo_metrics"), ("otel_scope_version", exporter_version()))
        assert found["messages_sent_total", (("channel", "public"), *scope)].value == 3
        assert found["memory_usage_mb", scope].value == 256.5


def test_scope_labels_can_be_left_out(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = PrometheusExporter.from_config(MonitoringConfig(prometheus_host="127.0.0.1", prometheus_port=0))
    assert exporter.scope_labels is True  # the default
    quiet = PrometheusExporter.from_config(make_config(prometheus_scope_labels=False, prometheus_port=0))
    quiet.host = "127.0.0.1"
    monitor.add_exporter(quiet)
    record(monitor)
    for accept in ("text/plain", PROMETHEUS_2):
        body = get(quiet.url, accept)[2]
        assert "otel_scope" not in body
        assert 'messages_sent_total{channel="public"} 3' in body.splitlines()
        assert body.count("target_info{") == 1  # target_info is kept


def test_scope_labels_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_turbo_metrics import get_monitoring_config

    monkeypatch.setenv("METRICS_PROMETHEUS_SCOPE_LABELS", "false")
    assert get_monitoring_config().prometheus_scope_labels is False
    monkeypatch.setenv("METRICS_PROMETHEUS_SCOPE_LABELS", "true")
    assert get_monitoring_config().prometheus_scope_labels is True


def test_snapshot_renders_openmetrics_too(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory(prometheus_scope_labels=True)
    record(monitor)
    text = monitor.snapshot().to_prometheus(openmetrics=True)
    found = samples(parse_openmetrics(text))
    scope = (("otel_scope_name", "chat_turbo_metrics"), ("otel_scope_version", exporter_version()))
    assert found["memory_usage_mb", scope].value == 256.5


def exemplar_of(text: str, family: str) -> list[Any]:
    return [
        s
        for f in parse_openmetrics(text)
        if f.name == family
        for s in f.samples
        if s.name.endswith("_bucket") and s.exemplar is not None
    ]


def test_histogram_observed_in_a_sampled_span_carries_an_exemplar(
    monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = monitor_factory(recording=recording)
    monitor.record_histogram("payload_bytes", 3, {"compressed": True})  # outside a span: no exemplar
    with tracer.start_as_current_span("request") as span:
        context = span.get_span_context()
        monitor.record_histogram("payload_bytes", 512, {"compressed": True})
        monitor.record_histogram("payload_bytes", 600, {"compressed": True})  # same bucket: the latest is kept
    text = monitor.snapshot().to_prometheus(openmetrics=True)
    (bucket,) = exemplar_of(text, "payload_bytes")
    assert bucket.labels["le"] == "750.0"
    assert bucket.exemplar.labels == {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
    assert bucket.exemplar.value == 600
    assert abs(float(bucket.exemplar.timestamp) - time.time()) < 60
    assert " # {" not in monitor.snapshot().to_prometheus()  # the text format has no exemplars


def test_respond_routes_by_path_and_answers_errors_as_text() -> None:
    class Broken:
        def render(self, openmetrics: bool = False) -> str:
            raise RuntimeError("no")

    assert respond(None, "/metrics").status == 503
    assert respond(Broken(), "/metrics").status == 500
    assert respond(Broken(), "/elsewhere").status == 404


def exponential_collection(values: list[float]) -> Any:
    """A real SDK collection holding one exponential histogram (as a View or a third party's producer gives)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View

    reader = InMemoryMetricReader()
    view = View(instrument_name="latency", aggregation=ExponentialBucketHistogramAggregation(max_size=20))
    provider = MeterProvider(metric_readers=[reader], views=[view])
    histogram = provider.get_meter("third.party", "1.2").create_histogram("latency", unit="s")
    for value in values:
        histogram.record(value, {"route": "/chat"})
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


@pytest.mark.parametrize("openmetrics", [False, True])
def test_an_exponential_histogram_is_converted_not_dropped(openmetrics: bool) -> None:
    from chat_turbo_metrics.exporters._prometheus_text import to_prometheus_text

    observed = [0.0, 0.003, 0.04, 0.04, 0.7, 3.3, 120.0, 5000.0]
    text = to_prometheus_text(exponential_collection(observed), openmetrics=openmetrics, scope_labels=True)
    parse = parse_openmetrics if openmetrics else parse_text
    (family,) = [f for f in parse(text) if f.name == "latency_seconds"]
    assert family.type == "histogram"
    buckets = [s for s in family.samples if s.name == "latency_seconds_bucket"]
    assert {s.labels["otel_scope_name"] for s in buckets} == {"third.party"}
    for bucket in buckets:  # every cumulative bucket counts exactly the observations at or below its bound
        bound = float(bucket.labels["le"])
        assert bucket.value == sum(1 for v in observed if v <= bound), bucket
    count = [s.value for s in family.samples if s.name == "latency_seconds_count"]
    assert count == [len(observed)]
    sums = [s.value for s in family.samples if s.name == "latency_seconds_sum"]
    assert sums == [pytest.approx(sum(observed))]


def test_negative_exponential_buckets_convert_below_zero() -> None:
    from types import SimpleNamespace as NS

    from chat_turbo_metrics.exporters._prometheus_text import explicit_buckets

    # scale 0 (base 2): -3 is in the negative bucket 1, [-4, -2); -1.5 in bucket 0, [-2, -1).
    point = NS(
        attributes={}, start_time_unix_nano=0, count=3, sum=-2.5, exemplars=(), scale=0, zero_count=0,
        positive=NS(offset=1, bucket_counts=[1]), negative=NS(offset=0, bucket_counts=[1, 1]),
    )  # fmt: skip
    converted = explicit_buckets(point)
    assert converted.explicit_bounds == [-2.0, -1.0, 0.0, 4.0]
    assert converted.bucket_counts == [1, 1, 0, 1, 0]
