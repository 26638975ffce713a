"""OpenTelemetry's OTLP exporters, built from the monitoring configuration.

The protocol (``OTEL_EXPORTER_OTLP_PROTOCOL``, setting ``otlp_protocol``), the export timeout, the headers checked
before OpenTelemetry's parser could log a credential, and, for gRPC, a channel kept through an outage with a short
reconnect backoff. The pipeline finds these through entry points (``chat_turbo_otlp``, ``chat_turbo_otlp_proto_http``
and ``chat_turbo_otlp_proto_grpc``, for metrics and for traces), which the names ``otlp``, ``otlp_proto_http`` and
``otlp_proto_grpc`` resolve to (:mod:`chat_turbo_metrics._pipeline.registry`).

Example:
    >>> exporter = METRICS_HTTP.from_config(MonitoringConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

from chat_turbo_metrics._core.compat import keep_grpc_channel
from chat_turbo_metrics._core.config import ExportSettings
from chat_turbo_metrics._core.otlp_headers import check_otlp_headers

_PACKAGES = {
    "grpc": "opentelemetry.exporter.otlp.proto.grpc",
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http",
}
_CLASSES = {"metrics": ("metric_exporter", "OTLPMetricExporter"), "traces": ("trace_exporter", "OTLPSpanExporter")}
# While its endpoint is away a kept gRPC channel (see compat.keep_grpc_channel) reconnects with gRPC's backoff,
# which by default starts at 1 s and grows to 120 s; 0.5 s growing to 2 s bounds how long exports stay off after
# the endpoint returns, and a refused reconnect every 2 s costs next to nothing.
GRPC_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
_TIMEOUT_VARIABLES = {
    "metrics": ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
    "traces": ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
}


class OtlpExporters:
    """Builds the OTLP exporter of one signal, over the configured protocol or a fixed one."""

    install_hint = "pip install 'chat-turbo-metrics[otlp]'"

    def __init__(self, signal: str, protocol: str | None = None) -> None:
        """Args:
        signal: ``"metrics"`` or ``"traces"``.
        protocol: ``"grpc"`` or ``"http/protobuf"``; None follows the configuration.
        """
        self.signal = signal
        self.protocol = protocol

    def from_config(self, config: ExportSettings) -> Any:
        """The exporter; raises ImportError when the OTLP package of the protocol is not installed."""
        check_otlp_headers(os.environ, self.signal)  # before OpenTelemetry's parser could log a credential
        protocol = self.protocol or config.otlp_protocol
        module_name, class_name = _CLASSES[self.signal]
        exporter_class = getattr(import_module(f"{_PACKAGES[protocol]}.{module_name}"), class_name)
        grpc = protocol == "grpc"
        options: dict[str, Any] = {"channel_options": GRPC_CHANNEL_OPTIONS} if grpc else {}
        # The OTLP exporter ignores export(timeout_millis=); bound it by our export timeout unless the
        # OTLP-specific timeout variables say otherwise.
        if not any(os.environ.get(name) for name in _TIMEOUT_VARIABLES[self.signal]):
            options["timeout"] = config.export_timeout_s
        exporter = exporter_class(**options)
        if grpc:
            keep_grpc_channel(exporter)
        return exporter


METRICS = OtlpExporters("metrics")
METRICS_HTTP = OtlpExporters("metrics", "http/protobuf")
METRICS_GRPC = OtlpExporters("metrics", "grpc")
SPANS = OtlpExporters("traces")
SPANS_HTTP = OtlpExporters("traces", "http/protobuf")
SPANS_GRPC = OtlpExporters("traces", "grpc")
