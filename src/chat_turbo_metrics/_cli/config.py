"""``chat-turbo-metrics config``: the resolved configuration, one setting a line, with where each came from.

It validates exactly what :func:`chat_turbo_metrics.configure` would: every source, then every exporter and
span processor named (built and stopped again, without binding a port or exporting), so a setting that would
stop ``configure()`` makes this command fail with the same error.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, TextIO

from chat_turbo_metrics._core.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_SOURCE,
    MonitoringConfig,
    get_monitoring_config,
    is_variable,
)
from chat_turbo_metrics._core.secret import Secret

# Settings whose default means something worth saying.
_DEFAULT_MEANING = {
    "database_url": f"{DEFAULT_DATABASE_URL} (a SQLite file in the working directory)",
}


def _shown(config: MonitoringConfig, setting: str) -> str:
    value: Any = getattr(config, setting)
    if value is None and setting in _DEFAULT_MEANING:
        return _DEFAULT_MEANING[setting]
    if isinstance(value, Secret):
        return str(value)  # masked
    return repr(value)


def config_lines(config: MonitoringConfig) -> list[str]:
    """One ``setting = value  (source)`` line per setting, secrets masked.

    Args:
        config: the resolved configuration.

    Returns:
        The lines, in field order.
    """
    names = [f.name for f in dataclasses.fields(config) if f.name != "sources"]
    width = max(len(name) for name in names)
    return [f"{name:<{width}} = {_shown(config, name)}  ({_source(config.source(name))})" for name in names]


def _source(source: str) -> str:
    """``default``, ``code``, a variable's name, or ``file <path>``."""
    return source if source in (DEFAULT_SOURCE, "code") or is_variable(source) else f"file {source}"


def run_config_command(environment: str | None, env: Mapping[str, str] | None, out: TextIO) -> None:
    """Resolve, validate and print the configuration.

    Args:
        environment: the ``configs/<environment>.toml`` to load (default: ``$CHAT_TURBO_ENV``, then development).
        env: the environment variables (default ``os.environ``).
        out: where the lines go.

    Raises:
        ConfigurationError: the error ``configure()`` would raise with this configuration.
    """
    config = get_monitoring_config(environment, env=os.environ if env is None else env)
    check_as_configure_would(config)
    for line in config_lines(config):
        print(line, file=out)


def check_as_configure_would(config: MonitoringConfig) -> None:
    """What building the pipeline checks beyond the values: views, and every exporter and span processor named.

    Args:
        config: a validated configuration.

    Raises:
        ConfigurationError: the error building the pipeline from ``config`` would raise.
    """
    from chat_turbo_metrics._pipeline.provider import build_views
    from chat_turbo_metrics._pipeline.registry import check_components

    if config.enabled:
        build_views(config.views)
        check_components(config)
