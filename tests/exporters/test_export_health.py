"""Self-telemetry of real push exporters against loopback intakes that fail, stall or refuse."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from datadog_intake import DD_KEY, STALL, Answer, DatadogIntake, running_intake
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.exporters import DataDogExporter

MonitorFactory = Callable[..., PerformanceMonitor]
OTLP = "OTLPMetricExporter"  # the fan-out names an exporter without a ``name`` by its class
PATIENCE_S = 10.0


class _Handler(BaseHTTPRequestHandler):
    server: _Intake

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests += 1
        if self.server.stall:
            self.server.release.wait(PATIENCE_S)
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _Intake(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint on 127.0.0.1 that answers ``status``, after ``release`` when ``stall``."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, status: int, stall: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status = status
        self.stall = stall
        self.requests = 0
        self.release = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/metrics"


@pytest.fixture
def start_intake() -> Iterator[Callable[..., _Intake]]:
    started: list[_Intake] = []

    def start(status: int, stall: bool = False) -> _Intake:
        intake = _Intake(status, stall)
        threading.Thread(target=intake.serve_forever, args=(0.05,), daemon=True).start()
        started.append(intake)
        return intake

    yield start
    for intake in started:
        intake.release.set()
        intake.shutdown()
        intake.server_close()


def series(monitor: PerformanceMonitor, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {
        tuple(sorted(record["attributes"].items())): record.get("value", record.get("count"))
        for record in monitor.snapshot().records()
        if record["name"] == name
    }


def outcomes(monitor: PerformanceMonitor, exporter: str) -> dict[str, int]:
    found = series(monitor, "chat_turbo_metrics_exports_total")
    return {dict(key)["outcome"]: value for key, value in found.items() if dict(key)["exporter"] == exporter}


def test_a_failing_otlp_collector_is_counted_as_failure_with_the_exporters_name(
    monitor_factory: MonitorFactory, start_intake: Callable[..., _Intake]
) -> None:
    intake = start_intake(500)
    monitor = monitor_factory(export_timeout_s=10.0)
    # The exporter gives up on a 500 well before the export timeout (its backoff would pass its own 1 s).
    monitor.add_exporter(OTLPMetricExporter(endpoint=intake.endpoint, timeout=1.0))
    monitor.increment_counter("jobs")
    assert monitor.force_flush(PATIENCE_S) is False
    assert monitor.force_flush(PATIENCE_S) is False
    assert outcomes(monitor, OTLP) == {"success": 0, "failure": 2, "timeout": 0, "superseded": 0}
    assert series(monitor, "chat_turbo_metrics_export_duration_seconds")[(("exporter", OTLP),)] == 2
    assert intake.requests >= 2
    intake.status = 200
    monitor.shutdown()  # while the collector still answers: its final export does not wait for retries


def test_a_stalled_otlp_collector_is_counted_as_timeout(
    monitor_factory: MonitorFactory, start_intake: Callable[..., _Intake]
) -> None:
    intake = start_intake(200, stall=True)
    monitor = monitor_factory(export_timeout_s=0.5)
    monitor.add_exporter(OTLPMetricExporter(endpoint=intake.endpoint, timeout=0.5))
    monitor.increment_counter("jobs")
    assert monitor.force_flush(PATIENCE_S) is False
    assert outcomes(monitor, OTLP)["timeout"] == 1
    assert outcomes(monitor, OTLP)["success"] == 0
    intake.stall = False
    assert monitor.force_flush(PATIENCE_S) is True  # the collector is back: exports resume and are counted
    assert outcomes(monitor, OTLP) == {"success": 1, "failure": 0, "timeout": 1, "superseded": 0}
    monitor.shutdown()


def test_snapshots_replaced_while_an_exporter_hangs_are_counted_and_queued(
    monitor_factory: MonitorFactory, start_intake: Callable[..., _Intake]
) -> None:
    intake = start_intake(200, stall=True)
    monitor = monitor_factory(export_timeout_s=30.0)
    monitor.add_exporter(OTLPMetricExporter(endpoint=intake.endpoint, timeout=30.0))
    assert monitor.pipeline is not None
    fanout = monitor._runtime.pipeline.fanout  # the fan-out itself: not public
    fanout.collect_and_export()  # taken by the worker, which now hangs on the collector
    deadline = time.monotonic() + PATIENCE_S
    while intake.requests < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(3):  # each replaces the one waiting before it
        fanout.collect_and_export()
    assert series(monitor, "chat_turbo_metrics_queue_depth")[(("owner", OTLP), ("queue", "export"))] == 1
    assert outcomes(monitor, OTLP)["superseded"] == 2
    intake.stall = False
    intake.release.set()
    monitor.shutdown()


def test_series_the_datadog_intake_rejects_are_counted_as_dropped(
    monitor_factory: MonitorFactory,
) -> None:
    intake: DatadogIntake
    with running_intake() as intake:
        intake.answer(Answer(403, body='{"errors":["Forbidden"]}'))
        monitor = monitor_factory(export_timeout_s=10.0)
        monitor.add_exporter(DataDogExporter(DD_KEY, endpoint=intake.url, retry_initial_s=0.05, retry_max_s=0.2))
        monitor.increment_counter("jobs", {"queue": "a"})
        monitor.increment_counter("jobs", {"queue": "b"})
        assert monitor.force_flush(PATIENCE_S) is True  # a final answer: the export is not repeated
        [request] = intake.requests
        rejected = len(request.series)
        assert rejected >= 2
        dropped = series(monitor, "chat_turbo_metrics_dropped_total")
        assert dropped[(("cause", "rejected"), ("exporter", "datadog"))] == rejected
        assert outcomes(monitor, "datadog")["success"] == 1
        assert (
            series(monitor, "chat_turbo_metrics_queue_depth")[(("owner", "datadog"), ("queue", "exporter_buffer"))] == 0
        )
        monitor.shutdown()


def test_a_stalled_datadog_intake_is_counted_as_timeout_and_exports_resume(monitor_factory: MonitorFactory) -> None:
    with running_intake() as intake:
        intake.answer(Answer(STALL))
        monitor = monitor_factory(export_timeout_s=0.5)
        monitor.add_exporter(DataDogExporter(DD_KEY, endpoint=intake.url, retry_initial_s=0.05, retry_max_s=0.2))
        monitor.increment_counter("jobs")
        assert monitor.force_flush(PATIENCE_S) is False
        assert outcomes(monitor, "datadog")["timeout"] == 1
        intake.release.set()
        # The next answer is the default 202. On a loaded machine the intake's thread can take longer than the 0.5 s
        # export timeout to answer it: that export is a timeout too, counted as one, and the data goes with the next.
        late = 0
        while not monitor.force_flush(PATIENCE_S):
            late += 1
            assert late < 5, outcomes(monitor, "datadog")
        assert outcomes(monitor, "datadog") == {"success": 1, "failure": 0, "timeout": 1 + late, "superseded": 0}
        monitor.shutdown()
