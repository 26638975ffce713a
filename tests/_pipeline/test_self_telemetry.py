"""Self-telemetry: the pipeline's health as chat_turbo_metrics_* metrics, overflow warned about once and counted."""

from __future__ import annotations

import ast
import io
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor, get_monitoring_config
from chat_turbo_metrics.alerting import DeliveryStats, RetryPolicy
from chat_turbo_metrics.alerting._delivery import Channel, Job
from chat_turbo_metrics.multiprocess._merge import encode, gauge_modes, merge
from conftest import free_port, service_process

MonitorFactory = Callable[..., PerformanceMonitor]
HEALTH_LOGGER = "chat_turbo_metrics.health"


def values(monitor: PerformanceMonitor, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    """Every series of metric ``name`` in a snapshot: sorted attributes -> value (a histogram's count)."""
    return {
        tuple(sorted(record["attributes"].items())): record["value"] if "value" in record else record["count"]
        for record in monitor.snapshot().records()
        if record["name"] == name
    }


def overflow_warnings(caplog: pytest.LogCaptureFixture, metric: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == HEALTH_LOGGER and r.args and r.args[0] == metric]


# --- overflow ---------------------------------------------------------------------------------------


def test_fast_path_overflow_counts_each_measurement_and_warns_once(
    monitor_factory: MonitorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = monitor_factory(cardinality_limit=3)
    for user in range(10):  # 3 series of their own, 7 measurements into the overflow series
        monitor.increment_counter("logins", {"user": user})
    for _ in range(5):  # a tag set already in overflow stays there: 5 more
        monitor.increment_counter("logins", {"user": 9})
    monitor.increment_counter("logins", {"user": 0})  # its own series: not overflow
    assert values(monitor, "chat_turbo_metrics_overflow_measurements_total")[(("metric", "logins"),)] == 12
    assert values(monitor, "logins")[(("otel.metric.overflow", True),)] == 12
    [warning] = overflow_warnings(caplog, "logins")
    assert warning.args == ("logins", 3, "chat_turbo_metrics_overflow_measurements_total")
    assert "METRICS_CARDINALITY_LIMIT" in warning.getMessage()


def test_a_bound_handle_in_overflow_counts_every_call(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory(cardinality_limit=1)
    monitor.record_histogram("payload", 1.0, {"route": "/a"})
    handle = monitor.histogram("payload", {"route": "/b"})
    for _ in range(4):
        handle.observe(2.0)
    assert values(monitor, "chat_turbo_metrics_overflow_measurements_total")[(("metric", "payload"),)] == 4
    assert values(monitor, "payload")[(("otel.metric.overflow", True),)] == 4


def test_sdk_path_overflow_is_found_at_collection_and_warned_once(
    monitor_factory: MonitorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = monitor_factory(cardinality_limit=2, recording="sdk")
    for user in range(6):
        monitor.record_histogram("upload_size", 10, {"user": user})
    assert values(monitor, "chat_turbo_metrics_overflow_measurements_total")[(("metric", "upload_size"),)] == 4
    for user in range(6):
        monitor.record_histogram("upload_size", 10, {"user": user})
    # Cumulative: counted once per measurement however often it is collected.
    assert values(monitor, "chat_turbo_metrics_overflow_measurements_total")[(("metric", "upload_size"),)] == 8
    assert len(overflow_warnings(caplog, "upload_size")) == 1


def test_opentelemetry_api_instruments_overflow_is_reported_on_the_fast_path_too(
    monitor_factory: MonitorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = monitor_factory(cardinality_limit=2)
    assert monitor.pipeline is not None
    counter = monitor.pipeline.meter_provider.get_meter("contrib").create_counter("contrib_requests")
    for route in range(5):
        counter.add(1, {"route": route})
    assert (("metric", "contrib_requests"),) in values(monitor, "chat_turbo_metrics_overflow_measurements_total")
    assert len(overflow_warnings(caplog, "contrib_requests")) == 1


def test_overflow_is_warned_about_even_with_self_telemetry_off(
    monitor_factory: MonitorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = monitor_factory(cardinality_limit=1, self_telemetry=False)
    monitor.increment_counter("clicks", {"button": "a"})
    monitor.increment_counter("clicks", {"button": "b"})
    assert len(overflow_warnings(caplog, "clicks")) == 1
    assert not [r for r in monitor.snapshot().records() if r["name"].startswith("chat_turbo_metrics_")]


# --- dropped, series, queues ---------------------------------------------------------------------------


def test_dropped_measurements_are_counted_by_cause(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    monitor.increment_counter("jobs", value=float("nan"))
    monitor.increment_counter("jobs", value=float("inf"))
    monitor.increment_counter("jobs", value=-1)
    monitor.record_gauge("depth", "deep")  # type: ignore[arg-type]
    monitor.increment_counter("jobs", {"user": ["a", "list"]})  # type: ignore[dict-item]
    monitor.increment_counter("9 bad name")
    monitor.record_timer("render", True)  # a bool is no start token
    assert values(monitor, "chat_turbo_metrics_dropped_total") == {
        (("cause", "not_finite"),): 2,
        (("cause", "negative_value"),): 1,
        (("cause", "not_a_number"),): 1,
        (("cause", "invalid_tags"),): 1,
        (("cause", "invalid_name"),): 1,
        (("cause", "invalid_timer_start"),): 1,
    }
    assert monitor.dropped == 7


def test_series_per_metric_counts_what_is_held(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    for channel in ("a", "b", "c"):
        monitor.increment_counter("messages_sent", {"channel": channel})
    monitor.record_gauge("active_connections", 4)
    series = values(monitor, "chat_turbo_metrics_series")
    assert series[(("metric", "messages_sent"),)] == 3
    assert series[(("metric", "active_connections"),)] == 1
    assert not [key for key in series if key[0][1].startswith("chat_turbo_metrics_")]  # not counting itself


def test_alert_notification_queue_depth_is_reported(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    release = threading.Event()
    channel = Channel("pager", lambda item: release.wait(10), RetryPolicy(), 10, DeliveryStats())
    try:
        for n in range(4):
            channel.submit(Job(n, on_done=lambda ok: None))
        deadline = time.monotonic() + 10
        while (
            values(monitor, "chat_turbo_metrics_queue_depth").get(
                (("owner", "pager"), ("queue", "alert_notifications"))
            )
            != 3
        ):  # one is being delivered, three wait
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        release.set()
        assert channel.close(time.monotonic() + 10)
    assert (
        values(monitor, "chat_turbo_metrics_queue_depth")[(("owner", "pager"), ("queue", "alert_notifications"))] == 0
    )


# --- the setting ----------------------------------------------------------------------------------------


def test_self_telemetry_is_on_by_default_and_off_by_variable() -> None:
    assert MonitoringConfig().self_telemetry is True
    config = get_monitoring_config("test", env={"METRICS_SELF_TELEMETRY": "false"})
    assert config.self_telemetry is False
    assert config.source("self_telemetry") == "METRICS_SELF_TELEMETRY"
    with pytest.raises(ConfigurationError, match=r"METRICS_SELF_TELEMETRY.*'sometimes'"):
        get_monitoring_config("test", env={"METRICS_SELF_TELEMETRY": "sometimes"})


def test_health_metrics_are_in_the_prometheus_scrape() -> None:
    port = free_port()
    monitor = PerformanceMonitor(
        MonitoringConfig(
            environment="test",
            metrics_exporters=("prometheus",),
            prometheus_host="127.0.0.1",
            prometheus_port=port,
            multiprocess=False,
            cardinality_limit=1,
            prometheus_scope_labels=False,
        )
    )
    try:
        monitor.increment_counter("jobs", {"queue": "a"})
        monitor.increment_counter("jobs", {"queue": "b"})
        monitor.increment_counter("jobs", value=-5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            lines = reply.read().decode().splitlines()
    finally:
        monitor.shutdown()
    assert 'chat_turbo_metrics_overflow_measurements_total{metric="jobs"} 1' in lines
    assert 'chat_turbo_metrics_dropped_total{cause="negative_value"} 1' in lines
    assert 'chat_turbo_metrics_series{metric="jobs"} 2' in lines
    assert "# TYPE chat_turbo_metrics_dropped_total counter" in lines


# --- several processes -------------------------------------------------------------------------------------


def test_health_counters_add_up_across_processes(monitor_factory: MonitorFactory) -> None:
    workers = [monitor_factory(cardinality_limit=1) for _ in range(2)]
    for index, worker in enumerate(workers):
        for user in range(2 + index):  # 1 and 2 measurements into overflow
            worker.increment_counter("logins", {"user": user})
        worker.increment_counter("logins", value=float("nan"))
    states = [(f"{1000 + n}-x", encode(worker.pipeline.collect())) for n, worker in enumerate(workers)]  # type: ignore[union-attr]
    merged = merge(states, None, lambda name: "latest")
    found = {
        (metric.name, tuple(sorted(point.attributes.items()))): point.value
        for scope in merged.resource_metrics[0].scope_metrics
        for metric in scope.metrics
        if metric.name.startswith("chat_turbo_metrics_")
        for point in metric.data.data_points
    }
    assert found[("chat_turbo_metrics_overflow_measurements_total", (("metric", "logins"),))] == 3
    assert found[("chat_turbo_metrics_dropped_total", (("cause", "not_finite"),))] == 2


def test_health_gauges_of_processes_are_summed_whatever_the_default_mode() -> None:
    config = MonitoringConfig(multiprocess_gauges={"*": "latest", "chat_turbo_metrics_series": "max"})
    gauge_mode = gauge_modes(config.multiprocess_gauges)
    assert gauge_mode("chat_turbo_metrics_queue_depth") == "sum"
    assert gauge_mode("chat_turbo_metrics_series") == "max"  # an explicit entry still wins
    assert gauge_mode("active_connections") == "latest"


def test_a_forked_worker_reports_its_own_exports_not_its_parents(
    monitor_factory: MonitorFactory, tmp_path: Path
) -> None:
    from chat_turbo_metrics.exporters.file import FileExporter

    monitor = monitor_factory()
    monitor.add_exporter(FileExporter(tmp_path / "parent.jsonl"))
    monitor.increment_counter("jobs")
    assert monitor.force_flush(10)
    parent = values(monitor, "chat_turbo_metrics_exports_total")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            child = values(monitor, "chat_turbo_metrics_exports_total")
            os.write(write_end, repr(sorted(child.items())).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    reported = b""
    while chunk := os.read(read_end, 65536):
        reported += chunk
    os.waitpid(pid, 0)
    assert parent[(("exporter", "chat_turbo_file"), ("outcome", "success"))] >= 1
    child = dict(ast.literal_eval(reported.decode()))
    assert child[(("exporter", "chat_turbo_file"), ("outcome", "success"))] == 0


class _BrokenHealthExporter:
    """A push exporter whose health accounting raises (a third-party one with a bug)."""

    name = "broken"

    def queued_points(self) -> int:
        raise RuntimeError("queue unreadable")

    def dropped_points(self) -> dict[str, int]:
        raise RuntimeError("counts unreadable")


def test_a_broken_health_source_costs_neither_the_collection_nor_the_other_health_metrics(
    monitor_factory: MonitorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

    monitor = monitor_factory()
    exporter = ConsoleMetricExporter(out=io.StringIO())
    exporter.queued_points = _BrokenHealthExporter().queued_points  # type: ignore[attr-defined]
    exporter.dropped_points = _BrokenHealthExporter().dropped_points  # type: ignore[attr-defined]
    monitor.add_exporter(exporter)
    monitor.increment_counter("jobs", value=-1)
    monitor.increment_counter("jobs")
    for _ in range(3):
        snapshot_names = {record["name"] for record in monitor.snapshot().records()}
    assert {"jobs", "chat_turbo_metrics_series", "chat_turbo_metrics_exports_total"} <= snapshot_names
    assert values(monitor, "chat_turbo_metrics_dropped_total") == {(("cause", "negative_value"),): 1}
    failures = [r for r in caplog.records if r.name == HEALTH_LOGGER and r.levelno == logging.ERROR]
    # Once each, not at every collection; the error as raised.
    assert sorted(repr(r.args[1]) for r in failures) == [  # type: ignore[index]
        "RuntimeError('counts unreadable')",
        "RuntimeError('queue unreadable')",
    ]


def test_health_follows_every_configure() -> None:
    import chat_turbo_metrics

    try:
        monitor = chat_turbo_metrics.configure(environment="test", metrics_exporters=(), cardinality_limit=1)
        monitor.increment_counter("visits", {"page": "a"})
        monitor.increment_counter("visits", {"page": "b"})
        assert values(monitor, "chat_turbo_metrics_overflow_measurements_total") == {(("metric", "visits"),): 1}
        monitor = chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)
        monitor.increment_counter("visits", {"page": "a"})
        assert not [r for r in monitor.snapshot().records() if r["name"].startswith("chat_turbo_metrics_")]
        monitor = chat_turbo_metrics.configure(environment="test", metrics_exporters=())
        monitor.increment_counter("visits", value=float("nan"))
        assert values(monitor, "chat_turbo_metrics_dropped_total") == {(("cause", "not_finite"),): 1}
    finally:
        chat_turbo_metrics.configure(environment="test", metrics_exporters=())


def test_one_scrape_adds_up_the_health_of_every_process_of_the_service(tmp_path: Path) -> None:
    port = free_port()
    holder = service_process(tmp_path, port, cardinality_limit=1)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a member: its drops and overflow reach the holder's scrape
        try:
            for user in range(4):  # 3 into overflow
                holder.increment_counter("logins", {"user": user})
            holder.increment_counter("logins", value=float("nan"))
            os.write(write_end, b"1")
            time.sleep(3)
            holder.shutdown()
        finally:
            os._exit(0)
    try:
        os.read(read_end, 1)
        holder.increment_counter("logins", {"user": 0})
        holder.increment_counter("logins", {"user": 1})  # 1 into overflow
        holder.increment_counter("logins", value=float("inf"))
        wanted = {
            'chat_turbo_metrics_overflow_measurements_total{metric="logins"} 4',
            'chat_turbo_metrics_dropped_total{cause="not_finite"} 2',
            'chat_turbo_metrics_series{metric="logins"} 4',  # each process: its own series and an overflow series
        }
        deadline = time.monotonic() + 10
        while not wanted <= set(_scrape(port)):
            assert time.monotonic() < deadline, [line for line in _scrape(port) if "chat_turbo_metrics_" in line]
            time.sleep(0.05)
        os.waitpid(pid, 0)
        # The member has exited: its counters are retired, not lost; its gauges are gone.
        lines = set(_scrape(port))
        assert 'chat_turbo_metrics_overflow_measurements_total{metric="logins"} 4' in lines
        assert 'chat_turbo_metrics_series{metric="logins"} 2' in lines
    finally:
        holder.shutdown()


def _scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode().splitlines()  # type: ignore[no-any-return]


def test_overflow_from_many_threads_is_counted_exactly_and_warned_once(
    monitor_factory: MonitorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = monitor_factory(cardinality_limit=10)
    start = threading.Barrier(8)

    def record(thread: int) -> None:
        start.wait()
        for n in range(500):
            monitor.increment_counter("sessions", {"id": f"{thread}-{n}"})

    threads = [threading.Thread(target=record, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert values(monitor, "chat_turbo_metrics_overflow_measurements_total") == {(("metric", "sessions"),): 3990}
    assert values(monitor, "sessions")[(("otel.metric.overflow", True),)] == 3990
    assert len(overflow_warnings(caplog, "sessions")) == 1
