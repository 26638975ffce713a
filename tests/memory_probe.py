"""Run in a fresh interpreter by ``test_memory_bound.py``: record 1,000,000 distinct tag sets (or metric
names) and print, as JSON, the growth of the process's peak RSS and what the recorder holds afterwards.

``python tests/memory_probe.py limited|evicting|names``
"""

from __future__ import annotations

import gc
import json
import resource
import sys
from typing import Any

from chat_turbo_metrics import MetricsSnapshot, MonitoringConfig
from chat_turbo_metrics._pipeline.provider import Pipeline
from chat_turbo_metrics._recording.fast import FastRecorder
from chat_turbo_metrics._recording.instruments import InstrumentRegistry
from chat_turbo_metrics.instrumentation import Problems

TAG_SETS = 1_000_000
BATCH = 10_000  # tag sets recorded between two collections in the eviction case
IDLE_S = 60


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.now


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def build(**settings: Any) -> tuple[Pipeline, FastRecorder, Clock]:
    config = MonitoringConfig(metrics_exporters=(), environment="test", **settings)
    pipeline = Pipeline(config)
    problems = Problems()
    clock = Clock()
    registry = InstrumentRegistry(problems, config.metric_limit)
    recorder = FastRecorder(registry, problems, config, overflow=pipeline.overflow, clock=clock)
    pipeline.add_producer(recorder.metrics)
    return pipeline, recorder, clock


def series_held(recorder: FastRecorder) -> int:
    return sum(len(stream.series) for instrument in recorder._order for stream in instrument.streams)


def cached(recorder: FastRecorder) -> int:
    return len(recorder._counters) + len(recorder._histograms)


def limited() -> dict[str, Any]:
    """Default cardinality limit, no eviction: everything past the limit shares the overflow series."""
    pipeline, recorder, _ = build()
    recorder.increment_counter("warm_up", {"phase": "start"})
    pipeline.collect()
    gc.collect()
    before = peak_rss_kib()
    for i in range(TAG_SETS):
        recorder.increment_counter("logins", {"user": str(i), "region": "eu"})
        recorder.record_histogram("login_seconds", 0.1, {"user": str(i)})
    snapshot = MetricsSnapshot(pipeline.collect())
    return {
        "growth_kib": peak_rss_kib() - before,
        "series": series_held(recorder),
        "cached": cached(recorder),
        "counted": sum(r["value"] for r in snapshot.records() if r["name"] == "logins"),
        "observed": sum(r["count"] for r in snapshot.records() if r["name"] == "login_seconds"),
    }


def evicting() -> dict[str, Any]:
    """A raised limit, an idle timeout, a collection (one timeout later) after every batch of new tag sets."""
    pipeline, recorder, clock = build(cardinality_limit=40_000, series_idle_timeout_s=IDLE_S)
    recorder.increment_counter("warm_up", {"phase": "start"})
    pipeline.collect()
    gc.collect()
    before = peak_rss_kib()
    most_held = exported = overflow = half = 0
    for batch in range(TAG_SETS // BATCH):
        if batch == TAG_SETS // BATCH // 2:
            half = peak_rss_kib() - before
        for i in range(batch * BATCH, (batch + 1) * BATCH):
            recorder.increment_counter("logins", {"user": i})
        clock.now += IDLE_S * 10**9
        data = pipeline.collect()
        assert data is not None
        points = [p for m in data.resource_metrics[0].scope_metrics[0].metrics for p in m.data.data_points]
        # Each tag set was incremented once, and is exported at the collection after its batch.
        exported += sum(p.value for p in points if p.attributes.get("user", -1) // BATCH == batch)
        overflow += sum(1 for p in points if "otel.metric.overflow" in p.attributes)
        most_held = max(most_held, series_held(recorder))
    return {
        "growth_kib": peak_rss_kib() - before,
        "growth_at_half_kib": half,
        "most_series_held": most_held,
        "exported": exported,
        "overflow_points": overflow,
        "cached": cached(recorder),
    }


def names() -> dict[str, Any]:
    """1,000,000 distinct metric names: the registry keeps metric_limit of them, drops the rest."""
    pipeline, recorder, _ = build()
    recorder.increment_counter("warm_up")
    gc.collect()
    before = peak_rss_kib()
    for i in range(TAG_SETS):
        recorder.increment_counter(f"user_{i}_logins")
    metrics = MetricsSnapshot(pipeline.collect()).names()
    return {
        "growth_kib": peak_rss_kib() - before,
        "metrics": len(metrics),
        "instruments": len(recorder._order),
        "dropped": recorder._problems.counts[("metric_limit",)],
    }


if __name__ == "__main__":
    # No automatic collection of reference cycles: nothing here depends on it, and the eviction case ran three
    # times slower with it (each batch's churn set off full collections over the series held). It can only make
    # the bounds harder to meet: cyclic garbage, if any, stays in the peak RSS measured.
    gc.disable()
    print(json.dumps({"limited": limited, "evicting": evicting, "names": names}[sys.argv[1]]()))
