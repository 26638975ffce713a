"""The status page beside /metrics: /status (HTML) and /status.json, served by the built-in endpoint.

The data comes from the seams: the alert managers attached to the served pipeline, the collection the endpoint
makes (health metrics, the charts' points). Each test reads the page over HTTP from a real endpoint.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics._pipeline.attached import ALERT_MANAGERS, attached
from chat_turbo_metrics.alerting import AlertManager, Dispatcher
from chat_turbo_metrics.exporters._status import CHARTS, StatusHistory, render_status, status_data, status_json
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
from conftest import free_port, make_config, service_process

HOSTILE = "<img src=x onerror=alert(1)>\"&'</td>"


@pytest.fixture
def served() -> Iterator[tuple[PerformanceMonitor, PrometheusExporter]]:
    """A monitor on a private pipeline, self-telemetry on, served by a Prometheus exporter on a free port."""
    monitor = PerformanceMonitor(make_config(self_telemetry=True))
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    monitor.add_exporter(exporter)
    yield monitor, exporter
    monitor.shutdown()


def get(exporter: PrometheusExporter, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}{path}", timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def firing(manager: AlertManager, monitor: PerformanceMonitor, labels: dict[str, str]) -> None:
    """Make ``manager``'s rule fire (since 1000) for a series labelled ``labels``."""
    manager.add_rule(
        {"id": "errors", "name": "Errors", "metric": "error_ratio", "condition": "gt", "threshold": 0.1,
         "duration": 0, "severity": "high", "annotations": {"summary": "errors seen on {{ $labels.endpoint }}"}}
    )  # fmt: skip
    monitor.record_gauge("error_ratio", 0.5, labels)
    manager.evaluate(1000.0)
    manager.evaluate(1060.0)


class Text(html.parser.HTMLParser):
    """The page's elements (tag names) and its text, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(body: bytes) -> Text:
    parser = Text()
    parser.feed(body.decode("utf-8"))
    return parser


def test_status_json_shows_a_firing_alert_with_its_labels_and_the_health_metrics(
    served: tuple[PerformanceMonitor, PrometheusExporter],
) -> None:
    monitor, exporter = served
    manager = AlertManager(monitor, clock=lambda: 1060.0)
    firing(manager, monitor, {"endpoint": "/chat"})

    status, headers, body = get(exporter, "/status.json")

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert data["alert_managers"] == 1
    assert data["multiprocess"] is False
    [alert] = data["alerts"]
    assert (alert["name"], alert["state"], alert["since"], alert["firing_since"]) == (
        "Errors",
        "firing",
        1000.0,
        1000.0,
    )
    assert alert["labels"] == {"alertname": "Errors", "severity": "high", "endpoint": "/chat"}
    assert alert["annotations"]["summary"] == "errors seen on /chat"
    assert alert["value"] == 0.5
    # The health metrics come from the same collection as a scrape: the pipeline's self-telemetry.
    assert any(row["metric"].startswith("chat_turbo_metrics_") for row in data["health"])
    assert [s["title"] for s in data["series"]] == [chart.title for chart in CHARTS]


def test_status_html_shows_the_alert_and_escapes_every_label_value(
    served: tuple[PerformanceMonitor, PrometheusExporter],
) -> None:
    monitor, exporter = served
    manager = AlertManager(monitor, clock=lambda: 1060.0)
    firing(manager, monitor, {"endpoint": HOSTILE})
    manager.silence({"team": HOSTILE}, until=5000.0, comment=HOSTILE)

    status, headers, body = get(exporter, "/status")

    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none': no script at all
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    page = parse(body)
    assert "img" not in page.tags
    assert "script" not in page.tags
    text = "".join(page.text)
    assert f'endpoint="{HOSTILE}"' in text  # the value, as text, exactly
    assert f'team="{HOSTILE}"' in text
    assert "Errors" in text
    assert "firing" in text
    assert b"<img" not in body


def test_status_lists_recent_notifications_and_their_outcomes(
    served: tuple[PerformanceMonitor, PrometheusExporter],
) -> None:
    monitor, exporter = served
    dispatcher = Dispatcher(clock=lambda: 1060.0)
    manager = AlertManager(monitor, clock=lambda: 1060.0, dispatcher=dispatcher)
    try:
        notified(manager, monitor, exporter)
    finally:
        assert dispatcher.shutdown(5.0)  # its notifiers' threads end: nothing of this test outlives it


def notified(manager: AlertManager, monitor: PerformanceMonitor, exporter: PrometheusExporter) -> None:
    manager.add_route(lambda notification: None, name="ops", group_wait_s=0)

    def refuse(notification: object) -> None:
        from chat_turbo_metrics.alerting import DeliveryError

        raise DeliveryError("receiver said no", retryable=False)

    manager.add_route(refuse, name="pager", group_wait_s=0)
    firing(manager, monitor, {"endpoint": "/chat"})
    assert manager.flush(10.0)

    data = json.loads(get(exporter, "/status.json")[2])

    recent = {(n["receiver"], n["status"], n["outcome"]) for n in data["notifications"]["recent"]}
    assert recent == {("ops", "firing", "delivered"), ("pager", "firing", "failed")}
    outcomes = data["notifications"]["outcomes"]
    assert (outcomes["ops"]["sent"], outcomes["pager"]["failed"]) == (1, 1)
    text = "".join(parse(get(exporter, "/status")[2]).text)
    assert {n["title"] for n in data["notifications"]["recent"]} == {"[FIRING:1] Errors (/chat high)"}
    assert "[FIRING:1] Errors (/chat high)" in text
    assert "delivered" in text
    assert "failed" in text


def test_status_without_alert_manager_says_so_and_other_paths_still_404(
    served: tuple[PerformanceMonitor, PrometheusExporter],
) -> None:
    _, exporter = served
    status, _, body = get(exporter, "/status")
    assert status == 200
    assert "no alert manager is attached" in "".join(parse(body).text)
    assert get(exporter, "/statusx")[0] == 404
    assert get(exporter, "/metrics")[0] == 200


def test_an_alert_manager_attaches_itself_to_its_pipeline_only_while_it_lives(
    served: tuple[PerformanceMonitor, PrometheusExporter],
) -> None:
    monitor, _ = served
    first, second = AlertManager(monitor), AlertManager(monitor)
    assert attached(monitor._runtime.pipeline, ALERT_MANAGERS) == (first, second)
    del first
    import gc

    gc.collect()
    assert attached(monitor._runtime.pipeline, ALERT_MANAGERS) == (second,)


def test_charts_take_their_points_from_the_endpoints_collections(
    served: tuple[PerformanceMonitor, PrometheusExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor, exporter = served
    now = [10_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    for step in range(4):
        monitor.increment_counter("api_requests_total", {"endpoint": "/chat"}, value=60)
        for _ in range(10):
            monitor.record_histogram("http_request_duration_seconds", 0.2, {"endpoint": "/chat"})
        monitor.record_gauge("memory_usage_mb", 100.0 + step)
        assert get(exporter, "/metrics")[0] == 200  # a scrape takes a point
        now[0] += 60.0
    series = {s["metric"]: s["points"] for s in json.loads(get(exporter, "/status.json")[2])["series"]}
    # 60 requests a minute: 1 per second, between each pair of scrapes (the page view adds a point of 0).
    assert [v for _, v in series["api_requests"]][:3] == [1.0, 1.0, 1.0]
    assert series["memory_usage_mb"][:4] == [[10_000.0, 100.0], [10_060.0, 101.0], [10_120.0, 102.0], [10_180.0, 103.0]]
    [p95, *_] = [v for _, v in series["http_request_duration_seconds"]]
    assert 0.1 < p95 <= 0.25  # inside the bucket the observations fell in
    page = get(exporter, "/status")[2]
    assert page.count(b'class="bar"') >= 4 * 2  # requests and memory at least


def test_history_keeps_one_hour_and_one_point_per_spacing(monitor: PerformanceMonitor) -> None:
    history = StatusHistory(window_s=60.0, spacing_s=5.0)
    for second in range(0, 200):
        monitor.record_gauge("memory_usage_mb", float(second))
        history.observe(monitor.snapshot().data, float(second))
    points = history.points(next(c for c in CHARTS if c.metric == "memory_usage_mb"))
    assert [t for t, _ in points] == [float(t) for t in range(130, 200, 5)]  # 60 s (+ a spacing) back, every 5 s


def test_a_collection_the_charts_cannot_read_fails_neither_the_scrape_nor_the_page(
    served: tuple[PerformanceMonitor, PrometheusExporter], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monitor, exporter = served
    monitor.increment_counter("api_requests_total")

    def broken(data: object) -> dict[str, object]:
        raise RuntimeError("unexpected point")

    monkeypatch.setattr("chat_turbo_metrics.exporters._status._read", broken)
    status, _, body = get(exporter, "/metrics")
    assert status == 200
    assert re.search(rb"^api_requests_total(\{[^}]*\})? 1(\.0)?$", body, re.M)  # scope labels or not
    assert get(exporter, "/status")[0] == 200
    assert [r.message for r in caplog.records].count(
        "the status page could not read a collection for its charts (logged once)"
    ) == 1


def test_a_clock_that_steps_back_starts_the_charts_over_and_a_small_step_is_ignored(
    monitor: PerformanceMonitor,
) -> None:
    history = StatusHistory(window_s=60.0, spacing_s=5.0)
    chart = next(c for c in CHARTS if c.metric == "memory_usage_mb")
    for second, value in ((100.0, 1.0), (110.0, 2.0), (108.0, 3.0), (50.0, 4.0), (60.0, 5.0)):
        monitor.record_gauge("memory_usage_mb", value)
        history.observe(monitor.snapshot().data, second)
    # 108 is within a spacing of 110: not sampled; 50 is a step back: the points before it are gone.
    assert history.points(chart) == [(50.0, 4.0), (60.0, 5.0)]


def thousand_alerts(monitor: PerformanceMonitor) -> AlertManager:
    """An alert manager with 1,000 firing alerts, each with a label value made of HTML."""
    manager = AlertManager(monitor, clock=lambda: 1060.0)
    manager.add_rule(
        {"id": "busy", "name": "Busy", "metric": "queue_depth", "condition": "gt", "threshold": 0,
         "duration": 0, "severity": "warning"}
    )  # fmt: skip
    for i in range(1000):
        monitor.record_gauge("queue_depth", 5.0, {"queue": f"q{i}", "note": f"<b>{i}</b>"})
    manager.evaluate(1000.0)
    assert len(manager.alerts()) == 1000
    return manager


def test_a_thousand_alerts_render_quickly_and_completely(monitor: PerformanceMonitor) -> None:
    manager = thousand_alerts(monitor)
    history = StatusHistory()
    started = time.perf_counter()
    data = status_data(monitor.snapshot().data, [manager], history, now=1060.0)
    page, body = render_status(data), status_json(data)
    elapsed = time.perf_counter() - started
    print(f"1,000 alerts: data + HTML + JSON in {elapsed * 1000:.1f} ms")  # reported, not asserted
    assert page.count(b'<tr class="alert">') == 1000
    assert b"<b>" not in page
    assert b"&lt;b&gt;999&lt;/b&gt;" in page
    assert len(json.loads(body)["alerts"]) == 1000


def test_non_finite_values_and_lone_surrogates_do_not_break_the_page() -> None:
    class Alert:
        rule_id, name, state, active_at, fired_at = "r", "R\udcff", "firing", 1.0, 1.0
        value, silenced, acknowledged = float("nan"), False, False
        annotations: ClassVar[dict[str, str]] = {}
        labels: ClassVar[dict[str, str]] = {"x": "\udcff", "y": "ok"}

    class Manager:
        def alerts(self) -> tuple[Any, ...]:
            return (Alert(),)

        def silences(self) -> tuple[Any, ...]:
            return ()

        def recent_notifications(self) -> tuple[Any, ...]:
            return ()

        def notification_counts(self) -> dict[str, dict[str, int]]:
            return {}

    data = status_data(None, [Manager()], StatusHistory(), now=5.0)
    assert json.loads(status_json(data))["alerts"][0]["value"] == "NaN"
    assert b"NaN" in render_status(data)


def time_requests(call: Callable[[], object], times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        call()
    return (time.perf_counter() - started) / times


def test_a_thousand_alerts_over_http(served: tuple[PerformanceMonitor, PrometheusExporter]) -> None:
    monitor, exporter = served
    manager = thousand_alerts(monitor)  # held: the endpoint holds alert managers weakly
    status, _, body = get(exporter, "/status")
    assert status == 200
    assert body.count(b'<tr class="alert">') == 1000
    per_page = time_requests(lambda: get(exporter, "/status"), 5)
    per_json = time_requests(lambda: get(exporter, "/status.json"), 5)
    print(f"1,000 alerts over HTTP: /status {per_page * 1000:.1f} ms, /status.json {per_json * 1000:.1f} ms")
    assert len(manager.alerts()) == 1000


def test_under_a_prefork_group_the_page_shows_the_serving_process_alerting_and_the_group_metrics(
    tmp_path: Path,
) -> None:
    port = free_port()
    holder = service_process(tmp_path, port)  # multiprocess on (the default): it binds the port, holds it
    try:
        manager = AlertManager(holder, clock=lambda: 1060.0)
        firing(manager, holder, {"endpoint": "/holder"})
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # a member: its own alert manager and alert, its own count
            try:
                child = AlertManager(holder, clock=lambda: 1060.0)
                firing(child, holder, {"endpoint": "/member"})
                holder.increment_counter("jobs", value=40)
                os.write(write_end, b"1")
                time.sleep(3)
                holder.shutdown()
            finally:
                os._exit(0)
        try:
            os.read(read_end, 1)
            exporter = next(e for e in holder.pipeline.pull_exporters if isinstance(e, PrometheusExporter))  # type: ignore[union-attr]
            deadline = time.monotonic() + 5
            while "jobs_total 40" not in get(exporter, "/metrics")[2].decode():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            data = json.loads(get(exporter, "/status.json")[2])
            assert data["multiprocess"] is True
            assert data["pid"] == os.getpid()
            # The serving process's alerting only: the member's alert is its own, not on this page.
            assert [alert["labels"]["endpoint"] for alert in data["alerts"]] == ["/holder"]
            text = "".join(parse(get(exporter, "/status")[2]).text)
            assert f"alerting shown is that of process {os.getpid()}, which serves this endpoint" in text
        finally:
            os.waitpid(pid, 0)
    finally:
        holder.shutdown()
