"""One configuration path: defaults < ``configs/<environment>.toml`` < OTEL_* < seed variables < code.

Every setting is a field of :class:`MonitoringConfig`. A TOML file uses the field names as keys; the
environment uses the variables in ``_ENV_TABLE``. A bad value raises :class:`ConfigurationError` naming
the setting (file key or variable) and the value, at configuration time, never while recording.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from chat_turbo_metrics._secret import Secret

_logger = logging.getLogger("chat_turbo_metrics.config")

Recording = Literal["fast", "sdk"]
ENVIRONMENTS = ("development", "production", "test")


class ConfigurationError(ValueError):
    """A setting has a value the pipeline cannot be built with; the message names both."""


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
    metrics_exporters: tuple[str, ...] = ("prometheus",)
    traces_exporters: tuple[str, ...] = ()
    export_interval_s: float = 60.0
    export_timeout_s: float = 30.0
    otlp_protocol: str = "http/protobuf"
    cardinality_limit: int = 2000
    prometheus_host: str = "localhost"
    prometheus_port: int = 9464
    file_path: str = "metrics.jsonl"
    file_max_bytes: int = 10 * 1024 * 1024
    file_rotation_interval_s: float = 86400.0
    database_url: Secret | None = None
    alert_email_enabled: bool = False
    alert_slack_webhook_url: Secret | None = None
    views: tuple[ViewConfig, ...] = ()

    def __post_init__(self) -> None:
        _check_config(self)

    def replace(self, **changes: Any) -> MonitoringConfig:
        """Return a copy with ``changes`` applied (code-level overrides, validated like any other source)."""
        return _from_mapping(changes, "code", base=self)


def _check_config(config: MonitoringConfig) -> None:
    checks: list[tuple[str, bool, str]] = [
        ("sampling_rate", 0.0 < config.sampling_rate <= 1.0, "must be > 0 and <= 1"),
        ("retention_days", config.retention_days > 0, "must be > 0"),
        ("recording", config.recording in ("fast", "sdk"), "must be 'fast' or 'sdk'"),
        ("export_interval_s", config.export_interval_s > 0, "must be > 0"),
        ("export_timeout_s", config.export_timeout_s > 0, "must be > 0"),
        ("cardinality_limit", config.cardinality_limit > 0, "must be > 0"),
        ("otlp_protocol", config.otlp_protocol in ("grpc", "http/protobuf"), "must be 'grpc' or 'http/protobuf'"),
        ("prometheus_port", 0 <= config.prometheus_port <= 65535, "must be a TCP port (0-65535)"),
        ("file_max_bytes", config.file_max_bytes > 0, "must be > 0"),
        ("file_rotation_interval_s", config.file_rotation_interval_s > 0, "must be > 0"),
        ("service_name", bool(config.service_name), "must not be empty"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise ConfigurationError(f"{name}={getattr(config, name)!r}: {why}")


# --- parsers: each takes the raw value and returns the typed one, or raises ValueError(reason) ---


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    return float(raw)


def _parse_int(raw: Any) -> int:
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise ValueError("expected an integer")
    return int(str(raw).strip()) if isinstance(raw, str) else int(raw)


def _parse_names(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    names = tuple(str(item).strip() for item in items if str(item).strip())
    return () if names == ("none",) else names


def _parse_str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    return raw


def _parse_secret(raw: Any) -> Secret | None:
    if isinstance(raw, Secret):
        return raw
    text = _parse_str(raw).strip()
    return Secret(text) if text else None


def _parse_resource(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    pairs: dict[str, str] = {}
    for item in str(raw).split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value pairs, got {item.strip()!r}")
        pairs[key.strip()] = value.strip()
    return pairs


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


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "enabled": _parse_bool,
    "environment": _parse_str,
    "service_name": _parse_str,
    "resource_attributes": _parse_resource,
    "sampling_rate": _parse_float,
    "retention_days": _parse_float,
    "recording": _parse_str,
    "metrics_exporters": _parse_names,
    "traces_exporters": _parse_names,
    "export_interval_s": _parse_float,
    "export_timeout_s": _parse_float,
    "otlp_protocol": _parse_str,
    "cardinality_limit": _parse_int,
    "prometheus_host": _parse_str,
    "prometheus_port": _parse_int,
    "file_path": _parse_str,
    "file_max_bytes": _parse_int,
    "file_rotation_interval_s": _parse_float,
    "database_url": _parse_secret,
    "alert_email_enabled": _parse_bool,
    "alert_slack_webhook_url": _parse_secret,
    "views": _parse_views,
}


def _from_mapping(values: Mapping[str, Any], source: str, base: MonitoringConfig) -> MonitoringConfig:
    """Apply ``values`` (field name -> raw value) from ``source`` on top of ``base``."""
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        parser = _PARSERS.get(key)
        if parser is None:
            known = ", ".join(sorted(_PARSERS))
            raise ConfigurationError(f"{source}: unknown setting {key!r} (known: {known})")
        try:
            parsed[key] = parser(raw)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"{source}: {key}={_shown(key, raw)}: {error}") from None
    try:
        return dataclasses.replace(base, **parsed)
    except ConfigurationError as error:
        raise ConfigurationError(f"{source}: {error}") from None


def _shown(key: str, raw: Any) -> str:
    return "'***'" if key in ("database_url", "alert_slack_webhook_url") else repr(raw)


# --- environment variables ---------------------------------------------------------------------


@dataclass(frozen=True)
class _EnvVar:
    name: str
    setting: str
    convert: Callable[[str], Any] = lambda raw: raw


def _otel_ms(raw: str) -> float:
    return _parse_float(raw) / 1000.0


def _not(raw: str) -> bool:
    return not _parse_bool(raw)


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
    _EnvVar("METRICS_CARDINALITY_LIMIT", "cardinality_limit"),
    _EnvVar("ALERT_EMAIL_ENABLED", "alert_email_enabled"),
    _EnvVar("ALERT_SLACK_WEBHOOK_URL", "alert_slack_webhook_url"),
    _EnvVar("METRICS_PROMETHEUS_PORT", "prometheus_port"),
    _EnvVar("METRICS_FILE_PATH", "file_path"),
    _EnvVar("METRICS_DATABASE_URL", "database_url"),
    _EnvVar("CHAT_TURBO_ENV", "environment"),
)


def _env_values(env: Mapping[str, str], table: tuple[_EnvVar, ...]) -> dict[str, tuple[str, Any]]:
    found: dict[str, tuple[str, Any]] = {}
    for var in table:
        raw = env.get(var.name)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = var.convert(raw)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"{var.name}={_shown(var.setting, raw)}: {error}") from None
        found[var.setting] = (var.name, value)
    return found


def _apply_env(base: MonitoringConfig, env: Mapping[str, str]) -> MonitoringConfig:
    otel = _env_values(env, _OTEL_ENV)
    seed = _env_values(env, _SEED_ENV)
    config = base
    for values in (otel, seed):
        for setting, (var_name, raw) in values.items():
            config = _from_mapping({setting: raw}, var_name, base=config)
    for setting in otel.keys() & seed.keys():
        otel_name, _ = otel[setting]
        seed_name, _ = seed[setting]
        theirs = _from_mapping({setting: otel[setting][1]}, otel_name, base=base)
        if getattr(theirs, setting) != getattr(config, setting):
            _logger.warning(
                "%s and %s disagree; using %s=%r (seed variables win over OTEL_* ones)",
                seed_name,
                otel_name,
                seed_name,
                "***" if setting.endswith("url") else getattr(config, setting),
            )
    if "file_path" in seed and "metrics_exporters" not in otel and "chat_turbo_file" not in config.metrics_exporters:
        # METRICS_FILE_PATH alone switches file export on, as the seed's example implies.
        config = dataclasses.replace(config, metrics_exporters=(*config.metrics_exporters, "chat_turbo_file"))
    return config


# --- files -------------------------------------------------------------------------------------


def config_dirs() -> tuple[Path, ...]:
    """Where ``<environment>.toml`` files are looked up: the installed package, then a source checkout."""
    here = Path(__file__).resolve().parent
    return (here / "configs", here.parent.parent / "configs")


def _config_file(environment: str) -> Path:
    if not environment or not environment.replace("-", "").replace("_", "").isalnum():
        raise ConfigurationError(f"environment={environment!r}: expected a name such as {', '.join(ENVIRONMENTS)}")
    for directory in config_dirs():
        candidate = directory / f"{environment}.toml"
        if candidate.is_file():
            return candidate
    shipped = sorted({p.stem for d in config_dirs() if d.is_dir() for p in d.glob("*.toml")})
    raise ConfigurationError(f"environment={environment!r}: no {environment}.toml (available: {', '.join(shipped)})")


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
    config = load_config_file(_config_file(name), MonitoringConfig(environment=name))
    config = _apply_env(config, env)
    if environment:  # an explicit argument beats $CHAT_TURBO_ENV for the recorded name too
        config = dataclasses.replace(config, environment=environment)
    return _from_mapping(overrides, "code", base=config) if overrides else config
