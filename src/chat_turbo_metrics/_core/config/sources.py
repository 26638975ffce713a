"""One configuration path: defaults < ``configs/<environment>.toml`` < OTEL_* < the settings' own variables < code.

A TOML file uses the setting names as keys; the environment, the variables the table declares. A bad value
raises :class:`ConfigurationError` naming the setting (file key or variable) and the value, at configuration
time, never while recording.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from chat_turbo_metrics._core.config.alerting import missing_for_email
from chat_turbo_metrics._core.config.declaration import (
    ConfigurationError,
    Setting,
    Variable,
    apply,
    setting_label,
)
from chat_turbo_metrics._core.config.files import config_file
from chat_turbo_metrics._core.config.model import MonitoringConfig
from chat_turbo_metrics._core.config.table import BY_NAME, OTEL_READS, OWN_READS, variable_of

_logger = logging.getLogger("chat_turbo_metrics.config")
_ENVIRONMENT = variable_of("environment")  # CHAT_TURBO_ENV also chooses the file
_FILE_PATH = variable_of("file_path")  # METRICS_FILE_PATH alone switches file export on
_FILE_EXPORTER = "chat_turbo_file"


def _env_values(env: Mapping[str, str], reads: tuple[tuple[Variable, Setting], ...]) -> dict[str, tuple[str, Any, str]]:
    """setting -> (variable, converted value, the text as typed) for every variable of ``reads`` set in ``env``."""
    found: dict[str, tuple[str, Any, str]] = {}
    for variable, item in reads:
        raw = env.get(variable.name)
        if raw is None:
            continue
        if raw.strip() == "":
            if variable.empty_is_error:
                raise ConfigurationError(f"{variable.name}={raw!r}: set but empty; unset it to use the default")
            continue
        try:
            value = variable.convert(raw)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"{variable.name}={item.shown(raw)}: {error}") from None
        found[item.name] = (variable.name, value, raw)
    return found


def _apply_env(base: MonitoringConfig, env: Mapping[str, str]) -> MonitoringConfig:
    otel = _env_values(env, OTEL_READS)
    own = _env_values(env, OWN_READS)
    config = base
    for values in (otel, own):  # one variable at a time: each is checked with those applied before it
        for setting, (name, value, typed) in values.items():
            config = apply({setting: value}, name, base=config, typed={setting: typed})
    for setting in otel.keys() & own.keys():
        otel_name, otel_value, _ = otel[setting]
        theirs = apply({setting: otel_value}, otel_name, base=base)
        if getattr(theirs, setting) != getattr(config, setting):
            _logger.warning(
                "%s and %s disagree; using %s=%s (seed variables win over OTEL_* ones)",
                own[setting][0],
                otel_name,
                own[setting][0],
                BY_NAME[setting].shown(getattr(config, setting)),
            )
    if "file_path" in own and "metrics_exporters" not in otel and _FILE_EXPORTER not in config.metrics_exporters:
        # The file path alone switches file export on, as the seed's example implies.
        config = dataclasses.replace(
            config,
            metrics_exporters=(*config.metrics_exporters, _FILE_EXPORTER),
            sources={**config.sources, "metrics_exporters": _FILE_PATH},
        )
    return config


def check_combination(config: MonitoringConfig) -> None:
    """Checks of settings that only make sense together, run once every source has been applied.

    Raises:
        ConfigurationError: email alerts are enabled without a server, a sender or recipients.
    """
    missing = missing_for_email(config)
    if missing:
        label = setting_label(config, "alert_email_enabled")
        raise ConfigurationError(f"{label}=True: email alerts need {', '.join(missing)}")


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
    return apply(data, str(path), base=base or MonitoringConfig())


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
    name = environment or env.get(_ENVIRONMENT) or "development"
    chosen_by = _ENVIRONMENT if not environment and env.get(_ENVIRONMENT) else "environment"
    config = load_config_file(config_file(name, env, chosen_by), MonitoringConfig(environment=name))
    config = _apply_env(config, env)
    if environment:  # an explicit argument beats $CHAT_TURBO_ENV for the recorded name too
        config = dataclasses.replace(config, environment=environment, sources={**config.sources, "environment": "code"})
    elif env.get(_ENVIRONMENT):
        config = dataclasses.replace(config, sources={**config.sources, "environment": _ENVIRONMENT})
    config = apply(overrides, "code", base=config) if overrides else config
    check_combination(config)
    return config
