"""Process metrics read at collection time: injected statistics, real psutil, GC, event-loop lag, fork()."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_system import SPECS, ProcessSample, SystemInstrumentor, watch_event_loop
from chat_turbo_metrics_system._readings import own_descriptors


@pytest.fixture(params=["fast", "sdk"])
def monitor(request: pytest.FixtureRequest) -> Iterator[PerformanceMonitor]:
    """A monitor on a private pipeline, for each recording path."""
    made = PerformanceMonitor(
        MonitoringConfig(
            metrics_exporters=(), environment="test", recording=request.param, prometheus_scope_labels=False
        )
    )
    yield made
    made.shutdown()


@pytest.fixture
def instrument(monitor: PerformanceMonitor) -> Iterator[Callable[..., None]]:
    """Instruments the process into ``monitor`` with the options given; uninstruments after the test."""

    def start(**options: object) -> None:
        SystemInstrumentor().instrument(monitor=monitor, **options)

    yield start
    SystemInstrumentor().uninstrument()


class FakeProcess:
    """OS statistics and a clock that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 10.0
        self.samples = 0
        self.gc = [{"collections": 5}, {"collections": 1}, {"collections": 0}]

    def sample(self) -> ProcessSample:
        self.samples += 1
        return ProcessSample(pid=4242, cpu_seconds=self.cpu, rss_bytes=64 * 1024 * 1024, threads=7, open_fds=12,
                             connections=3, cpu_user=self.cpu * 0.75, cpu_system=self.cpu * 0.25,
                             virtual_bytes=256 * 1024 * 1024, context_switches=(40, 2), started=1.0)  # fmt: skip

    def clock(self) -> float:
        return self.now

    def gc_stats(self) -> list[dict[str, Any]]:
        return self.gc


def test_injected_statistics_become_every_metric_of_the_table(
    monitor: PerformanceMonitor, instrument: Callable[..., None]
) -> None:
    fake = FakeProcess()
    instrument(sample=fake.sample, clock=fake.clock, gc_stats=fake.gc_stats)
    monitor.snapshot()  # first collection: the CPU baseline
    fake.now, fake.cpu = 102.0, 11.5  # 1.5 s of CPU in 2 s
    fake.gc[0]["collections"] = 9
    snapshot = monitor.snapshot()
    assert snapshot.value("cpu_usage_percent") == 75.0
    assert snapshot.value("memory_usage_mb") == 64.0
    assert snapshot.value("process_threads") == 7
    assert snapshot.value("process_open_fds") == 12
    assert snapshot.value("active_connections", {"source": "process"}) == 3
    assert snapshot.value("python_gc_collections", {"generation": "0"}) == 9
    assert snapshot.value("python_gc_collections", {"generation": "1"}) == 1
    assert {spec.name for spec in SPECS} - {"python_gc_pause_seconds", "event_loop_lag_seconds"} <= snapshot.names()
    text = snapshot.to_prometheus()
    assert "# HELP process_open_fds File descriptors the process has open." in text
    assert 'python_gc_collections_total{generation="0"} 9' in text


def test_statistics_are_read_only_when_something_collects(
    monitor: PerformanceMonitor, instrument: Callable[..., None]
) -> None:
    fake = FakeProcess()
    instrument(sample=fake.sample, clock=fake.clock, gc_stats=fake.gc_stats)
    for _ in range(1000):
        monitor.increment_counter("requests")
    assert fake.samples == 0
    monitor.snapshot()
    monitor.snapshot()
    assert fake.samples == 2


def test_real_process_values(monitor: PerformanceMonitor, instrument: Callable[..., None]) -> None:
    instrument()
    # Another test's server or exporter thread, still ending in this worker process, may open or close a descriptor
    # between the two readings: the three files must show as three more in one of a few tries (0 if not read).
    added = []
    for _ in range(5):
        gc.collect()
        gc.disable()  # no finalizer of another test's leftovers may close a descriptor between the readings
        try:
            before = monitor.snapshot()
            with tempfile.TemporaryFile(), tempfile.TemporaryFile(), tempfile.TemporaryFile():
                during = monitor.snapshot()
        finally:
            gc.enable()
        added.append(during.value("process_open_fds") - before.value("process_open_fds"))
        if added[-1] == 3:
            break
    assert added[-1] == 3, added
    assert during.value("process_threads") >= 1
    assert 5 < during.value("memory_usage_mb") < 4096


@pytest.fixture
def connections() -> Iterator[Callable[[int], None]]:
    """Opens ``n`` established loopback connections in this process (both ends), plus a listener, a UDP socket
    and a unix socket pair that are not connections; closes them all after the test."""
    opened: list[socket.socket] = []

    def open_connections(n: int) -> None:
        server = socket.create_server(("127.0.0.1", 0))
        opened.extend([server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM), *socket.socketpair()])
        for _ in range(n):
            client = socket.create_connection(server.getsockname())
            accepted, _ = server.accept()
            opened.extend([client, accepted])

    yield open_connections
    for each in opened:
        each.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="read from /proc/self/fd on Linux")
def test_connections_are_this_process_s_own_established_tcp_connections(
    monitor: PerformanceMonitor, instrument: Callable[..., None], connections: Callable[[int], None]
) -> None:
    instrument()
    before = monitor.snapshot().value("active_connections", {"source": "process"})
    connections(25)
    during = monitor.snapshot().value("active_connections", {"source": "process"})
    assert during - before == 50  # both ends of each; the listener, the UDP and unix sockets are not counted
    # The same number psutil finds by reading the whole machine's socket table, which the instrumentor no longer does.
    expected = sum(1 for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED)
    assert own_descriptors()[1] == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="read from /proc/self/fd on Linux")
def test_the_machine_wide_socket_table_is_never_read(
    monitor: PerformanceMonitor,
    instrument: Callable[..., None],
    connections: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def machine_wide(*args: object, **kwargs: object) -> None:
        raise AssertionError("psutil's connection list reads every socket of the host (/proc/net/tcp*)")

    for target in (psutil, psutil.Process):
        for name in ("net_connections", "connections"):
            if hasattr(target, name):
                monkeypatch.setattr(target, name, machine_wide)
    real_open = open
    read: list[str] = []

    def watched_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watched_open)
    instrument()
    connections(3)
    snapshot = monitor.snapshot()
    assert snapshot.value("active_connections", {"source": "process"}) >= 6
    assert not [path for path in read if path.startswith("/proc/net")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="read from /proc/self/fd on Linux")
def test_reading_connections_changes_no_socket_of_the_application(connections: Callable[[int], None]) -> None:
    # A Python socket object made on the application's descriptor would make it non-blocking under a default
    # timeout (and the flag belongs to the descriptor the application uses): the reading must use none.
    connections(2)  # blocking sockets, as a sync worker's are
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
        flags_before = {fd: _flags(fd) for fd in descriptors}
        assert own_descriptors()[1] is not None
        flags_after = {fd: _flags(fd) for fd in descriptors}
    finally:
        socket.setdefaulttimeout(previous)
    assert flags_after == flags_before


def _flags(fd: int) -> int | None:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return None  # the listing's own descriptor, closed since


def test_gc_collections_and_pause_time(monitor: PerformanceMonitor, instrument: Callable[..., None]) -> None:
    instrument()
    gc.disable()  # only the two collections below, none started by allocations
    try:
        before = monitor.snapshot().value("python_gc_collections", {"generation": "2"}) or 0
        gc.collect()
        gc.collect()
        snapshot = monitor.snapshot()
    finally:
        gc.enable()
    assert snapshot.value("python_gc_collections", {"generation": "2"}) == before + 2
    assert snapshot.value("python_gc_pause_seconds", {"generation": "2"}) > 0


def test_event_loop_lag_is_how_late_the_probe_ran(monitor: PerformanceMonitor, instrument: Callable[..., None]) -> None:
    fake = FakeProcess()
    instrument(sample=fake.sample, clock=fake.clock, gc_stats=fake.gc_stats)

    async def main() -> tuple[Any, Any]:
        watch_event_loop()
        first = monitor.snapshot().value("event_loop_lag_seconds")  # schedules the probe at t=100
        fake.now = 100.25  # the loop was busy for 250 ms before it ran the probe
        await asyncio.sleep(0)
        return first, monitor.snapshot().value("event_loop_lag_seconds")

    assert asyncio.run(main()) == (None, 0.25)


def test_a_blocked_loop_shows_a_growing_lag(monitor: PerformanceMonitor, instrument: Callable[..., None]) -> None:
    fake = FakeProcess()
    instrument(sample=fake.sample, clock=fake.clock, gc_stats=fake.gc_stats)

    async def main() -> list[Any]:
        watch_event_loop()
        lags = [monitor.snapshot().value("event_loop_lag_seconds")]  # probe scheduled at t=100
        for now in (101.0, 103.0):  # the loop never yields: the probe cannot run
            fake.now = now
            lags.append(monitor.snapshot().value("event_loop_lag_seconds"))
        await asyncio.sleep(0)  # the probe lands at t=103
        fake.now = 104.0
        lags.append(monitor.snapshot().value("event_loop_lag_seconds"))
        return lags

    assert asyncio.run(main()) == [None, 1.0, 3.0, 3.0]


def test_the_first_loop_that_runs_is_watched_without_a_call(
    monitor: PerformanceMonitor, instrument: Callable[..., None]
) -> None:
    fake = FakeProcess()
    instrument(sample=fake.sample, clock=fake.clock, gc_stats=fake.gc_stats)

    async def main() -> Any:
        monitor.snapshot()  # schedules the probe at t=100
        fake.now = 100.5
        await asyncio.sleep(0)
        return monitor.snapshot().value("event_loop_lag_seconds")

    assert asyncio.run(main()) == 0.5


def test_uninstrument_restores_the_event_loop(monitor: PerformanceMonitor) -> None:
    from chat_turbo_metrics_system import SystemInstrumentor

    original = asyncio.base_events.BaseEventLoop.run_forever
    SystemInstrumentor().instrument(monitor=monitor, sample=FakeProcess().sample)
    assert asyncio.base_events.BaseEventLoop.run_forever is not original
    SystemInstrumentor().uninstrument()
    assert asyncio.base_events.BaseEventLoop.run_forever is original


def test_a_closed_loop_is_forgotten(monitor: PerformanceMonitor, instrument: Callable[..., None]) -> None:
    fake = FakeProcess()
    instrument(sample=fake.sample, clock=fake.clock, gc_stats=fake.gc_stats)
    loop = asyncio.new_event_loop()
    watch_event_loop(loop)
    loop.close()
    assert monitor.snapshot().value("event_loop_lag_seconds") is None
    assert monitor.snapshot().value("process_threads") == 7


def test_disabled_monitoring_reads_nothing() -> None:
    from chat_turbo_metrics import MonitoringConfig
    from chat_turbo_metrics_system import SystemInstrumentor

    fake = FakeProcess()
    disabled = PerformanceMonitor(MonitoringConfig(enabled=False))
    SystemInstrumentor().instrument(monitor=disabled, sample=fake.sample, clock=fake.clock, gc_stats=fake.gc_stats)
    try:
        assert disabled.snapshot().records() == []
    finally:
        SystemInstrumentor().uninstrument()
    assert fake.samples == 0


def test_watch_event_loop_needs_the_instrumentor() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="instrument"):
            watch_event_loop(loop)
    finally:
        loop.close()


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self/fd"), reason="needs fork() and /proc")
def test_each_process_reports_itself_after_fork(monitor: PerformanceMonitor, instrument: Callable[..., None]) -> None:
    instrument()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # the parent has used CPU before the fork
        pass
    parent = monitor.snapshot()
    read_end, write_end = os.pipe()
    before_fork = time.monotonic()  # system-wide clock: comparable in the child
    pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, leave without running pytest's teardown
        try:
            forked_at = time.monotonic()
            gc.collect()
            gc.disable()  # no finalizer may close descriptors between the two readings
            before = len(os.listdir(f"/proc/{os.getpid()}/fd"))  # counted as psutil counts (its own fd too)
            opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]
            while time.process_time() < 0.2:  # busy: the child's own CPU (a new process starts at zero)
                pass
            child = monitor.snapshot()
            # The child's share of a core since the fork, from the same tick-based OS counters psutil reads
            # (time.process_time() is exact, the kernel's per-process ticks are not: on a loaded machine
            # the two differ by more than any useful tolerance).
            times = psutil.Process().cpu_times()
            # The instrumentor's baseline was taken between before_fork and forked_at (other at-fork handlers
            # run in between, slowly on a loaded machine): its rate lies between these two.
            now, cpu = time.monotonic(), times.user + times.system
            low, high = 100 * cpu / (now - before_fork), 100 * cpu / (now - forked_at)
            report = {
                "fds": child.value("process_open_fds"),
                "cpu": child.value("cpu_usage_percent"),
                "low": low,
                "high": high,
                "opened": len(opened),
                "before": before,
            }
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = json.loads(os.read(read_end, 4096))
    os.close(read_end)
    assert status == 0
    assert report["fds"] - report["before"] == 20  # the child's own descriptors, read from the child
    assert parent.value("process_open_fds") is not None
    # The child's CPU since the fork, as the child measured it itself: not the parent's history, not zero.
    assert report["cpu"] > 5
    assert report["low"] - 10 <= report["cpu"] <= report["high"] + 10  # 10: tick granularity, read order


def test_process_wide_monitor_is_followed_across_configure() -> None:
    code = textwrap.dedent(
        """
        import chat_turbo_metrics
        from chat_turbo_metrics_system import SystemInstrumentor
        chat_turbo_metrics.configure(environment="test", metrics_exporters=())
        SystemInstrumentor().instrument()
        monitor = chat_turbo_metrics.configure(environment="test", metrics_exporters=())
        print("threads", monitor.snapshot().value("process_threads"))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split("threads")[1]) >= 1


@pytest.mark.parametrize("option", ["sample", "clock", "gc_stats"])
def test_bad_injections_fail_at_instrument_time_naming_them(monitor: PerformanceMonitor, option: str) -> None:
    from chat_turbo_metrics import ConfigurationError
    from chat_turbo_metrics_system import SystemInstrumentor

    with pytest.raises(ConfigurationError, match=f"{option}=42"):
        SystemInstrumentor().instrument(monitor=monitor, **{option: 42})
    assert monitor.snapshot().records() == []
