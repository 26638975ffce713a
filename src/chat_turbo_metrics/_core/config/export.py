"""Export settings: which exporters, how often push exporters run, where ``/metrics`` is served, OTLP's protocol."""

from __future__ import annotations

from dataclasses import dataclass

from chat_turbo_metrics._core.config.checks import DURATION, EXPORT_DURATION, holds, one_of, port
from chat_turbo_metrics._core.config.declaration import OtherVariable, Settings, Variable, setting
from chat_turbo_metrics._core.config.values import (
    parse_bool,
    parse_float,
    parse_host,
    parse_int,
    parse_names,
    parse_str,
)

EXPLICIT_HISTOGRAM = "explicit_bucket_histogram"
EXPONENTIAL_HISTOGRAM = "base2_exponential_bucket_histogram"


def otel_enum(raw: str) -> str:
    """An OTel enum value: the specification reads them case-insensitively.

    Example:
        >>> otel_enum(" Base2_Exponential_Bucket_Histogram")
        'base2_exponential_bucket_histogram'
    """
    return parse_str(raw).strip().lower()


def otel_milliseconds(raw: str) -> float:
    """``OTEL_METRIC_EXPORT_*``'s milliseconds as seconds.

    Example:
        >>> otel_milliseconds("2500")
        2.5
    """
    try:
        milliseconds = parse_float(raw)
    except ValueError as error:
        raise ValueError(f"expected a number of milliseconds without a unit, such as 60000 ({error})") from None
    return milliseconds / 1000.0


@dataclass(frozen=True, kw_only=True)
class ExportSettings(Settings):
    """Which exporters run, when push exporters export, where Prometheus is served.

    Example:
        >>> ExportSettings().prometheus_port
        9464
    """

    SECTION = "export"
    TITLE = "exporters, push intervals, the /metrics endpoint, OTLP"

    metrics_exporters: tuple[str, ...] = setting(
        ("prometheus",),
        parse=parse_names,
        otel=("OTEL_METRICS_EXPORTER",),
        meaning="exporters by entry point name: `prometheus`, `chat_turbo_file`, `chat_turbo_database`, `datadog`, "
        "`otlp`, `console`, a third party's; `none` for none",
    )
    traces_exporters: tuple[str, ...] = setting(
        (),
        parse=parse_names,
        otel=("OTEL_TRACES_EXPORTER",),
        shown_default="none (spans are processed, not exported)",
        meaning="`console`, `otlp` or another span exporter's entry point name",
    )
    export_interval_s: float = setting(
        60.0,
        parse=parse_float,
        otel=(Variable("OTEL_METRIC_EXPORT_INTERVAL", convert=otel_milliseconds, unit="ms"),),
        checks=(EXPORT_DURATION,),
        meaning="seconds between push exports (the variable is in milliseconds: `10s` is refused, saying so)",
    )
    export_timeout_s: float = setting(
        30.0,
        parse=parse_float,
        otel=(Variable("OTEL_METRIC_EXPORT_TIMEOUT", convert=otel_milliseconds, unit="ms"),),
        checks=(EXPORT_DURATION,),
        meaning="seconds one push export may take (the variable is in milliseconds)",
    )
    shutdown_timeout_s: float = setting(
        5.0,
        parse=parse_float,
        variable="METRICS_SHUTDOWN_TIMEOUT",
        checks=(DURATION,),
        meaning="seconds `shutdown()` and process exit wait at most for exporters",
    )
    otlp_protocol: str = setting(
        "http/protobuf",
        parse=parse_str,
        otel=("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
        checks=(one_of("grpc", "http/protobuf"),),
        meaning="`http/protobuf` or `grpc`, for the `otlp` exporters",
    )
    histogram_aggregation: str = setting(
        EXPLICIT_HISTOGRAM,
        parse=otel_enum,
        otel=("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",),
        checks=(one_of(EXPLICIT_HISTOGRAM, EXPONENTIAL_HISTOGRAM),),
        meaning="`explicit_bucket_histogram` or `base2_exponential_bucket_histogram` (any case): with the latter, "
        "histograms without explicit View buckets are base-2 exponential histograms (max scale 20, 160 buckets), "
        "recorded through the SDK (slower); OTLP and file exporters receive them as such, `/metrics` as the classic "
        "buckets they convert to, Datadog as count/sum/min/max, the database as classic histograms",
    )
    prometheus_host: str = setting(
        "localhost",
        parse=parse_host,
        otel=("OTEL_EXPORTER_PROMETHEUS_HOST",),
        checks=(holds(lambda host: bool(host.strip()), "must be a host name or address, not empty"),),
        meaning="interface `/metrics` is served on",
    )
    prometheus_port: int = setting(
        9464,
        parse=parse_int,
        variable="METRICS_PROMETHEUS_PORT",
        otel=("OTEL_EXPORTER_PROMETHEUS_PORT",),
        checks=(port(0),),
        meaning="port of `/metrics` (`0`: any free port)",
    )
    prometheus_scope_labels: bool = setting(
        True,
        parse=parse_bool,
        variable="METRICS_PROMETHEUS_SCOPE_LABELS",
        meaning="label every `/metrics` sample with `otel_scope_name` and `otel_scope_version`, as the "
        "OTel-Prometheus compatibility spec requires; `false` leaves them out (upstream's `without_scope_info`)",
    )


OTLP_HEADERS = OtherVariable(
    ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
    ExportSettings.SECTION,
    "comma-separated `name=value` pairs, values URL-encoded (`authorization=Bearer%20<token>`); checked when the "
    "OTLP exporter is built: a malformed header (`Authorization: Bearer ...`) is a `ConfigurationError` naming the "
    "variable, its value never shown, and OpenTelemetry's own warning about one is masked",
    read_by="the OTLP exporter",
)
