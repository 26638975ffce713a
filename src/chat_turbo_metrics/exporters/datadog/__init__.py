"""Agentless Datadog metrics: :class:`DataDogExporter` posts to the v2 series intake.

Modules: ``_mapping`` (OpenTelemetry data to Datadog series and tags), ``_batching`` (gzip bodies under
the intake's limits), ``_transport`` (HTTP, retries, backoff), ``_exporter`` (the exporter itself).
"""

from chat_turbo_metrics.exporters.datadog._exporter import DataDogExporter, EnvironmentDataDogExporter

__all__ = ["DataDogExporter", "EnvironmentDataDogExporter"]
