"""Datadog delivery: deltas across exports and failures, size limits and 413, retries, shutdown, a stalled intake."""

from __future__ import annotations

import itertools
import logging
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from datadog_intake import DD_KEY, DROP, STALL, TRICKLE, Answer, DatadogIntake, points, running_intake, total
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.exporters import DataDogExporter
from chat_turbo_metrics.exporters.datadog._transport import RetryPolicy, server_wait_s
from conftest import require_tool

MonitorFactory = Callable[..., PerformanceMonitor]
FAST_RETRY: dict[str, Any] = {"retry_initial_s": 0.05, "retry_max_s": 0.2}
# Unavailable for longer than any export may wait: each request is tried once and kept, however slow the machine.
# The wait holds across exports: a test lets it pass with a SteppedClock.
UNAVAILABLE = Answer(503, {"Retry-After": "3600"})


class SteppedClock:
    """The exporter's monotonic clock, which a test moves on as if the intake's wait had passed."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def skip(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def intake() -> Iterator[DatadogIntake]:
    with running_intake() as server:
        yield server


def _monitor(
    factory: MonitorFactory, intake: DatadogIntake, timeout_s: float = 30.0, **options: Any
) -> PerformanceMonitor:
    monitor = factory(export_timeout_s=timeout_s)
    monitor.add_exporter(DataDogExporter(DD_KEY, endpoint=intake.url, **{**FAST_RETRY, **options}))
    return monitor


def _counts(n: int, value: int = 1, *, tag_bytes: int = 8) -> MetricsData:
    """A delta counter with ``n`` series, as the fan-out hands it to the exporter."""
    now = time.time_ns()
    data_points = [
        NumberDataPoint({"series": f"{i:08d}", "pad": "p" * tag_bytes}, now - 10**10, now, value) for i in range(n)
    ]
    metric = Metric("batch_jobs", None, "", Sum(data_points, AggregationTemporality.DELTA, True))
    scope = ScopeMetrics(InstrumentationScope("test"), [metric], None)
    return MetricsData([ResourceMetrics(Resource.create({"service.name": "svc"}), [scope], None)])


# --- deltas ---------------------------------------------------------------------------------------


def test_counts_are_deltas_across_exports(
    intake: DatadogIntake, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = monitor_factory(recording=recording)
    monitor.add_exporter(DataDogExporter(DD_KEY, endpoint=intake.url))
    monitor.increment_counter("messages_sent", value=3)
    assert monitor.force_flush()
    monitor.increment_counter("messages_sent", value=4)
    assert monitor.force_flush()
    assert monitor.force_flush()
    values = [one["points"][0]["value"] for one in points(intake.accepted_series(), "messages_sent")]
    assert values == [3, 4, 0]


def test_a_failed_export_is_counted_once_in_the_next(intake: DatadogIntake, monitor_factory: MonitorFactory) -> None:
    clock = SteppedClock()
    monitor = _monitor(monitor_factory, intake, clock=clock)
    intake.answer(Answer(500, body='{"errors":["Internal Server Error"]}'), UNAVAILABLE)
    monitor.increment_counter("messages_sent", value=5)
    monitor.record_histogram("message_size", 100)
    assert not monitor.force_flush()
    assert [request.status for request in intake.requests] == [500, 503]  # retried, then gave up
    clock.skip(3600)
    monitor.increment_counter("messages_sent", value=2)
    monitor.record_histogram("message_size", 300)
    assert monitor.force_flush()
    accepted = intake.accepted_series()
    assert [one["points"][0]["value"] for one in points(accepted, "messages_sent")] == [7]
    assert total(accepted, "message_size.count") == 2
    assert total(accepted, "message_size.sum") == 400


def test_partial_delivery_carries_the_rest_to_the_next_export_without_double_counting(intake: DatadogIntake) -> None:
    clock = SteppedClock()
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, max_compressed_bytes=4096, clock=clock, **FAST_RETRY)
    intake.answer(Answer())  # the first body is accepted, every later one fails
    intake.default = Answer(503, {"Retry-After": "60"})  # longer than the export may wait, shorter than series keep
    assert exporter.export(_counts(2000), timeout_millis=30_000) is MetricExportResult.SUCCESS
    delivered_first = len(intake.accepted_series())
    assert 0 < delivered_first < 2000
    assert not exporter.force_flush()  # series are waiting for the next export
    intake.default = Answer()
    clock.skip(60)
    assert exporter.export(_counts(2000, value=10), timeout_millis=5000) is MetricExportResult.SUCCESS
    per_series: dict[str, float] = {}
    for one in intake.accepted_series():
        key = next(tag for tag in one["tags"] if tag.startswith("series:"))
        per_series[key] = per_series.get(key, 0) + one["points"][0]["value"]
    assert len(per_series) == 2000
    assert set(per_series.values()) == {11}
    assert exporter.force_flush()


# --- size limits ----------------------------------------------------------------------------------


def test_bodies_stay_under_the_real_intake_limits(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url)
    assert exporter.export(_counts(25_000, tag_bytes=180), timeout_millis=30_000) is MetricExportResult.SUCCESS
    assert len(intake.requests) >= 2
    assert all(request.status == 202 for request in intake.requests)
    assert max(request.decompressed for request in intake.requests) <= 5_242_880
    assert len(intake.accepted_series()) == 25_000


def test_bodies_split_to_configured_limits(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, max_compressed_bytes=8000, max_decompressed_bytes=60_000)
    assert exporter.export(_counts(3000)) is MetricExportResult.SUCCESS
    assert len(intake.requests) > 3
    assert all(r.compressed <= 8000 and r.decompressed <= 60_000 and r.status == 202 for r in intake.requests)
    tags = [next(t for t in one["tags"] if t.startswith("series:")) for one in intake.accepted_series()]
    assert sorted(tags) == sorted(f"series:{i:08d}" for i in range(3000))  # each exactly once


def test_413_splits_the_batch_until_the_intake_accepts() -> None:
    with running_intake(max_compressed=6000) as small:
        exporter = DataDogExporter(DD_KEY, endpoint=small.url)
        assert exporter.export(_counts(3000)) is MetricExportResult.SUCCESS
        statuses = [request.status for request in small.requests]
        assert 413 in statuses
        assert all(r.compressed <= 6000 for r in small.requests if r.status == 202)
        assert total(small.accepted_series(), "batch_jobs") == 3000
        assert len(small.accepted_series()) == 3000


# --- retries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer", [Answer(408), Answer(500), Answer(503), Answer(DROP)], ids=["408", "500", "503", "drop"]
)
def test_retryable_answers_are_retried_and_delivered_once(intake: DatadogIntake, answer: Answer) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, **FAST_RETRY)
    intake.answer(answer, answer)
    assert exporter.export(_counts(3)) is MetricExportResult.SUCCESS
    assert len(intake.requests) == 3 - (answer.status == DROP) * 2  # a dropped connection records nothing
    assert len(intake.accepted_series()) == 3
    assert exporter.retries == 2


@pytest.mark.parametrize("header", ["Retry-After", "X-RateLimit-Reset"])
def test_429_waits_as_long_as_the_intake_asks(intake: DatadogIntake, header: str) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, **FAST_RETRY)
    intake.answer(Answer(429, {header: "1"}, '{"errors":["Too many requests"]}'))
    assert exporter.export(_counts(2)) is MetricExportResult.SUCCESS
    first, second = intake.requests
    assert (first.status, second.status) == (429, 202)
    assert second.at - first.at >= 0.95  # the fast backoff alone would have retried after ≤ 0.05 s
    assert len(intake.accepted_series()) == 2


def test_a_wait_longer_than_the_timeout_gives_up_at_once_and_keeps_the_data(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url)
    intake.answer(Answer(429, {"Retry-After": "3600"}))
    started = time.monotonic()
    assert exporter.export(_counts(2), timeout_millis=5000) is MetricExportResult.FAILURE
    assert time.monotonic() - started < 30  # did not sleep towards the hour
    assert len(intake.requests) == 1


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    def delays(jitter: float) -> list[float]:
        policy = RetryPolicy(initial_s=0.5, max_s=30.0, jitter=lambda: jitter)
        return [policy.delay_s(attempt) for attempt in range(8)]

    assert delays(1.0) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert delays(0.0) == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]


def test_retry_after_as_an_http_date() -> None:
    assert server_wait_s({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}, now=lambda: 1445412500.0) == 10.0
    assert server_wait_s({"retry-after": "soon"}) is None
    assert server_wait_s({}) is None


def test_accepted_with_errors_is_a_warning_with_the_intakes_text(
    intake: DatadogIntake, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url)
    intake.answer(Answer(202, body='{"errors":["Point timestamp is too old"]}'), Answer(202))
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics"):
        assert exporter.export(_counts(2)) is MetricExportResult.SUCCESS
        assert exporter.export(_counts(2)) is MetricExportResult.SUCCESS
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "Point timestamp is too old" in warnings[0]
    assert len(intake.requests) == 2  # not retried


@pytest.mark.parametrize("status", [400, 403, 404])
def test_permanent_errors_are_not_retried_and_logged_once(
    intake: DatadogIntake, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, **FAST_RETRY)
    intake.answer(Answer(status, body='{"errors":["Payload rejected: metric name invalid"]}'))
    with caplog.at_level(logging.INFO, logger="chat_turbo_metrics"):
        assert exporter.export(_counts(4)) is MetricExportResult.SUCCESS  # dropped, so not repeated
    assert len(intake.requests) == 1
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert str(status) in errors[0]
    assert "Payload rejected: metric name invalid" in errors[0]
    assert exporter.export(_counts(1)) is MetricExportResult.SUCCESS
    assert len(intake.accepted_series()) == 1  # the rejected series were not sent again


# --- shutdown and stalls -------------------------------------------------------------------------------


def _export_in_thread(
    exporter: DataDogExporter, data: MetricsData, timeout_millis: float
) -> tuple[threading.Thread, list[MetricExportResult]]:
    results: list[MetricExportResult] = []
    thread = threading.Thread(target=lambda: results.append(exporter.export(data, timeout_millis=timeout_millis)))
    thread.start()
    return thread, results


def test_shutdown_interrupts_a_backoff_wait(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, retry_initial_s=60.0, retry_max_s=60.0)
    intake.default = Answer(503)
    thread, results = _export_in_thread(exporter, _counts(1), timeout_millis=600_000)
    intake.wait_for(lambda i: len(i.requests) == 1)
    exporter.shutdown()
    thread.join(10)  # generous bound; the backoff alone would last 30-60 s
    assert not thread.is_alive()
    assert results == [MetricExportResult.FAILURE]
    assert len(intake.requests) == 1
    assert exporter.export(_counts(1)) is MetricExportResult.FAILURE  # after shutdown


def test_shutdown_interrupts_a_request_in_flight(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url)
    intake.answer(Answer(STALL))
    thread, results = _export_in_thread(exporter, _counts(1), timeout_millis=600_000)
    assert intake.stalled.wait(10)
    exporter.shutdown()
    thread.join(10)
    assert not thread.is_alive()
    assert results == [MetricExportResult.FAILURE]


def test_recording_goes_on_while_the_intake_stalls_and_the_data_arrives_after(
    intake: DatadogIntake, monitor_factory: MonitorFactory
) -> None:
    monitor = _monitor(monitor_factory, intake, timeout_s=30.0)
    intake.answer(Answer(STALL))
    monitor.increment_counter("messages_sent")
    assert not monitor.force_flush(timeout_s=0.2)  # the worker is now blocked on the stalled intake
    assert intake.stalled.wait(10)
    sent = monitor.counter("messages_sent")
    for _ in range(5000):
        monitor.increment_counter("messages_sent")
        sent.inc()
    assert not intake.release.is_set()
    assert intake.accepted_series() == []  # every one of the 10,000 calls returned while the intake stalled
    intake.release.set()  # the intake hangs up; the exporter retries and is accepted
    assert monitor.force_flush(timeout_s=20)
    assert total(intake.accepted_series(), "messages_sent") == 10_001


def test_an_unreachable_intake_fails_the_export_within_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    with running_intake() as gone:
        url = gone.url
    exporter = DataDogExporter(DD_KEY, endpoint=url, **FAST_RETRY)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics"):
        assert exporter.export(_counts(1), timeout_millis=3000) is MetricExportResult.FAILURE
    assert exporter.retries >= 1
    assert any("connection failed" in record.getMessage() for record in caplog.records)


def test_a_forked_child_exports_on_its_own_without_the_parents_leftovers(intake: DatadogIntake) -> None:
    clock = SteppedClock()
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, max_compressed_bytes=4096, clock=clock, **FAST_RETRY)
    intake.answer(Answer())
    intake.default = UNAVAILABLE
    assert exporter.export(_counts(2000), timeout_millis=30_000) is MetricExportResult.SUCCESS  # partial: some carried
    intake.default = Answer()
    clock.skip(3600)
    intake.answer(Answer(STALL))  # the parent's next export holds the exporter's lock and a connection
    thread, _ = _export_in_thread(exporter, _counts(1), timeout_millis=30_000)
    assert intake.stalled.wait(10)
    before = len(intake.requests)
    pid = os.fork()
    if pid == 0:  # the child: only this thread exists here
        result = exporter.export(_counts(1, value=7), timeout_millis=5000)
        os._exit(0 if result is MetricExportResult.SUCCESS else 1)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child's export did not finish: a lock held at fork() was inherited")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    [child_request] = intake.requests[before:]
    assert [one["points"][0]["value"] for one in child_request.series] == [7]  # not the parent's carried series
    intake.release.set()
    thread.join(10)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (certificate path, key path)."""
    openssl = require_tool("openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            key,
            "-out",
            cert,
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _server_tls(certificate: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_https_with_a_verified_certificate(certificate: tuple[str, str]) -> None:
    with running_intake(tls=_server_tls(certificate)) as secure:
        assert secure.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=certificate[0])
        exporter = DataDogExporter(DD_KEY, endpoint=secure.url, ssl_context=trusted)
        assert exporter.export(_counts(3)) is MetricExportResult.SUCCESS
        assert len(secure.accepted_series()) == 3


def test_an_untrusted_certificate_is_one_error_not_a_retry_loop(
    certificate: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with running_intake(tls=_server_tls(certificate)) as secure:
        exporter = DataDogExporter(DD_KEY, endpoint=secure.url, **FAST_RETRY)  # system CAs: not trusted
        with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics"):
            assert exporter.export(_counts(3), timeout_millis=5000) is MetricExportResult.FAILURE
        assert secure.requests == []
        assert exporter.retries == 0
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert "certificate" in errors[0]


def test_monitor_shutdown_returns_within_its_timeout_while_the_exporter_backs_off(
    intake: DatadogIntake, monitor_factory: MonitorFactory
) -> None:
    monitor = _monitor(monitor_factory, intake, timeout_s=120.0, retry_initial_s=60.0, retry_max_s=60.0)
    intake.default = Answer(503)
    monitor.increment_counter("jobs")
    assert not monitor.force_flush(timeout_s=0.2)
    intake.wait_for(lambda i: len(i.requests) == 1)  # the worker now waits 30-60 s before its retry
    assert monitor.pipeline is not None
    [exporter] = monitor.pipeline.exporters
    started = time.monotonic()
    monitor.shutdown(timeout_s=1.0)
    assert time.monotonic() - started < 10  # bounded by the timeout given, not by the backoff or the 120 s
    exporter.shutdown()  # the worker was left to its daemon thread; stop its backoff now


def test_series_left_over_for_50_minutes_are_dropped_with_an_error(
    intake: DatadogIntake, caplog: pytest.LogCaptureFixture
) -> None:
    offset = [0.0]
    exporter = DataDogExporter(
        DD_KEY, endpoint=intake.url, max_compressed_bytes=4096, clock=lambda: time.monotonic() + offset[0], **FAST_RETRY
    )
    intake.answer(Answer())
    intake.default = UNAVAILABLE
    assert exporter.export(_counts(2000), timeout_millis=30_000) is MetricExportResult.SUCCESS
    assert not exporter.force_flush()  # some series are waiting
    intake.default = Answer()
    offset[0] = 3601.0  # past the intake's wait, and past the 50 minutes series are kept
    before = len(intake.accepted_series())
    with caplog.at_level(logging.ERROR, logger="chat_turbo_metrics"):
        assert exporter.export(_counts(1, value=5)) is MetricExportResult.SUCCESS
    assert [one["points"][0]["value"] for one in intake.accepted_series()[before:]] == [5]
    assert exporter.force_flush()
    [error] = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert "dropped" in error


def test_a_rate_limited_intake_gets_one_request_per_export_not_one_per_body(intake: DatadogIntake) -> None:
    clock = SteppedClock()
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, max_compressed_bytes=4096, clock=clock, **FAST_RETRY)
    intake.default = Answer(429, {"Retry-After": "3600"})
    assert exporter.export(_counts(2000), timeout_millis=30_000) is MetricExportResult.FAILURE
    assert len(intake.requests) == 1
    intake.default = Answer()
    clock.skip(3600)
    assert exporter.export(_counts(2000), timeout_millis=30_000) is MetricExportResult.SUCCESS
    assert len(intake.accepted_series()) == 2000


def test_retry_after_zero_still_backs_off(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, retry_initial_s=0.1, retry_max_s=1.0)
    zero = Answer(429, {"Retry-After": "0"})
    intake.answer(zero, zero, zero)
    assert exporter.export(_counts(1)) is MetricExportResult.SUCCESS
    arrivals = [request.at for request in intake.requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert len(gaps) == 3
    assert all(gap >= 0.1 * 2**attempt * 0.5 for attempt, gap in enumerate(gaps))  # the backoff's lower bounds


def test_the_intakes_wait_holds_across_exports(intake: DatadogIntake) -> None:
    clock = SteppedClock()
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, clock=clock, **FAST_RETRY)
    intake.default = Answer(429, {"Retry-After": "3600"})
    results = [exporter.export(_counts(3, value=1), timeout_millis=2000) for _ in range(20)]
    assert set(results) == {MetricExportResult.FAILURE}  # the fan-out keeps each interval for a later export
    assert len(intake.requests) == 1  # one request, not one per export
    clock.skip(3599)
    assert exporter.export(_counts(3), timeout_millis=2000) is MetricExportResult.FAILURE
    assert len(intake.requests) == 1
    intake.default = Answer()
    clock.skip(1)
    assert exporter.export(_counts(3), timeout_millis=2000) is MetricExportResult.SUCCESS
    assert len(intake.accepted_series()) == 3


def test_an_intake_that_trickles_its_answer_is_cut_off_at_the_export_timeout(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, **FAST_RETRY)
    intake.answer(Answer(TRICKLE))  # ~50 bytes at 5 a second: each read is quick, the answer takes 10 s
    started = time.monotonic()
    assert exporter.export(_counts(2), timeout_millis=1000) is MetricExportResult.FAILURE
    assert time.monotonic() - started < 2.5
    assert exporter.export(_counts(2), timeout_millis=5000) is MetricExportResult.SUCCESS  # the next one goes out
    assert len(intake.accepted_series()) == 2


def test_exports_go_on_after_a_trickling_answer(intake: DatadogIntake, monitor_factory: MonitorFactory) -> None:
    monitor = _monitor(monitor_factory, intake, timeout_s=1.0)
    intake.answer(Answer(TRICKLE))
    monitor.increment_counter("messages_sent", value=5)
    started = time.monotonic()
    assert not monitor.force_flush(timeout_s=10)
    assert time.monotonic() - started < 3.0
    monitor.increment_counter("messages_sent", value=2)
    assert monitor.force_flush(timeout_s=10)
    assert total(intake.accepted_series(), "messages_sent") == 7  # the trickled interval comes with the next
