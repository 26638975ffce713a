"""Exporter names (``OTEL_METRICS_EXPORTER``, ``OTEL_TRACES_EXPORTER``) to configured components, from entry points.

Every exporter is found through the ``opentelemetry_metrics_exporter`` / ``opentelemetry_traces_exporter`` entry
points of the installed distributions, ours (``pyproject.toml``) like anyone's: the pipeline imports none of them.
An entry point's target that has ``from_config(config)`` is built from the :class:`MonitoringConfig` (our
exporters), any other is called without arguments (OpenTelemetry's console exporter, third parties). When several
distributions declare one name, ours wins.

A few names OpenTelemetry's packages own are built our way from entry points of our own (:data:`SERVED_AS`):
``prometheus`` (opentelemetry-exporter-prometheus declares it for a ``MetricReader``, which would make every
recording cost twice) and the OTLP names (built with our timeout, header checks and gRPC channel). Ours carry a
``chat_turbo_`` name, so that OpenTelemetry's own configurator, which takes whichever entry point of a name it
finds first, never gets ours by accident. A name that is unknown or whose package is missing raises one
:class:`ConfigurationError` naming the variable and the choices.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from chat_turbo_metrics._core.config import ConfigurationError, MonitoringConfig, setting_label
from chat_turbo_metrics._core.otlp_headers import mask_parser_warnings

mask_parser_warnings()  # for OTLP exporters an application builds itself, too

_GROUPS = {"metrics": "opentelemetry_metrics_exporter", "traces": "opentelemetry_traces_exporter"}
_OURS = "chat_turbo_metrics"
# OpenTelemetry's names this pipeline builds from entry points of its own, by signal.
_OTLP = {name: f"chat_turbo_{name}" for name in ("otlp", "otlp_proto_http", "otlp_proto_grpc")}
SERVED_AS: dict[str, dict[str, str]] = {
    "metrics": {"prometheus": "chat_turbo_prometheus", **_OTLP},
    "traces": dict(_OTLP),
}


def _ours(entry_point: EntryPoint) -> bool:
    return entry_point.value.split(".", 1)[0].split(":", 1)[0] == _OURS


def exporters(signal: str) -> dict[str, EntryPoint]:
    """Every exporter name usable for ``signal`` ("metrics" or "traces") here, and the entry point that builds it."""
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=_GROUPS[signal]):
        if entry_point.name not in found or (_ours(entry_point) and not _ours(found[entry_point.name])):
            found[entry_point.name] = entry_point
    for name, own in SERVED_AS[signal].items():
        served = found.pop(own, None)
        if served is not None and _ours(served):
            found[name] = served
    return found


def available(signal: str) -> list[str]:
    """Every exporter name that can be used for ``signal`` ("metrics" or "traces") here."""
    return sorted(exporters(signal))


def _hint(entry_point: EntryPoint, target: object) -> str:
    hint = getattr(target, "install_hint", None)
    if isinstance(hint, str):
        return hint
    return f"pip install {entry_point.dist.name}" if entry_point.dist is not None else "install its package"


def _build(name: str, config: MonitoringConfig, variable: str, signal: str) -> Any:
    table = exporters(signal)
    entry_point = table.get(name)
    if entry_point is None:
        raise ConfigurationError(f"{variable}={name!r}: unknown exporter. Available: {', '.join(sorted(table))}")
    target: object = None
    try:
        target = entry_point.load()
        from_config = getattr(target, "from_config", None)
        return from_config(config) if callable(from_config) else target()  # type: ignore[operator]
    except ImportError as error:
        raise ConfigurationError(
            f"{variable}={name!r}: the exporter's package is not installed ({error.name}); "
            f"{_hint(entry_point, target)}. Available: {', '.join(sorted(table))}"
        ) from None


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
    for name in config.metrics_exporters:
        build_metric_exporter(name, config, setting_label(config, "metrics_exporters")).shutdown()
    for name in config.traces_exporters:
        build_span_processor(name, config, setting_label(config, "traces_exporters")).shutdown()
