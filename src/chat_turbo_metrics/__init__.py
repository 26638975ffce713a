"""chat_turbo_metrics: the Chat-Turbo performance-monitoring API on OpenTelemetry.

This package holds the seed's API (``__all__`` below): the monitor, its configuration, the cache and database
helpers and the alert manager. The other public modules, each with its own ``__all__``:

- :mod:`chat_turbo_metrics.alerting`: alert rules, alerts, silences, routes and notifiers.
- :mod:`chat_turbo_metrics.exporters`: Prometheus, file, database and Datadog exporters, and the metric history.
- :mod:`chat_turbo_metrics.instrumentation`: what instrumentor distributions build on.
- :mod:`chat_turbo_metrics.multiprocess`: one Prometheus scrape for a pre-fork group of processes.
- :mod:`chat_turbo_metrics.environment_variables`: the names of the variables that configure monitoring.

A module whose name starts with an underscore is private: it may change in any release.

Example:
    >>> import chat_turbo_metrics
    >>> monitor = chat_turbo_metrics.configure()          # or PerformanceMonitor.get_instance()
    >>> monitor.increment_counter("messages_sent", {"channel": "public"})
"""

from typing import TYPE_CHECKING, Any

from chat_turbo_metrics._cache import cached, record_cache_hit, record_cache_miss
from chat_turbo_metrics._core.config import (
    ConfigurationError,
    MonitoringConfig,
    ViewConfig,
    get_monitoring_config,
    load_config_file,
)
from chat_turbo_metrics._core.secret import Secret
from chat_turbo_metrics._core.version import __version__
from chat_turbo_metrics._database import (
    monitor_database_query,
    monitor_database_query_async,
    set_database_connection,
)
from chat_turbo_metrics._monitor import PerformanceMonitor, Timer, configure
from chat_turbo_metrics._pipeline.view import PipelineView
from chat_turbo_metrics._recording.sdk import BoundInstrument
from chat_turbo_metrics._snapshot import MetricsSnapshot

if TYPE_CHECKING:
    from chat_turbo_metrics.alerting import AlertManager, AlertRule

__all__ = [
    "AlertManager",
    "AlertRule",
    "BoundInstrument",
    "ConfigurationError",
    "MetricsSnapshot",
    "MonitoringConfig",
    "PerformanceMonitor",
    "PipelineView",
    "Secret",
    "Timer",
    "ViewConfig",
    "__version__",
    "cached",
    "configure",
    "get_monitoring_config",
    "load_config_file",
    "monitor_database_query",
    "monitor_database_query_async",
    "record_cache_hit",
    "record_cache_miss",
    "set_database_connection",
]


_LAZY = ("AlertManager", "AlertRule")


def __getattr__(name: str) -> Any:
    """``AlertManager`` and ``AlertRule``, imported when first used: most processes never alert (a web worker,
    a CLI command), and the alerting package is a third of this package's modules (80 ms of CPU of the 340 ms
    ``import chat_turbo_metrics`` took)."""
    if name in _LAZY:
        from chat_turbo_metrics import alerting

        value = getattr(alerting, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
