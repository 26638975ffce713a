"""Pull exporters meet the pipeline through its own protocols: ``attach(collect)``, or ``serve(pipeline)`` for one
that takes its place itself and hands back a membership the pipeline keeps (the Prometheus exporter's pre-fork
group). The pipeline imports no exporter and no pre-fork code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics._collection.walk import walk
from chat_turbo_metrics._pipeline.pull import Source

MonitorFactory = Callable[..., PerformanceMonitor]


class _Membership:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def health(self) -> Mapping[str, int]:
        return {"directory": 1}

    def close(self) -> None:
        self.events.append("membership closed")


class ServingExporter:
    """Takes its place itself: collects through the pipeline it is given."""

    name = "serving"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.source: Source | None = None

    def attach(self, collect: Callable[[], MetricsData | None]) -> None:
        raise AssertionError("a serving exporter is served, not attached")

    def serve(self, source: Source) -> _Membership:
        self.source = source
        return _Membership(self.events)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.events.append("exporter shut down")


class AttachedExporter:
    name = "attached"

    def __init__(self) -> None:
        self.collect: Callable[[], MetricsData | None] | None = None

    def attach(self, collect: Callable[[], MetricsData | None]) -> None:
        self.collect = collect

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to stop."""


def test_a_serving_exporter_is_given_the_pipeline_and_its_membership_is_kept(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = ServingExporter()
    monitor.add_exporter(exporter)
    monitor.increment_counter("jobs")

    assert exporter.source is monitor._runtime.pipeline  # the pipeline itself, not the public view
    assert exporter.source is not None
    assert exporter.source.config is monitor.config
    assert [r["value"] for r in monitor.snapshot().records() if r["name"] == "jobs"] == [1]
    degraded = {
        r["attributes"]["cause"]: r["value"]
        for r in monitor.snapshot().records()
        if r["name"] == "chat_turbo_metrics_multiprocess_degraded"
    }
    assert degraded == {"directory": 1}  # the membership's health is the pipeline's self-telemetry

    monitor.shutdown()
    assert exporter.events == ["membership closed", "exporter shut down"]  # left before the endpoint stops


def test_a_plain_pull_exporter_is_attached_to_the_collection(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = AttachedExporter()
    monitor.add_exporter(exporter)
    monitor.increment_counter("jobs", value=2)
    assert exporter.collect is not None
    assert "jobs" in [found.metric.name for found in walk(exporter.collect())]
