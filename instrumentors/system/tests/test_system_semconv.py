"""The semantic conventions' process.* metrics, recorded beside the seed's names from the same readings."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_system import SystemInstrumentor
from chat_turbo_metrics_system._readings import ProcessReadings, ProcessSample


class Moving:
    """A process whose totals the test moves, and whose pid it can change (a forked child)."""

    def __init__(self) -> None:
        self.pid, self.user, self.system, self.switches = 100, 3.0, 1.0, (50, 5)

    def sample(self) -> ProcessSample:
        return ProcessSample(
            pid=self.pid, cpu_seconds=self.user + self.system, rss_bytes=32 * 1024 * 1024, threads=4, open_fds=9,
            connections=None, cpu_user=self.user, cpu_system=self.system, virtual_bytes=512 * 1024 * 1024,
            context_switches=self.switches, started=time.time() - 30,
        )  # fmt: skip


@pytest.fixture
def monitor() -> Iterator[PerformanceMonitor]:
    config = MonitoringConfig(
        environment="test", metrics_exporters=(), self_telemetry=False, prometheus_scope_labels=False
    )
    made = PerformanceMonitor(config)
    yield made
    made.shutdown()


def test_process_metrics_have_the_conventions_values(monitor: PerformanceMonitor) -> None:
    moving = Moving()
    readings = ProcessReadings(monitor, sample=moving.sample)
    monitor.add_collection_hook(readings.collect)
    first = monitor.snapshot()
    assert first.value("process.cpu.time", {"cpu.mode": "user"}) == 3.0  # the whole total since the start
    assert first.value("process.cpu.time", {"cpu.mode": "system"}) == 1.0
    moving.user, moving.system, moving.switches = 4.5, 1.25, (60, 5)
    snapshot = monitor.snapshot()
    assert snapshot.value("process.cpu.time", {"cpu.mode": "user"}) == 4.5  # a counter: totals, not the deltas
    assert snapshot.value("process.cpu.time", {"cpu.mode": "system"}) == 1.25
    assert snapshot.value("process.context_switches", {"process.context_switch_type": "voluntary"}) == 60
    assert snapshot.value("process.context_switches", {"process.context_switch_type": "involuntary"}) == 5
    assert snapshot.value("process.memory.usage") == 32 * 1024 * 1024
    assert snapshot.value("process.memory.virtual") == 512 * 1024 * 1024
    assert snapshot.value("process.thread.count") == 4
    assert snapshot.value("process.open_file_descriptor.count") == 9
    assert 29.0 <= snapshot.value("process.uptime") <= 60.0
    assert snapshot.value("memory_usage_mb") == 32.0  # the seed's names stay beside them


def test_a_child_counts_its_own_cpu_from_zero(monitor: PerformanceMonitor) -> None:
    moving = Moving()
    readings = ProcessReadings(monitor, sample=moving.sample)
    monitor.add_collection_hook(readings.collect)
    monitor.snapshot()
    moving.pid, moving.user, moving.system = 101, 0.5, 0.25  # the child's own times restart at zero
    snapshot = monitor.snapshot()
    # The counter keeps the parent's 3.0 (the monitor's data was inherited) and adds the child's 0.5, never
    # the negative step from 3.0 to 0.5.
    assert snapshot.value("process.cpu.time", {"cpu.mode": "user"}) == 3.5
    assert snapshot.value("process.cpu.time", {"cpu.mode": "system"}) == 1.25


def test_units_and_prometheus_names_of_the_real_process(monitor: PerformanceMonitor) -> None:
    instrumentor = SystemInstrumentor()
    instrumentor.instrument(monitor=monitor)
    try:
        snapshot = monitor.snapshot()
    finally:
        instrumentor.uninstrument()
    units = {record["name"]: record["unit"] for record in snapshot.records()}
    assert units["process.cpu.time"] == "s"
    assert units["process.memory.usage"] == "By"
    assert snapshot.value("process.thread.count") >= 1
    if hasattr(os, "getpid") and os.name == "posix":
        assert snapshot.value("process.open_file_descriptor.count") >= 3
    text = snapshot.to_prometheus()
    for family, kind in (
        ("process_cpu_time_seconds_total", "counter"),
        ("process_memory_usage_bytes", "gauge"),
        ("process_memory_virtual_bytes", "gauge"),
        ("process_thread_count", "gauge"),
        ("process_open_file_descriptor_count", "gauge"),
        ("process_context_switches_total", "counter"),
        ("process_uptime_seconds", "gauge"),
    ):
        assert f"# TYPE {family} {kind}\n" in text, family
    assert 'process_cpu_time_seconds_total{cpu_mode="user"}' in text
