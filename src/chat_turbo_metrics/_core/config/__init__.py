"""One configuration path: defaults < ``configs/<environment>.toml`` < OTEL_* < seed variables < code.

Every setting is a field of :class:`MonitoringConfig`. A TOML file uses the field names as keys; the
environment uses the variables in ``_ENV_TABLE``. A bad value raises :class:`ConfigurationError` naming
the setting (file key or variable) and the value, at configuration time, never while recording.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from chat_turbo_metrics._core.config.values import (
    parse_bool,
    parse_database_url,
    parse_endpoint,
    parse_file_mode,
    parse_float,
    parse_host,
    parse_int,
    parse_names,
    parse_resource,
    parse_secret,
    parse_str,
)
from chat_turbo_metrics._core.endpoints import is_loopback, parse_secret_url
from chat_turbo_metrics._core.guard import configured_tags_problem, valid_text
from chat_turbo_metrics._core.secret import Secret, mask_url_password, mask_url_userinfo

_logger = logging.getLogger("chat_turbo_metrics.config")

Recording = Literal["fast", "sdk"]
ENVIRONMENTS = ("development", "production", "test")
# Where history goes when no database_url is configured: a SQLite file in the working directory.
DEFAULT_DATABASE_URL = "sqlite:///chat_turbo_metrics.db"
DEFAULT_SOURCE = "default"
# Bounds of the durations. Past them a value means nothing, and it overflows what it feeds long before it is
# infinite: a thread's wait (OverflowError past time_t), a timedelta, a nanosecond count in a database column.
LONGEST_S = 10 * 365 * 86400.0  # ten years
LONGEST_RETENTION_DAYS = 36500.0  # a hundred years
SHORTEST_EXPORT_S = 0.001  # one millisecond, the unit of OTEL_METRIC_EXPORT_INTERVAL/_TIMEOUT


class ConfigurationError(ValueError):
    """A setting has a value the pipeline cannot be built with; the message names both."""


class _InvalidSetting(ConfigurationError):
    """A check of the whole configuration failed; the source that set the value words the message."""

    def __init__(self, setting: str, value: Any, why: str) -> None:
        super().__init__(f"{setting}={shown_value(setting, value)}: {why}")
        self.setting = setting
        self.why = why


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


@dataclass(frozen=True)
class MonitoringConfig:
    """The whole configuration of one monitoring pipeline.

    Example:
        >>> config = MonitoringConfig(service_name="chat-api", metrics_exporters=("prometheus",))
        >>> config.prometheus_port
        9464
    """

    enabled: bool = True
    environment: str = "development"
    service_name: str = "chat-turbo"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    sampling_rate: float = 1.0
    retention_days: float = 30.0
    recording: Recording = "fast"
    self_telemetry: bool = True  # the pipeline's own health as chat_turbo_metrics_* metrics
    metrics_exporters: tuple[str, ...] = ("prometheus",)
    traces_exporters: tuple[str, ...] = ()
    export_interval_s: float = 60.0
    export_timeout_s: float = 30.0
    shutdown_timeout_s: float = 5.0  # the longest shutdown() or process exit waits for exporters
    otlp_protocol: str = "http/protobuf"
    cardinality_limit: int = 2000
    series_idle_timeout_s: float = 0.0  # 0: never; else series not recorded for this long leave memory
    metric_limit: int = 10_000  # distinct metric names per monitor; new ones past it are dropped
    prometheus_host: str = "localhost"
    prometheus_port: int = 9464
    file_path: str = "metrics.jsonl"
    file_max_bytes: int = 10 * 1024 * 1024
    file_rotation_interval_s: float = 86400.0
    file_mode: int = 0o600  # of the files (and, plus search, directories) the file exporter creates
    database_url: Secret | None = None
    alert_email_enabled: bool = False
    alert_slack_webhook_url: Secret | None = None
    alert_email_host: str = ""
    alert_email_port: int = 587
    alert_email_from: str = ""
    alert_email_to: tuple[str, ...] = ()
    alert_email_username: str = ""
    alert_email_password: Secret | None = None
    alert_email_tls: str = "starttls"
    alert_email_allow_insecure_auth: bool = False  # log in without TLS to a host other than this machine
    views: tuple[ViewConfig, ...] = ()
    # Datadog exporter (exporters/datadog): DD_* variables; None means "from the resource" or "not set".
    datadog_api_key: Secret | None = None
    datadog_site: str = "datadoghq.com"
    datadog_endpoint: Secret | None = None  # its user info may hold a proxy's credentials
    datadog_env: str | None = None
    datadog_service: str | None = None
    datadog_version: str | None = None
    datadog_tags: tuple[str, ...] = ()
    datadog_host: str | None = None
    datadog_histogram_buckets: bool = False
    # Where each setting came from (a variable name, a file path or "code"); missing ones are defaults.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    multiprocess: bool = True
    multiprocess_dir: str = ""
    multiprocess_group: str = ""
    multiprocess_gauges: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _SECRET_SETTINGS:  # plain strings given to the constructor are wrapped too
            value = getattr(self, name)
            if value is not None and not isinstance(value, Secret):
                try:
                    object.__setattr__(
                        self, name, (parse_endpoint if name == "datadog_endpoint" else parse_secret)(value)
                    )
                except (TypeError, ValueError) as error:
                    raise ConfigurationError(f"{name}={shown_value(name, value)}: {error}") from None
        _check_config(self)

    def replace(self, **changes: Any) -> MonitoringConfig:
        """Return a copy with ``changes`` applied (code-level overrides, validated like any other source)."""
        return _from_mapping(changes, "code", base=self)

    def source(self, setting: str) -> str:
        """Where ``setting`` came from: ``"default"``, a file path, a variable name or ``"code"``."""
        return self.sources.get(setting, DEFAULT_SOURCE)


def setting_label(config: MonitoringConfig, setting: str) -> str:
    """How an error should name ``setting``: its variable, ``<file>: <setting>``, or the setting itself."""
    source = config.source(setting)
    if source in (DEFAULT_SOURCE, "code"):
        return setting
    return source if source in _ENV_NAMES else f"{source}: {setting}"


def history_url(config: MonitoringConfig) -> Secret:
    """Where the database exporter keeps the metric history: ``database_url``, else :data:`DEFAULT_DATABASE_URL`.

    Example:
        >>> history_url(MonitoringConfig()).reveal()
        'sqlite:///chat_turbo_metrics.db'
    """
    return config.database_url or Secret(DEFAULT_DATABASE_URL)


def _check_config(config: MonitoringConfig) -> None:
    checks: list[tuple[str, bool, str]] = [
        ("sampling_rate", 0.0 < config.sampling_rate <= 1.0, "must be > 0 and <= 1"),
        (
            "retention_days",
            0 < config.retention_days <= LONGEST_RETENTION_DAYS,
            f"must be a number of days > 0 and at most {LONGEST_RETENTION_DAYS:.0f} (a hundred years)",
        ),
        ("recording", config.recording in ("fast", "sdk"), "must be 'fast' or 'sdk'"),
        ("export_interval_s", _export_duration(config.export_interval_s), _EXPORT_DURATION),
        ("export_timeout_s", _export_duration(config.export_timeout_s), _EXPORT_DURATION),
        ("shutdown_timeout_s", 0 < config.shutdown_timeout_s <= LONGEST_S, f"must be > 0 and {_AT_MOST}"),
        ("cardinality_limit", config.cardinality_limit > 0, "must be > 0"),
        (
            "series_idle_timeout_s",
            config.series_idle_timeout_s == 0 or 1 <= config.series_idle_timeout_s <= LONGEST_S,
            f"must be 0 (never) or >= 1 s and {_AT_MOST}",
        ),
        ("metric_limit", config.metric_limit > 0, "must be > 0"),
        ("otlp_protocol", config.otlp_protocol in ("grpc", "http/protobuf"), "must be 'grpc' or 'http/protobuf'"),
        ("prometheus_port", 0 <= config.prometheus_port <= 65535, "must be a TCP port (0-65535)"),
        ("file_max_bytes", config.file_max_bytes > 0, "must be > 0"),
        (
            "file_rotation_interval_s",
            0 < config.file_rotation_interval_s <= LONGEST_S,
            f"must be > 0 and {_AT_MOST}",
        ),
        ("service_name", bool(config.service_name), "must not be empty"),
        ("file_path", bool(config.file_path.strip()), "must be a file path, not empty"),
        ("prometheus_host", bool(config.prometheus_host.strip()), "must be a host name or address, not empty"),
        ("alert_email_port", 0 < config.alert_email_port <= 65535, "must be a TCP port (1-65535)"),
        ("alert_email_tls", config.alert_email_tls in ("starttls", "tls", "none"), "must be starttls, tls or none"),
        (
            "multiprocess_group",
            re.fullmatch(r"[A-Za-z0-9_-]{0,64}", config.multiprocess_group) is not None,
            "must be up to 64 letters, digits, '_' or '-'",
        ),
        (
            "multiprocess_gauges",
            all(mode in GAUGE_MODES for mode in config.multiprocess_gauges.values()),
            f"modes must be one of {', '.join(GAUGE_MODES)}",
        ),
        # The SDK accepts other boundaries, then drops every value recorded into the metric.
        ("views", all(_increasing(view.buckets) for view in config.views), _BUCKETS),
    ]
    for name, ok, why in checks:
        if not ok:
            raise _InvalidSetting(name, getattr(config, name), why)
    # What becomes resource attributes: every exporter must be able to encode it, Prometheus in target_info.
    for name in ("service_name", "environment"):
        if valid_text(getattr(config, name)) != getattr(config, name):
            raise _InvalidSetting(name, getattr(config, name), "not valid UTF-8 text (it holds a lone surrogate)")
    problem = configured_tags_problem(config.resource_attributes)
    if problem is not None:
        raise _InvalidSetting("resource_attributes", config.resource_attributes, problem)
    _check_notifiers(config)


def _check_notifiers(config: MonitoringConfig) -> None:
    """The notifiers' endpoints: a URL the Slack notifier cannot post to, a password sent in clear text."""
    if config.alert_slack_webhook_url is not None:
        try:
            parse_secret_url(config.alert_slack_webhook_url)
        except ValueError as error:  # the reason shows no part of the URL
            raise _InvalidSetting("alert_slack_webhook_url", config.alert_slack_webhook_url, str(error)) from None
    plain_login = config.alert_email_tls == "none" and config.alert_email_username and config.alert_email_password
    if (
        config.alert_email_enabled
        and plain_login
        and not config.alert_email_allow_insecure_auth
        and not is_loopback(config.alert_email_host)
    ):
        raise _InvalidSetting(
            "alert_email_tls",
            config.alert_email_tls,
            f"the SMTP password would cross the network to {config.alert_email_host!r} in clear text; use starttls "
            "or tls (or set alert_email_allow_insecure_auth, ALERT_EMAIL_ALLOW_INSECURE_AUTH=true, to accept that)",
        )


_AT_MOST = f"at most {LONGEST_S:.0f} s (ten years)"
_EXPORT_DURATION = f"must be at least 1 ms and {_AT_MOST}"
_BUCKETS = "bucket boundaries must be finite numbers, strictly increasing"


def _increasing(buckets: tuple[float, ...] | None) -> bool:
    if buckets is None:
        return True
    try:
        bounds = [float(bound) for bound in buckets if not isinstance(bound, bool)]
    except (TypeError, ValueError):
        return False
    finite = len(bounds) == len(buckets) and all(-math.inf < bound < math.inf for bound in bounds)
    return finite and all(low < high for low, high in itertools.pairwise(bounds))


def _export_duration(seconds: float) -> bool:
    return SHORTEST_EXPORT_S <= seconds <= LONGEST_S


def check_combination(config: MonitoringConfig) -> None:
    """Checks of settings that only make sense together, run once every source has been applied.

    Raises:
        ConfigurationError: email alerts are enabled without a server, a sender or recipients.
    """
    if config.alert_email_enabled:
        missing = [f"{variable} ({setting})" for setting, variable in _EMAIL_NEEDS if not getattr(config, setting)]
        if missing:
            raise _InvalidSetting(
                setting_label(config, "alert_email_enabled"), True, f"email alerts need {', '.join(missing)}"
            )


_EMAIL_NEEDS = (
    ("alert_email_host", "ALERT_EMAIL_HOST"),
    ("alert_email_from", "ALERT_EMAIL_FROM"),
    ("alert_email_to", "ALERT_EMAIL_TO"),
)


def _parse_views(raw: Any) -> tuple[ViewConfig, ...]:
    if isinstance(raw, Mapping):  # TOML: [views.<instrument>] tables
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


def _parse_optional_str(raw: Any) -> str | None:
    text = parse_str(raw).strip()
    return text or None


def _parse_datadog_site(raw: Any) -> str:
    site = parse_str(raw).strip().lower()
    if not site or "/" in site or ":" in site or any(char.isspace() for char in site):
        raise ValueError("expected a Datadog site such as datadoghq.com or datadoghq.eu (a domain, no scheme or path)")
    return site


def _parse_datadog_tags(raw: Any) -> tuple[str, ...]:
    # DD_TAGS separates tags with spaces or commas, as Datadog's own libraries accept it.
    items = raw.replace(",", " ").split() if isinstance(raw, str) else [str(item) for item in raw]
    return tuple(item.strip() for item in items if item.strip())


GAUGE_MODES = ("sum", "max", "min", "latest", "worker")


def _parse_gauge_modes(raw: Any) -> dict[str, str]:
    """``sum`` (every gauge) or ``active_connections=sum,cpu_*=max,*=latest`` (per metric name pattern)."""
    if isinstance(raw, str):
        items = [item.strip() for item in raw.split(",") if item.strip()]
        pairs = [item.partition("=") for item in items]
        raw = {(name.strip() if sep else "*"): (mode if sep else name).strip() for name, sep, mode in pairs}
    modes = {str(name): str(mode).strip().lower() for name, mode in dict(raw).items()}
    for name, mode in modes.items():
        if mode not in GAUGE_MODES:
            raise ValueError(f"gauge mode {mode!r} for {name!r}: expected one of {', '.join(GAUGE_MODES)}")
    return modes


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "enabled": parse_bool,
    "environment": parse_str,
    "service_name": parse_str,
    "resource_attributes": parse_resource,
    "sampling_rate": parse_float,
    "retention_days": parse_float,
    "recording": parse_str,
    "self_telemetry": parse_bool,
    "metrics_exporters": parse_names,
    "traces_exporters": parse_names,
    "export_interval_s": parse_float,
    "export_timeout_s": parse_float,
    "shutdown_timeout_s": parse_float,
    "otlp_protocol": parse_str,
    "cardinality_limit": parse_int,
    "series_idle_timeout_s": parse_float,
    "metric_limit": parse_int,
    "prometheus_host": parse_host,
    "prometheus_port": parse_int,
    "file_path": parse_str,
    "file_max_bytes": parse_int,
    "file_rotation_interval_s": parse_float,
    "file_mode": parse_file_mode,
    "database_url": parse_database_url,
    "alert_email_enabled": parse_bool,
    "alert_slack_webhook_url": parse_secret,
    "alert_email_host": parse_str,
    "alert_email_port": parse_int,
    "alert_email_from": parse_str,
    "alert_email_to": parse_names,
    "alert_email_username": parse_str,
    "alert_email_password": parse_secret,
    "alert_email_tls": parse_str,
    "alert_email_allow_insecure_auth": parse_bool,
    "views": _parse_views,
    "datadog_api_key": parse_secret,
    "datadog_site": _parse_datadog_site,
    "datadog_endpoint": parse_endpoint,
    "datadog_env": _parse_optional_str,
    "datadog_service": _parse_optional_str,
    "datadog_version": _parse_optional_str,
    "datadog_tags": _parse_datadog_tags,
    "datadog_host": _parse_optional_str,
    "datadog_histogram_buckets": parse_bool,
    "multiprocess": parse_bool,
    "multiprocess_dir": parse_str,
    "multiprocess_group": parse_str,
    "multiprocess_gauges": _parse_gauge_modes,
}
_SECRET_SETTINGS = frozenset(
    ("database_url", "alert_slack_webhook_url", "alert_email_password", "datadog_api_key", "datadog_endpoint")
)


def _from_mapping(
    values: Mapping[str, Any], source: str, base: MonitoringConfig, typed: Mapping[str, str] | None = None
) -> MonitoringConfig:
    """Apply ``values`` (field name -> raw value) from ``source`` on top of ``base``.

    ``typed`` holds what the user wrote when ``values`` were converted from it (a variable in milliseconds),
    so that an error quotes the user's text rather than the converted value.
    """
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        parser = _PARSERS.get(key)
        if parser is None:
            known = ", ".join(sorted(_PARSERS))
            raise ConfigurationError(f"{source}: unknown setting {key!r} (known: {known})")
        try:
            parsed[key] = parser(raw)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"{_where(source, key)}={shown_value(key, raw)}: {error}") from None
    try:
        return dataclasses.replace(base, **parsed, sources={**base.sources, **dict.fromkeys(parsed, source)})
    except _InvalidSetting as error:
        if error.setting not in parsed:  # another setting made this one invalid; its own source is named
            raise ConfigurationError(f"{source}: {error}") from None
        shown = (typed or {}).get(error.setting, values[error.setting])
        raise ConfigurationError(
            f"{_where(source, error.setting)}={shown_value(error.setting, shown)}: {error.why}"
        ) from None


def _where(source: str, key: str) -> str:
    """A variable names itself; a file or code names the key: ``OTEL_X``, ``prod.toml: key``, ``code: key``."""
    return source if source in _ENV_NAMES else f"{source}: {key}"


def shown_value(key: str, raw: Any) -> str:
    """``raw`` as an error may quote it for setting ``key``: a secret's password part masked, the rest shown."""
    if key not in _SECRET_SETTINGS:
        return repr(raw)
    text = raw.reveal() if isinstance(raw, Secret) else str(raw)
    if key == "datadog_endpoint":
        return repr(mask_url_userinfo(text))
    if key == "database_url":
        # Show the URL with its password masked, if one can be told apart; the query (which may carry
        # password= or sslpassword=) never. Anything else is masked whole.
        base, query, _ = text.partition("?")
        masked = mask_url_password(base)
        if masked != base:
            return repr(masked + ("?***" if query else ""))
    return repr(Secret(text).masked())


# --- environment variables ---------------------------------------------------------------------


@dataclass(frozen=True)
class _EnvVar:
    name: str
    setting: str
    convert: Callable[[str], Any] = lambda raw: raw
    # Most empty variables count as unset (as OpenTelemetry specifies); for these, empty is a mistake.
    empty_is_error: bool = False


def _otel_ms(raw: str) -> float:
    try:
        milliseconds = parse_float(raw)
    except ValueError as error:
        raise ValueError(f"expected a number of milliseconds without a unit, such as 60000 ({error})") from None
    return milliseconds / 1000.0


def _not(raw: str) -> bool:
    return not parse_bool(raw)


# OTEL variables first, seed variables last: a later source wins over an earlier one.
_OTEL_ENV: tuple[_EnvVar, ...] = (
    _EnvVar("OTEL_SDK_DISABLED", "enabled", _not),
    _EnvVar("OTEL_SERVICE_NAME", "service_name"),
    _EnvVar("OTEL_RESOURCE_ATTRIBUTES", "resource_attributes"),
    _EnvVar("OTEL_METRICS_EXPORTER", "metrics_exporters"),
    _EnvVar("OTEL_TRACES_EXPORTER", "traces_exporters"),
    _EnvVar("OTEL_METRIC_EXPORT_INTERVAL", "export_interval_s", _otel_ms),
    _EnvVar("OTEL_METRIC_EXPORT_TIMEOUT", "export_timeout_s", _otel_ms),
    _EnvVar("OTEL_EXPORTER_OTLP_PROTOCOL", "otlp_protocol"),
    _EnvVar("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "otlp_protocol"),
    _EnvVar("OTEL_EXPORTER_PROMETHEUS_HOST", "prometheus_host"),
    _EnvVar("OTEL_EXPORTER_PROMETHEUS_PORT", "prometheus_port"),
)
_SEED_ENV: tuple[_EnvVar, ...] = (
    _EnvVar("PERFORMANCE_MONITORING_ENABLED", "enabled"),
    _EnvVar("METRICS_SAMPLING_RATE", "sampling_rate"),
    _EnvVar("METRICS_RETENTION_DAYS", "retention_days"),
    _EnvVar("METRICS_RECORDING", "recording"),
    _EnvVar("METRICS_SELF_TELEMETRY", "self_telemetry"),
    _EnvVar("METRICS_CARDINALITY_LIMIT", "cardinality_limit"),
    _EnvVar("METRICS_SERIES_IDLE_TIMEOUT", "series_idle_timeout_s"),
    _EnvVar("METRICS_METRIC_LIMIT", "metric_limit"),
    _EnvVar("METRICS_SHUTDOWN_TIMEOUT", "shutdown_timeout_s"),
    _EnvVar("ALERT_EMAIL_ENABLED", "alert_email_enabled"),
    _EnvVar("ALERT_SLACK_WEBHOOK_URL", "alert_slack_webhook_url"),
    _EnvVar("ALERT_EMAIL_HOST", "alert_email_host"),
    _EnvVar("ALERT_EMAIL_PORT", "alert_email_port"),
    _EnvVar("ALERT_EMAIL_FROM", "alert_email_from"),
    _EnvVar("ALERT_EMAIL_TO", "alert_email_to"),
    _EnvVar("ALERT_EMAIL_USERNAME", "alert_email_username"),
    _EnvVar("ALERT_EMAIL_PASSWORD", "alert_email_password"),
    # Before ALERT_EMAIL_TLS: each variable is checked with those before it, and this one permits tls=none.
    _EnvVar("ALERT_EMAIL_ALLOW_INSECURE_AUTH", "alert_email_allow_insecure_auth"),
    _EnvVar("ALERT_EMAIL_TLS", "alert_email_tls"),
    _EnvVar("METRICS_PROMETHEUS_PORT", "prometheus_port"),
    _EnvVar("METRICS_FILE_PATH", "file_path", empty_is_error=True),
    _EnvVar("METRICS_FILE_MODE", "file_mode"),
    _EnvVar("METRICS_DATABASE_URL", "database_url"),
    _EnvVar("CHAT_TURBO_ENV", "environment"),
    # Datadog's own variables, read as its libraries read them; the endpoint override is ours.
    _EnvVar("DD_API_KEY", "datadog_api_key"),
    _EnvVar("DD_SITE", "datadog_site"),
    _EnvVar("DD_ENV", "datadog_env"),
    _EnvVar("DD_SERVICE", "datadog_service"),
    _EnvVar("DD_VERSION", "datadog_version"),
    _EnvVar("DD_TAGS", "datadog_tags"),
    _EnvVar("DD_HOSTNAME", "datadog_host"),
    _EnvVar("CHAT_TURBO_DATADOG_ENDPOINT", "datadog_endpoint"),
    _EnvVar("CHAT_TURBO_DATADOG_HISTOGRAM_BUCKETS", "datadog_histogram_buckets"),
    _EnvVar("METRICS_MULTIPROCESS", "multiprocess"),
    _EnvVar("METRICS_MULTIPROCESS_DIR", "multiprocess_dir"),
    _EnvVar("METRICS_MULTIPROCESS_GROUP", "multiprocess_group"),
    _EnvVar("METRICS_MULTIPROCESS_GAUGES", "multiprocess_gauges"),
)


VARIABLES = tuple(var.name for var in (*_OTEL_ENV, *_SEED_ENV))  # every variable a setting is read from
_ENV_NAMES = frozenset(VARIABLES)


def is_variable(source: str) -> bool:
    """True when a setting's source is an environment variable (rather than a file, code or the default)."""
    return source in _ENV_NAMES


def _env_values(env: Mapping[str, str], table: tuple[_EnvVar, ...]) -> dict[str, tuple[str, Any, str]]:
    """setting -> (variable, converted value, the text as typed) for every variable set in ``env``."""
    found: dict[str, tuple[str, Any, str]] = {}
    for var in table:
        raw = env.get(var.name)
        if raw is None:
            continue
        if raw.strip() == "":
            if var.empty_is_error:
                raise ConfigurationError(f"{var.name}={raw!r}: set but empty; unset it to use the default")
            continue
        try:
            value = var.convert(raw)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"{var.name}={shown_value(var.setting, raw)}: {error}") from None
        found[var.setting] = (var.name, value, raw)
    return found


def _apply_env(base: MonitoringConfig, env: Mapping[str, str]) -> MonitoringConfig:
    otel = _env_values(env, _OTEL_ENV)
    seed = _env_values(env, _SEED_ENV)
    config = base
    for values in (otel, seed):
        for setting, (var_name, value, typed) in values.items():
            config = _from_mapping({setting: value}, var_name, base=config, typed={setting: typed})
    for setting in otel.keys() & seed.keys():
        otel_name, otel_value, _ = otel[setting]
        seed_name = seed[setting][0]
        theirs = _from_mapping({setting: otel_value}, otel_name, base=base)
        if getattr(theirs, setting) != getattr(config, setting):
            _logger.warning(
                "%s and %s disagree; using %s=%s (seed variables win over OTEL_* ones)",
                seed_name,
                otel_name,
                seed_name,
                shown_value(setting, getattr(config, setting)),
            )
    if "file_path" in seed and "metrics_exporters" not in otel and "chat_turbo_file" not in config.metrics_exporters:
        # METRICS_FILE_PATH alone switches file export on, as the seed's example implies.
        config = dataclasses.replace(
            config,
            metrics_exporters=(*config.metrics_exporters, "chat_turbo_file"),
            sources={**config.sources, "metrics_exporters": "METRICS_FILE_PATH"},
        )
    return config


# --- files -------------------------------------------------------------------------------------


CONFIG_DIR_VARIABLE = "CHAT_TURBO_CONFIG_DIR"
_PACKAGED = Path(__file__).resolve().parents[2] / "configs"
_CHECKOUT = Path(__file__).resolve().parents[4] / "configs"


def config_dirs(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """Where ``<environment>.toml`` files are looked up, in this order; the first directory holding the file wins.

    1. ``$CHAT_TURBO_CONFIG_DIR``, when set (a relative path is taken from the working directory);
    2. ``configs/`` in the working directory, when it is the user's own: owned by this user (or root),
       writable by no one else, not a symbolic link; otherwise it is skipped with a warning;
    3. the ``configs/`` shipped inside the installed package;
    4. the ``configs/`` of a source checkout the package runs from.

    Args:
        env: the environment variables (default ``os.environ``).

    Raises:
        ConfigurationError: ``CHAT_TURBO_CONFIG_DIR`` is set but is not a directory.
    """
    env = os.environ if env is None else env
    found: list[Path] = []
    chosen = env.get(CONFIG_DIR_VARIABLE, "").strip()
    if chosen:
        if not Path(chosen).is_dir():
            raise ConfigurationError(f"{CONFIG_DIR_VARIABLE}={chosen!r}: not a directory")
        found.append(Path(chosen).absolute())
    local = Path.cwd() / "configs"
    if local.is_dir() and local.resolve() not in (_PACKAGED, _CHECKOUT):
        problem = _not_owned(local)
        if problem:
            _logger.warning("not reading %s: it %s; set %s to use it anyway", local, problem, CONFIG_DIR_VARIABLE)
        else:
            found.append(local)
    return (*found, _PACKAGED, _CHECKOUT)


def _not_owned(path: Path) -> str:
    """Why ``path`` is not safely the user's own (another user could have put it there or can change it), or ''."""
    try:
        info = path.lstat()
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    uid = getattr(os, "getuid", lambda: info.st_uid)()
    if info.st_uid not in (uid, 0):
        return f"belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by other users"
    return ""


# configs/ also holds files that are not environments (alert rules for AlertManager.load_rules).
NOT_ENVIRONMENTS = frozenset({"alert_rules"})


def _config_file(environment: str, env: Mapping[str, str], setting: str = "environment") -> Path:
    """The file of ``environment``, chosen by ``setting`` (``environment`` in code, or ``CHAT_TURBO_ENV``)."""
    if environment in NOT_ENVIRONMENTS:
        raise ConfigurationError(f"{setting}={environment!r}: configs/{environment}.toml is not an environment")
    if not environment or not environment.replace("-", "").replace("_", "").isalnum():
        raise ConfigurationError(f"{setting}={environment!r}: expected a name such as {', '.join(ENVIRONMENTS)}")
    directories = config_dirs(env)
    for directory in directories:
        candidate = directory / f"{environment}.toml"
        if candidate.is_file():
            problem = _not_owned(candidate) if directory == Path.cwd() / "configs" else ""
            if not problem:
                return candidate
            _logger.warning("not reading %s: it %s", candidate, problem)
    shipped = sorted({p.stem for d in directories if d.is_dir() for p in d.glob("*.toml")} - NOT_ENVIRONMENTS)
    searched = ", ".join(str(directory) for directory in directories if directory.is_dir())
    raise ConfigurationError(
        f"{setting}={environment!r}: no {environment}.toml in {searched} (available: {', '.join(shipped)})"
    )


def load_config_file(path: str | os.PathLike[str], base: MonitoringConfig | None = None) -> MonitoringConfig:
    """Read a TOML file whose keys are :class:`MonitoringConfig` field names.

    Raises:
        ConfigurationError: the file is unreadable, not TOML, or has an unknown key or a bad value.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigurationError(f"{path}: {error}") from None
    return _from_mapping(data, str(path), base=base or MonitoringConfig())


def get_monitoring_config(
    environment: str | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> MonitoringConfig:
    """Build the configuration for ``environment``: defaults, then its TOML file, then the environment.

    Args:
        environment: ``development``, ``production``, ``test`` or the stem of another file in
            :func:`config_dirs`. Defaults to ``$CHAT_TURBO_ENV``, then ``development``.
        env: the environment variables to read (defaults to ``os.environ``).
        **overrides: field values set in code; they win over every other source.

    Returns:
        The validated configuration.

    Raises:
        ConfigurationError: a setting in any source has a bad value.
    """
    env = os.environ if env is None else env
    name = environment or env.get("CHAT_TURBO_ENV") or "development"
    chosen_by = "CHAT_TURBO_ENV" if not environment and env.get("CHAT_TURBO_ENV") else "environment"
    config = load_config_file(_config_file(name, env, chosen_by), MonitoringConfig(environment=name))
    config = _apply_env(config, env)
    if environment:  # an explicit argument beats $CHAT_TURBO_ENV for the recorded name too
        config = dataclasses.replace(config, environment=environment, sources={**config.sources, "environment": "code"})
    elif env.get("CHAT_TURBO_ENV"):
        config = dataclasses.replace(config, sources={**config.sources, "environment": "CHAT_TURBO_ENV"})
    config = _from_mapping(overrides, "code", base=config) if overrides else config
    check_combination(config)
    return config
