"""Exporter names (``OTEL_METRICS_EXPORTER``, ``OTEL_TRACES_EXPORTER``) to configured components.

Our own exporters and the OpenTelemetry ones we know are built from :class:`MonitoringConfig`; any other
name is looked up among the installed ``opentelemetry_*_exporter`` entry points. A name that is unknown
or whose package is missing raises one :class:`ConfigurationError` naming the variable and the choices.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from chat_turbo_metrics._core.compat import keep_grpc_channel
from chat_turbo_metrics._core.config import ConfigurationError, MonitoringConfig
from chat_turbo_metrics._core.otlp_headers import check_otlp_headers, mask_parser_warnings

mask_parser_warnings()  # for OTLP exporters an application builds itself, too

_OTLP_PACKAGES = {
    "grpc": "opentelemetry.exporter.otlp.proto.grpc",
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http",
}
_OTLP_HINT = "pip install 'chat-turbo-metrics[otlp]'"
# While its endpoint is away a kept gRPC channel (see compat.keep_grpc_channel) reconnects with gRPC's backoff,
# which by default starts at 1 s and grows to 120 s; 0.5 s growing to 2 s bounds how long exports stay off after
# the endpoint returns, and a refused reconnect every 2 s costs next to nothing.
GRPC_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
_OTLP_TIMEOUT_VARIABLES = {
    "metrics": ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
    "traces": ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
}


def _otlp(signal: str, protocol: str | None = None) -> Callable[[MonitoringConfig], Any]:
    module_name, class_name = {
        "metrics": ("metric_exporter", "OTLPMetricExporter"),
        "traces": ("trace_exporter", "OTLPSpanExporter"),
    }[signal]

    def build(config: MonitoringConfig) -> Any:
        check_otlp_headers(os.environ, signal)  # before OpenTelemetry's parser could log a credential
        grpc = (protocol or config.otlp_protocol) == "grpc"
        package = _OTLP_PACKAGES[protocol or config.otlp_protocol]
        exporter_class = getattr(import_module(f"{package}.{module_name}"), class_name)
        options: dict[str, Any] = {"channel_options": GRPC_CHANNEL_OPTIONS} if grpc else {}
        # The OTLP exporter ignores export(timeout_millis=); bound it by our export timeout unless the
        # OTLP-specific timeout variables say otherwise.
        if not any(os.environ.get(name) for name in _OTLP_TIMEOUT_VARIABLES[signal]):
            options["timeout"] = config.export_timeout_s
        exporter = exporter_class(**options)
        if grpc:
            keep_grpc_channel(exporter)
        return exporter

    return build


def _prometheus(config: MonitoringConfig) -> Any:
    from chat_turbo_metrics.exporters.prometheus import PrometheusExporter

    return PrometheusExporter.from_config(config)


def _file(config: MonitoringConfig) -> Any:
    from chat_turbo_metrics.exporters.file import FileExporter

    return FileExporter.from_config(config)


def _database(config: MonitoringConfig) -> Any:
    from chat_turbo_metrics.exporters.database import DatabaseExporter

    return DatabaseExporter.from_config(config)


def _datadog(config: MonitoringConfig) -> Any:
    from chat_turbo_metrics.exporters.datadog import DataDogExporter

    return DataDogExporter.from_config(config)


def _console_metrics(config: MonitoringConfig) -> Any:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

    return ConsoleMetricExporter()


def _console_spans(config: MonitoringConfig) -> Any:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter()


# name -> (builder, how to get it when its package is missing)
METRIC_EXPORTERS: dict[str, tuple[Callable[[MonitoringConfig], Any], str]] = {
    "prometheus": (_prometheus, "pip install chat-turbo-metrics"),
    "chat_turbo_file": (_file, "pip install chat-turbo-metrics"),
    "chat_turbo_database": (_database, "pip install chat-turbo-metrics"),
    "datadog": (_datadog, "pip install chat-turbo-metrics"),
    "console": (_console_metrics, "pip install opentelemetry-sdk"),
    "otlp": (_otlp("metrics"), _OTLP_HINT),
    "otlp_proto_http": (_otlp("metrics", "http/protobuf"), _OTLP_HINT),
    "otlp_proto_grpc": (_otlp("metrics", "grpc"), _OTLP_HINT),
}
SPAN_EXPORTERS: dict[str, tuple[Callable[[MonitoringConfig], Any], str]] = {
    "console": (_console_spans, "pip install opentelemetry-sdk"),
    "otlp": (_otlp("traces"), _OTLP_HINT),
    "otlp_proto_http": (_otlp("traces", "http/protobuf"), _OTLP_HINT),
    "otlp_proto_grpc": (_otlp("traces", "grpc"), _OTLP_HINT),
}
_GROUPS = {"metrics": "opentelemetry_metrics_exporter", "traces": "opentelemetry_traces_exporter"}


def _entry_point_names(signal: str) -> set[str]:
    return {ep.name for ep in entry_points(group=_GROUPS[signal])}


def available(signal: str) -> list[str]:
    """Every exporter name that can be used for ``signal`` ("metrics" or "traces") here."""
    table = METRIC_EXPORTERS if signal == "metrics" else SPAN_EXPORTERS
    return sorted(set(table) | _entry_point_names(signal))


def _build(name: str, config: MonitoringConfig, variable: str, signal: str) -> Any:
    table = METRIC_EXPORTERS if signal == "metrics" else SPAN_EXPORTERS
    if name in table:
        builder, hint = table[name]
        try:
            return builder(config)
        except ImportError as error:
            raise ConfigurationError(
                f"{variable}={name!r}: the exporter's package is not installed ({error.name}); {hint}. "
                f"Available: {', '.join(available(signal))}"  # listed only now: a scan of every distribution
            ) from None
    for entry_point in entry_points(group=_GROUPS[signal], name=name):
        try:
            return entry_point.load()()
        except ImportError as error:
            raise ConfigurationError(f"{variable}={name!r}: cannot load {entry_point.value}: {error}") from None
    raise ConfigurationError(f"{variable}={name!r}: unknown exporter. Available: {', '.join(available(signal))}")


def build_metric_exporter(name: str, config: MonitoringConfig, variable: str) -> Any:
    """A push exporter (MetricExporter) or pull exporter for ``name``.

    Raises:
        ConfigurationError: unknown name, missing package, or a third-party reader (a second reader
            would make every recording cost twice).
    """
    exporter = _build(name, config, variable, "metrics")
    if isinstance(exporter, MetricReader):
        exporter.shutdown()
        raise ConfigurationError(
            f"{variable}={name!r}: {type(exporter).__name__} is a MetricReader; chat_turbo_metrics feeds every "
            "exporter from its one reader, so give it a MetricExporter instead"
        )
    if not isinstance(exporter, MetricExporter) and not hasattr(exporter, "attach"):
        raise ConfigurationError(f"{variable}={name!r}: {type(exporter).__name__} is not a metric exporter")
    return exporter


def build_span_processor(name: str, config: MonitoringConfig, variable: str) -> SpanProcessor:
    """A batch span processor around the span exporter named ``name``."""
    return BatchSpanProcessor(_build(name, config, variable, "traces"))


def check_components(config: MonitoringConfig) -> None:
    """Build every exporter and span processor ``config`` names, as the pipeline would, then stop them.

    Nothing is attached: no port is bound, no export runs. Used by ``chat-turbo-metrics config``.

    Raises:
        ConfigurationError: exactly the error building the pipeline from ``config`` would raise.
    """
    from chat_turbo_metrics._core.config import setting_label

    for name in config.metrics_exporters:
        build_metric_exporter(name, config, setting_label(config, "metrics_exporters")).shutdown()
    for name in config.traces_exporters:
        build_span_processor(name, config, setting_label(config, "traces_exporters")).shutdown()
