"""Settings, split by subsystem, declared once; their sources (files, variables, code) and their checks.

- :mod:`.declaration`: how a setting is declared (:func:`~.declaration.setting`) and applied from a source;
- the sections, one per subsystem: :mod:`.core`, :mod:`.export`, :mod:`.storage`, :mod:`.alerting`,
  :mod:`.datadog`, :mod:`.multiprocess` (a consumer takes the section it reads);
- :mod:`.model`: :class:`MonitoringConfig`, every section's settings, flat;
- :mod:`.table`: the one table of settings and variables, read from the sections;
- :mod:`.sources` and :mod:`.files`: defaults < ``configs/<environment>.toml`` < OTEL_* < own variables < code;
- :mod:`.values` and :mod:`.checks`: the parsers and checks the declarations name.
"""

from chat_turbo_metrics._core.config.alerting import AlertingSettings
from chat_turbo_metrics._core.config.checks import LONGEST_RETENTION_DAYS, LONGEST_S, SHORTEST_EXPORT_S
from chat_turbo_metrics._core.config.core import ENVIRONMENTS, CoreSettings, Recording, ViewConfig
from chat_turbo_metrics._core.config.datadog import DatadogSettings
from chat_turbo_metrics._core.config.declaration import (
    DEFAULT_SOURCE,
    ConfigurationError,
    Settings,
    setting_label,
)
from chat_turbo_metrics._core.config.export import EXPONENTIAL_HISTOGRAM, ExportSettings
from chat_turbo_metrics._core.config.files import CONFIG_DIR_VARIABLE, NOT_ENVIRONMENTS, config_dirs
from chat_turbo_metrics._core.config.model import MonitoringConfig
from chat_turbo_metrics._core.config.multiprocess import GAUGE_MODES, MultiprocessSettings
from chat_turbo_metrics._core.config.sources import check_combination, get_monitoring_config, load_config_file
from chat_turbo_metrics._core.config.storage import DEFAULT_DATABASE_URL, StorageSettings, history_url
from chat_turbo_metrics._core.config.table import VARIABLES, is_variable, shown_value

__all__ = [
    "CONFIG_DIR_VARIABLE",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_SOURCE",
    "ENVIRONMENTS",
    "EXPONENTIAL_HISTOGRAM",
    "GAUGE_MODES",
    "LONGEST_RETENTION_DAYS",
    "LONGEST_S",
    "NOT_ENVIRONMENTS",
    "SHORTEST_EXPORT_S",
    "VARIABLES",
    "AlertingSettings",
    "ConfigurationError",
    "CoreSettings",
    "DatadogSettings",
    "ExportSettings",
    "MonitoringConfig",
    "MultiprocessSettings",
    "Recording",
    "Settings",
    "StorageSettings",
    "ViewConfig",
    "check_combination",
    "config_dirs",
    "get_monitoring_config",
    "history_url",
    "is_variable",
    "load_config_file",
    "setting_label",
    "shown_value",
]
