"""The fan-out: one cumulative collection feeding every push exporter on its own worker thread."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from chat_turbo_metrics._pipeline.fanout import Fanout

SUCCESS = MetricExportResult.SUCCESS
FAILURE = MetricExportResult.FAILURE
DELTA_PREFERENCE = {Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA}
ROUTE = {"route": "/chat"}
# Generous bound for waits that normally end in milliseconds; never the expected duration of a test.
PATIENCE_S = 5.0


class RecordingExporter(MetricExporter):
    """Stores every snapshot; ``results`` scripts the first export results, SUCCESS afterwards."""

    def __init__(
        self,
        *,
        name: str | None = None,
        preferred_temporality: dict[type, AggregationTemporality] | None = None,
        results: Sequence[MetricExportResult] = (),
        expected_exports: int = 1,
    ) -> None:
        super().__init__(preferred_temporality=preferred_temporality)
        if name is not None:
            self.name = name
        self.received: list[MetricsData] = []
        self.calls: list[str] = []
        self.exported = threading.Event()
        self.shut_down = threading.Event()
        self._expected_exports = expected_exports
        self._results = list(results)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.calls.append("export")
        self.received.append(metrics_data)
        if len(self.received) >= self._expected_exports:
            self.exported.set()
        return self._results.pop(0) if self._results else SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        self.calls.append("force_flush")
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.calls.append("shutdown")
        self.shut_down.set()


class HangingExporter(RecordingExporter):
    """Blocks in export until ``release`` is set (bounded, so a broken test cannot hang the run)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.entered.set()
        self.release.wait(PATIENCE_S * 2)
        return super().export(metrics_data, timeout_millis)


class RaisingExporter(RecordingExporter):
    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        super().export(metrics_data, timeout_millis)
        raise ConnectionError("backend unreachable")


class SteppingExporter(RecordingExporter):
    """Each export advances a fake clock, as if the export took ``step_s``."""

    def __init__(self, clock: FakeClock, step_s: float) -> None:
        super().__init__()
        self._clock = clock
        self._step_s = step_s

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self._clock.now += self._step_s
        return super().export(metrics_data, timeout_millis)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        views=[View(instrument_name="latency", aggregation=ExplicitBucketHistogramAggregation((1.0, 10.0)))],
    )
    yield reader, provider
    provider.shutdown()


@pytest.fixture
def make_fanout(
    provider: tuple[InMemoryMetricReader, MeterProvider],
) -> Iterator[Callable[..., Fanout]]:
    reader, _ = provider
    made: list[Fanout] = []

    def make(**kwargs: Any) -> Fanout:
        options: dict[str, Any] = {"interval_s": 60.0, "timeout_s": 1.0, **kwargs}
        fanout = Fanout(reader.get_metrics_data, **options)
        made.append(fanout)
        return fanout

    yield make
    for fanout in made:
        for exporter in fanout.exporters:
            if isinstance(exporter, HangingExporter):
                exporter.release.set()
        fanout.shutdown(timeout_s=PATIENCE_S)


def points(data: MetricsData, name: str) -> list[Any]:
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def only_point(data: MetricsData, name: str) -> Any:
    (point,) = points(data, name)
    return point


def temporality(data: MetricsData, name: str) -> AggregationTemporality:
    (found,) = [
        metric.data.aggregation_temporality  # type: ignore[union-attr]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
    ]
    return found


def test_every_exporter_receives_each_cycle(provider, make_fanout) -> None:
    _, meter_provider = provider
    counter = meter_provider.get_meter("t").create_counter("messages")
    first, second = RecordingExporter(name="first"), RecordingExporter(name="second")
    fanout = make_fanout()
    fanout.add(first)
    fanout.add(second)
    for value in (1, 2, 3):
        counter.add(value)
        assert fanout.force_flush()
    assert [only_point(d, "messages").value for d in first.received] == [1, 3, 6]
    assert [only_point(d, "messages").value for d in second.received] == [1, 3, 6]


def test_cumulative_exporter_receives_the_shared_snapshot_unconverted(provider, make_fanout) -> None:
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(4)
    cumulative, delta = RecordingExporter(), RecordingExporter(preferred_temporality=DELTA_PREFERENCE)
    another = RecordingExporter()
    fanout = make_fanout()
    for exporter in (cumulative, delta, another):
        fanout.add(exporter)
    assert fanout.force_flush()
    assert cumulative.received[0] is another.received[0]
    assert temporality(cumulative.received[0], "messages") is AggregationTemporality.CUMULATIVE


def test_counter_deltas_are_exact_across_three_cycles(provider, make_fanout) -> None:
    _, meter_provider = provider
    counter = meter_provider.get_meter("t").create_counter("messages")
    cumulative, delta = RecordingExporter(), RecordingExporter(preferred_temporality=DELTA_PREFERENCE)
    fanout = make_fanout()
    fanout.add(cumulative)
    fanout.add(delta)
    for value in (5, 3, 2):
        counter.add(value, ROUTE)
        assert fanout.force_flush()

    deltas = [only_point(d, "messages") for d in delta.received]
    cumulatives = [only_point(d, "messages") for d in cumulative.received]
    assert [p.value for p in deltas] == [5, 3, 2]
    assert [p.attributes for p in deltas] == [ROUTE] * 3
    assert all(temporality(d, "messages") is AggregationTemporality.DELTA for d in delta.received)
    # Each interval starts where the previous exported point ended.
    assert deltas[0].start_time_unix_nano == cumulatives[0].start_time_unix_nano
    assert [p.start_time_unix_nano for p in deltas[1:]] == [p.time_unix_nano for p in cumulatives[:2]]
    assert [p.time_unix_nano for p in deltas] == [p.time_unix_nano for p in cumulatives]


def test_histogram_deltas_are_exact_across_three_cycles(provider, make_fanout) -> None:
    _, meter_provider = provider
    histogram = meter_provider.get_meter("t").create_histogram("latency")
    delta = RecordingExporter(preferred_temporality=DELTA_PREFERENCE)
    fanout = make_fanout()
    fanout.add(delta)
    for values in ((0.5, 5.0), (20.0,), (2.0, 3.0, 0.25)):
        for value in values:
            histogram.record(value)
        assert fanout.force_flush()

    deltas: list[HistogramDataPoint] = [only_point(d, "latency") for d in delta.received]
    assert [list(p.bucket_counts) for p in deltas] == [[1, 1, 0], [0, 0, 1], [1, 2, 0]]
    assert [p.count for p in deltas] == [2, 1, 3]
    assert [p.sum for p in deltas] == [5.5, 20.0, 5.25]
    # min/max cannot be subtracted: they stay the cumulative bounds.
    assert [(p.min, p.max) for p in deltas] == [(0.5, 5.0), (0.5, 20.0), (0.25, 20.0)]
    assert temporality(delta.received[2], "latency") is AggregationTemporality.DELTA


def test_failed_export_interval_is_included_in_next_delta(provider, make_fanout) -> None:
    _, meter_provider = provider
    counter = meter_provider.get_meter("t").create_counter("messages")
    flaky = RecordingExporter(preferred_temporality=DELTA_PREFERENCE, results=[FAILURE])
    fanout = make_fanout()
    fanout.add(flaky)
    counter.add(5)
    assert not fanout.force_flush()
    counter.add(3)
    assert fanout.force_flush()
    counter.add(2)
    assert fanout.force_flush()
    assert [only_point(d, "messages").value for d in flaky.received] == [5, 8, 2]


def test_failed_export_is_counted_logged_and_reported_with_exporter_name(
    provider, make_fanout, caplog: pytest.LogCaptureFixture
) -> None:
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(1)
    reported: list[str] = []
    fanout = make_fanout(on_failure=reported.append)
    fanout.add(RaisingExporter(name="datadog"))
    fanout.add(RecordingExporter(name="otlp", results=[FAILURE]))
    fanout.add(RecordingExporter(name="file"))
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.export"):
        assert not fanout.force_flush()
        assert not fanout.force_flush()
    assert dict(fanout.failures) == {"datadog": 2, "otlp": 1, "file": 0}
    assert sorted(reported) == ["datadog", "datadog", "otlp"]
    messages = [r.getMessage() for r in caplog.records if r.name == "chat_turbo_metrics.export"]
    # Once per outage (datadog stays down), and once more on recovery (otlp works on its second export).
    assert sum("datadog" in m for m in messages) == 1
    assert sum("otlp" in m for m in messages) == 2


def test_duplicate_exporter_names_get_a_numbered_suffix(make_fanout) -> None:
    fanout = make_fanout()
    for _ in range(3):
        fanout.add(RecordingExporter())
    fanout.add(RecordingExporter(name="otlp"))
    assert list(fanout.failures) == [
        "RecordingExporter",
        "RecordingExporter#2",
        "RecordingExporter#3",
        "otlp",
    ]


def test_hanging_exporter_does_not_delay_other_exporters(provider, make_fanout) -> None:
    _, meter_provider = provider
    counter = meter_provider.get_meter("t").create_counter("messages")
    hanging, healthy = HangingExporter(), RecordingExporter()
    fanout = make_fanout()
    fanout.add(hanging)
    fanout.add(healthy)
    counter.add(1)
    fanout.collect_and_export()
    assert hanging.entered.wait(PATIENCE_S)
    assert healthy.exported.wait(PATIENCE_S)
    healthy.exported.clear()
    counter.add(1)
    fanout.collect_and_export()
    assert healthy.exported.wait(PATIENCE_S)
    assert only_point(healthy.received[-1], "messages").value == 2
    assert not hanging.release.is_set()


def test_force_flush_gives_up_at_its_timeout_when_an_exporter_hangs(provider, make_fanout) -> None:
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(1)
    hanging, healthy = HangingExporter(), RecordingExporter()
    fanout = make_fanout()
    fanout.add(hanging)
    fanout.add(healthy)
    started = time.monotonic()
    assert not fanout.force_flush(timeout_s=0.2)
    assert time.monotonic() - started < 2.0
    assert healthy.exported.is_set()


def test_hanging_export_is_reported_when_the_next_snapshot_arrives(
    provider, make_fanout, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    hanging = HangingExporter(name="stuck")
    fanout = make_fanout(clock=clock)
    fanout.add(hanging)
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(1)
    fanout.collect_and_export()
    assert hanging.entered.wait(PATIENCE_S)
    clock.now += 5.0
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.export"):
        fanout.collect_and_export()
    assert any("stuck" in r.getMessage() and "still exporting" in r.getMessage() for r in caplog.records)


def test_export_slower_than_timeout_is_logged_as_slow(provider, make_fanout, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    fanout = make_fanout(clock=clock, timeout_s=1.0)
    fanout.add(SteppingExporter(clock, step_s=3.0))
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(1)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.export"):
        assert fanout.force_flush(timeout_s=100.0)
    assert any("SteppingExporter was slow" in r.getMessage() for r in caplog.records)
    assert dict(fanout.failures) == {"SteppingExporter": 0}


def test_nothing_recorded_exports_nothing_and_flush_succeeds(make_fanout) -> None:
    exporter = RecordingExporter()
    fanout = make_fanout()
    fanout.add(exporter)
    assert fanout.force_flush()
    assert exporter.received == []


def test_exporter_added_while_running_receives_the_next_cycle(provider, make_fanout) -> None:
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(2)
    first, late = RecordingExporter(), RecordingExporter()
    fanout = make_fanout()
    fanout.add(first)
    assert fanout.force_flush()
    fanout.add(late)
    assert fanout.force_flush()
    assert len(first.received) == 2
    assert [only_point(d, "messages").value for d in late.received] == [2]
    assert fanout.exporters == (first, late)


def test_removed_exporter_gets_no_more_snapshots_and_is_not_shut_down(provider, make_fanout) -> None:
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(3)
    kept, removed = RecordingExporter(), RecordingExporter()
    fanout = make_fanout()
    fanout.add(kept)
    fanout.add(removed)
    assert fanout.force_flush()
    assert fanout.remove(removed)
    assert not fanout.remove(removed)
    assert fanout.force_flush()
    fanout.shutdown()
    assert fanout.exporters == (kept,)
    assert removed.calls == ["export", "force_flush"]
    assert kept.calls == ["export", "force_flush", "export", "force_flush", "export", "force_flush", "shutdown"]


def test_shutdown_exports_last_data_once_and_shuts_each_exporter_down_once(provider, make_fanout) -> None:
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(9)
    exporters = [RecordingExporter(), RecordingExporter(preferred_temporality=DELTA_PREFERENCE)]
    fanout = make_fanout()
    for exporter in exporters:
        fanout.add(exporter)
    fanout.shutdown()
    fanout.shutdown()
    for exporter in exporters:
        assert exporter.calls == ["export", "force_flush", "shutdown"]
        assert only_point(exporter.received[0], "messages").value == 9
    assert not fanout.force_flush()


def test_shutdown_returns_at_its_timeout_when_an_exporter_hangs(provider, make_fanout) -> None:
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(1)
    hanging, healthy = HangingExporter(), RecordingExporter()
    fanout = make_fanout()
    fanout.add(hanging)
    fanout.add(healthy)
    fanout.collect_and_export()
    assert hanging.entered.wait(PATIENCE_S)
    started = time.monotonic()
    fanout.shutdown(timeout_s=0.2)
    assert time.monotonic() - started < 2.0
    assert healthy.shut_down.wait(PATIENCE_S)
    assert healthy.calls[-2:] == ["force_flush", "shutdown"]
    assert "shutdown" not in hanging.calls


def test_periodic_thread_starts_on_first_add_as_named_daemon(make_fanout) -> None:
    def tickers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "chat-turbo-metrics-fanout"}

    fanout = make_fanout()
    before = tickers()
    fanout.add(RecordingExporter())
    (ticker,) = tickers() - before
    assert ticker.daemon


def test_periodic_thread_exports_at_the_interval(provider, make_fanout) -> None:
    _, meter_provider = provider
    meter_provider.get_meter("t").create_counter("messages").add(1)
    exporter = RecordingExporter(expected_exports=3)
    fanout = make_fanout(interval_s=0.05)
    started = time.monotonic()
    fanout.add(exporter)
    assert exporter.exported.wait(PATIENCE_S)
    # Three exports cannot happen before two full intervals have passed.
    assert time.monotonic() - started >= 0.1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+ warns about forking a threaded process
def test_forked_child_exports_with_fresh_threads(provider, make_fanout) -> None:
    _, meter_provider = provider
    counter = meter_provider.get_meter("t").create_counter("messages")
    counter.add(1)
    exporter = RecordingExporter()
    fanout = make_fanout(interval_s=0.05)
    fanout.add(exporter)
    # Fork only once the parent's ticker and worker threads are running and have exported.
    assert exporter.exported.wait(PATIENCE_S)
    pid = os.fork()
    if pid == 0:
        os._exit(_child_cycle_status(fanout, exporter, counter))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "1: raised, 2: no periodic export, 3: flush failed"


def _child_cycle_status(fanout: Fanout, exporter: RecordingExporter, counter: Any) -> int:
    try:
        exporter.exported = threading.Event()
        exporter.received.clear()
        counter.add(41)
        if not exporter.exported.wait(PATIENCE_S):
            return 2
        if not fanout.force_flush(timeout_s=PATIENCE_S):
            return 3
        return 0 if only_point(exporter.received[-1], "messages").value == 42 else 4
    except BaseException:
        return 1
