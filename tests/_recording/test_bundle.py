"""``PerformanceMonitor.bundle``: one call records what the same handle calls would, on every front end."""

from __future__ import annotations

import math
import textwrap
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from chat_turbo_metrics import PerformanceMonitor, ViewConfig
from chat_turbo_metrics.instrumentation import bundle_produced
from test_fork_safety import run

Factory = Callable[..., PerformanceMonitor]
TAGS = {"endpoint": "/api/x", "status": 200}


def request_bundle(monitor: PerformanceMonitor, tags: dict[str, Any] = TAGS) -> Callable[..., None]:
    """What the HTTP instrumentor bundles: a duration, two sizes, a count and an error count."""
    return monitor.bundle(
        [
            [monitor.histogram("request_seconds", tags)],
            [monitor.histogram("request_bytes", tags)],
            [monitor.histogram("response_bytes", tags)],
        ],
        [monitor.counter("requests", tags), monitor.counter("errors", tags)],
    )


def by_handles(monitor: PerformanceMonitor, seconds: float, received: int, sent: int) -> None:
    monitor.histogram("request_seconds", TAGS).observe(seconds)
    monitor.histogram("request_bytes", TAGS).observe(received)
    monitor.histogram("response_bytes", TAGS).observe(sent)
    monitor.counter("requests", TAGS).inc()
    monitor.counter("errors", TAGS).inc()


def records(monitor: PerformanceMonitor) -> list[tuple[str, Any]]:
    """Every exported series with its value, in a comparable order."""
    found = []
    for record in monitor.snapshot().records():
        value = {k: v for k, v in record.items() if k not in ("start_time_unix_nano", "time_unix_nano", "resource")}
        found.append((record["name"], sorted(value.items(), key=lambda item: item[0])))
    return sorted(found, key=repr)


CALLS = [(0.004, 0, 120), (0.25, 700, 5_000), (1.5, 10**6, 0), (0.004, 0, 120)]


def test_a_bundle_records_what_the_handle_calls_record(monitor_factory: Factory, recording: str) -> None:
    bundled, handled = monitor_factory(recording=recording), monitor_factory(recording=recording)
    record = request_bundle(bundled)
    for call in CALLS:
        record(*call)
        by_handles(handled, *call)
    assert records(bundled) == records(handled)
    assert bundled.snapshot().value("requests", TAGS) == len(CALLS)
    assert bundled.snapshot().value("response_bytes", TAGS)["sum"] == sum(sent for _, _, sent in CALLS)


def test_a_produced_bundle_records_what_the_checked_one_records(monitor_factory: Factory, recording: str) -> None:
    checked, produced = monitor_factory(recording=recording), monitor_factory(recording=recording)
    record = request_bundle(checked)
    unchecked = bundle_produced(
        [
            [produced.histogram("request_seconds", TAGS)],
            [produced.histogram("request_bytes", TAGS)],
            [produced.histogram("response_bytes", TAGS)],
        ],
        [produced.counter("requests", TAGS), produced.counter("errors", TAGS)],
    )
    for call in CALLS:
        record(*call)
        unchecked(*call)
    assert records(produced) == records(checked)
    assert produced.snapshot().value("request_bytes", TAGS)["sum"] == sum(received for _, received, _ in CALLS)
    assert produced.snapshot().value("requests", TAGS) == len(CALLS)


def test_the_public_bundle_still_checks_after_a_produced_one_of_its_shape(monitor_factory: Factory) -> None:
    monitor = monitor_factory(recording="fast")
    shape = ([[monitor.histogram("a_seconds")]], [monitor.counter("a")])
    bundle_produced(*shape)(0.1)  # the unchecked code of this shape is compiled first
    record = monitor.bundle(*shape)
    record(0.1)
    record(math.nan)
    assert monitor.snapshot().value("a_seconds")["count"] == 2
    assert monitor.dropped == 1


def test_one_argument_may_feed_several_histograms(monitor_factory: Factory, recording: str) -> None:
    monitor = monitor_factory(recording=recording)
    record = monitor.bundle([[monitor.histogram("a_seconds"), monitor.histogram("b_seconds", {"k": "v"})]])
    for seconds in (0.5, 1.5, 2.5):
        record(seconds)
    assert monitor.snapshot().value("a_seconds")["sum"] == 4.5
    assert monitor.snapshot().value("b_seconds", {"k": "v"})["count"] == 3


@pytest.mark.parametrize("bad", [math.nan, -1, math.inf, "3", None, 10**400])
def test_a_bad_value_is_dropped_and_counted_and_the_others_recorded(monitor_factory: Factory, bad: Any) -> None:
    monitor = monitor_factory(recording="fast")
    record = request_bundle(monitor)
    record(0.1, 10, 20)  # the cells are known: the next calls take the bundled path
    record(0.2, bad, 30)
    snapshot = monitor.snapshot()
    assert snapshot.value("request_bytes", TAGS)["count"] == 1
    assert snapshot.value("response_bytes", TAGS)["sum"] == 50
    assert snapshot.value("request_seconds", TAGS)["count"] == 2
    assert snapshot.value("requests", TAGS) == 2
    assert monitor.dropped == 1


def test_a_decimal_is_normalised_as_a_handle_would(monitor_factory: Factory) -> None:
    monitor = monitor_factory(recording="fast")
    record = request_bundle(monitor)
    record(0.1, 10, 20)
    record(0.1, Decimal("2.5"), 20)
    assert monitor.snapshot().value("request_bytes", TAGS)["sum"] == 12.5
    assert monitor.dropped == 0


def test_several_views_of_one_instrument_are_all_fed(monitor_factory: Factory) -> None:
    views = [
        ViewConfig(instrument="latency", name="latency"),
        ViewConfig(instrument="latency", name="latency_by_endpoint", attribute_keys=("endpoint",)),
    ]
    monitor = monitor_factory(recording="fast", views=views)
    record = monitor.bundle([[monitor.histogram("latency", TAGS)]], [monitor.counter("requests", TAGS)])
    for seconds in (0.1, 0.2, 0.3):
        record(seconds)
    assert monitor.snapshot().value("latency", TAGS)["count"] == 3
    assert monitor.snapshot().value("latency_by_endpoint", {"endpoint": "/api/x"})["count"] == 3
    assert monitor.snapshot().value("requests", TAGS) == 3


def test_a_disabled_monitor_records_nothing_and_accepts_the_call(monitor_factory: Factory) -> None:
    monitor = monitor_factory(enabled=False)
    record = request_bundle(monitor)
    record(0.1, 10, 20)
    assert monitor.snapshot().names() == set()


def test_the_wrong_number_of_values_is_a_type_error_on_both_paths(monitor_factory: Factory, recording: str) -> None:
    record = request_bundle(monitor_factory(recording=recording))
    record(0.1, 10, 20)
    with pytest.raises(TypeError):
        record(0.1, 10)


def test_concurrent_threads_lose_no_update(monitor_factory: Factory, recording: str) -> None:
    monitor = monitor_factory(recording=recording)
    record = request_bundle(monitor)
    ready = threading.Barrier(8)

    def work() -> None:
        ready.wait()
        for _ in range(2_000):
            record(0.001, 1, 2)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = monitor.snapshot()
    assert snapshot.value("requests", TAGS) == 16_000
    assert snapshot.value("errors", TAGS) == 16_000
    assert snapshot.value("response_bytes", TAGS) == {**snapshot.value("response_bytes", TAGS), "sum": 32_000}
    assert snapshot.value("request_bytes", TAGS)["count"] == 16_000


def test_a_child_forked_while_threads_record_through_a_bundle_records_and_exits() -> None:
    report = run(
        textwrap.dedent(
            """
            import json, os, sys, threading, time
            from chat_turbo_metrics import PerformanceMonitor
            monitor = PerformanceMonitor.get_instance()
            tags = {"endpoint": "/x"}
            record = monitor.bundle([[monitor.histogram("request_seconds", tags)]], [monitor.counter("requests", tags)])
            stop = threading.Event()
            def work():
                while not stop.is_set():
                    record(0.01)
            threads = [threading.Thread(target=work, daemon=True) for _ in range(2)]
            for thread in threads:
                thread.start()
            codes = []
            for _ in range(20):
                pid = os.fork()
                if pid == 0:
                    # The other threads do not exist here: this one alone records, so the count rises by one.
                    before = monitor.snapshot().value("requests", tags) or 0
                    record(0.02)
                    os._exit(0 if monitor.snapshot().value("requests", tags) == before + 1 else 3)
                deadline = time.monotonic() + 30
                while True:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes.append(os.waitstatus_to_exitcode(status))
                        break
                    if time.monotonic() > deadline:
                        os.kill(pid, 9); os.waitpid(pid, 0); codes.append("hung")
                        break
                    time.sleep(0.01)
            stop.set()
            print("REPORT " + json.dumps({"codes": sorted(set(codes), key=str)}))
            """
        ),
        OTEL_METRICS_EXPORTER="none",
    )
    assert report == {"codes": [0]}
