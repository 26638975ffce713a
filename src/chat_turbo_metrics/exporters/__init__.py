"""Exporters: Prometheus (pull), files, database history, Datadog; OTLP and console come from OpenTelemetry.

Imported lazily so that ``import chat_turbo_metrics`` does not load SQLAlchemy unless it is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chat_turbo_metrics.exporters.database import DatabaseExporter, MetricHistory
    from chat_turbo_metrics.exporters.datadog import DataDogExporter
    from chat_turbo_metrics.exporters.file import FileExporter, read_metric_records
    from chat_turbo_metrics.exporters.prometheus import PrometheusExporter

__all__ = [
    "DataDogExporter",
    "DatabaseExporter",
    "FileExporter",
    "MetricHistory",
    "PrometheusExporter",
    "read_metric_records",
]

_HOMES = {
    "DataDogExporter": "datadog",
    "DatabaseExporter": "database",
    "MetricHistory": "database",
    "FileExporter": "file",
    "read_metric_records": "file",
    "PrometheusExporter": "prometheus",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{home}"), name)
