"""Whether anything was recorded since a collection, answered without collecting; collections without readings.

A background copy of what was recorded (the pre-fork publication) asks ``quiet_since`` every second and does
nothing when the answer is True: a recording it missed would be lost for a process killed with SIGKILL, so every
way of recording must make the answer False until a collection reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from opentelemetry.metrics import CallbackOptions, Observation

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics._collection.collector import Collector
from conftest import make_config


@pytest.fixture(params=["fast", "sdk"])
def monitor(request: pytest.FixtureRequest) -> Iterator[PerformanceMonitor]:
    made = PerformanceMonitor(make_config(recording=request.param))
    yield made
    made.shutdown()


def collect(monitor: PerformanceMonitor, *, readings: bool = True) -> int:
    """Collect as a caller that remembers its collection does; the mark to ask ``quiet_since`` with."""
    pipeline = monitor._runtime.pipeline  # the pipeline itself: collections and quiet_since are not public
    assert pipeline is not None
    mark = pipeline.collections + 1
    pipeline.collect(readings=readings)
    return mark


def quiet(monitor: PerformanceMonitor, mark: int) -> bool:
    assert monitor._runtime.pipeline is not None
    return monitor._runtime.pipeline.quiet_since(mark)


RECORDINGS: dict[str, Callable[[PerformanceMonitor], None]] = {
    "a counter": lambda m: m.increment_counter("jobs", {"queue": "a"}),
    "a histogram": lambda m: m.record_histogram("size_bytes", 3.0, {"queue": "a"}),
    "a timer": lambda m: m.record_timer("work_seconds", m.start_timer(), {"queue": "a"}),
    "a gauge set to a new value": lambda m: m.record_gauge("depth", 7, {"queue": "a"}),
    "a new series": lambda m: m.increment_counter("jobs", {"queue": "new"}, value=0),
    "a bound counter": lambda m: m.counter("bound_jobs", {"queue": "a"}).inc(),
    "a bound histogram": lambda m: m.histogram("bound_size", {"queue": "a"}).observe(2.0),
    "a bound gauge": lambda m: m.gauge("bound_depth", {"queue": "a"}).set(1.0),
}


@pytest.mark.parametrize("recording", RECORDINGS)
def test_every_way_of_recording_is_seen_until_a_collection_reads_it(
    monitor: PerformanceMonitor, recording: str
) -> None:
    record = RECORDINGS[recording]
    record(monitor)  # first: the series exists, its cache is warm (the hot path next time)
    mark = collect(monitor)
    assert quiet(monitor, mark)
    assert quiet(monitor, mark)  # asking reads nothing and changes nothing

    if recording == "a new series":
        monitor.increment_counter("jobs", {"queue": "newer"}, value=0)
    elif recording == "a gauge set to a new value":
        monitor.record_gauge("depth", 8, {"queue": "a"})
    elif recording == "a bound gauge":
        monitor.gauge("bound_depth", {"queue": "a"}).set(-1)
    else:
        record(monitor)
    assert not quiet(monitor, mark)

    mark = collect(monitor, readings=False)
    assert quiet(monitor, mark)


def test_a_gauge_set_again_to_its_value_changes_nothing(monitor: PerformanceMonitor) -> None:
    monitor.record_gauge("depth", 7)
    mark = collect(monitor)
    monitor.record_gauge("depth", 7)
    assert quiet(monitor, mark) is (monitor.config.recording == "fast")  # the SDK counts every measurement


def test_another_collection_in_between_is_never_taken_for_quiet(monitor: PerformanceMonitor) -> None:
    mark = collect(monitor)
    monitor.increment_counter("jobs")
    collect(monitor)  # a scrape or a push export read it: the caller's copy does not have it
    assert not quiet(monitor, mark)


def test_instruments_of_the_opentelemetry_api_are_seen(monitor: PerformanceMonitor) -> None:
    assert monitor.pipeline is not None
    meter = monitor.pipeline.meter_provider.get_meter("contrib.instrumentation")
    counter = meter.create_counter("requests")
    observed: list[int] = []

    def observe(options: CallbackOptions) -> list[Observation]:
        observed.append(1)
        return [Observation(len(observed))]

    meter.create_observable_gauge("readings", callbacks=[observe])
    mark = collect(monitor)
    assert observed  # the callback ran at the collection...
    assert quiet(monitor, mark)  # ...and does not count as a recording: it is a reading, made when read
    counter.add(1)
    assert not quiet(monitor, mark)
    assert quiet(monitor, collect(monitor))


def test_a_collection_without_readings_runs_no_hook_and_keeps_what_hooks_recorded(
    monitor: PerformanceMonitor,
) -> None:
    calls: list[int] = []

    def reading() -> None:
        calls.append(1)
        monitor.record_gauge("pool_in_use", len(calls))

    monitor.add_collection_hook(reading)
    assert monitor._runtime.pipeline is not None
    monitor.snapshot()
    monitor._runtime.pipeline.collect(readings=False)
    assert calls == [1]
    data = monitor._runtime.pipeline.collect(readings=False)
    assert data is not None
    values = [
        point.value
        for scope in data.resource_metrics[0].scope_metrics
        for metric in scope.metrics
        if metric.name == "pool_in_use"
        for point in metric.data.data_points
    ]
    assert values == [1]  # the last reading, as recorded
    mark = collect(monitor)  # a reader's collection takes the reading again, and reads what it recorded
    assert calls == [1, 1]
    assert quiet(monitor, mark)


def test_a_collector_without_watches_is_never_quiet() -> None:
    collector = Collector(lambda: None)
    mark = collector.collections + 1
    collector.collect()
    assert not collector.quiet_since(mark)  # nobody says whether anything was recorded: assume it was
    collector.watch(lambda: False)
    assert collector.quiet_since(mark)
    collector.watch(lambda: True)
    assert not collector.quiet_since(mark)


def test_a_producer_that_cannot_tell_keeps_the_pipeline_from_ever_being_quiet(monitor: PerformanceMonitor) -> None:
    assert monitor._runtime.pipeline is not None
    monitor._runtime.pipeline.add_producer(lambda now: [])
    assert not quiet(monitor, collect(monitor))
