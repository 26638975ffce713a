"""The one table of settings, read from the sections :class:`MonitoringConfig` is made of.

Everything that lists settings or variables reads it: the environment and file sources, the ``config`` command,
``environment_variables.py`` and the README's tables (``scripts/settings_docs.py`` writes both, and a test fails
when either differs from this table).
"""

from __future__ import annotations

from chat_turbo_metrics._core.config.core import CONFIG_DIR
from chat_turbo_metrics._core.config.declaration import OtherVariable, Setting, Settings, Variable, settings_of
from chat_turbo_metrics._core.config.export import OTLP_HEADERS
from chat_turbo_metrics._core.config.model import MonitoringConfig

SECTIONS: tuple[type[Settings], ...] = tuple(
    owner
    for owner in reversed(MonitoringConfig.__mro__)
    if isinstance(owner, type) and issubclass(owner, Settings) and vars(owner).get("SECTION")
)
SETTINGS: tuple[Setting, ...] = settings_of(MonitoringConfig)
BY_NAME: dict[str, Setting] = {item.name: item for item in SETTINGS}
# Variables read outside the settings, listed for the docs.
OTHER_VARIABLES: tuple[OtherVariable, ...] = (CONFIG_DIR, OTLP_HEADERS)

# OTEL_* variables first, then each setting's own: a later source wins over an earlier one.
OTEL_READS: tuple[tuple[Variable, Setting], ...] = tuple((var, item) for item in SETTINGS for var in item.otel)
OWN_READS: tuple[tuple[Variable, Setting], ...] = tuple(
    (item.variable, item) for item in SETTINGS if item.variable is not None
)
VARIABLES = tuple(var.name for var, _ in (*OTEL_READS, *OWN_READS))  # every variable a setting is read from
_VARIABLE_NAMES = frozenset(VARIABLES)


def is_variable(source: str) -> bool:
    """True when a setting's source is an environment variable (rather than a file, code or the default)."""
    return source in _VARIABLE_NAMES


def variable_of(setting: str) -> str:
    """The variable of ``setting`` (its own, else its last OpenTelemetry one).

    Example:
        >>> variable_of("sampling_rate"), variable_of("service_name")
        ('METRICS_SAMPLING_RATE', 'OTEL_SERVICE_NAME')
    """
    return BY_NAME[setting].variables[-1].name


def shown_value(setting: str, raw: object) -> str:
    """``raw`` as an error may quote it for ``setting``: a secret masked, the rest shown."""
    item = BY_NAME.get(setting)
    return item.shown(raw) if item is not None else repr(raw)


def sections_of(settings: tuple[Setting, ...] = SETTINGS) -> dict[str, list[Setting]]:
    """``settings`` grouped by section, sections in their declared order."""
    grouped: dict[str, list[Setting]] = {section.SECTION: [] for section in SECTIONS}
    for item in settings:
        grouped[item.section].append(item)
    return grouped
