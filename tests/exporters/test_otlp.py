"""OTLP export end to end: real OTLP/HTTP and OTLP/gRPC receivers on 127.0.0.1 decode what a monitor sends.

The OpenTelemetry OTLP exporters read their endpoint from ``OTEL_EXPORTER_OTLP_METRICS_*`` in ``os.environ``
(there is no other way to hand it through ``OTEL_METRICS_EXPORTER=otlp``), so those are set with monkeypatch.
"""

from __future__ import annotations

import bisect
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from chat_turbo_metrics import PerformanceMonitor, get_monitoring_config
from chat_turbo_metrics._core import compat
from chat_turbo_metrics.exporters.file import read_metric_records
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter

MonitorFactory = Callable[..., PerformanceMonitor]
TRICKY = 'say "hi" \\ back\\slash\nnext line ünïcødé 日本'
TAGS: dict[str, Any] = {"channel": "public", "status": 200, "cached": False, "ratio": 0.5, "route": TRICKY}
HTTP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
OBSERVED = [0.003, 0.02, 0.02, 0.3, 7.0]
OTLP_NAME = "OTLPMetricExporter"  # the fan-out names an exporter without a ``name`` by its class
# Generous bound for waits that normally end in milliseconds; never the expected duration of a test.
PATIENCE_S = 10.0


class Received:
    """Export requests a receiver decoded, in arrival order."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self._cond = threading.Condition()

    def add(self, request: ExportMetricsServiceRequest) -> None:
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout_s: float = PATIENCE_S) -> list[ExportMetricsServiceRequest]:
        with self._cond:
            arrived = self._cond.wait_for(lambda: len(self.requests) >= count, timeout_s)
            assert arrived, f"{len(self.requests)} export request(s) after {timeout_s} s, expected {count}"
            return list(self.requests)


class _OtlpHttpHandler(BaseHTTPRequestHandler):
    server: OtlpHttpReceiver

    def do_POST(self) -> None:
        if self.path != "/v1/metrics":
            self.send_error(404)
            return
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_error(415)
            return
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.headers.append({key.lower(): value for key, value in self.headers.items()})
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.received.add(ExportMetricsServiceRequest.FromString(body))
        self.server.release.wait(self.server.delay_s)
        answer = ExportMetricsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


class OtlpHttpReceiver(ThreadingHTTPServer):
    """``POST /v1/metrics`` (application/x-protobuf) on 127.0.0.1; answers after ``delay_s`` (or on release)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHttpHandler)
        self.received = Received()
        self.headers: list[dict[str, str]] = []  # of each request, names lower-cased
        self.delay_s = delay_s
        self.release = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/metrics"


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    def Export(self, request: ExportMetricsServiceRequest, context: Any) -> ExportMetricsServiceResponse:
        self._received.add(request)
        return ExportMetricsServiceResponse()


@pytest.fixture
def clean_otlp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTLP settings from the developer's shell leak into the exporters under test."""
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def start_http_receiver(clean_otlp_env: pytest.MonkeyPatch) -> Iterator[Callable[..., OtlpHttpReceiver]]:
    """Starts OTLP/HTTP receivers and points OTEL_EXPORTER_OTLP_METRICS_ENDPOINT at the last one."""
    started: list[OtlpHttpReceiver] = []

    def start(delay_s: float = 0.0) -> OtlpHttpReceiver:
        receiver = OtlpHttpReceiver(delay_s)
        threading.Thread(target=receiver.serve_forever, args=(0.05,), name="otlp-http-receiver", daemon=True).start()
        started.append(receiver)
        clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", receiver.endpoint)
        return receiver

    yield start
    for receiver in started:
        receiver.release.set()
        receiver.shutdown()
        receiver.server_close()


@pytest.fixture
def http_receiver(start_http_receiver: Callable[..., OtlpHttpReceiver]) -> OtlpHttpReceiver:
    return start_http_receiver()


def start_grpc_receiver() -> tuple[Received, grpc.Server, int]:
    """An OTLP/gRPC MetricsService serving on 127.0.0.1 (plaintext): what it received, the server, its port."""
    received = Received()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return received, server, port


@pytest.fixture
def grpc_receiver(clean_otlp_env: pytest.MonkeyPatch) -> Iterator[Received]:
    """An OTLP/gRPC MetricsService on 127.0.0.1, plaintext; the endpoint variables point at it."""
    received, server, port = start_grpc_receiver()
    clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"http://127.0.0.1:{port}")
    clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "true")
    yield received
    server.stop(grace=None).wait()


# --- decoding helpers -------------------------------------------------------------------------------


def plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: plain(pair.value) for pair in pairs}


def metrics_by_name(request: ExportMetricsServiceRequest) -> dict[str, Metric]:
    return {
        metric.name: metric
        for resource_metrics in request.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }


def number(point: Any) -> float:
    return float(getattr(point, point.WhichOneof("value")))


def expected_bucket_counts(values: list[float], bounds: list[float]) -> list[int]:
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1  # buckets are (previous bound, bound]
    return counts


def record_sample(monitor: PerformanceMonitor) -> None:
    for _ in range(3):
        monitor.increment_counter("messages_sent", TAGS)
    monitor.increment_counter("messages_sent", TAGS, value=2)
    for value in OBSERVED:
        monitor.record_histogram("render_seconds", value, {"route": "/chat"})
    monitor.record_gauge("active_connections", 12, {"node": "a"})
    monitor.record_gauge("active_connections", 9, {"node": "a"})


def otlp_monitor(
    monitor_factory: MonitorFactory, protocol: str = "http/protobuf", **settings: Any
) -> PerformanceMonitor:
    settings.setdefault("metrics_exporters", ("otlp",))
    return monitor_factory(otlp_protocol=protocol, service_name="chat-api-otlp", **settings)


def flushed_metrics(monitor: PerformanceMonitor, received: Received) -> dict[str, Metric]:
    record_sample(monitor)
    assert monitor.force_flush() is True
    return metrics_by_name(received.wait_for(1)[-1])


# --- OTLP/HTTP --------------------------------------------------------------------------------------


def test_http_export_carries_the_counter_sum_and_its_attributes(
    http_receiver: OtlpHttpReceiver, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = otlp_monitor(monitor_factory, recording=recording)
    metric = flushed_metrics(monitor, http_receiver.received)["messages_sent"]

    assert metric.sum.is_monotonic
    assert metric.sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    (point,) = metric.sum.data_points
    assert number(point) == 5
    assert attributes(point.attributes) == TAGS
    kinds = {pair.key: pair.value.WhichOneof("value") for pair in point.attributes}
    assert kinds == {
        "channel": "string_value",
        "status": "int_value",
        "cached": "bool_value",
        "ratio": "double_value",
        "route": "string_value",
    }


def test_http_export_carries_histogram_count_sum_buckets_and_bounds(
    http_receiver: OtlpHttpReceiver, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = otlp_monitor(monitor_factory, recording=recording)
    metric = flushed_metrics(monitor, http_receiver.received)["render_seconds"]

    assert metric.unit == "s"
    (point,) = metric.histogram.data_points
    assert attributes(point.attributes) == {"route": "/chat"}
    assert point.count == len(OBSERVED)
    assert point.sum == pytest.approx(sum(OBSERVED))
    assert list(point.explicit_bounds) == HTTP_BUCKETS
    assert list(point.bucket_counts) == expected_bucket_counts(OBSERVED, HTTP_BUCKETS)
    assert (point.min, point.max) == (min(OBSERVED), max(OBSERVED))


def test_http_export_carries_the_exemplars_of_observations_in_a_sampled_span(
    http_receiver: OtlpHttpReceiver, monitor_factory: MonitorFactory, recording: str
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    monitor = otlp_monitor(monitor_factory, recording=recording)
    monitor.record_histogram("render_seconds", 0.2, {"route": "/chat"})  # creates the series outside a span
    with TracerProvider().get_tracer("test").start_as_current_span("request") as span:
        context = span.get_span_context()
        monitor.record_histogram("render_seconds", 0.3, {"route": "/chat"})
    assert monitor.force_flush() is True
    metric = metrics_by_name(http_receiver.received.wait_for(1)[-1])["render_seconds"]
    (point,) = metric.histogram.data_points
    (exemplar,) = point.exemplars
    assert exemplar.as_double == 0.3
    assert exemplar.trace_id == context.trace_id.to_bytes(16, "big")
    assert exemplar.span_id == context.span_id.to_bytes(8, "big")


def test_http_export_carries_the_last_gauge_value(
    http_receiver: OtlpHttpReceiver, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = otlp_monitor(monitor_factory, recording=recording)
    metric = flushed_metrics(monitor, http_receiver.received)["active_connections"]

    (point,) = metric.gauge.data_points
    assert number(point) == 9
    assert attributes(point.attributes) == {"node": "a"}


def test_http_export_carries_the_service_resource_and_scope(
    http_receiver: OtlpHttpReceiver, monitor_factory: MonitorFactory
) -> None:
    monitor = otlp_monitor(monitor_factory)
    flushed_metrics(monitor, http_receiver.received)

    (resource_metrics,) = http_receiver.received.requests[-1].resource_metrics
    resource = attributes(resource_metrics.resource.attributes)
    assert resource["service.name"] == "chat-api-otlp"
    assert resource["deployment.environment.name"] == "test"
    assert resource["telemetry.distro.name"] == "chat_turbo_metrics"
    # The pipeline's self-telemetry travels beside the application's metrics, in a scope of its own.
    scopes = [scope.scope.name for scope in resource_metrics.scope_metrics]
    assert scopes == ["chat_turbo_metrics", "chat_turbo_metrics.health"]


def test_http_export_records_a_timer_in_seconds(
    http_receiver: OtlpHttpReceiver, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = otlp_monitor(monitor_factory, recording=recording)
    monitor.record_timer("api_request", time.perf_counter() - 0.3, {"endpoint": "/api/x"})
    assert monitor.force_flush() is True

    metric = metrics_by_name(http_receiver.received.wait_for(1)[-1])["api_request_duration"]

    assert metric.unit == "s"
    (point,) = metric.histogram.data_points
    assert point.count == 1
    assert 0.3 <= point.sum < 1.0
    assert point.bucket_counts[bisect.bisect_left(list(point.explicit_bounds), 0.3)] == 1


def test_http_export_sends_increments_when_the_exporter_prefers_delta(
    start_http_receiver: Callable[..., OtlpHttpReceiver],
    clean_otlp_env: pytest.MonkeyPatch,
    monitor_factory: MonitorFactory,
    recording: str,
) -> None:
    receiver = start_http_receiver()
    clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    monitor = otlp_monitor(monitor_factory, recording=recording)

    monitor.increment_counter("messages_sent", {"channel": "public"}, value=3)
    assert monitor.force_flush() is True
    monitor.increment_counter("messages_sent", {"channel": "public"}, value=4)
    assert monitor.force_flush() is True

    first, second = (metrics_by_name(request)["messages_sent"] for request in receiver.received.wait_for(2)[:2])
    delta = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    assert (first.sum.aggregation_temporality, second.sum.aggregation_temporality) == (delta, delta)
    assert [number(point) for point in first.sum.data_points] == [3]
    assert [number(point) for point in second.sum.data_points] == [4]


# --- OTLP/gRPC --------------------------------------------------------------------------------------


def test_grpc_export_carries_counter_histogram_and_gauge(
    grpc_receiver: Received, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = otlp_monitor(monitor_factory, protocol="grpc", recording=recording)
    assert isinstance(monitor.pipeline.exporters[0], GrpcMetricExporter)  # type: ignore[union-attr]

    metrics = flushed_metrics(monitor, grpc_receiver)

    (counter,) = metrics["messages_sent"].sum.data_points
    assert number(counter) == 5
    assert attributes(counter.attributes) == TAGS
    (histogram,) = metrics["render_seconds"].histogram.data_points
    assert histogram.count == len(OBSERVED)
    assert list(histogram.bucket_counts) == expected_bucket_counts(OBSERVED, HTTP_BUCKETS)
    (gauge,) = metrics["active_connections"].gauge.data_points
    assert number(gauge) == 9
    (resource_metrics,) = grpc_receiver.requests[-1].resource_metrics
    assert attributes(resource_metrics.resource.attributes)["service.name"] == "chat-api-otlp"


# --- selection through the configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "exporter_class"), [("http/protobuf", HttpMetricExporter), ("grpc", GrpcMetricExporter)]
)
def test_otel_metrics_exporter_builds_otlp_and_prometheus(
    http_receiver: OtlpHttpReceiver,
    request: pytest.FixtureRequest,
    protocol: str,
    exporter_class: type,
) -> None:
    env = {
        "OTEL_METRICS_EXPORTER": "otlp,prometheus",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": protocol,
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "0",
    }
    config = get_monitoring_config("test", env=env)
    assert config.metrics_exporters == ("otlp", "prometheus")
    assert config.otlp_protocol == protocol

    monitor = PerformanceMonitor(config)
    request.addfinalizer(lambda: monitor.shutdown(timeout_s=2))
    pipeline = monitor.pipeline
    assert pipeline is not None

    (push,) = pipeline.exporters
    assert isinstance(push, exporter_class)
    assert dict(pipeline.export_failures) == {OTLP_NAME: 0}
    (pull,) = pipeline.pull_exporters
    assert isinstance(pull, PrometheusExporter)
    assert (pull.host, pull.port > 0) == ("127.0.0.1", True)


@pytest.mark.parametrize("timeout_variable", [None, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"])
def test_the_grpc_exporter_keeps_its_channel_with_a_bounded_reconnect_backoff(
    grpc_receiver: Received,
    monitor_factory: MonitorFactory,
    monkeypatch: pytest.MonkeyPatch,
    timeout_variable: str | None,
) -> None:
    # Rebuilding the channel at every failed export costs the application CPU while the endpoint is away
    # (bench/bench_faults.py); the kept channel must still deliver.
    if timeout_variable is not None:
        monkeypatch.setenv(timeout_variable, "2")
    monitor = otlp_monitor(monitor_factory, protocol="grpc")
    (exporter,) = monitor.pipeline.exporters
    options = dict(exporter._channel_options)
    assert options["grpc.max_reconnect_backoff_ms"] == 2000
    assert options["grpc.initial_reconnect_backoff_ms"] == 500
    assert isinstance(exporter._channel, compat._KeptChannel)
    assert exporter._timeout == (2 if timeout_variable else monitor.config.export_timeout_s)
    assert number(flushed_metrics(monitor, grpc_receiver)["messages_sent"].sum.data_points[0]) == 5


def test_exporter_names_build_one_exporter_each(
    http_receiver: OtlpHttpReceiver, monitor_factory: MonitorFactory, tmp_path: Path
) -> None:
    env = {"OTEL_METRICS_EXPORTER": "otlp_proto_http, chat_turbo_file ,prometheus,console"}
    config = get_monitoring_config("test", env=env)

    monitor = monitor_factory(
        metrics_exporters=config.metrics_exporters,
        file_path=str(tmp_path / "m.jsonl"),
        prometheus_host="127.0.0.1",
        prometheus_port=0,
    )
    pipeline = monitor.pipeline
    assert pipeline is not None

    assert [type(exporter).__name__ for exporter in pipeline.exporters] == [
        "OTLPMetricExporter",
        "FileExporter",
        "ConsoleMetricExporter",
    ]
    assert isinstance(pipeline.exporters[0], HttpMetricExporter)
    assert [type(exporter) for exporter in pipeline.pull_exporters] == [PrometheusExporter]


# --- a slow exporter does not hold the others back ----------------------------------------------------


def slow_pair(
    start_http_receiver: Callable[..., OtlpHttpReceiver], monitor_factory: MonitorFactory, tmp_path: Path
) -> tuple[OtlpHttpReceiver, PerformanceMonitor, Path]:
    receiver = start_http_receiver(delay_s=3.0)
    path = tmp_path / "metrics.jsonl"
    monitor = otlp_monitor(
        monitor_factory,
        metrics_exporters=("otlp", "chat_turbo_file"),
        file_path=str(path),
        export_timeout_s=1.0,
        export_interval_s=3600.0,
    )
    monitor.increment_counter("messages_sent", {"channel": "public"}, value=3)
    return receiver, monitor, path


def test_slow_otlp_receiver_does_not_delay_the_file_exporter(
    start_http_receiver: Callable[..., OtlpHttpReceiver],
    monitor_factory: MonitorFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver, monitor, path = slow_pair(start_http_receiver, monitor_factory, tmp_path)
    failures = monitor.pipeline.export_failures  # type: ignore[union-attr]

    started = time.monotonic()
    flushed = monitor.force_flush()
    waited_s = time.monotonic() - started

    # force_flush waits at most export_timeout_s and reports that OTLP did not finish in time ...
    assert flushed is False
    assert 0.9 <= waited_s < 2.5
    # ... while the file already holds the data and the OTLP receiver is still sitting on its request.
    records = [record for record in read_metric_records(path) if record["name"] == "messages_sent"]
    assert [(record["value"], record["attributes"]) for record in records] == [(3, {"channel": "public"})]
    assert len(receiver.received.requests) == 1
    # (Not asserting OTLP's count here: its own 1 s timeout ends it only a few ms after force_flush returns.)
    assert failures["chat_turbo_file"] == 0

    # The OTLP request is bounded by export_timeout_s: it ends as a failure counted under its name.
    deadline = time.monotonic() + PATIENCE_S
    while failures[OTLP_NAME] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dict(failures) == {OTLP_NAME: 1, "chat_turbo_file": 0}


def test_otlp_export_timeout_is_counted_as_a_failure_by_name(
    start_http_receiver: Callable[..., OtlpHttpReceiver],
    clean_otlp_env: pytest.MonkeyPatch,
    monitor_factory: MonitorFactory,
    tmp_path: Path,
) -> None:
    # The OTLP exporter's own request timeout (seconds in this SDK) is what ends a hanging request.
    clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "0.5")
    _, monitor, path = slow_pair(start_http_receiver, monitor_factory, tmp_path)
    failures = monitor.pipeline.export_failures  # type: ignore[union-attr]

    assert monitor.force_flush(timeout_s=PATIENCE_S) is False

    assert dict(failures) == {OTLP_NAME: 1, "chat_turbo_file": 0}
    assert [record["value"] for record in read_metric_records(path) if record["name"] == "messages_sent"] == [3]


def test_export_timeout_setting_alone_ends_a_hanging_otlp_export(
    start_http_receiver: Callable[..., OtlpHttpReceiver], monitor_factory: MonitorFactory, tmp_path: Path
) -> None:
    _, monitor, _ = slow_pair(start_http_receiver, monitor_factory, tmp_path)
    failures = monitor.pipeline.export_failures  # type: ignore[union-attr]

    monitor.force_flush()
    deadline = time.monotonic() + 1.5  # the receiver answers (successfully) only after 3 s
    while failures[OTLP_NAME] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)

    assert failures[OTLP_NAME] == 1


def test_well_formed_otlp_headers_reach_the_collector(
    http_receiver: OtlpHttpReceiver, clean_otlp_env: pytest.MonkeyPatch, monitor_factory: MonitorFactory
) -> None:
    clean_otlp_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc, x-tenant = t1")
    clean_otlp_env.delenv("OTEL_EXPORTER_OTLP_METRICS_HEADERS", raising=False)
    monitor = otlp_monitor(monitor_factory)
    monitor.increment_counter("jobs")
    assert monitor.force_flush()

    assert http_receiver.headers
    assert {(h["authorization"], h["x-tenant"]) for h in http_receiver.headers} == {("Bearer abc", "t1")}


# --- OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION ------------------------------------------


def test_http_export_carries_exponential_histograms_when_the_variable_asks_for_them(
    http_receiver: OtlpHttpReceiver, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = otlp_monitor(
        monitor_factory, recording=recording, histogram_aggregation="base2_exponential_bucket_histogram"
    )
    for value in (0, 1, 2, 4, 8):
        monitor.record_histogram("render_seconds", value, {"route": "/chat"})
    monitor.increment_counter("messages_sent")  # counters are unchanged
    assert monitor.force_flush() is True

    metrics = metrics_by_name(http_receiver.received.wait_for(1)[-1])
    metric = metrics["render_seconds"]
    assert metric.WhichOneof("data") == "exponential_histogram"
    assert metric.exponential_histogram.aggregation_temporality == (
        AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    )
    (point,) = metric.exponential_histogram.data_points
    assert attributes(point.attributes) == {"route": "/chat"}
    assert (point.count, point.sum, point.zero_count, point.min, point.max) == (5, 15.0, 1, 0.0, 8.0)
    # 1..8 spans three powers of two; 160 buckets hold 2**5 per power at most: scale 5. With base 2**(1/32)
    # the bucket of v is ceil(32 * log2(v)) - 1 (upper bounds inclusive): 1 -> -1, 2 -> 31, 4 -> 63, 8 -> 95.
    assert point.scale == 5
    counts = {point.positive.offset + i: count for i, count in enumerate(point.positive.bucket_counts) if count}
    assert counts == {-1: 1, 31: 1, 63: 1, 95: 1}
    assert not any(point.negative.bucket_counts)
    assert metrics["messages_sent"].WhichOneof("data") == "sum"


def test_explicit_histograms_stay_the_default_and_view_buckets_win_over_the_variable(
    http_receiver: OtlpHttpReceiver, monitor_factory: MonitorFactory
) -> None:
    from chat_turbo_metrics import ViewConfig

    monitor = otlp_monitor(
        monitor_factory,
        histogram_aggregation="base2_exponential_bucket_histogram",
        views=(ViewConfig(instrument="payload_bytes", buckets=(10.0, 100.0)),),
    )
    monitor.record_histogram("payload_bytes", 50)
    monitor.record_histogram("render_seconds", 0.5)
    assert monitor.force_flush() is True
    metrics = metrics_by_name(http_receiver.received.wait_for(1)[-1])
    assert metrics["payload_bytes"].WhichOneof("data") == "histogram"
    assert list(metrics["payload_bytes"].histogram.data_points[0].bucket_counts) == [0, 1, 0]
    assert metrics["render_seconds"].WhichOneof("data") == "exponential_histogram"
