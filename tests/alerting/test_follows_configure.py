"""Alerting follows configure(): the seed's start-up order, and subscribers that move with their monitor.

The seed creates the alert manager at import and calls ``configure()`` later; a service may reconfigure again.
The manager must evaluate the pipeline the monitor records into now, never the one it was built with.
The process-wide tests run in their own interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chat_turbo_metrics import PerformanceMonitor
from conftest import clean_env, make_config


def run(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (test environment); it prints one JSON report line."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=clean_env(CHAT_TURBO_ENV="test"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    return json.loads(line.removeprefix("REPORT "))  # type: ignore[no-any-return]


SEED_ORDER = """
    import json
    import chat_turbo_metrics
    from opentelemetry import trace
    from chat_turbo_metrics import PerformanceMonitor
    from chat_turbo_metrics.alerting import AlertManager

    # At import, as the seed does: the monitor and the alert manager, before any configure().
    monitor = PerformanceMonitor.get_instance()
    manager = AlertManager()
    manager.add_rule({"id": "queue", "name": "Deep Queue", "metric": "queue_depth", "condition": "gt",
                      "threshold": 5, "severity": "warning"})
    manager.add_rule({"id": "slow", "name": "Slow Checkout", "condition": "gt", "threshold": 5,
                      "statistic": "max", "window": "1m", "spans": {"name": "POST /checkout"}})
    transitions = []
    manager.add_listener(lambda t: transitions.append([t.alert.rule_id, t.current, t.alert.value]))
    manager.start()
    tracer = trace.get_tracer("shop")  # a library's tracer, made at import too

    def state():
        return sorted([a.rule_id, a.state, a.value] for a in manager.alerts())

    def active(rule):
        return monitor.snapshot().value("alerts_active", {"rule": rule, "severity": "warning", "state": "firing"})

    report = {"interval_at_import": manager.evaluation_interval_s}
    # Start-up: configure() builds the pipeline the application runs on.
    chat_turbo_metrics.configure(service_name="first", export_interval_s=3600)
    monitor.record_gauge("queue_depth", 10)
    assert monitor.force_flush()  # one export cycle: the background evaluation runs on it
    report["first"] = state()
    report["interval_after_configure"] = manager.evaluation_interval_s
    report["first_active"] = active("queue")

    # Reconfiguration: a new pipeline; the old one is shut down.
    chat_turbo_metrics.configure(service_name="second", export_interval_s=3600)
    monitor.record_gauge("queue_depth", 20)
    checkout = tracer.start_span("POST /checkout", start_time=10**9)
    checkout.end(end_time=10**9 + 7 * 10**9)  # 7 s
    assert monitor.force_flush()
    report["second"] = state()
    report["second_active"] = active("queue")
    report["second_evaluate"] = sorted([a.rule_id, a.value] for a in manager.evaluate())
    report["snapshot"] = monitor.snapshot().value("queue_depth")

    # Once more: the gauge is low now, so the alert resolves on the third pipeline's data.
    chat_turbo_metrics.configure(service_name="third", export_interval_s=3600)
    monitor.record_gauge("queue_depth", 1)
    assert monitor.force_flush()
    report["third"] = state()
    report["transitions"] = transitions
    print("REPORT " + json.dumps(report))
"""


def test_seed_start_up_order_alert_follows_every_reconfiguration() -> None:
    report = run(SEED_ORDER)
    # The environment's export interval (configs/test.toml) at import, then the one configure() set.
    assert (report["interval_at_import"], report["interval_after_configure"]) == (1, 3600)
    assert report["first"] == [["queue", "firing", 10]]
    assert report["first_active"] == 1
    # The monitor reads 20 in the new pipeline: the alert follows it (it stayed on 10 when it read the old one).
    assert report["snapshot"] == 20
    assert report["second"] == [["queue", "firing", 20], ["slow", "firing", 7]]
    assert report["second_active"] == 1  # alerts_active is in the new pipeline's data
    assert report["second_evaluate"] == [["queue", 20], ["slow", 7]]  # evaluate() reads the new pipeline too
    assert ["queue", "resolved", 20] in report["transitions"]  # resolved on the third pipeline, last seen at 20
    assert report["third"] == [["slow", "firing", 7]]  # the span window still holds the 7 s checkout
    # The queue alert fired once and stayed firing across the first reconfiguration: no resolve and re-fire.
    assert [t[1] for t in report["transitions"] if t[0] == "queue"] == ["pending", "firing", "resolved"]


def test_subscribers_move_with_the_process_wide_monitor_and_are_not_shut_down() -> None:
    report = run(
        """
        import json
        import chat_turbo_metrics
        from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry import trace

        class Recording(MetricExporter):
            def __init__(self):
                super().__init__()
                self.seen, self.shut = [], 0
            def export(self, metrics_data, timeout_millis=10_000, **kwargs):
                self.seen.append(sorted({r.resource.attributes["service.name"] for r in metrics_data.resource_metrics}))
                return MetricExportResult.SUCCESS
            def force_flush(self, timeout_millis=10_000):
                return True
            def shutdown(self, timeout_millis=30_000, **kwargs):
                self.shut += 1

        monitor = chat_turbo_metrics.PerformanceMonitor.get_instance()
        exporter, spans = Recording(), InMemorySpanExporter()
        monitor.subscribe(exporter)
        monitor.subscribe(exporter)  # twice is once
        monitor.subscribe(SimpleSpanProcessor(spans))
        counter = monitor.meter_provider.get_meter("lib").create_counter("lib_jobs")  # before configure()
        chat_turbo_metrics.configure(service_name="first", export_interval_s=3600)
        assert monitor.force_flush()
        chat_turbo_metrics.configure(service_name="second", export_interval_s=3600)
        counter.add(2)
        trace.get_tracer("shop").start_span("work").end()
        assert monitor.force_flush()
        report = {"seen": exporter.seen, "shut": exporter.shut, "spans": [s.name for s in spans.get_finished_spans()],
                  "span_service": [s.resource.attributes["service.name"] for s in spans.get_finished_spans()],
                  "lib_jobs": monitor.snapshot().value("lib_jobs"),
                  "pushed": sum(e is exporter for e in monitor.pipeline.exporters)}
        assert monitor.unsubscribe(exporter) and not monitor.unsubscribe(exporter)
        assert monitor.force_flush()
        report["after_unsubscribe"] = len(exporter.seen)
        print("REPORT " + json.dumps(report))
        """
    )
    assert report["seen"] == [["first"], ["second"]]  # one cycle on each pipeline, none on the old ones
    assert report["shut"] == 0  # two reconfigurations shut down two pipelines, not the subscriber
    assert report["pushed"] == 1
    assert report["spans"] == ["work"]
    assert report["span_service"] == ["second"]
    assert report["lib_jobs"] == 2  # an instrument from monitor.meter_provider records into the new pipeline
    assert report["after_unsubscribe"] == 2


class Cycles(MetricExporter):
    """A subscriber that keeps every cumulative snapshot it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[MetricsData] = []
        self.shut = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.seen.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.shut += 1


def names(data: MetricsData) -> set[str]:
    return {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}


def test_subscribe_and_unsubscribe_on_a_private_monitor(monitor_factory: Any) -> None:
    monitor: PerformanceMonitor = monitor_factory(export_interval_s=3600, self_telemetry=False)
    cycles = Cycles()
    monitor.subscribe(cycles)
    monitor.increment_counter("jobs")
    assert monitor.force_flush()
    assert [names(data) for data in cycles.seen] == [{"jobs"}]
    assert monitor.pipeline is not None
    assert list(monitor.pipeline.exporters) == [cycles]
    assert monitor.unsubscribe(cycles) is True
    assert monitor.unsubscribe(cycles) is False
    assert monitor.force_flush()
    assert len(cycles.seen) == 1
    assert monitor.pipeline.exporters == ()
    assert cycles.shut == 0  # unsubscribing hands it back, not shut down


def test_a_subscribed_span_processor_sees_the_pipelines_spans_until_unsubscribed(monitor_factory: Any) -> None:
    monitor: PerformanceMonitor = monitor_factory()
    spans = InMemorySpanExporter()
    processor = SimpleSpanProcessor(spans)
    monitor.subscribe(processor)
    tracer = monitor.tracer_provider.get_tracer("shop")
    tracer.start_span("one").end()
    assert monitor.unsubscribe(processor)
    tracer.start_span("two").end()
    assert [span.name for span in spans.get_finished_spans()] == ["one"]


def test_a_raising_span_processor_does_not_reach_the_application(monitor_factory: Any, caplog: Any) -> None:
    class Broken(SimpleSpanProcessor):
        def on_end(self, span: Any) -> None:
            raise RuntimeError("broken processor")

    monitor: PerformanceMonitor = monitor_factory()
    spans = InMemorySpanExporter()
    monitor.subscribe(Broken(InMemorySpanExporter()))
    monitor.subscribe(SimpleSpanProcessor(spans))
    monitor.tracer_provider.get_tracer("shop").start_span("work").end()  # does not raise
    assert [span.name for span in spans.get_finished_spans()] == ["work"]  # the next processor still sees it
    assert "broken processor" in caplog.text


@pytest.mark.parametrize("subscriber", [object(), TracerProvider(), print])
def test_subscribe_refuses_what_is_neither_an_exporter_nor_a_span_processor(
    monitor_factory: Any, subscriber: Any
) -> None:
    monitor: PerformanceMonitor = monitor_factory()
    with pytest.raises(TypeError, match="MetricExporter or SpanProcessor"):
        monitor.subscribe(subscriber)


def test_a_disabled_monitor_keeps_subscribers_without_feeding_them(monitor_factory: Any) -> None:
    monitor: PerformanceMonitor = monitor_factory(enabled=False)
    cycles = Cycles()
    monitor.subscribe(cycles)
    monitor.increment_counter("jobs")
    assert monitor.force_flush()
    assert cycles.seen == []
    assert monitor.unsubscribe(cycles) is True


def test_private_monitor_providers_are_its_pipelines(monitor_factory: Any) -> None:
    monitor: PerformanceMonitor = monitor_factory(self_telemetry=False)
    assert monitor.pipeline is not None
    assert monitor.meter_provider is monitor.pipeline.meter_provider
    assert monitor.tracer_provider is monitor.pipeline.tracer_provider
    monitor.meter_provider.get_meter("lib").create_counter("lib_jobs").add(3)
    assert monitor.snapshot().value("lib_jobs") == 3


def test_subscribers_end_with_the_pipeline_they_are_on(recording: str) -> None:
    class Counting(SimpleSpanProcessor):
        shutdowns = 0

        def shutdown(self) -> None:
            Counting.shutdowns += 1
            super().shutdown()

    monitor = PerformanceMonitor(make_config(recording=recording, export_interval_s=3600))
    cycles, spans = Cycles(), InMemorySpanExporter()
    monitor.subscribe(cycles)
    monitor.subscribe(Counting(spans))
    monitor.increment_counter("jobs")
    monitor.tracer_provider.get_tracer("shop").start_span("work").end()
    monitor.shutdown()  # the final export reaches the subscriber, then it is shut down with the pipeline
    assert cycles.shut == 1
    assert "jobs" in names(cycles.seen[-1])
    assert Counting.shutdowns == 1
    assert [span.name for span in spans.get_finished_spans()] == ["work"]
