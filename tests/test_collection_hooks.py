"""Collection-time readings: hooks run only when something collects, and record through the front end."""

from __future__ import annotations

import logging

import pytest

from chat_turbo_metrics import PerformanceMonitor


def test_hook_runs_once_per_collection_and_its_reading_is_in_that_collection(monitor: PerformanceMonitor) -> None:
    calls: list[int] = []

    def read() -> None:
        calls.append(1)
        monitor.record_gauge("queue_depth", len(calls))

    monitor.add_collection_hook(read)
    monitor.increment_counter("jobs")
    monitor.increment_counter("jobs")
    assert calls == []  # recording does not call it
    assert monitor.snapshot().value("queue_depth") == 1
    assert monitor.snapshot().value("queue_depth") == 2
    monitor.remove_collection_hook(read)
    assert monitor.snapshot().value("queue_depth") == 2
    assert len(calls) == 2


def test_failing_hook_is_logged_once_and_other_readings_go_on(
    monitor: PerformanceMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("psutil went away")

    monitor.add_collection_hook(broken)
    monitor.add_collection_hook(lambda: monitor.record_gauge("fine", 7))
    with caplog.at_level(logging.ERROR, "chat_turbo_metrics.pipeline"):
        for _ in range(3):
            assert monitor.snapshot().value("fine") == 7
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "psutil went away" in caplog.records[0].getMessage()


def test_removing_an_unknown_hook_is_harmless(monitor: PerformanceMonitor) -> None:
    monitor.remove_collection_hook(lambda: None)
    assert monitor.snapshot().records() == []
