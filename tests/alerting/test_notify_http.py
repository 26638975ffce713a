"""Slack, webhook and custom notifiers against real HTTP receivers on 127.0.0.1; delivery isolation and retries."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import threading
import time
from pathlib import Path

import pytest
from notify_peers import Reply, alert, receivers_fixture  # noqa: F401  (the `receivers` fixture)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from chat_turbo_metrics import Secret
from chat_turbo_metrics.alerting import (
    Dispatcher,
    LogNotifier,
    Notification,
    RetryPolicy,
    SlackNotifier,
    WebhookNotifier,
)
from chat_turbo_metrics.alerting.notifiers.webhook import SIGNATURE_HEADER

# Real Alertmanager 0.25 webhook captures, kept beside the tests so they need nothing outside the repository.
REFERENCE = Path(__file__).parent / "data" / "alertmanager-0.25-webhook-payload.json"
FAST_RETRY = RetryPolicy(deadline_s=5.0, backoff_base_s=0.01, backoff_max_s=0.05)


def fire(dispatcher: Dispatcher, *alerts: object, now: float = 1_800_000_000.0) -> None:
    """Make the dispatcher send the given alerts at once (group_wait 0)."""
    dispatcher.on_evaluated(now, tuple(alerts))  # type: ignore[arg-type]


@pytest.fixture
def dispatcher():
    made = Dispatcher(retry=FAST_RETRY)
    yield made
    made.shutdown(5.0)


def test_slack_message_is_shaped_like_alertmanagers(receivers, dispatcher) -> None:
    hook = receivers()
    dispatcher.add_route(SlackNotifier(hook.url + "/services/T0/B0/token"), group_wait_s=0)
    web1, web2 = alert(instance="web-1", value=97.5), alert(instance="web-2", value=88.0)
    fire(dispatcher, web1, web2)
    fire(dispatcher, dataclasses.replace(web1, state="resolved", resolved_at=1_800_000_400.0), now=1_800_000_400.0)
    fire(dispatcher, dataclasses.replace(web2, state="resolved", resolved_at=1_800_000_400.0), now=1_800_000_700.0)
    first, second = hook.wait_for(2)
    assert first.path == "/services/T0/B0/token"
    assert first.headers["Content-Type"] == "application/json"
    (attachment,) = first.json()["attachments"]
    assert attachment["title"] == "[FIRING:2] HighCPU (warning)"
    assert attachment["color"] == "danger"
    for shown in ("97.5", "88", "instance=web-1", "HighCPU on web-2"):
        assert shown in attachment["text"]
    (resolved,) = second.json()["attachments"]
    assert (resolved["color"], resolved["title"]) == ("good", "[RESOLVED] HighCPU (warning)")


def test_slack_429_is_retried_after_retry_after(receivers, dispatcher) -> None:
    hook = receivers()
    hook.script.append(Reply(429, {"Retry-After": "1"}, b"rate_limited"))
    dispatcher.add_route(SlackNotifier(hook.url), group_wait_s=0)
    fire(dispatcher, alert())
    assert dispatcher.flush(10.0)
    limited, accepted = hook.wait_for(2)
    assert (limited.answered, accepted.answered) == (429, 200)
    assert accepted.at - limited.at >= 0.95  # backoff alone would have waited <= 0.01 s
    assert dispatcher.stats.snapshot()["slack"] == {"sent": 1, "failed": 0, "dropped": 0, "retries": 1}


def test_webhook_payload_has_the_keys_and_shapes_of_alertmanagers(receivers, dispatcher) -> None:
    hook = receivers()
    dispatcher.add_route(WebhookNotifier(hook.url + "/hook"), group_wait_s=0, group_by=("alertname", "service"))
    fire(dispatcher, alert(instance="web-1", service="api"))
    (request,) = hook.wait_for(1)
    body = request.json()
    reference = json.loads(REFERENCE.read_text())["requests"][0]["body"]
    assert sorted(body) == sorted(reference)
    assert sorted(body["alerts"][0]) == sorted(reference["alerts"][0])
    for key in reference:
        assert type(body[key]) is type(reference[key]), key
    assert body["version"] == "4"
    assert body["groupKey"] == '{}:{alertname="HighCPU", service="api"}'
    assert body["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert body["alerts"][0]["startsAt"].startswith("2027-01-15T08:00:00")
    assert SIGNATURE_HEADER not in request.headers


def test_webhook_signature_verifies_with_the_shared_secret(receivers, dispatcher) -> None:
    hook = receivers()
    dispatcher.add_route(WebhookNotifier(hook.url, secret="s3cret"), group_wait_s=0)
    fire(dispatcher, alert())
    (request,) = hook.wait_for(1)
    expected = "sha256=" + hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers[SIGNATURE_HEADER], expected)
    wrong = "sha256=" + hmac.new(b"other", request.body, hashlib.sha256).hexdigest()
    assert request.headers[SIGNATURE_HEADER] != wrong


def test_webhook_500_then_success_delivers_once(receivers, dispatcher) -> None:
    hook = receivers()
    hook.script.extend([Reply(500), Reply(503)])
    dispatcher.add_route(WebhookNotifier(hook.url), group_wait_s=0)
    fire(dispatcher, alert())
    assert dispatcher.flush(10.0)
    assert [r.answered for r in hook.requests] == [500, 503, 200]
    assert dispatcher.stats.snapshot()["webhook"] == {"sent": 1, "failed": 0, "dropped": 0, "retries": 2}


def test_final_4xx_is_not_retried_and_the_next_flush_tries_again(receivers, dispatcher) -> None:
    hook = receivers()
    hook.script.append(Reply(400, body=b"invalid_payload"))
    dispatcher.add_route(WebhookNotifier(hook.url), group_wait_s=0, group_interval_s=60)
    firing = alert()
    fire(dispatcher, firing)
    assert dispatcher.flush(10.0)
    assert [r.answered for r in hook.requests] == [400]
    fire(dispatcher, firing, now=1_800_000_060.0)  # not delivered, so not deduplicated
    assert dispatcher.flush(10.0)
    assert [r.answered for r in hook.requests] == [400, 200]
    assert dispatcher.stats.snapshot()["webhook"] == {"sent": 1, "failed": 1, "dropped": 0, "retries": 0}


def test_retries_stop_at_the_deadline(receivers) -> None:
    hook = receivers()
    hook.default = Reply(500)
    dispatcher = Dispatcher(retry=RetryPolicy(deadline_s=0.5, backoff_base_s=0.02, backoff_max_s=0.1))
    try:
        dispatcher.add_route(WebhookNotifier(hook.url), group_wait_s=0)
        started = time.monotonic()
        fire(dispatcher, alert())
        assert dispatcher.flush(10.0)
        assert time.monotonic() - started < 2.0
        stats = dispatcher.stats.snapshot()["webhook"]
        assert (stats["sent"], stats["failed"]) == (0, 1)
        assert stats["retries"] >= 3
        assert len(hook.requests) == stats["retries"] + 1
    finally:
        dispatcher.shutdown(1.0)


def test_stalled_receiver_delays_no_other_notifier_nor_the_caller(receivers, dispatcher) -> None:
    stalled, healthy = receivers(), receivers()
    stalled.default = Reply(stall=True)
    dispatcher.add_route(WebhookNotifier(stalled.url, timeout_s=30), group_wait_s=0, name="stalled")
    dispatcher.add_route(WebhookNotifier(healthy.url), group_wait_s=0, name="healthy")
    fire(dispatcher, alert("A"))
    stalled.wait_for(1)
    fire(dispatcher, alert("B"))  # returns although one notifier is stuck in a request
    assert len(healthy.wait_for(2)) == 2
    assert dispatcher.flush(0.3) is False  # the stalled one is still busy
    assert stalled.finished == []
    stalled.release.set()
    assert dispatcher.flush(10.0)
    assert dispatcher.stats.snapshot()["stalled"]["sent"] == 2


def test_full_queue_drops_the_oldest_and_counts_it(receivers) -> None:
    reader = InMemoryMetricReader()
    dispatcher = Dispatcher(queue_size=2, retry=FAST_RETRY, meter_provider=MeterProvider(metric_readers=[reader]))
    stalled = receivers()
    stalled.default = Reply(stall=True)
    try:
        dispatcher.add_route(WebhookNotifier(stalled.url, timeout_s=30), group_wait_s=0, name="hook")
        fire(dispatcher, alert("A0"))
        stalled.wait_for(1)  # A0 in flight
        for name in ("A1", "A2", "A3", "A4"):  # A1, A2 queued, then pushed out by A3, A4
            fire(dispatcher, alert(name))
        stalled.release.set()
        assert dispatcher.flush(10.0)
        assert [r.json()["groupLabels"]["alertname"] for r in stalled.requests] == ["A0", "A3", "A4"]
        assert dispatcher.stats.snapshot()["hook"]["dropped"] == 2
        points = {
            point.attributes["outcome"]: point.value
            for metric in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
            if metric.name == "alert_notifications"
            for point in metric.data.data_points
        }
        assert points == {"sent": 3, "dropped": 2}
    finally:
        dispatcher.shutdown(1.0)


def test_shutdown_delivers_what_is_queued(receivers) -> None:
    hook = receivers()
    hook.script.append(Reply(stall=True))
    dispatcher = Dispatcher(retry=FAST_RETRY)
    dispatcher.add_route(WebhookNotifier(hook.url), group_wait_s=0)
    for name in ("A", "B", "C"):
        fire(dispatcher, alert(name))
    hook.wait_for(1)
    threading.Timer(0.2, hook.release.set).start()
    assert dispatcher.shutdown(10.0)
    assert sorted(r.json()["groupLabels"]["alertname"] for r in hook.requests) == ["A", "B", "C"]
    fire(dispatcher, alert("D"))  # after shutdown: ignored, not queued
    assert len(hook.requests) == 3


def test_shutdown_gives_up_at_its_timeout_and_counts_the_rest(receivers) -> None:
    hook = receivers()
    hook.default = Reply(stall=True)
    dispatcher = Dispatcher(retry=FAST_RETRY)
    dispatcher.add_route(WebhookNotifier(hook.url, timeout_s=30), group_wait_s=0, name="hook")
    for name in ("A", "B", "C"):
        fire(dispatcher, alert(name))
    hook.wait_for(1)
    started = time.monotonic()
    assert dispatcher.shutdown(0.3) is False
    assert time.monotonic() - started < 2.0
    assert dispatcher.stats.snapshot()["hook"]["dropped"] == 2  # B and C; A is still stuck in its request


def test_custom_sync_and_async_handlers_receive_the_notification(dispatcher) -> None:
    got: list[tuple[str, str]] = []

    def sync_handler(notification: Notification) -> None:
        got.append(("sync", notification.title))

    async def async_handler(notification: Notification) -> None:
        await asyncio.sleep(0)
        got.append(("async", notification.title))

    dispatcher.add_route(sync_handler, group_wait_s=0)
    dispatcher.add_route(async_handler, group_wait_s=0)
    fire(dispatcher, alert())
    assert dispatcher.flush(5.0)
    assert sorted(got) == [("async", "[FIRING:1] HighCPU (warning)"), ("sync", "[FIRING:1] HighCPU (warning)")]
    assert set(dispatcher.stats.snapshot()) == {"sync_handler", "async_handler"}


def test_a_failing_handler_is_retried_and_isolated(dispatcher) -> None:
    calls: list[str] = []

    def flaky(notification: Notification) -> None:
        calls.append("flaky")
        if calls.count("flaky") < 3:
            raise RuntimeError("downstream busy")

    def steady(notification: Notification) -> None:
        calls.append("steady")

    dispatcher.add_route(flaky, group_wait_s=0)
    dispatcher.add_route(steady, group_wait_s=0)
    fire(dispatcher, alert())
    assert dispatcher.flush(5.0)
    assert (calls.count("flaky"), calls.count("steady")) == (3, 1)
    assert dispatcher.stats.snapshot()["flaky"]["retries"] == 2


def test_log_notifier_writes_one_structured_record(dispatcher, caplog) -> None:
    logger = logging.getLogger("test.alerts")
    dispatcher.add_route(LogNotifier(logger), group_wait_s=0)
    with caplog.at_level(logging.INFO, logger="test.alerts"):
        fire(dispatcher, alert(instance="web-1", value=2.5), alert(instance="web-2", value=3.5))
        assert dispatcher.flush(5.0)
    (record,) = [r for r in caplog.records if r.name == "test.alerts"]
    assert record.levelno == logging.WARNING
    payload = record.alert_notification  # type: ignore[attr-defined]
    assert [a["value"] for a in payload["alerts"]] == [2.5, 3.5]
    assert json.loads(record.getMessage().split(" ", 3)[3]) == payload


def test_secrets_never_appear_in_logs_errors_or_reprs(receivers, caplog) -> None:
    hook = receivers()
    hook.default = Reply(403)
    token = "xoxb-very-secret-token"
    dead = f"http://127.0.0.1:1/services/{token}"  # nothing listens on port 1
    dispatcher = Dispatcher(retry=RetryPolicy(deadline_s=0.3, backoff_base_s=0.01, backoff_max_s=0.02))
    slack = SlackNotifier(f"{hook.url}/services/{token}")
    webhook = WebhookNotifier(Secret(dead), secret=token)
    with caplog.at_level(logging.DEBUG):
        dispatcher.add_route(slack, group_wait_s=0)
        dispatcher.add_route(webhook, group_wait_s=0)
        fire(dispatcher, alert())
        assert dispatcher.shutdown(5.0)
    stats = dispatcher.stats.snapshot()
    assert (stats["slack"]["failed"], stats["webhook"]["failed"]) == (1, 1)
    shown = caplog.text + repr(slack) + repr(webhook) + repr(dispatcher._routes)
    assert "127.0.0.1" in caplog.text  # the log names the notifier and the masked URL ...
    assert token not in shown  # ... never the token


def test_a_forked_child_delivers_its_own_notifications(receivers, dispatcher) -> None:
    hook = receivers()
    dispatcher.add_route(WebhookNotifier(hook.url), group_wait_s=0)
    fire(dispatcher, alert("Parent"))
    assert dispatcher.flush(5.0)  # the parent's worker thread exists now
    pid = os.fork()
    if pid == 0:  # the child: its worker must be re-created, the parent's queue is not its own
        try:
            fire(dispatcher, alert("Child"))
            os._exit(0 if dispatcher.flush(5.0) and dispatcher.stats.snapshot()["webhook"]["sent"] == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(r.json()["groupLabels"]["alertname"] for r in hook.wait_for(2)) == ["Child", "Parent"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.0, 10**30, None])
def test_odd_values_reach_every_notifier_as_valid_messages(receivers, dispatcher, caplog, value) -> None:
    slack_hook, webhook_hook = receivers(), receivers()
    dispatcher.add_route(SlackNotifier(slack_hook.url), group_wait_s=0)
    dispatcher.add_route(WebhookNotifier(webhook_hook.url), group_wait_s=0)
    dispatcher.add_route(LogNotifier(logging.getLogger("test.odd")), group_wait_s=0)
    with caplog.at_level(logging.INFO, logger="test.odd"):
        fire(dispatcher, alert(value=value))
        assert dispatcher.flush(5.0)
    (slack_request,) = slack_hook.wait_for(1)
    assert slack_request.json()["attachments"][0]["title"] == "[FIRING:1] HighCPU (warning)"
    assert webhook_hook.wait_for(1)[0].json()["alerts"][0]["labels"]["alertname"] == "HighCPU"
    (record,) = [r for r in caplog.records if r.name == "test.odd"]
    shown = json.loads(record.getMessage().split(" ", 3)[3], parse_constant=pytest.fail)
    finite = value is None or math.isfinite(value)
    assert shown["alerts"][0]["value"] == (value if finite else str(value))


def test_queued_notifications_are_delivered_when_the_process_exits(receivers, tmp_path) -> None:
    """No shutdown() call: the dispatcher's exit handler delivers what is queued before the process ends."""
    hook = receivers()
    hook.script.append(Reply(stall=True))
    threading.Timer(0.3, hook.release.set).start()
    script = tmp_path / "app.py"
    script.write_text(
        "import sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from notify_peers import alert\n"
        "from chat_turbo_metrics.alerting import Dispatcher, WebhookNotifier\n"
        "dispatcher = Dispatcher()\n"
        "dispatcher.add_route(WebhookNotifier(sys.argv[1]), group_wait_s=0)\n"
        "for name in ('A', 'B', 'C'):\n"
        "    dispatcher.on_evaluated(1_800_000_000.0, (alert(name),))\n"
    )
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(script), hook.url, str(Path(__file__).parent)],
        check=False,
        timeout=30,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(r.json()["groupLabels"]["alertname"] for r in hook.wait_for(3)) == ["A", "B", "C"]


def test_an_async_handler_that_never_finishes_is_given_up_at_the_deadline() -> None:
    dispatcher = Dispatcher(retry=RetryPolicy(deadline_s=0.3, backoff_base_s=0.01, backoff_max_s=0.02))
    got: list[str] = []

    async def hangs(notification: Notification) -> None:
        await asyncio.Event().wait()

    dispatcher.add_route(hangs, group_wait_s=0)
    dispatcher.add_route(lambda n: got.append(n.title), group_wait_s=0, name="steady")
    try:
        fire(dispatcher, alert())
        assert dispatcher.flush(5.0)
        assert dispatcher.stats.snapshot()["hangs"]["failed"] == 1
        assert got == ["[FIRING:1] HighCPU (warning)"]
    finally:
        dispatcher.shutdown(1.0)


def test_a_peer_that_hangs_up_without_answering_is_retried_then_counted_failed(caplog) -> None:
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[int] = []

    def hang_up() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            connection.recv(65536)
            connection.close()  # no status line: the client sees the peer vanish

    threading.Thread(target=hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/hook/secret-token"
    dispatcher = Dispatcher(retry=RetryPolicy(deadline_s=0.5, backoff_base_s=0.02, backoff_max_s=0.05))
    try:
        dispatcher.add_route(WebhookNotifier(url), group_wait_s=0)
        with caplog.at_level(logging.WARNING):
            fire(dispatcher, alert())
            assert dispatcher.flush(10.0)
        stats = dispatcher.stats.snapshot()["webhook"]
        assert (stats["sent"], stats["failed"]) == (0, 1)
        assert len(accepted) == stats["retries"] + 1 >= 2
        assert "secret-token" not in caplog.text
    finally:
        dispatcher.shutdown(1.0)
        server.close()


def test_log_notifier_escapes_control_characters_so_a_label_cannot_forge_a_line(dispatcher, caplog) -> None:
    logger = logging.getLogger("test.forge")
    dispatcher.add_route(LogNotifier(logger), group_wait_s=0, group_by=("alertname", "instance"))
    forged = "web-1\nCRITICAL fake: database dropped\x1b[2J\x1b[1;1H\u2028\x9b31m"
    with caplog.at_level(logging.INFO, logger="test.forge"):
        fire(dispatcher, alert(instance=forged))
        assert dispatcher.flush(5.0)
    (record,) = [r for r in caplog.records if r.name == "test.forge"]
    line = record.getMessage()
    for raw in ("\n", "\x1b", "\u2028", "\x9b"):
        assert raw not in line
    assert "web-1\\x0aCRITICAL fake" in line  # shown, escaped, not lost
    assert record.alert_notification["groupLabels"]["instance"] == forged  # type: ignore[attr-defined]


def test_slack_escapes_label_text_so_it_cannot_mention_or_link(receivers, dispatcher) -> None:
    hook = receivers()
    dispatcher.add_route(SlackNotifier(hook.url), group_wait_s=0, group_by=("alertname", "instance"))
    fire(dispatcher, alert(instance="<!channel> & <https://evil.example|click>"))
    (request,) = hook.wait_for(1)
    (attachment,) = request.json()["attachments"]
    for text in (attachment["title"], attachment["fallback"], attachment["text"]):
        assert "<!channel>" not in text
        assert "<https://" not in text
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in attachment["title"]
    assert "instance=&lt;!channel&gt;" in attachment["text"]


def test_a_resolution_whose_delivery_fails_is_sent_again_until_delivered(receivers) -> None:
    """Alertmanager keeps a resolved alert in its group until a flush carrying it succeeds; so do we."""
    hook = receivers()
    dispatcher = Dispatcher(retry=RetryPolicy(deadline_s=0.3, backoff_base_s=0.01, backoff_max_s=0.02))
    t0 = 1_800_000_000.0
    try:
        dispatcher.add_route(WebhookNotifier(hook.url), group_wait_s=0, group_interval_s=300)
        firing = alert(at=t0)
        fire(dispatcher, firing, now=t0)
        assert dispatcher.flush(5.0)
        hook.default = Reply(503)  # the receiver is down for the one flush that carries the resolution
        fire(dispatcher, dataclasses.replace(firing, state="resolved", resolved_at=t0 + 300), now=t0 + 300)
        assert dispatcher.flush(5.0)
        assert {r.answered for r in hook.requests[1:]} == {503}
        hook.default = Reply(200)
        for minute in range(6, 6 * 60 + 1):  # six hours of evaluations, one a minute, with nothing firing
            dispatcher.on_evaluated(t0 + 60 * minute, ())
            assert dispatcher.flush(5.0)
    finally:
        dispatcher.shutdown(1.0)
    delivered = [r.json() for r in hook.requests if r.answered == 200]
    assert [body["status"] for body in delivered] == ["firing", "resolved"]  # once, not at every flush
    assert delivered[1]["alerts"][0]["endsAt"].startswith("2027-01-15T08:05:00")
    stats = dispatcher.stats.snapshot()["webhook"]
    assert (stats["sent"], stats["failed"]) == (2, 1)
    assert dispatcher._groups == {}  # and the group is gone once the receiver knows
