"""What a pipeline shows outside the package: ``monitor.pipeline`` is a read-only view, never the pipeline itself.

The view reads; it changes nothing. What changes a pipeline goes through the monitor, which follows
``configure()`` into each new pipeline: ``add_exporter``, ``subscribe``/``unsubscribe``,
``add_collection_hook``/``remove_collection_hook``.

Example:
    >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
    >>> monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), service_name="shop"))
    >>> view = monitor.pipeline
    >>> view.resource.attributes["service.name"], view.exporters
    ('shop', ())
    >>> monitor.increment_counter("jobs")
    >>> [m.name for r in view.collect().resource_metrics for s in r.scope_metrics for m in s.metrics][:1]
    ['jobs']
    >>> monitor.shutdown()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from chat_turbo_metrics._core.config import MonitoringConfig
from chat_turbo_metrics._pipeline import attached
from chat_turbo_metrics._pipeline.pull import PullExporter

if TYPE_CHECKING:
    from chat_turbo_metrics._pipeline.provider import Pipeline


class PipelineView:
    """One pipeline as users and alerting see it: its configuration, providers, exporters and data.

    The OpenTelemetry providers are the pipeline's own, for contrib instrumentations that take one explicitly;
    they stay with this pipeline when ``configure()`` builds another (``monitor.meter_provider`` follows).
    """

    __slots__ = ("_pipeline",)

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    @property
    def config(self) -> MonitoringConfig:
        """The configuration the pipeline was built from."""
        return self._pipeline.config

    @property
    def resource(self) -> Resource:
        """The resource every export carries (service name, environment, ``OTEL_RESOURCE_ATTRIBUTES``)."""
        return self._pipeline.current_resource()

    @property
    def meter_provider(self) -> MeterProvider:
        """The pipeline's OpenTelemetry MeterProvider."""
        return self._pipeline.meter_provider

    @property
    def meter(self) -> Meter:
        """The pipeline's own meter (scope ``chat_turbo_metrics``)."""
        return self._pipeline.meter

    @property
    def tracer_provider(self) -> TracerProvider:
        """The pipeline's OpenTelemetry TracerProvider."""
        return self._pipeline.tracer_provider

    @property
    def exporters(self) -> tuple[MetricExporter, ...]:
        """The push exporters (and subscribers) fed each export cycle, in the order added."""
        return self._pipeline.fanout.exporters

    @property
    def pull_exporters(self) -> tuple[PullExporter, ...]:
        """The exporters that collect when read (Prometheus)."""
        return tuple(self._pipeline.pull_exporters)

    @property
    def export_failures(self) -> Mapping[str, int]:
        """Failed exports per push exporter display name (live, read-only)."""
        return self._pipeline.fanout.failures

    def collect(self) -> MetricsData | None:
        """Cumulative metrics of the whole pipeline, right now (what a scrape or an export reads)."""
        return self._pipeline.collect()

    def attach(self, role: str, item: object) -> None:
        """Make ``item`` findable beside this pipeline under ``role`` (an alert manager, for the status page of the
        pipeline's endpoint); held weakly. It changes nothing the pipeline does."""
        attached.attach(self._pipeline, role, item)

    def __repr__(self) -> str:
        return f"<PipelineView service={self._pipeline.config.service_name!r}>"
