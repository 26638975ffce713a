"""The recording methods are real methods of ``PerformanceMonitor``: the patterns users test their code with work.

Patching the class intercepts calls on monitors made before the patch, a subclass's override runs, and calling
through the class records. Each holds on both recording paths, and bad values are still warned about and dropped.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from conftest import make_config


@pytest.fixture
def monitor_factory(monitor_factory: Callable[..., PerformanceMonitor]) -> Callable[..., PerformanceMonitor]:
    """Monitors without self-telemetry: these tests compare the application's metrics exactly."""
    return functools.partial(monitor_factory, self_telemetry=False)


CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("increment_counter", ("jobs", {"queue": "mail"}, 2)),
    ("record_gauge", ("depth", 7, {"queue": "mail"})),
    ("record_histogram", ("payload", 0.5, {"queue": "mail"})),
]


@pytest.mark.parametrize(("method", "args"), CALLS)
def test_patching_the_class_intercepts_calls_on_existing_monitors(
    monitor: PerformanceMonitor, method: str, args: tuple[Any, ...]
) -> None:
    with mock.patch.object(PerformanceMonitor, method) as patched:
        getattr(monitor, method)(*args)  # the monitor was made before the patch
    patched.assert_called_once_with(*args)
    assert monitor.snapshot().names() == set()  # intercepted: nothing reached the recorder
    getattr(monitor, method)(*args)  # the patch is gone: recording again
    assert monitor.snapshot().names() == {args[0]}


def test_patching_with_autospec_sees_the_monitor_and_the_arguments(monitor: PerformanceMonitor) -> None:
    with mock.patch.object(PerformanceMonitor, "record_timer", autospec=True) as patched:
        start = monitor.start_timer("job")
        monitor.record_timer("job", start, {"step": "a"})
    patched.assert_called_once_with(monitor, "job", start, {"step": "a"})
    assert monitor.snapshot().names() == set()


def test_patching_an_instance_intercepts_only_that_monitor(monitor_factory: Any, recording: str) -> None:
    patched_monitor, other = monitor_factory(recording=recording), monitor_factory(recording=recording)
    with mock.patch.object(patched_monitor, "increment_counter") as patched:
        patched_monitor.increment_counter("jobs")
        other.increment_counter("jobs")
    patched.assert_called_once_with("jobs")
    assert patched_monitor.snapshot().value("jobs") is None
    assert other.snapshot().value("jobs") == 1


class TaggingMonitor(PerformanceMonitor):
    """What users write: a subclass adding a tag to every counter and counting its own calls."""

    def __init__(self, config: MonitoringConfig) -> None:
        super().__init__(config)
        self.calls = 0

    def increment_counter(self, name: str, tags: Any = None, value: float = 1) -> None:
        self.calls += 1
        super().increment_counter(name, {**(tags or {}), "region": "eu"}, value)

    def record_histogram(self, name: str, value: float, tags: Any = None) -> None:
        super().record_histogram(name, value * 1000, tags)  # seconds in, milliseconds recorded


def test_a_subclass_override_runs_and_records_through_super(recording: str) -> None:
    monitor = TaggingMonitor(make_config(recording=recording, self_telemetry=False))
    try:
        monitor.increment_counter("jobs", {"queue": "mail"})
        monitor.increment_counter("jobs", {"queue": "mail"}, value=2)
        monitor.record_histogram("latency", 0.25)
        assert monitor.calls == 2
        snapshot = monitor.snapshot()
        assert snapshot.value("jobs", {"queue": "mail", "region": "eu"}) == 3
        assert snapshot.value("jobs", {"queue": "mail"}) is None  # every recording went through the override
        assert snapshot.value("latency")["sum"] == 250
    finally:
        monitor.shutdown()


def test_timer_goes_through_the_overridable_methods(recording: str) -> None:
    seen: list[str] = []

    class Watching(PerformanceMonitor):
        def record_timer(self, name: str, start: float, tags: Any = None) -> None:
            seen.append(name)
            super().record_timer(name, start, tags)

    monitor = Watching(make_config(recording=recording, self_telemetry=False))
    try:
        with monitor.timer("block"):
            pass

        @monitor.timer("call")
        def work() -> int:
            return 42

        assert work() == 42
        assert seen == ["block", "call"]
        assert monitor.snapshot().value("block_duration")["count"] == 1
        assert monitor.snapshot().value("call_duration")["count"] == 1
    finally:
        monitor.shutdown()


def test_calling_through_the_class_records(monitor: PerformanceMonitor) -> None:
    PerformanceMonitor.increment_counter(monitor, "z")
    PerformanceMonitor.increment_counter(monitor, "z", {"k": "v"}, 4)
    PerformanceMonitor.record_gauge(monitor, "g", 3.5)
    PerformanceMonitor.record_histogram(monitor, "h", 2.0, {"k": "v"})
    start = PerformanceMonitor.start_timer(monitor, "t")
    assert 0 < start <= PerformanceMonitor.start_timer(monitor)
    PerformanceMonitor.record_timer(monitor, "t", start)
    snapshot = monitor.snapshot()
    assert snapshot.value("z") == 1
    assert snapshot.value("z", {"k": "v"}) == 4
    assert snapshot.value("g") == 3.5
    assert snapshot.value("h", {"k": "v"})["sum"] == 2.0
    assert snapshot.value("t_duration")["count"] == 1
    assert monitor.dropped == 0


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("increment_counter", ("odd", None, -1)),
        ("increment_counter", ("odd", None, 10**400)),
        ("increment_counter", ("odd", None, math.nan)),
        ("record_gauge", ("odd", "12")),
        ("record_gauge", ("odd", Decimal("NaN"))),
        ("record_histogram", ("odd", math.inf)),
        ("record_histogram", ("odd", object())),
        ("record_timer", ("odd", "yesterday")),
        ("increment_counter", ("", None, 1)),
        ("record_gauge", ("odd", 1, {"": "empty label name"})),
    ],
)
@pytest.mark.parametrize("through_class", [False, True])
def test_odd_values_are_still_warned_about_and_dropped(
    monitor: PerformanceMonitor,
    caplog: pytest.LogCaptureFixture,
    method: str,
    args: tuple[Any, ...],
    through_class: bool,
) -> None:
    call = getattr(PerformanceMonitor, method) if through_class else getattr(monitor, method)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics"):
        if through_class:
            call(monitor, *args)
        else:
            call(*args)
    assert monitor.dropped == 1
    assert monitor.snapshot().names() == set()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_disabled_monitor_methods_are_no_ops(monitor_factory: Any) -> None:
    monitor = monitor_factory(enabled=False)
    PerformanceMonitor.increment_counter(monitor, "z")
    monitor.record_gauge("g", 1)
    monitor.record_timer("t", monitor.start_timer("t"))
    assert monitor.snapshot().names() == set()
    assert monitor.dropped == 0
