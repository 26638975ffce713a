"""Merging processes' collections, and the holder/member protocol, in-process and with real forks."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor, get_monitoring_config
from chat_turbo_metrics._pipeline.ports import PortInUseError
from chat_turbo_metrics.exporters._prometheus_text import to_prometheus_text
from chat_turbo_metrics.multiprocess._merge import encode, merge, retire
from conftest import free_port, service_process
from forked import in_fork


def _worker(**settings: object) -> PerformanceMonitor:
    return PerformanceMonitor(MonitoringConfig(metrics_exporters=(), environment="test", **settings))  # type: ignore[arg-type]


def _lines(text: str, prefix: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith(prefix))


@pytest.fixture
def workers() -> list[PerformanceMonitor]:
    made = [_worker(), _worker(), _worker()]
    yield made  # type: ignore[misc]
    for monitor in made:
        monitor.shutdown()


def _states(workers: list[PerformanceMonitor]) -> list[tuple[str, dict[str, object]]]:
    return [(f"{1000 + i}-x", encode(w.pipeline.collect())) for i, w in enumerate(workers)]  # type: ignore[union-attr]


def test_counters_and_histograms_add_up_across_processes(workers: list[PerformanceMonitor]) -> None:
    for count, worker in enumerate(workers, start=1):
        for _ in range(count):
            worker.increment_counter("jobs", {"queue": "a"})
            worker.record_histogram("size_bytes", 10 * count, {"queue": "a"})
    workers[0].increment_counter("jobs", {"queue": "b"}, value=5)

    text = to_prometheus_text(merge(_states(workers), None, lambda name: "sum"))

    assert _lines(text, "jobs_total") == ['jobs_total{queue="a"} 6', 'jobs_total{queue="b"} 5']
    assert 'size_bytes_count{queue="a"} 6' in text.splitlines()
    assert 'size_bytes_sum{queue="a"} 140' in text.splitlines()  # 10 + 2*20 + 3*30
    assert 'size_bytes_bucket{queue="a",le="10"} 1' in text.splitlines()
    assert 'size_bytes_bucket{queue="a",le="25"} 3' in text.splitlines()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("sum", ["depth 12"]), ("max", ["depth 7"]), ("min", ["depth 1"]), ("latest", ["depth 4"])],
)
def test_gauge_modes_reduce_the_processes_values(
    workers: list[PerformanceMonitor], mode: str, expected: list[str]
) -> None:
    for worker, value in zip(workers, (1, 7, 4), strict=True):
        worker.record_gauge("depth", value)
        time.sleep(0.002)  # "latest" is decided by the time each process recorded its value

    text = to_prometheus_text(merge(_states(workers), None, lambda name: mode))

    assert _lines(text, "depth") == expected


def test_gauge_mode_worker_keeps_one_series_per_process(workers: list[PerformanceMonitor]) -> None:
    for worker, value in zip(workers, (1, 7, 4), strict=True):
        worker.record_gauge("depth", value, {"queue": "a"})

    text = to_prometheus_text(merge(_states(workers), None, lambda name: "worker"))

    assert _lines(text, "depth") == [
        'depth{process_pid="1000",queue="a"} 1',
        'depth{process_pid="1001",queue="a"} 7',
        'depth{process_pid="1002",queue="a"} 4',
    ]


def test_retired_processes_keep_their_counts_but_not_their_gauges(workers: list[PerformanceMonitor]) -> None:
    gone, alive = workers[0], workers[1]
    gone.increment_counter("jobs", value=3)
    gone.record_gauge("depth", 9)
    alive.increment_counter("jobs", value=2)
    retired = retire(None, encode(gone.pipeline.collect()))  # type: ignore[union-attr]
    retired = retire(retired, encode(gone.pipeline.collect()))  # type: ignore[union-attr]  # a second one

    text = to_prometheus_text(merge(_states([alive]), retired, lambda name: "sum"))

    assert _lines(text, "jobs_total") == ["jobs_total 8"]
    assert _lines(text, "depth") == []


def test_merged_scrape_does_not_name_one_process_as_the_service(workers: list[PerformanceMonitor]) -> None:
    for worker in workers:
        worker.increment_counter("jobs")

    merged = merge(_states(workers), None, lambda name: "sum")

    attributes = merged.resource_metrics[0].resource.attributes
    assert attributes["service.name"] == "chat-turbo"
    assert "service.instance.id" not in attributes


def test_gauge_modes_are_configured_per_metric_from_the_environment() -> None:
    config = get_monitoring_config(
        "test", env={"METRICS_MULTIPROCESS_GAUGES": "active_connections=sum, cpu_*=max ,latest"}
    )
    assert dict(config.multiprocess_gauges) == {"active_connections": "sum", "cpu_*": "max", "*": "latest"}
    with pytest.raises(ConfigurationError, match=r"METRICS_MULTIPROCESS_GAUGES.*'average'"):
        get_monitoring_config("test", env={"METRICS_MULTIPROCESS_GAUGES": "x=average"})
    with pytest.raises(ConfigurationError, match="multiprocess_gauges"):
        MonitoringConfig(multiprocess_gauges={"x": "average"})


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()  # type: ignore[no-any-return]


def test_a_second_pipeline_on_the_port_in_another_process_becomes_a_member(tmp_path: Path) -> None:
    port = free_port()
    holder = service_process(tmp_path, port)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child is a new member: it serves its own count to the holder, and exits cleanly
        try:
            holder.increment_counter("jobs", value=40)
            os.write(write_end, b"1")
            time.sleep(3)
            holder.shutdown()
        finally:
            os._exit(0)
    try:
        os.read(read_end, 1)
        holder.increment_counter("jobs", value=2)
        deadline = time.monotonic() + 5
        while "jobs_total 42" not in _scrape(port).splitlines():
            assert time.monotonic() < deadline, _scrape(port)
            time.sleep(0.05)
        os.waitpid(pid, 0)
        # The child has exited: its totals are retired, not lost.
        assert "jobs_total 42" in _scrape(port).splitlines()
        holder.increment_counter("jobs")
        assert "jobs_total 43" in _scrape(port).splitlines()
    finally:
        holder.shutdown()


def test_port_held_by_another_program_still_raises(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}\b") as raised:
            service_process(tmp_path, port)
    assert raised.value.errno == errno.EADDRINUSE
    assert f"pid {os.getpid()}" in str(raised.value)  # the holder, when it can be seen
    assert "METRICS_PROMETHEUS_PORT" in str(raised.value)


def test_the_holder_named_is_the_one_on_the_address_asked_for() -> None:
    # Two services of one machine on the same port, each on its own loopback address: a refused bind on one
    # address names the process listening there, not the other (lower pid) service's.
    with socket.socket() as other_service:
        other_service.bind(("127.0.0.3", 0))
        other_service.listen()
        port = other_service.getsockname()[1]
        code = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.2', {port})); s.listen()"
        code += "; print(1, flush=True); time.sleep(60)"
        listener = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout is not None
            listener.stdout.readline()
            found = {host: PortInUseError(host, port).holder for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4")}
        finally:
            listener.kill()
            listener.wait()
    pids = {host: holder.pid if holder is not None else None for host, holder in found.items()}
    assert pids == {"127.0.0.2": listener.pid, "127.0.0.3": os.getpid(), "127.0.0.4": None}


def test_each_forked_worker_pushes_under_its_own_service_instance_id() -> None:
    # What push exporters (OTLP) receive is the pipeline's collection; its resource must name the worker.
    monitor = _worker()
    monitor.increment_counter("jobs")
    parent_id = encode(monitor.pipeline.collect())["resource"]["service.instance.id"]  # type: ignore[union-attr]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            monitor.increment_counter("jobs")
            resource = encode(monitor.pipeline.collect())["resource"]  # type: ignore[union-attr]
            os.write(write_end, str(resource["service.instance.id"]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_id = pipe.read().decode()
    os.waitpid(pid, 0)
    monitor.shutdown()

    assert parent_id
    assert child_id
    assert child_id != parent_id


def test_a_killed_worker_keeps_what_it_last_reported(tmp_path: Path) -> None:
    port = free_port()
    holder = service_process(tmp_path, port)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # recorded, reported once, then SIGKILLed: no final state is written
        try:
            holder.increment_counter("jobs", value=7)
            holder.record_gauge("depth", 5)
            os.write(write_end, b"1")
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        os.read(read_end, 1)
        deadline = time.monotonic() + 5
        while "jobs_total 7" not in _scrape(port).splitlines():
            assert time.monotonic() < deadline, _scrape(port)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

        after = _scrape(port).splitlines()
        assert "jobs_total 7" in after  # the counter does not go backwards
        assert not [line for line in after if line.startswith("depth")]  # a dead process's gauge is gone
        holder.increment_counter("jobs")
        assert "jobs_total 8" in _scrape(port).splitlines()
    finally:
        holder.shutdown()


def test_a_restarted_service_starts_at_zero(tmp_path: Path) -> None:
    port = free_port()
    first = service_process(tmp_path, port)
    pid = os.fork()
    if pid == 0:
        first.increment_counter("jobs", value=3)
        first.shutdown()  # leaves a final state, as a recycled worker does
        os._exit(0)
    os.waitpid(pid, 0)
    assert "jobs_total 3" in _scrape(port).splitlines()
    first.shutdown()

    second = service_process(tmp_path, port)  # the same port and directory, a new run (this process is not its sibling)
    try:
        second.increment_counter("jobs")
        assert "jobs_total 1" in _scrape(port).splitlines()
    finally:
        second.shutdown()


def _points(monitor: PerformanceMonitor) -> dict[str, object]:
    """What the pipeline's collection (the data every push exporter gets) holds, by metric name."""
    state = encode(monitor.pipeline.collect())  # type: ignore[union-attr]
    found: dict[str, object] = {"instance": state["resource"]["service.instance.id"]}
    for metric in state["metrics"]:
        point = metric["points"][0]
        found[metric["name"]] = (
            point[2] if metric["type"] == "gauge" else point[3:5] if metric["type"] == "histogram" else point[3]
        )
    return found


@pytest.mark.parametrize("recording", ["fast", "sdk"])
def test_a_forked_child_reports_only_what_it_records_itself(recording: str) -> None:
    monitor = _worker(recording=recording)
    try:
        # Recorded before the fork (at import in a --preload master): the parent keeps reporting it.
        monitor.increment_counter("jobs", {"queue": "a"}, value=3)
        monitor.record_histogram("size_bytes", 10, {"queue": "a"})
        monitor.record_gauge("depth", 7)
        handle = monitor.counter("handled", {"queue": "a"})
        handle.inc(4)
        api_counter = monitor.pipeline.meter.create_counter("api_calls")  # type: ignore[union-attr]
        api_counter.add(5)

        def child() -> object:
            monitor.increment_counter("jobs", {"queue": "a"}, value=2)
            monitor.record_histogram("size_bytes", 6, {"queue": "a"})
            handle.inc()
            return _points(monitor)

        forked = in_fork(child)
        parent = _points(monitor)
    finally:
        monitor.shutdown()

    assert isinstance(forked, dict)
    assert (forked["jobs"], forked["size_bytes"], forked["handled"]) == (2, [1, 6], 1)
    assert forked["depth"] == 7  # a gauge is a reading, not a sum: the child keeps the value it inherited
    assert forked.get("api_calls", 0) == 0  # an OpenTelemetry-API instrument too (the SDK's own aggregation)
    assert forked["instance"] != parent["instance"]
    assert (parent["jobs"], parent["size_bytes"], parent["handled"], parent["api_calls"]) == (3, [1, 10], 4, 5)


def _health(monitor: PerformanceMonitor) -> dict[str, object]:
    """The self-telemetry sums of the pipeline's collection: metric name and labels -> value."""
    state = encode(monitor.pipeline.collect())  # type: ignore[union-attr]
    return {
        f"{metric['name']}{sorted(point[0].items())}": point[3]
        for metric in state["metrics"]
        if metric["name"].startswith("chat_turbo_metrics_") and metric["type"] == "sum"
        for point in metric["points"]
    }


@pytest.mark.parametrize("recording", ["fast", "sdk"])
def test_a_forked_child_reports_only_its_own_drops_and_overflow(recording: str) -> None:
    monitor = _worker(recording=recording, cardinality_limit=1)
    dropped = "chat_turbo_metrics_dropped_total[('cause', 'not_finite')]"
    overflow = "chat_turbo_metrics_overflow_measurements_total[('metric', 'latency')]"
    try:
        for user in range(3):  # two past the limit, before the fork (a histogram: counted exactly on both paths)
            monitor.record_histogram("latency", 0.1, {"user": user})
        monitor.record_histogram("size", float("nan"))
        monitor.record_histogram("size", float("nan"))

        def child() -> object:
            monitor.record_histogram("size", float("inf"))
            return _health(monitor)

        forked = in_fork(child)
        parent = _health(monitor)
    finally:
        monitor.shutdown()

    assert isinstance(forked, dict)
    assert (parent[dropped], parent[overflow]) == (2, 2)
    assert (forked[dropped], forked.get(overflow, 0)) == (1, 0)  # its own drop; no overflow of its own
