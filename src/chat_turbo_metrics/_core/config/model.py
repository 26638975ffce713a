"""The configuration of one monitoring pipeline: every subsystem's section, flat, as users write it."""

from __future__ import annotations

from dataclasses import dataclass

from chat_turbo_metrics._core.config.alerting import AlertingSettings
from chat_turbo_metrics._core.config.core import CoreSettings
from chat_turbo_metrics._core.config.datadog import DatadogSettings
from chat_turbo_metrics._core.config.export import ExportSettings
from chat_turbo_metrics._core.config.multiprocess import MultiprocessSettings
from chat_turbo_metrics._core.config.storage import StorageSettings


# The sections in the order their settings are listed (dataclass fields run from the last base to the first).
@dataclass(frozen=True, kw_only=True)
class MonitoringConfig(
    MultiprocessSettings, DatadogSettings, AlertingSettings, StorageSettings, ExportSettings, CoreSettings
):
    """The whole configuration of one monitoring pipeline: the settings of every section, as keyword arguments.

    Each subsystem reads the section it needs (an exporter takes a ``StorageSettings`` or a ``DatadogSettings``,
    which this is too). Every setting is checked when the configuration is made, with the section's own checks.

    Example:
        >>> config = MonitoringConfig(service_name="chat-api", metrics_exporters=("prometheus",))
        >>> config.prometheus_port
        9464
        >>> config.replace(sampling_rate=0.5).sampling_rate
        0.5
    """
