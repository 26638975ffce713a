"""One collection: hooks, the SDK's data, then the post-processing steps in the one declared order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics._collection.collector import STEP_NAMES, STEPS, Collector

MonitorFactory = Callable[..., PerformanceMonitor]


def test_the_pass_is_declared_once_in_this_order() -> None:
    assert STEP_NAMES == ("overflow", "recorder", "hit_ratios", "self_telemetry", "exportable")
    assert all(why for _, why in STEPS)  # each place says why it is there


def test_steps_run_in_the_declared_order_whatever_order_they_were_added_in() -> None:
    ran: list[str] = []

    def step(name: str) -> Callable[[MetricsData | None], MetricsData | None]:
        def run(data: MetricsData | None) -> MetricsData | None:
            ran.append(name)
            return data

        return run

    collector = Collector(lambda: ran.append("sdk") or None)  # type: ignore[func-returns-value]
    for name in reversed(STEP_NAMES):
        collector.add(name, step(name))
    collector.add("recorder", step("recorder 2"))
    collector.hooks.append(lambda: ran.append("hook"))

    collector.collect()

    assert ran == ["hook", "sdk", "overflow", "recorder", "recorder 2", "hit_ratios", "self_telemetry", "exportable"]


def test_each_step_gets_what_the_one_before_made() -> None:
    collector = Collector(lambda: "sdk")  # type: ignore[arg-type, return-value]
    collector.add("exportable", lambda data: f"{data} > exportable")  # type: ignore[arg-type, return-value]
    collector.add("overflow", lambda data: f"{data} > overflow")  # type: ignore[arg-type, return-value]
    assert collector.collect() == "sdk > overflow > exportable"  # type: ignore[comparison-overlap]


def test_an_unknown_place_is_refused_and_a_removed_step_no_longer_runs() -> None:
    collector = Collector(lambda: None)
    with pytest.raises(ValueError, match="last"):
        collector.add("last", lambda data: data)

    def step(data: MetricsData | None) -> MetricsData | None:
        raise AssertionError("removed")

    collector.add("hit_ratios", step)
    collector.remove("hit_ratios", step)
    assert collector.collect() is None
    assert collector.steps() == []


def test_a_failing_hook_is_logged_once_and_the_collection_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("no reading")

    collector = Collector(lambda: None)
    collector.hooks.extend([broken, lambda: ran.append("next hook")])
    collector.add("exportable", lambda data: ran.append("step") or data)  # type: ignore[func-returns-value]
    with caplog.at_level(logging.ERROR, logger="chat_turbo_metrics.pipeline"):
        collector.collect()
        collector.collect()
    assert ran == ["next hook", "step", "next hook", "step"]
    assert len([r for r in caplog.records if "collection-time reading" in r.getMessage()]) == 1


def test_a_monitors_pipeline_has_each_step_at_its_place(monitor_factory: MonitorFactory) -> None:
    fast = monitor_factory(recording="fast")
    sdk = monitor_factory(recording="sdk", self_telemetry=False)
    assert fast.pipeline is not None
    assert sdk.pipeline is not None
    assert [name for name, _ in fast._runtime.pipeline.collector.steps()] == list(STEP_NAMES)
    assert [name for name, _ in sdk._runtime.pipeline.collector.steps()] == ["overflow", "hit_ratios", "exportable"]


def _series(monitor: PerformanceMonitor) -> dict[str, Any]:
    return {r["attributes"]["metric"]: r["value"] for r in monitor.snapshot().records() if r["name"].endswith("series")}


def test_self_telemetry_counts_the_series_the_steps_before_it_made(
    monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = monitor_factory(recording=recording)
    monitor.increment_counter("cache_hits", {"cache": "a"})
    monitor.increment_counter("cache_misses", {"cache": "b"})
    series = _series(monitor)
    assert series["cache_hits"] == 1
    assert series["cache_hit_ratio"] == 2  # made by the hit_ratios step, before the self-telemetry counts


def test_the_sdks_overflow_is_found_before_the_fast_paths_metrics_join(monitor_factory: MonitorFactory) -> None:
    # Both paths record into the chat_turbo_metrics scope; the fast path counts its own overflow at the call. Were
    # the overflow watch to run after the recorder's metrics joined, it would count the fast path's again.
    monitor = monitor_factory(recording="fast", cardinality_limit=2)
    assert monitor.pipeline is not None
    sdk_histogram = monitor.pipeline.meter.create_histogram("sdk_latency")
    for user in range(5):
        monitor.record_histogram("fast_latency", 0.1, {"user": user})
        sdk_histogram.record(0.1, {"user": user})
    for _ in range(2):  # collected twice: counted once
        overflow = {
            r["attributes"]["metric"]: r["value"]
            for r in monitor.snapshot().records()
            if r["name"] == "chat_turbo_metrics_overflow_measurements_total"
        }
    assert overflow == {"fast_latency": 3, "sdk_latency": 3}
