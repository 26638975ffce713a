"""Core settings: whether monitoring runs, what it describes (the resource) and how it records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from chat_turbo_metrics._core.config.checks import AT_MOST, LONGEST_S, NOT_EMPTY, POSITIVE, holds, increasing, one_of
from chat_turbo_metrics._core.config.declaration import OtherVariable, Settings, Variable, setting
from chat_turbo_metrics._core.config.values import parse_bool, parse_float, parse_int, parse_resource, parse_str
from chat_turbo_metrics._core.guard import configured_tags_problem, valid_text
from chat_turbo_metrics._core.semconv import SEMCONV_STABILITY_OPT_IN, is_tokens, parse_opt_in

Recording = Literal["fast", "sdk"]
ENVIRONMENTS = ("development", "production", "test")


@dataclass(frozen=True)
class ViewConfig:
    """How one metric is aggregated and exported (an OpenTelemetry View).

    Example:
        >>> ViewConfig(instrument="http_request_duration", buckets=(0.1, 0.5, 1.0), attribute_keys=("method",))
        ViewConfig(instrument='http_request_duration', ...)

    Args:
        instrument: the instrument name (OTel name, without unit suffix) or a wildcard such as ``"*_duration"``.
        name: export the metric under this name instead.
        description: replace the description (Prometheus HELP).
        buckets: explicit histogram bucket boundaries.
        attribute_keys: keep only these tag keys; all others are dropped before aggregation.
        drop: do not export this metric at all.
    """

    instrument: str
    name: str | None = None
    description: str | None = None
    buckets: tuple[float, ...] | None = None
    attribute_keys: tuple[str, ...] | None = None
    drop: bool = False


def parse_views(raw: Any) -> tuple[ViewConfig, ...]:
    """Views from code (``ViewConfig`` or mappings) or a file (``[views.<instrument>]`` tables)."""
    if isinstance(raw, Mapping):
        raw = [{"instrument": key, **value} for key, value in raw.items()]
    views = []
    for item in raw:
        if isinstance(item, ViewConfig):
            views.append(item)
            continue
        spec = dict(item)
        for key in ("buckets", "attribute_keys"):
            if spec.get(key) is not None:
                spec[key] = tuple(spec[key])
        try:
            views.append(ViewConfig(**spec))
        except TypeError as error:
            raise ValueError(f"bad view {item!r}: {error}") from None
    return tuple(views)


def _not(raw: str) -> bool:
    return not parse_bool(raw)


# What becomes resource attributes: every exporter must be able to encode it, Prometheus in target_info.
_TEXT = holds(lambda text: valid_text(text) == text, "not valid UTF-8 text (it holds a lone surrogate)")
_BUCKETS = "bucket boundaries must be finite numbers, strictly increasing"


@dataclass(frozen=True, kw_only=True)
class CoreSettings(Settings):
    """Whether monitoring runs, the resource it describes, and how recordings are kept.

    Example:
        >>> CoreSettings(sampling_rate=0.5).cardinality_limit
        2000
    """

    SECTION = "core"
    TITLE = "whether monitoring runs, what it describes, how it records"

    enabled: bool = setting(
        True,
        parse=parse_bool,
        variable="PERFORMANCE_MONITORING_ENABLED",
        otel=(Variable("OTEL_SDK_DISABLED", convert=_not),),
        meaning="`false`: no pipeline is built; every recording call is a no-op function",
    )
    environment: str = setting(
        "development",
        parse=parse_str,
        variable="CHAT_TURBO_ENV",
        checks=(_TEXT,),
        meaning="which `configs/<environment>.toml` to load: `development`, `production`, `test` or one of yours",
    )
    service_name: str = setting(
        "chat-turbo",
        parse=parse_str,
        otel=("OTEL_SERVICE_NAME",),
        checks=(NOT_EMPTY, _TEXT),
        meaning="the resource's `service.name`, on every metric and span",
    )
    resource_attributes: Mapping[str, str] = setting(
        factory=dict,
        parse=parse_resource,
        otel=("OTEL_RESOURCE_ATTRIBUTES",),
        checks=(configured_tags_problem,),
        shown_default="none",
        meaning="more resource attributes, `key=value` pairs separated by commas; the limits of tags apply",
    )
    sampling_rate: float = setting(
        1.0,
        parse=parse_float,
        variable="METRICS_SAMPLING_RATE",
        checks=(holds(lambda rate: 0.0 < rate <= 1.0, "must be > 0 and <= 1"),),
        meaning="fraction (0, 1] of **histogram and timer** observations recorded; counters and gauges are always "
        "exact. Quantiles stay unbiased; `_count`/`_sum` scale with the rate",
    )
    recording: Recording = setting(
        "fast",
        parse=parse_str,
        variable="METRICS_RECORDING",
        checks=(one_of("fast", "sdk"),),
        meaning="`fast` (pre-aggregating) or `sdk` (plain OTel instruments, keeps exemplars); see "
        "[Recording paths](#recording-paths)",
    )
    self_telemetry: bool = setting(
        True,
        parse=parse_bool,
        variable="METRICS_SELF_TELEMETRY",
        meaning="the pipeline's own health as `chat_turbo_metrics_*` metrics; `false` leaves them out of every "
        "export ([Self-telemetry](#self-telemetry)); overflow is still warned about",
    )
    cardinality_limit: int = setting(
        2000,
        parse=parse_int,
        variable="METRICS_CARDINALITY_LIMIT",
        checks=(POSITIVE,),
        meaning='series per metric before the rest fold into `otel.metric.overflow="true"`',
    )
    series_idle_timeout_s: float = setting(
        0.0,
        parse=parse_float,
        variable="METRICS_SERIES_IDLE_TIMEOUT",
        checks=(
            holds(
                lambda seconds: seconds == 0 or 1 <= seconds <= LONGEST_S, f"must be 0 (never) or >= 1 s and {AT_MOST}"
            ),
        ),
        shown_default="`0` (never)",
        meaning="seconds after which a series nobody records leaves memory, freeing its slot under the cardinality "
        "limit; `0`: never; else at least 1 (see [Memory](#memory))",
    )
    metric_limit: int = setting(
        10_000,
        parse=parse_int,
        variable="METRICS_METRIC_LIMIT",
        checks=(POSITIVE,),
        meaning="distinct metric names per monitor; new names past it are dropped, warned about once and counted",
    )
    views: tuple[ViewConfig, ...] = setting(
        (),
        parse=parse_views,
        # The SDK accepts other boundaries, then drops every value recorded into the metric.
        checks=(holds(lambda views: all(increasing(view.buckets) for view in views), _BUCKETS),),
        shown_default="none",
        meaning="OpenTelemetry Views: in a file, `[views.<instrument>]` tables with `name`, `description`, "
        "`buckets`, `attribute_keys`, `drop`; in code, `ViewConfig`s",
    )
    semconv_stability_opt_in: tuple[str, ...] = setting(
        (),
        parse=parse_opt_in,
        checks=(holds(is_tokens, "must be a tuple of tokens such as ('http', 'database/dup')"),),
        otel=(SEMCONV_STABILITY_OPT_IN,),
        shown_default="none (the seed's names)",
        meaning="which names the instrumentors emit, read as OpenTelemetry's instrumentations read it: `http` / "
        "`database` the semantic conventions' names only, `http/dup` / `database/dup` both those and the seed's; "
        "comma-separated; other tokens are left to other libraries (see [Semantic-convention names]"
        "(#semantic-convention-names))",
    )


CONFIG_DIR = OtherVariable(
    ("CHAT_TURBO_CONFIG_DIR",),
    CoreSettings.SECTION,
    "a directory of your own `<environment>.toml` files, looked in first (then `./configs`, then the shipped ones)",
)
