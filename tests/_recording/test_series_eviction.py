"""Idle-series eviction on the fast path: series nobody records leave memory; nothing recorded is lost.

Time comes from an injected clock, advanced by the test between collections (no test waits on real time).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chat_turbo_metrics import MetricsSnapshot, ViewConfig
from chat_turbo_metrics._pipeline.provider import Pipeline
from chat_turbo_metrics._recording.fast import FastRecorder, cache_key
from chat_turbo_metrics._recording.idle import DEMOTED, GONE, PINNED
from chat_turbo_metrics._recording.instruments import InstrumentRegistry
from chat_turbo_metrics.instrumentation import Problems
from conftest import make_config

TIMEOUT_S = 60


class Clock:
    """Nanoseconds since the epoch, moved only by the test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


class Recording:
    """A fast recorder on its own pipeline, with the clock its collections evict by."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("series_idle_timeout_s", TIMEOUT_S)
        self.config = make_config(**settings)
        self.pipeline = Pipeline(self.config)
        self.clock = Clock()
        self.problems = Problems()
        self.recorder = FastRecorder(
            InstrumentRegistry(self.problems),
            self.problems,
            self.config,
            overflow=self.pipeline.overflow,
            clock=self.clock,
        )
        self.pipeline.add_producer(self.recorder.metrics)

    def collect(self, after_s: float = 0) -> MetricsSnapshot:
        self.clock.advance(after_s)
        return MetricsSnapshot(self.pipeline.collect())

    def series(self, name: str) -> dict[Any, Any]:
        """The cells of the instrument ``name`` (its one stream), by attribute key."""
        instrument = next(i for i in self.recorder._order if i.streams[0].spec.name == name)
        return instrument.streams[0].series

    def cached(self, name: str) -> int:
        return next(i for i in self.recorder._order if i.streams[0].spec.name == name).cached


@pytest.fixture
def rec() -> Iterator[Recording]:
    made = Recording()
    yield made
    made.pipeline.shutdown()


def values(snapshot: MetricsSnapshot, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {
        tuple(sorted(r["attributes"].items())): r["value"] if r["kind"] != "histogram" else r["count"]
        for r in snapshot.records()
        if r["name"] == name
    }


def test_series_not_recorded_for_two_timeouts_leaves_export_cache_and_memory(rec: Recording) -> None:
    rec.recorder.increment_counter("jobs", {"queue": "idle"}, 5)
    rec.recorder.increment_counter("jobs", {"queue": "busy"})
    rec.collect()
    for _ in range(2):
        rec.recorder.increment_counter("jobs", {"queue": "busy"})
        snapshot = rec.collect(after_s=TIMEOUT_S)
    assert values(snapshot, "jobs") == {(("queue", "busy"),): 3}
    assert [cell.attributes for cell in rec.series("jobs").values()] == [{"queue": "busy"}]
    assert list(rec.recorder._counters) == [cache_key("jobs", 1, {"queue": "busy"})]
    assert rec.cached("jobs") == 1


def test_series_recorded_once_per_timeout_is_kept_with_every_recording(rec: Recording) -> None:
    for _ in range(6):
        rec.recorder.increment_counter("jobs", {"queue": "a"})
        rec.recorder.record_histogram("size_bytes", 10.0, {"queue": "a"})
        rec.recorder.record_gauge("depth", 7, {"queue": "a"})  # the hot path: a store that leaves no trace
        rec.collect(after_s=TIMEOUT_S * 0.6)
        snapshot = rec.collect(after_s=TIMEOUT_S * 0.39)
    assert values(snapshot, "jobs") == {(("queue", "a"),): 6}
    assert values(snapshot, "size_bytes") == {(("queue", "a"),): 6}
    assert values(snapshot, "depth") == {(("queue", "a"),): 7}


def test_gauge_set_only_on_the_hot_path_is_seen_once_demoted(rec: Recording) -> None:
    rec.recorder.record_gauge("depth", 1, {"queue": "a"})
    rec.collect()
    rec.collect(after_s=TIMEOUT_S)
    cell = next(iter(rec.series("depth").values()))
    assert cell.mark == DEMOTED
    assert rec.recorder._gauges == {}
    rec.recorder.record_gauge("depth", 2, {"queue": "a"})  # the slow path finds the cell and keeps it
    snapshot = rec.collect(after_s=TIMEOUT_S)
    assert values(snapshot, "depth") == {(("queue", "a"),): 2}
    assert len(rec.recorder._gauges) == 1
    assert rec.cached("depth") == 1
    rec.collect(after_s=TIMEOUT_S)  # then not set for two timeouts (two collections): gone
    assert values(rec.collect(after_s=TIMEOUT_S), "depth") == {}


def test_series_that_returns_after_eviction_starts_a_new_stream(rec: Recording) -> None:
    rec.recorder.increment_counter("jobs", {"queue": "a"}, 5)
    first = next(r for r in rec.collect().records() if r["name"] == "jobs")
    rec.collect(after_s=TIMEOUT_S)
    assert values(rec.collect(after_s=TIMEOUT_S), "jobs") == {}
    rec.recorder.increment_counter("jobs", {"queue": "a"})
    again = next(r for r in rec.collect().records() if r["name"] == "jobs")
    assert again["value"] == 1
    assert again["start_time_unix_nano"] > first["start_time_unix_nano"]


def test_evicted_series_free_their_cardinality_slots_for_new_tag_sets() -> None:
    rec = Recording(cardinality_limit=3)
    try:
        for user in ("a", "b", "c"):
            rec.recorder.increment_counter("logins", {"user": user})
        rec.collect()
        rec.collect(after_s=TIMEOUT_S)
        rec.collect(after_s=TIMEOUT_S)
        for user in ("d", "e", "f"):
            rec.recorder.increment_counter("logins", {"user": user}, 2)
        snapshot = rec.collect()
        assert values(snapshot, "logins") == {(("user", u),): 2 for u in ("d", "e", "f")}  # no overflow series
        assert rec.cached("logins") == 3
    finally:
        rec.pipeline.shutdown()


def test_an_increment_racing_with_demotion_is_counted(rec: Recording) -> None:
    rec.recorder.increment_counter("jobs", {"queue": "a"})
    rec.collect()
    cell = next(iter(rec.recorder._counters.values()))  # where a hot-path call found the cell ...
    rec.collect(after_s=TIMEOUT_S)  # ... when a collection demoted it ...
    assert cell.mark == DEMOTED
    with rec.recorder._lock:  # ... before that call added its increment
        cell.delta += 1
    assert values(rec.collect(after_s=TIMEOUT_S), "jobs") == {(("queue", "a"),): 2}
    rec.recorder.increment_counter("jobs", {"queue": "a"})  # the next call finds the same series again
    assert values(rec.collect(after_s=TIMEOUT_S), "jobs") == {(("queue", "a"),): 3}


def test_an_evicted_cell_is_never_cached_again(rec: Recording) -> None:
    rec.recorder.increment_counter("jobs", {"queue": "a"})
    rec.collect()
    cell = next(iter(rec.recorder._counters.values()))
    rec.collect(after_s=TIMEOUT_S)
    rec.collect(after_s=TIMEOUT_S)
    assert cell.mark == GONE
    instrument = rec.recorder._order[0]
    rec.recorder._cache(rec.recorder._counters, ("jobs", (("queue", "a"),), int), cell, instrument)  # a late slow path
    assert rec.recorder._counters == {}
    assert instrument.cached == 0


def test_all_tag_keys_of_a_filtered_series_leave_the_cache_together() -> None:
    rec = Recording(views=(ViewConfig(instrument="jobs", attribute_keys=("queue",)),))
    try:
        for worker in range(3):
            rec.recorder.increment_counter("jobs", {"queue": "a", "worker": worker})
        rec.collect()
        assert len(rec.recorder._counters) == 3
        assert rec.cached("jobs") == 3
        rec.collect(after_s=TIMEOUT_S)
        assert rec.recorder._counters == {}
        assert rec.cached("jobs") == 0
        assert values(rec.collect(after_s=TIMEOUT_S), "jobs") == {}
    finally:
        rec.pipeline.shutdown()


def test_a_bound_handle_keeps_its_series(rec: Recording) -> None:
    handle = rec.recorder.bind("counter", "jobs", {"queue": "a"})
    handle.inc()
    for _ in range(4):
        rec.collect(after_s=TIMEOUT_S)
    handle.inc(2)
    assert values(rec.collect(after_s=TIMEOUT_S), "jobs") == {(("queue", "a"),): 3}
    assert next(iter(rec.series("jobs").values())).mark == PINNED


def test_overflow_series_is_kept() -> None:
    rec = Recording(cardinality_limit=1)
    try:
        rec.recorder.increment_counter("logins", {"user": "a"})
        rec.recorder.increment_counter("logins", {"user": "b"})  # over the limit: the overflow series
        for _ in range(3):
            snapshot = rec.collect(after_s=TIMEOUT_S)
        assert values(snapshot, "logins") == {(("otel.metric.overflow", True),): 1}
    finally:
        rec.pipeline.shutdown()


def test_without_a_timeout_nothing_is_evicted() -> None:
    rec = Recording(series_idle_timeout_s=0)
    try:
        rec.recorder.increment_counter("jobs", {"queue": "a"})
        for _ in range(3):
            snapshot = rec.collect(after_s=10**6)
        assert values(snapshot, "jobs") == {(("queue", "a"),): 1}
        assert next(iter(rec.recorder._counters.values())).keys is None  # no bookkeeping either
    finally:
        rec.pipeline.shutdown()


def test_threads_recording_churning_tags_while_collections_evict_lose_nothing(rec: Recording) -> None:
    rounds, threads, tags_per_round = 30, 4, 50
    collected = threading.Condition()
    count = [0]
    stop = threading.Event()

    def record(thread: int) -> None:
        for round_ in range(rounds):
            for tag in range(tags_per_round):
                # Odd rounds use other tag values than even ones (but for tag 0): series go idle and come back.
                rec.recorder.increment_counter("jobs", {"t": thread, "k": tag, "r": round_ % 2 * tag})
            with collected:  # let a few collections (each one timeout later) pass, while other threads record
                seen = count[0]
                collected.wait_for(lambda seen=seen: count[0] >= seen + 3 or stop.is_set())

    # Every stream (attributes + start time) ends at the total it had when last exported: the sum over
    # streams of their last exported values is everything recorded, evicted streams included.
    last: dict[tuple[Any, ...], int] = {}

    def remember(data: Any) -> None:
        for record in MetricsSnapshot(data).records():
            key = (tuple(sorted(record["attributes"].items())), record["start_time_unix_nano"])
            last[key] = record["value"]

    def collect_while_recording() -> None:
        while not stop.is_set():
            rec.clock.advance(TIMEOUT_S)
            remember(rec.pipeline.collect())
            with collected:
                count[0] += 1
                collected.notify_all()

    collector = threading.Thread(target=collect_while_recording)
    collector.start()
    workers = [threading.Thread(target=record, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    collector.join()
    remember(rec.pipeline.collect())
    assert sum(last.values()) == rounds * threads * tags_per_round
    restarted = len(last) - len({attributes for attributes, _ in last})
    assert restarted >= threads * (tags_per_round - 1)  # series were evicted and came back meanwhile


def test_delta_exporters_forget_the_baselines_of_evicted_series(rec: Recording) -> None:
    from opentelemetry.sdk.metrics import Counter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, ConsoleMetricExporter

    from chat_turbo_metrics._pipeline.temporality import DeltaConverter

    exporter = ConsoleMetricExporter(preferred_temporality={Counter: AggregationTemporality.DELTA})
    converter = DeltaConverter.for_exporter(exporter)
    assert converter is not None

    def export(after_s: float) -> dict[Any, Any]:
        rec.clock.advance(after_s)
        data = rec.pipeline.collect()
        assert data is not None
        delta, pending = converter.convert(data)
        converter.commit(pending)
        return values(MetricsSnapshot(delta), "jobs")

    for user in range(100):
        rec.recorder.increment_counter("jobs", {"user": user}, 2)
    assert len(export(0)) == 100
    rec.recorder.increment_counter("jobs", {"user": 0})
    export(TIMEOUT_S)
    rec.recorder.increment_counter("jobs", {"user": 0})
    assert export(TIMEOUT_S) == {(("user", 0),): 1}  # users 1..99 evicted
    assert sum(len(points) for points in converter._baseline.values()) == 1
    rec.recorder.increment_counter("jobs", {"user": 7}, 5)  # back as a new series: all of it is new
    assert export(0) == {(("user", 0),): 0, (("user", 7),): 5}


def test_a_child_forked_while_collections_evict_records_and_evicts_on_its_own(rec: Recording) -> None:
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            rec.recorder.increment_counter("jobs", {"n": n % 200})

    def collect() -> None:
        while not stop.is_set():
            rec.clock.advance(TIMEOUT_S)
            rec.pipeline.collect()

    threads = [threading.Thread(target=f) for f in (churn, churn, collect)]
    for thread in threads:
        thread.start()
    children = {}
    try:
        for _ in range(10):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: its cells are whole, its lock free; it records and evicts alone
                try:
                    rec.recorder.increment_counter("child_jobs", {"k": 1}, 3)
                    first = values(rec.collect(), "child_jobs")
                    rec.collect(after_s=TIMEOUT_S)
                    last = values(rec.collect(after_s=TIMEOUT_S), "child_jobs")
                    os.write(write_end, repr((first, last)).encode())
                finally:
                    os._exit(0)
            os.close(write_end)
            children[pid] = read_end
            time.sleep(0.002)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    reports = []
    deadline = time.monotonic() + 30
    for pid, read_end in children.items():
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        with os.fdopen(read_end) as pipe:
            reports.append(pipe.read())
    assert reports == [repr(({(("k", 1),): 3}, {}))] * 10
