"""The private OpenTelemetry names in ``_core/compat.py`` still exist, and no other module reaches for one.

An SDK upgrade that moves, renames or drops one of them fails here, naming it, instead of as a wrong behaviour
somewhere in the pipeline.
"""

from __future__ import annotations

import ast
import importlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricExportResult,
)
from opentelemetry.sdk.resources import Resource

from chat_turbo_metrics._core import compat
from conftest import free_port

SRC = Path(compat.__file__).resolve().parents[1]
COMPAT = Path(compat.__file__).resolve()
# Private attributes read with getattr(); each must appear in compat.py only.
PRIVATE_ATTRIBUTES = ("_sdk_config", "_preferred_temporality", "_internal", "_attributes_aggregation")


def test_configurator_base_class_is_the_one_opentelemetry_instrument_loads() -> None:
    configuration = importlib.import_module("opentelemetry.sdk._configuration")
    assert compat.BaseConfigurator is configuration._BaseConfigurator
    assert callable(compat.BaseConfigurator.configure)


def test_sdk_gauge_is_the_synchronous_gauge_the_meter_creates() -> None:
    gauge = MeterProvider().get_meter("compat").create_gauge("g")
    assert isinstance(gauge, compat.SdkGauge)


def test_measurement_loggers_are_the_sdk_modules_that_warn() -> None:
    for name in compat.SDK_MEASUREMENT_LOGGERS:
        module = importlib.import_module(name)
        assert module._logger is logging.getLogger(name), name


def test_prometheus_unit_mapping_still_maps_ucum_units() -> None:
    assert compat.prometheus_unit_suffix("By") == "bytes"
    assert compat.prometheus_unit_suffix("s") == "seconds"
    assert compat.prometheus_unit_suffix("{requests}") == ""


def test_provider_resource_reads_the_meter_providers_resource() -> None:
    resource = Resource.create({"service.name": "compat"})
    assert compat.provider_resource(MeterProvider(resource=resource)) is resource
    assert compat.provider_resource(object()) is None


def test_exporter_temporality_reads_what_the_exporter_was_built_with() -> None:
    delta = {Counter: AggregationTemporality.DELTA}
    assert compat.exporter_temporality(ConsoleMetricExporter(preferred_temporality=delta))[Counter] == delta[Counter]
    assert compat.exporter_temporality(object()) == {}


def test_forget_inherited_sums_drops_counter_and_histogram_series_and_keeps_gauges() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("compat")
    meter.create_counter("c").add(3, {"k": "a"})
    meter.create_up_down_counter("u").add(-2)
    meter.create_histogram("h").record(5.0)
    meter.create_gauge("g").set(7)

    assert compat.forget_inherited_sums(provider) == 3
    meter.create_counter("c").add(1, {"k": "a"})

    collected = reader.get_metrics_data()
    assert collected is not None
    points = {m.name: m.data.data_points for m in collected.resource_metrics[0].scope_metrics[0].metrics}
    assert sorted(points) == ["c", "g"]
    assert [p.value for p in points["c"]] == [1]  # starts again from what is recorded after
    assert [p.value for p in points["g"]] == [7]
    assert compat.forget_inherited_sums(object()) == 0


def private_otel_uses(path: Path) -> list[str]:
    """Imports of an underscore OpenTelemetry module or name, and private attribute names, in one file."""
    found = []
    text = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            parts = (node.module or "").split(".")
            names = [alias.name for alias in node.names]
            if any(part.startswith("_") for part in parts) or any(name.startswith("_") for name in names):
                found.append(f"{path.name}:{node.lineno} from {node.module} import {', '.join(names)}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.extend(f"{path.name}:{node.lineno} {name}" for name in PRIVATE_ATTRIBUTES if name in node.value)
    return found


def test_no_module_but_compat_uses_a_private_opentelemetry_name() -> None:
    offenders = [use for path in sorted(SRC.rglob("*.py")) if path != COMPAT for use in private_otel_uses(path)]
    assert offenders == []


def test_the_scan_finds_what_compat_itself_uses() -> None:
    # The scan above would pass vacuously if it could not see a private import; compat.py has several.
    uses = private_otel_uses(COMPAT)
    assert any("_configuration" in use for use in uses)
    assert any("_sdk_config" in use for use in uses)


def _one_counter_snapshot() -> Any:
    reader = InMemoryMetricReader()
    MeterProvider(metric_readers=[reader]).get_meter("compat").create_counter("orders").add(3)
    return reader.get_metrics_data()


class _Accepting(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.requests = 0

    def Export(self, request: Any, context: Any) -> ExportMetricsServiceResponse:
        self.requests += 1
        return ExportMetricsServiceResponse()


def _serve(port: int) -> tuple[grpc.Server, _Accepting]:
    service = _Accepting()
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(service, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    return server, service


def test_keep_grpc_channel_keeps_one_channel_through_an_outage_and_closes_it_at_shutdown() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    from chat_turbo_metrics.exporters.otlp import GRPC_CHANNEL_OPTIONS

    port = free_port()
    exporter = OTLPMetricExporter(
        endpoint=f"http://127.0.0.1:{port}", insecure=True, timeout=0.5, channel_options=GRPC_CHANNEL_OPTIONS
    )
    assert compat.keep_grpc_channel(exporter)
    kept, stub = exporter._channel, exporter._client
    data = _one_counter_snapshot()
    for _ in range(3):  # refused: UNAVAILABLE, on which the exporter would build a new channel each time
        assert exporter.export(data) is MetricExportResult.FAILURE
    assert (exporter._channel, exporter._client) == (kept, stub)

    server, service = _serve(port)
    try:
        deadline = time.monotonic() + 15  # the reconnect backoff (at most 2 s) lets the same channel recover
        while exporter.export(data) is not MetricExportResult.SUCCESS:
            assert time.monotonic() < deadline, "the kept channel never reconnected"
            time.sleep(0.2)
        assert service.requests == 1
        assert exporter._client is stub
    finally:
        exporter.shutdown()
        server.stop(grace=None).wait()
    with pytest.raises(ValueError, match="closed"):
        kept.channel.unary_unary("/ctm.Test/Ping")(b"")


def test_keep_grpc_channel_leaves_an_exporter_without_one_alone() -> None:
    exporter = ConsoleMetricExporter()
    assert compat.keep_grpc_channel(exporter) is False
    assert not hasattr(exporter, "_channel")


def test_the_current_span_is_found_under_the_span_key_of_the_current_context() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    read = compat.current_context_reader()
    assert read().get(compat.SPAN_KEY) is None
    with TracerProvider().get_tracer("compat").start_as_current_span("s") as span:
        assert read().get(compat.SPAN_KEY) is span is trace.get_current_span()
    assert read().get(compat.SPAN_KEY) is None
