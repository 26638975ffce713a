"""The fast recording path exports exactly what the SDK path exports, at a fraction of the cost per call.

Golden tests record the same calls through ``recording="sdk"`` and ``recording="fast"`` and compare the
Prometheus text and the snapshot records (timestamps, ``service.instance.id`` and measured durations aside).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest

from chat_turbo_metrics import PerformanceMonitor, ViewConfig
from chat_turbo_metrics._recording.fast import FastRecorder
from forked import in_fork

Factory = Callable[..., PerformanceMonitor]
TAGS = {"method": "GET", "endpoint": "/api/x", "status": 200}


@pytest.fixture
def monitor_factory(monitor_factory: Callable[..., PerformanceMonitor]) -> Callable[..., PerformanceMonitor]:
    """Monitors without self-telemetry: these tests compare the application's metrics exactly (the pipeline's
    own are tested in test_self_telemetry.py)."""
    return functools.partial(monitor_factory, self_telemetry=False)


# --- helpers ----------------------------------------------------------------------------------------
def both(factory: Factory, **settings: Any) -> tuple[PerformanceMonitor, PerformanceMonitor]:
    """An sdk-path and a fast-path monitor with the same settings, each on its own pipeline."""
    return factory(recording="sdk", **settings), factory(recording="fast", **settings)


def prometheus(monitor: PerformanceMonitor, timers: Iterable[str] = ()) -> str:
    """The scrape text, without the per-process instance id and the sums of measured durations."""
    text = re.sub(r'service_instance_id="[^"]*"', 'service_instance_id="*"', monitor.snapshot().to_prometheus())
    for family in timers:
        text = re.sub(rf"^({family}_sum(?:\{{.*\}})?) \S+$", r"\1 *", text, flags=re.MULTILINE)
    return text


def records(monitor: PerformanceMonitor, timers: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The snapshot records without timestamps (but keeping whether a start time exists) or instance id."""
    out = []
    for original in monitor.snapshot().records():
        record = dict(original)
        record["time_unix_nano"] = record["time_unix_nano"] > 0
        record["start_time_unix_nano"] = record["start_time_unix_nano"] is not None
        record["resource"] = {k: v for k, v in record["resource"].items() if k != "service.instance.id"}
        if record["name"] in timers:
            record.update(sum="*", min="*", max="*")
        out.append(record)
    return out


# One expected series: (name, tags, value); the value is a number for sums and gauges, (count, sum) for a
# histogram, and the count alone for a timer (its durations are measured, not chosen).
Point = tuple[str, Mapping[str, Any], Any]


def exported_points(monitor: PerformanceMonitor, timers: Iterable[str] = ()) -> dict[tuple[str, Any], Any]:
    """Every series of the monitor's export, in the form of :data:`Point`."""
    found: dict[tuple[str, Any], Any] = {}
    for record in monitor.snapshot().records():
        key = (record["name"], tuple(sorted(record["attributes"].items(), key=lambda item: item[0])))
        assert key not in found, f"series exported twice: {key}"
        if record["kind"] != "histogram":
            found[key] = record["value"]
        elif record["name"] in timers:
            found[key] = record["count"]
        else:
            found[key] = (record["count"], record["sum"])
    return found


def assert_same_export(
    sdk: PerformanceMonitor, fast: PerformanceMonitor, expected: Iterable[Point], timers: Iterable[str] = ()
) -> None:
    """Both paths export the same text and records, and those hold exactly the ``expected`` series."""
    timers = tuple(timers)
    families = tuple(f"{name}_seconds" for name in timers)
    assert prometheus(fast, families) == prometheus(sdk, families)
    assert records(fast, timers) == records(sdk, timers)
    want = {(name, tuple(sorted(tags.items(), key=lambda item: item[0]))): value for name, tags, value in expected}
    assert want, "a golden test must say which points it expects"
    got = exported_points(fast, timers)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def each(monitors: Iterable[PerformanceMonitor], script: Callable[[PerformanceMonitor], None]) -> None:
    for monitor in monitors:
        script(monitor)


# --- golden: the same data on both paths ------------------------------------------------------------
def test_counters_export_identically(monitor_factory: Factory) -> None:
    def script(m: PerformanceMonitor) -> None:
        m.increment_counter("api_requests", TAGS)
        m.increment_counter("api_requests", {"status": 200, "endpoint": "/api/x", "method": "GET"}, value=2)
        m.increment_counter("api_requests_total", {"method": "POST", "endpoint": "/api/y", "status": 500})
        m.increment_counter("errors")
        m.increment_counter("errors", {})
        m.increment_counter("bytes_sent", {"peer": "a"}, value=0.1)
        m.snapshot()  # a collection between increments: float totals must fold like the SDK's
        m.increment_counter("bytes_sent", {"peer": "a"}, value=0.2)
        m.increment_counter("bytes_sent", {"peer": "a"}, value=0.7)

    sdk, fast = both(monitor_factory)
    each((sdk, fast), script)
    assert_same_export(
        sdk,
        fast,
        [
            ("api_requests", TAGS, 3),
            ("api_requests", {"method": "POST", "endpoint": "/api/y", "status": 500}, 1),
            ("errors", {}, 2),
            ("bytes_sent", {"peer": "a"}, 1.0),
        ],
    )
    assert fast.snapshot().value("api_requests", TAGS) == 3


def test_gauges_export_identically(monitor_factory: Factory) -> None:
    def script(m: PerformanceMonitor) -> None:
        m.record_gauge("active_connections", 10)
        m.record_gauge("active_connections", 7)
        m.record_gauge("temperature", -3.5, {"room": "a"})
        m.record_gauge("memory_usage_mb", 512.25, {"worker": 1})
        m.snapshot()
        m.record_gauge("temperature", 21.0, {"room": "a"})

    sdk, fast = both(monitor_factory)
    each((sdk, fast), script)
    assert_same_export(
        sdk,
        fast,
        [
            ("active_connections", {}, 7),
            ("temperature", {"room": "a"}, 21.0),
            ("memory_usage_mb", {"worker": 1}, 512.25),
        ],
    )


def test_histograms_with_default_buckets_export_identically(monitor_factory: Factory) -> None:
    def script(m: PerformanceMonitor) -> None:
        # Upper bounds are inclusive: 0.005, 0.1 and 10.0 land in the buckets they bound.
        for value in (0.3, 0.005, 11.0, 0.0051, 0.1, 0.0, 10.0):
            m.record_histogram("http_request_duration_seconds", value, {"route": "/chat"})
        for value in (5.5, 10_000.0, 0.0, 1e9, 5.0):  # unitless: the SDK's default boundaries
            m.record_histogram("message_size", value)
        m.snapshot()
        m.record_histogram("message_size", 7, {"channel": "public"})
        m.record_histogram("http_request_duration_seconds", 0.2, {"route": "/chat"})

    sdk, fast = both(monitor_factory)
    each((sdk, fast), script)
    assert_same_export(
        sdk,
        fast,
        [
            ("http_request_duration_seconds", {"route": "/chat"}, (8, 21.6101)),
            ("message_size", {}, (5, 1_000_010_010.5)),
            ("message_size", {"channel": "public"}, (1, 7)),
        ],
    )


def test_defined_buckets_export_identically(monitor_factory: Factory) -> None:
    def script(m: PerformanceMonitor) -> None:
        m.define("queue_wait", "histogram", unit="s", description="Time in queue.", buckets=(1.0, 2.0))
        for value in (0.5, 1.0, 1.5, 2.0, 3.0):
            m.record_histogram("queue_wait", value)

    sdk, fast = both(monitor_factory)
    each((sdk, fast), script)
    assert_same_export(sdk, fast, [("queue_wait", {}, (5, 8.0))])


def test_view_buckets_export_identically(monitor_factory: Factory) -> None:
    views = (
        ViewConfig(instrument="*_latency", buckets=(0.1, 0.5, 1.0)),
        ViewConfig(instrument="jobs_done", buckets=(1.0, 10.0)),  # a counter aggregated as a histogram
    )

    def script(m: PerformanceMonitor) -> None:
        for value in (0.5, 0.1, 4.0, 0.05, 0.75, 1.0):
            m.record_histogram("db_latency", value, {"table": "users"})
        for value in (1, 3, 10, 30):
            m.increment_counter("jobs_done", {"queue": "a"}, value=value)

    sdk, fast = both(monitor_factory, views=views)
    each((sdk, fast), script)
    assert_same_export(
        sdk, fast, [("db_latency", {"table": "users"}, (6, 6.4)), ("jobs_done", {"queue": "a"}, (4, 44))]
    )
    assert fast.snapshot().value("db_latency", {"table": "users"})["bucket_counts"] == [2, 1, 2, 1]


def test_timers_export_identically_apart_from_measured_durations(monitor_factory: Factory) -> None:
    def script(m: PerformanceMonitor) -> None:
        m.record_timer("api_request", time.perf_counter() - 0.3, TAGS)  # lands in (0.25, 0.5] on both paths
        m.record_timer("api_request", time.perf_counter() - 0.3, TAGS)
        with m.timer("job", {"kind": "cleanup"}):
            pass

    sdk, fast = both(monitor_factory)
    each((sdk, fast), script)
    assert_same_export(
        sdk,
        fast,
        [("api_request_duration", TAGS, 2), ("job_duration", {"kind": "cleanup"}, 1)],
        timers=("api_request_duration", "job_duration"),
    )
    assert fast.snapshot().value("api_request_duration", TAGS)["count"] == 2


def test_view_attribute_keys_merge_series_exactly(monitor_factory: Factory) -> None:
    views = (
        ViewConfig(instrument="messages_sent", attribute_keys=("channel",)),
        ViewConfig(instrument="message_size", attribute_keys=("channel",)),
        ViewConfig(instrument="queue_depth", attribute_keys=("queue",)),
    )

    def script(m: PerformanceMonitor) -> None:
        for user in ("a", "b", "c", "a"):
            m.increment_counter("messages_sent", {"channel": "public", "user": user}, value=0.1)
            m.record_histogram("message_size", 0.3, {"user": user, "channel": "public"})
        m.snapshot()
        m.increment_counter("messages_sent", {"user": "d", "channel": "public"}, value=0.7)
        # A gauge keeps the last value set for the merged series, whichever dropped tag it came with.
        m.record_gauge("queue_depth", 5, {"queue": "q", "host": "1"})
        m.record_gauge("queue_depth", 3, {"queue": "q", "host": "2"})
        m.record_gauge("queue_depth", 7, {"queue": "q", "host": "1"})

    sdk, fast = both(monitor_factory, views=views)
    each((sdk, fast), script)
    assert_same_export(
        sdk,
        fast,
        [
            ("messages_sent", {"channel": "public"}, 1.1),
            ("message_size", {"channel": "public"}, (4, 1.2)),
            ("queue_depth", {"queue": "q"}, 7),
        ],
    )
    assert fast.snapshot().value("queue_depth", {"queue": "q"}) == 7


def test_rename_view_exports_identically(monitor_factory: Factory) -> None:
    views = (ViewConfig(instrument="messages_sent", name="chat_messages", description="Chat messages."),)
    sdk, fast = both(monitor_factory, views=views)
    each((sdk, fast), lambda m: m.increment_counter("messages_sent", {"channel": "public"}))
    assert_same_export(sdk, fast, [("chat_messages", {"channel": "public"}, 1)])
    assert "# HELP chat_messages_total Chat messages." in fast.snapshot().to_prometheus()


def test_drop_view_exports_nothing_on_either_path(monitor_factory: Factory) -> None:
    views = (ViewConfig(instrument="noise*", drop=True),)

    def script(m: PerformanceMonitor) -> None:
        m.increment_counter("noise", {"a": "b"})
        m.record_histogram("noise_size", 3)
        m.counter("noise").inc()
        m.increment_counter("signal")

    sdk, fast = both(monitor_factory, views=views)
    each((sdk, fast), script)
    assert_same_export(sdk, fast, [("signal", {}, 1)])
    assert fast.snapshot().names() == {"signal"}


def test_two_views_on_one_instrument_give_two_metrics_on_both_paths(monitor_factory: Factory) -> None:
    views = (
        ViewConfig(instrument="jobs", name="jobs_by_queue", attribute_keys=("queue",)),
        ViewConfig(instrument="j*", attribute_keys=()),
    )

    def script(m: PerformanceMonitor) -> None:
        for i, queue in enumerate("aab"):
            m.increment_counter("jobs", {"queue": queue, "id": i})

    sdk, fast = both(monitor_factory, views=views)
    each((sdk, fast), script)
    assert_same_export(
        sdk, fast, [("jobs_by_queue", {"queue": "a"}, 2), ("jobs_by_queue", {"queue": "b"}, 1), ("jobs", {}, 3)]
    )
    assert fast.snapshot().value("jobs") == 3


def test_cardinality_overflow_matches_the_sdk(monitor_factory: Factory) -> None:
    def script(m: PerformanceMonitor) -> None:
        for i in range(9):
            m.increment_counter("requests", {"user": str(i)})
            m.record_histogram("latency_seconds", 0.01 * i, {"user": str(i)})
            m.record_gauge("load", i, {"user": str(i)})
        m.snapshot()
        for i in (0, 4, 5, 8, 12):  # known series keep theirs; new ones join the overflow series
            m.increment_counter("requests", {"user": str(i)}, value=10)

    sdk, fast = both(monitor_factory, cardinality_limit=5)
    each((sdk, fast), script)
    # The first five series keep their own values; users 5..8 and the new 12 share the overflow series.
    overflow = {"otel.metric.overflow": True}
    expected = [
        *(("requests", {"user": str(i)}, 11 if i in (0, 4) else 1) for i in range(5)),
        ("requests", overflow, 4 + 30),
        *(("latency_seconds", {"user": str(i)}, (1, 0.01 * i)) for i in range(5)),
        ("latency_seconds", overflow, (4, 0.26)),
        *(("load", {"user": str(i)}, i) for i in range(5)),
        ("load", overflow, 8),
    ]
    assert_same_export(sdk, fast, expected)
    snapshot = fast.snapshot()
    assert snapshot.value("requests", {"otel.metric.overflow": True}) == 4 + 30
    assert len([r for r in snapshot.records() if r["name"] == "requests"]) == 6


def test_awkward_tag_values_export_identically(monitor_factory: Factory) -> None:
    awkward = ('say "hi"', "two\nlines", "back\\slash", "héllo wörld ✓", "", " ")

    def script(m: PerformanceMonitor) -> None:
        for value in awkward:
            m.increment_counter("messages_sent", {"channel": value, "ok": True})
            m.record_histogram("message_size", 3, {"channel": value})
        m.increment_counter("responses", {"status": 200})
        m.increment_counter("responses", {"status": "200"})  # a string and an int are two series
        m.increment_counter("responses", {"ratio": 0.5, "dotted.key": "x"})

    sdk, fast = both(monitor_factory)
    each((sdk, fast), script)
    assert_same_export(
        sdk,
        fast,
        [
            *(("messages_sent", {"channel": value, "ok": True}, 1) for value in awkward),
            *(("message_size", {"channel": value}, (1, 3)) for value in awkward),
            ("responses", {"status": 200}, 1),
            ("responses", {"status": "200"}, 1),
            ("responses", {"ratio": 0.5, "dotted.key": "x"}, 1),
        ],
    )


def test_bound_handles_export_what_calls_export(monitor_factory: Factory) -> None:
    def script(m: PerformanceMonitor) -> None:
        unused = m.counter("never_used", {"a": "b"})  # binding alone creates no series
        sent, sizes, depth = m.counter("sent", TAGS), m.histogram("size", TAGS), m.gauge("depth", {"q": "a"})
        for _ in range(3):
            sent.inc()
            sizes.observe(12.5)
        sent.inc(4)
        m.increment_counter("sent", TAGS)
        depth.set(9)
        depth.set(2)
        assert unused.name == "never_used"

    sdk, fast = both(monitor_factory)
    each((sdk, fast), script)
    assert_same_export(sdk, fast, [("sent", TAGS, 8), ("size", TAGS, (3, 37.5)), ("depth", {"q": "a"}, 2)])
    assert fast.snapshot().value("sent", TAGS) == 8


def test_otlp_encoding_is_identical(monitor_factory: Factory) -> None:
    encoder = pytest.importorskip("opentelemetry.exporter.otlp.proto.common.metrics_encoder")
    json_format = pytest.importorskip("google.protobuf.json_format")

    def script(m: PerformanceMonitor) -> None:
        m.increment_counter("api_requests", TAGS, value=3)
        m.record_gauge("active_connections", 4)
        m.record_histogram("http_request_duration_seconds", 0.2, {"route": "/chat"})

    def encoded(m: PerformanceMonitor) -> Any:
        message = json_format.MessageToDict(encoder.encode_metrics(m.snapshot().data))
        return strip(message)

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("startTimeUnixNano", "timeUnixNano")}
        if isinstance(node, list):
            return [strip(v) for v in node if not (isinstance(v, dict) and v.get("key") == "service.instance.id")]
        return node

    sdk, fast = both(monitor_factory)
    each((sdk, fast), script)
    fast_encoded = encoded(fast)
    assert fast_encoded == encoded(sdk)
    (resource,) = fast_encoded["resourceMetrics"]
    (scope,) = resource["scopeMetrics"]
    assert [metric["name"] for metric in scope["metrics"]] == [
        "api_requests",
        "active_connections",
        "http_request_duration_seconds",
    ]


def test_fast_metrics_join_the_sdk_scope_under_one_resource(monitor_factory: Factory) -> None:
    fast = monitor_factory(recording="fast")
    assert fast.pipeline is not None
    fast.pipeline.meter.create_counter("direct_sdk_counter").add(1)  # recorded by the SDK itself
    fast.increment_counter("via_fast_path")
    data = fast.snapshot().data
    assert data is not None
    assert len(data.resource_metrics) == 1
    (scope_metrics,) = data.resource_metrics[0].scope_metrics
    assert scope_metrics.scope.name == "chat_turbo_metrics"
    assert [metric.name for metric in scope_metrics.metrics] == ["direct_sdk_counter", "via_fast_path"]


def test_fast_is_the_default_recording_path(monitor_factory: Factory) -> None:
    monitor = monitor_factory()
    assert monitor.config.recording == "fast"
    assert isinstance(monitor._recorder, FastRecorder)  # what every recording method delegates to


# --- cumulative temporality -------------------------------------------------------------------------
def test_cumulative_start_time_stays_constant_across_collections(monitor_factory: Factory) -> None:
    fast = monitor_factory(recording="fast")
    before = time.time_ns()
    fast.increment_counter("jobs")
    fast.record_histogram("sizes", 1.0)
    after = time.time_ns()
    first = {r["name"]: r for r in fast.snapshot().records()}
    fast.increment_counter("jobs")
    fast.record_histogram("sizes", 2.0)
    second = {r["name"]: r for r in fast.snapshot().records()}
    for name in ("jobs", "sizes"):
        assert before <= first[name]["start_time_unix_nano"] <= after
        assert second[name]["start_time_unix_nano"] == first[name]["start_time_unix_nano"]
        assert second[name]["time_unix_nano"] > first[name]["time_unix_nano"]
        assert second[name]["temporality"] == "cumulative"
    assert second["jobs"]["value"] == 2
    assert (second["sizes"]["count"], second["sizes"]["sum"]) == (2, 3.0)


# --- the hot path's cache ------------------------------------------------------------------------------
@pytest.mark.parametrize("tags", [None, {}, {"q": "a"}, TAGS], ids=["none", "empty", "one", "three"])
def test_a_repeated_recording_finds_its_cell_without_the_slow_path(monitor_factory: Factory, tags: Any) -> None:
    # The hot path builds its cache key inline; the slow path caches under cache_key(). If the two ever differ,
    # every call takes the slow path: the values stay right, so only this count shows it.
    fast = monitor_factory(recording="fast")
    recorder = fast._recorder
    assert isinstance(recorder, FastRecorder)
    start = fast.start_timer()
    calls: list[Callable[[], None]] = [
        lambda: fast.increment_counter("jobs", tags),
        lambda: fast.increment_counter("jobs", tags, 2.5),
        lambda: fast.record_gauge("depth", 3, tags),
        lambda: fast.record_histogram("sizes", 0.25, tags),
        lambda: fast.record_histogram("sizes", 7, tags),
        lambda: fast.record_timer("handle", start, tags),
    ]
    for call in calls:
        call()  # a new series, or a new value type: the slow path
    slow = recorder._slow
    for _ in range(3):
        for call in calls:
            call()
    assert recorder._slow == slow
    snapshot = fast.snapshot()
    assert snapshot.value("jobs", tags or {}) == 4 * (1 + 2.5)
    assert snapshot.value("depth", tags or {}) == 3
    sizes = next(r for r in snapshot.records() if r["name"] == "sizes")
    assert (sizes["count"], sizes["sum"]) == (8, 4 * 7.25)


def test_tag_sets_whose_keys_and_values_flatten_alike_stay_apart(monitor_factory: Factory) -> None:
    # The cache key is flat: (name, value type, keys..., values...). Tag sets built to collide in a naive
    # flattening (keys and values interleaved, or swapped) must still reach their own series.
    fast = monitor_factory(recording="fast")
    tag_sets = [
        {"a": "b", "c": "d"},
        {"a": "c", "b": "d"},
        {"a": "b"},
        {"b": "a"},
        {"a": "b", "b": "a"},
        {"c": "d", "a": "b"},  # the first set in another order: the same series
    ]
    for n, tags in enumerate(tag_sets, start=1):
        for _ in range(2):
            fast.increment_counter("jobs", tags, n)
    snapshot = fast.snapshot()
    assert snapshot.value("jobs", {"a": "b", "c": "d"}) == 2 * (1 + 6)
    assert snapshot.value("jobs", {"a": "c", "b": "d"}) == 2 * 2
    assert snapshot.value("jobs", {"a": "b"}) == 2 * 3
    assert snapshot.value("jobs", {"b": "a"}) == 2 * 4
    assert snapshot.value("jobs", {"a": "b", "b": "a"}) == 2 * 5


def test_a_value_of_another_type_never_reuses_a_cached_cell(monitor_factory: Factory) -> None:
    # The value's type is part of the key: a bool or Decimal after an int misses the cache and is normalised.
    from decimal import Decimal

    fast = monitor_factory(recording="fast")
    fast.increment_counter("jobs", {"q": "a"}, 1)
    fast.increment_counter("jobs", {"q": "a"}, True)
    fast.increment_counter("jobs", {"q": "a"}, Decimal("2.5"))
    fast.increment_counter("jobs", {"q": "a"}, 1)
    value = fast.snapshot().value("jobs", {"q": "a"})
    assert value == 5.5
    assert type(value) is float


# --- threads and fork -------------------------------------------------------------------------------
def test_sixteen_threads_give_exact_totals(monitor_factory: Factory) -> None:
    fast = monitor_factory(recording="fast")
    handle = fast.counter("handled", {"k": "v"})
    per_thread = 5000
    barrier = threading.Barrier(16)

    def work(i: int) -> None:
        barrier.wait()  # every thread meets the new series at once: the slow path races too
        for n in range(per_thread):
            fast.increment_counter("hits", {"shard": str(n % 4), "parity": i % 2})
            fast.record_histogram("sizes", 0.5, {"shard": str(n % 4)})
            handle.inc()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = fast.snapshot()
    hits = sum(r["value"] for r in snapshot.records() if r["name"] == "hits")
    sizes = [r for r in snapshot.records() if r["name"] == "sizes"]
    assert hits == 16 * per_thread
    assert sum(r["count"] for r in sizes) == 16 * per_thread
    assert sum(r["sum"] for r in sizes) == 0.5 * 16 * per_thread
    assert snapshot.value("handled", {"k": "v"}) == 16 * per_thread


def test_a_histogram_handle_defers_its_observations_to_whatever_reads_them(monitor_factory: Factory) -> None:
    """Outside a span a handle only appends; a collection, ``recorded()`` and the handle itself at ``FOLD_AT`` fold
    them, so nothing is lost, every reader sees the same totals and the list stays short however long nothing
    collects."""
    from chat_turbo_metrics._recording.streams import FOLD_AT

    fast = monitor_factory(recording="fast")
    handle = fast.histogram("waits", {"k": "v"})
    handle.observe(0.25)  # the first call finds the cell (slow path)
    recorder = fast._recorder
    assert isinstance(recorder, FastRecorder)
    fast.snapshot()  # the first collection: nothing recorded since
    assert not recorder.recorded()
    handle.observe(2)
    cell = handle._cell  # type: ignore[attr-defined]
    assert cell.pending == [2]
    assert recorder.recorded()  # an idle-aware publication sees it before any fold
    for n in range(10 * FOLD_AT):
        handle.observe(n % 7)
    assert len(cell.pending) < FOLD_AT  # folded by the handle as it went
    point = fast.snapshot().value("waits", {"k": "v"})
    values = [0.25, 2, *(n % 7 for n in range(10 * FOLD_AT))]
    assert (point["count"], point["sum"], point["min"], point["max"]) == (len(values), sum(values), 0, 6)
    assert cell.pending == []


def test_a_fold_that_fails_in_the_handle_counts_nothing_twice(
    monitor_factory: Factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The value is in the list before the handle folds: a failing fold is reported, never sent to the slow path
    (which would record the value again), and the next read folds what waits."""
    from chat_turbo_metrics._recording import handles
    from chat_turbo_metrics._recording.streams import FOLD_AT

    fast = monitor_factory(recording="fast")
    handle = fast.histogram("waits", {"k": "v"})
    handle.observe(1)  # finds the cell

    def failing(cell: object) -> None:
        raise RuntimeError("fold")

    monkeypatch.setattr(handles, "fold_pending", failing)
    with caplog.at_level(logging.WARNING):
        for _ in range(FOLD_AT):
            handle.observe(1)
    monkeypatch.undo()
    assert "fold" in caplog.text
    assert fast.snapshot().value("waits", {"k": "v"})["count"] == FOLD_AT + 1


def test_deferred_observations_from_threads_beside_collections_are_exact(monitor_factory: Factory) -> None:
    fast = monitor_factory(recording="fast")
    handle = fast.histogram("sizes_bytes", {"k": "v"})
    per_thread, threads_n = 20_000, 8
    barrier = threading.Barrier(threads_n + 1)
    done = threading.Event()

    def work() -> None:
        barrier.wait()
        for n in range(per_thread):
            handle.observe(n % 3)

    def collect() -> None:  # folds while the threads append
        barrier.wait()
        while not done.is_set():
            fast.snapshot()

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    collector = threading.Thread(target=collect)
    for thread in [*threads, collector]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    collector.join()
    point = fast.snapshot().value("sizes_bytes", {"k": "v"})
    assert point["count"] == threads_n * per_thread
    assert point["sum"] == threads_n * sum(n % 3 for n in range(per_thread))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_observations_pending_at_a_fork_stay_the_parents(monitor_factory: Factory) -> None:
    fast = monitor_factory(recording="fast")
    handle = fast.histogram("waits", {"k": "v"})
    for value in (1, 2, 3):
        handle.observe(value)  # the first finds the cell; the other two wait in its list

    def child() -> list[float]:
        handle.observe(10)
        point = fast.snapshot().value("waits", {"k": "v"})
        return [point["count"], point["sum"]]

    assert in_fork(child) == [1, 10]  # the child's own observation only
    point = fast.snapshot().value("waits", {"k": "v"})
    assert (point["count"], point["sum"]) == (3, 6)  # the parent's, pending ones included


class SelfRecordingTags(Mapping[str, str]):
    """Tags whose iteration records a metric: user code that runs while the recorder holds its lock."""

    def __init__(self, monitor: PerformanceMonitor) -> None:
        self._monitor = monitor

    def __getitem__(self, key: str) -> str:
        return {"a": "b"}[key]

    def __iter__(self) -> Iterator[str]:
        self._monitor.increment_counter("inner")
        return iter(["a"])

    def __len__(self) -> int:
        return 1


def test_recording_from_code_run_under_the_recorders_lock_does_not_deadlock(monitor_factory: Factory) -> None:
    # Signal handlers and finalizers run by the garbage collector can record at such moments too.
    fast = monitor_factory(recording="fast")
    worker = threading.Thread(target=fast.increment_counter, args=("outer", SelfRecordingTags(fast)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "deadlocked"
    assert fast.snapshot().value("outer", {"a": "b"}) == 1
    assert fast.snapshot().value("inner") >= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_records_and_collects(monitor_factory: Factory) -> None:
    fast = monitor_factory(recording="fast")
    fast.increment_counter("jobs", {"q": "a"})
    busy_calls = 0
    stop = threading.Event()

    def keep_recording() -> None:  # holds the recorder's lock often, so a fork lands mid-update
        nonlocal busy_calls
        while not stop.is_set():
            fast.increment_counter("busy")
            busy_calls += 1

    thread = threading.Thread(target=keep_recording)
    thread.start()
    time.sleep(0.05)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: record, collect, report through the pipe, never return into pytest
        code = 1
        try:
            os.close(read_end)
            fast.increment_counter("jobs", {"q": "a"}, value=2)
            fast.record_histogram("sizes", 3.0)
            os.write(write_end, fast.snapshot().to_prometheus().encode())
            code = 0
        finally:
            os._exit(code)
    stop.set()
    thread.join()
    os.close(write_end)
    child_text = read_all(read_end, timeout_s=20)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, child_text
    # The child reports what it recorded itself: the parent keeps reporting the 1 it recorded before the fork.
    assert 'jobs_total{q="a"} 2' in child_text.splitlines()
    assert not [line for line in child_text.splitlines() if line.startswith("busy_total ") and line != "busy_total 0"]
    assert "sizes_count 1" in child_text
    parent = fast.snapshot()
    assert parent.value("jobs", {"q": "a"}) == 1  # the child's recordings stay in the child
    assert parent.value("sizes") is None
    assert parent.value("busy") == busy_calls


def read_all(fd: int, timeout_s: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    with os.fdopen(fd, "rb") as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return b"".join(chunks).decode()
                chunks.append(chunk)
    pytest.fail("the forked child did not finish (deadlock after fork?)")


# --- bad input ----------------------------------------------------------------------------------------
BAD_CALLS: dict[str, Callable[[PerformanceMonitor], None]] = {
    "nan counter": lambda m: m.increment_counter("c1", value=math.nan),
    "inf counter": lambda m: m.increment_counter("c2", TAGS, value=math.inf),
    "negative counter": lambda m: m.increment_counter("c3", TAGS, value=-1),
    "text counter": lambda m: m.increment_counter("c4", value="7"),  # type: ignore[arg-type]
    "none histogram": lambda m: m.record_histogram("h1", None),  # type: ignore[arg-type]
    "negative histogram": lambda m: m.record_histogram("h2", -2.0, TAGS),
    "nan gauge": lambda m: m.record_gauge("g1", math.nan),
    "text timer start": lambda m: m.record_timer("t1", "yesterday"),  # type: ignore[arg-type]
    "empty name": lambda m: m.increment_counter("", {"a": "b"}),
    "digit name": lambda m: m.increment_counter("9lives"),
    "none name": lambda m: m.increment_counter(None),  # type: ignore[arg-type]
    "tags not a dict": lambda m: m.increment_counter("c5", ["not", "a", "dict"]),  # type: ignore[arg-type]
    "tag key not text": lambda m: m.increment_counter("c6", {1: "x"}),  # type: ignore[dict-item]
    "tag value object": lambda m: m.record_histogram("h3", 1.0, {"k": object()}),
    "tag value too long": lambda m: m.record_gauge("g2", 1.0, {"k": "x" * 100_000}),
    "unhashable tag value": lambda m: m.increment_counter("c7", {"k": ["x"]}),
}


def test_bad_input_is_dropped_counted_and_warned_once_per_cause(
    monitor_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    fast = monitor_factory(recording="fast")
    fast.increment_counter("good", TAGS)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics"):
        for _ in range(3):
            for call in BAD_CALLS.values():
                call(fast)  # never raises
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(BAD_CALLS), warnings
    assert fast.dropped == 3 * len(BAD_CALLS)
    assert fast.snapshot().names() == {"good"}
    assert fast.snapshot().value("good", TAGS) == 1


def test_bad_input_leaves_the_same_export_on_both_paths(monitor_factory: Factory) -> None:
    def script(m: PerformanceMonitor) -> None:
        for call in BAD_CALLS.values():
            call(m)
        m.increment_counter("c3", TAGS)  # a name first used with a bad value still works afterwards
        m.record_histogram("h2", 2.0, TAGS)

    sdk, fast = both(monitor_factory)
    each((sdk, fast), script)
    assert_same_export(sdk, fast, [("c3", TAGS, 1), ("h2", TAGS, (1, 2.0))])


def test_bad_input_to_bound_handles_is_dropped_and_counted(monitor_factory: Factory) -> None:
    fast = monitor_factory(recording="fast")
    sent, sizes, depth = fast.counter("sent", TAGS), fast.histogram("size"), fast.gauge("depth")
    sent.inc()
    sent.inc(-1)
    sent.inc("x")  # type: ignore[arg-type]
    sizes.observe(math.nan)
    depth.set(math.inf)
    sent.observe(1.0)  # a counter handle has no observe()
    sent.inc(2)
    sizes.inc()  # a histogram handle's inc() observes its value
    assert fast.dropped == 5
    assert fast.snapshot().value("sent", TAGS) == 3
    assert fast.snapshot().value("size")["sum"] == 1
    assert fast.snapshot().names() == {"sent", "size"}


def test_bad_tags_at_bind_time_give_a_handle_that_drops(monitor_factory: Factory) -> None:
    fast = monitor_factory(recording="fast")
    handle = fast.counter("sent", {"k": object()})
    handle.inc()
    assert fast.dropped == 1
    assert fast.snapshot().names() == set()


def test_sampling_applies_to_histograms_and_timers_only(monitor_factory: Factory) -> None:
    fast = monitor_factory(recording="fast", sampling_rate=0.25)
    for _ in range(4000):
        fast.increment_counter("events")
        fast.record_gauge("level", 1)
        fast.record_histogram("latency_seconds", 0.1)
        fast.record_timer("op", time.perf_counter())
    snapshot = fast.snapshot()
    assert snapshot.value("events") == 4000
    assert 700 < snapshot.value("latency_seconds")["count"] < 1300
    assert 700 < snapshot.value("op_duration")["count"] < 1300
