"""``chat-turbo-metrics config``: the resolved configuration, grouped by subsystem, with where each setting came from.

It validates exactly what :func:`chat_turbo_metrics.configure` would: every source, then every exporter and
span processor named (built and stopped again, without binding a port or exporting), so a setting that would
stop ``configure()`` makes this command fail with the same error. It also checks every variable an installed
distribution declares with its check (an :class:`~chat_turbo_metrics.instrumentation.EnvironmentVariable` in the
module of an ``opentelemetry_environment_variables`` entry point), such as the HTTP instrumentors'.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, TextIO

from chat_turbo_metrics._core.config import DEFAULT_SOURCE, MonitoringConfig, get_monitoring_config, is_variable
from chat_turbo_metrics._core.config.declaration import Setting
from chat_turbo_metrics._core.config.instrumentor_variables import EnvironmentVariable
from chat_turbo_metrics._core.config.table import SECTIONS, sections_of
from chat_turbo_metrics._core.secret import Secret

_logger = logging.getLogger("chat_turbo_metrics.config")
Line = tuple[str, str, str]  # name, value as shown, source


def _shown(config: MonitoringConfig, item: Setting) -> str:
    value: Any = getattr(config, item.name)
    if item.shown_default and value == item.default:  # the default in words: its value (None, "") says little
        return item.shown_default.replace("`", "")
    if isinstance(value, Secret):
        return str(value)  # masked
    return repr(value)


def _source(source: str) -> str:
    """``default``, ``code``, a variable's name, or ``file <path>``."""
    return source if source in (DEFAULT_SOURCE, "code") or is_variable(source) else f"file {source}"


def config_groups(config: MonitoringConfig) -> dict[str, list[Line]]:
    """The settings by subsystem (title -> ``(setting, value, source)``), in declared order, secrets masked.

    Args:
        config: the resolved configuration.

    Returns:
        One group per section (``core: whether monitoring runs, ...``), every setting in one of them.
    """
    titles = {section.SECTION: f"{section.SECTION}: {section.TITLE}" for section in SECTIONS}
    return {
        titles[section]: [(item.name, _shown(config, item), _source(config.source(item.name))) for item in items]
        for section, items in sections_of().items()
    }


def declared_modules() -> list[tuple[str, ModuleType]]:
    """The modules of the installed ``opentelemetry_environment_variables`` entry points (name, module)."""
    found = []
    for entry_point in entry_points(group="opentelemetry_environment_variables"):
        try:
            found.append((entry_point.name, entry_point.load()))
        except Exception as error:  # another distribution's broken module is not this configuration's fault
            _logger.warning("not checking the variables of %s: it cannot be loaded (%r)", entry_point.name, error)
    return found


def declared_variable_groups(
    env: Mapping[str, str], modules: Iterable[tuple[str, ModuleType]] | None = None
) -> dict[str, list[Line]]:
    """Every declared :class:`EnvironmentVariable`, checked, by the entry point declaring it.

    Args:
        env: the environment variables.
        modules: ``(entry point name, module)`` pairs (default: :func:`declared_modules`).

    Returns:
        ``"variables of <entry point>"`` -> ``(variable, value, source)`` for the modules that declare any.

    Raises:
        ConfigurationError: a variable's value is refused (its ``parse`` raised), named with the value.
    """
    groups: dict[str, list[Line]] = {}
    for name, module in declared_modules() if modules is None else modules:
        variables = [value for value in vars(module).values() if isinstance(value, EnvironmentVariable)]
        for variable in variables:
            variable.read(env)
            source = str(variable) if env.get(variable, "").strip() else DEFAULT_SOURCE
            groups.setdefault(f"variables of {name}", []).append((variable, variable.shown(variable.text(env)), source))
    return groups


def format_groups(groups: Mapping[str, list[Line]]) -> list[str]:
    """``# <group>`` then ``name = value  (source)`` lines, names padded alike; a blank line between groups."""
    width = max((len(name) for lines in groups.values() for name, _, _ in lines), default=0)
    out: list[str] = []
    for title, lines in groups.items():
        out.extend([*([""] if out else []), f"# {title}"])
        out.extend(f"{name:<{width}} = {value}  ({source})" for name, value, source in lines)
    return out


def run_config_command(environment: str | None, env: Mapping[str, str] | None, out: TextIO) -> None:
    """Resolve, validate and print the configuration, then the variables installed distributions declare.

    Args:
        environment: the ``configs/<environment>.toml`` to load (default: ``$CHAT_TURBO_ENV``, then development).
        env: the environment variables (default ``os.environ``).
        out: where the lines go.

    Raises:
        ConfigurationError: the error ``configure()`` would raise with this configuration, or a declared
            variable's refusal.
    """
    env = os.environ if env is None else env
    config = get_monitoring_config(environment, env=env)
    check_as_configure_would(config)
    groups = {**config_groups(config), **declared_variable_groups(env)}
    for line in format_groups(groups):
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
