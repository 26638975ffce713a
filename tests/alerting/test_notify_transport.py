"""The HTTP transport of the notifiers: no redirects, a total deadline, secret URLs checked and never shown."""

from __future__ import annotations

import base64
import logging
import time

import pytest
from notify_peers import Reply, alert, receivers_fixture  # noqa: F401  (the `receivers` fixture)

from chat_turbo_metrics import ConfigurationError, get_monitoring_config
from chat_turbo_metrics.alerting import (
    AlertmanagerForwarder,
    DeliveryError,
    Dispatcher,
    Notification,
    RetryPolicy,
    SlackNotifier,
    WebhookNotifier,
)

TOKEN = "xoxb-T0KEN-must-never-show"
ONE_TRY = RetryPolicy(deadline_s=0.2, backoff_base_s=0.01, backoff_max_s=0.02)


def note() -> Notification:
    return Notification.for_alerts("webhook", [alert()], {"alertname": "HighCPU"})


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_delivery_and_is_not_followed(receivers, caplog, status) -> None:
    hook, elsewhere = receivers(), receivers()
    hook.default = Reply(status, {"Location": f"{elsewhere.url}/moved/{TOKEN}"})
    dispatcher = Dispatcher(retry=ONE_TRY)
    try:
        dispatcher.add_route(WebhookNotifier(hook.url + "/hook", secret="s3cret"), group_wait_s=0)
        with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.alerting"):
            dispatcher.on_evaluated(1_800_000_000.0, (alert(),))
            assert dispatcher.flush(5.0)
    finally:
        dispatcher.shutdown(1.0)
    assert len(hook.requests) == 1  # final: not retried
    assert elsewhere.requests == []  # neither the body nor the signature went to the redirect's target
    stats = dispatcher.stats.snapshot()["webhook"]
    assert (stats["sent"], stats["failed"]) == (0, 1)
    assert str(status) in caplog.text
    assert "http://127.0.0.1/***" in caplog.text  # where it pointed, masked ...
    assert TOKEN not in caplog.text  # ... never its path


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_timeout(receivers) -> None:
    hook = receivers()
    hook.default = Reply(trickle_s=0.1)  # ~40 bytes of answer: 4 s at this pace; each read well within 1 s
    notifier = WebhookNotifier(hook.url, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(DeliveryError) as raised:
        notifier(note())
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.0
    assert raised.value.retryable


def test_a_trickling_receiver_does_not_hold_the_queue_behind_it(receivers) -> None:
    hook = receivers()
    hook.script.append(Reply(trickle_s=0.2))
    dispatcher = Dispatcher(retry=RetryPolicy(deadline_s=0.5, backoff_base_s=0.01, backoff_max_s=0.02))
    try:
        dispatcher.add_route(WebhookNotifier(hook.url, timeout_s=0.5), group_wait_s=0)
        started = time.monotonic()
        dispatcher.on_evaluated(1_800_000_000.0, (alert("A"),))
        dispatcher.on_evaluated(1_800_000_000.0, (alert("B"),))
        assert dispatcher.flush(10.0)
        assert time.monotonic() - started < 3.0  # without a total deadline: ~9 s for A alone
    finally:
        dispatcher.shutdown(1.0)
    assert [r.json()["groupLabels"]["alertname"] for r in hook.requests if r.answered == 200][-1] == "B"
    assert dispatcher.stats.snapshot()["webhook"]["sent"] >= 1


def test_the_user_part_of_a_url_is_sent_as_basic_auth(receivers) -> None:
    hook = receivers()
    port = hook.url.rsplit(":", 1)[1]
    WebhookNotifier(f"http://bot:{TOKEN}@127.0.0.1:{port}/hook")(note())
    (request,) = hook.wait_for(1)
    assert request.path == "/hook"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"bot:{TOKEN}".encode()).decode()


def test_a_url_with_a_token_in_the_user_part_never_shows_it(caplog) -> None:
    dispatcher = Dispatcher(retry=ONE_TRY)
    try:
        # No port: urllib took "bot:TOKEN@127.0.0.1" for host:port and logged "nonnumeric port: 'TOKEN@127.0.0.1'"
        dispatcher.add_route(WebhookNotifier(f"http://bot:{TOKEN}@127.0.0.1/hook"), group_wait_s=0)
        with caplog.at_level(logging.DEBUG):
            dispatcher.on_evaluated(1_800_000_000.0, (alert(),))
            assert dispatcher.flush(5.0)
    finally:
        dispatcher.shutdown(1.0)
    assert dispatcher.stats.snapshot()["webhook"]["failed"] == 1
    assert "127.0.0.1" in caplog.text
    assert TOKEN not in caplog.text


BAD_URLS = [
    "notaurl",
    f"https://hooks.slack.com/services/T0/B0/{TOKEN}\tx",
    f"https://hooks.slack.com/services/T0/B0/{TOKEN}\x00",
    f"https://hooks.slack.com/services/T0/B0/{TOKEN}\x7f",
    f"https://hooks.slack.com/services/T0/B0/{TOKEN} x",
    f"https://hooks.slack.com/services/T0/B0/{TOKEN}\u00e9",
    f"https://user:{TOKEN}@hooks.slack.com:port/services",
    f"ftp://hooks.slack.com/{TOKEN}",
    f"https:///{TOKEN}",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_url_is_refused_by_every_notifier_without_showing_it(url) -> None:
    for build in (SlackNotifier, WebhookNotifier, AlertmanagerForwarder):
        with pytest.raises(ValueError, match="url") as raised:
            build(url)
        assert TOKEN not in str(raised.value)


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_slack_url_fails_at_configuration_naming_the_variable(url) -> None:
    with pytest.raises(ConfigurationError) as raised:
        get_monitoring_config("test", env={"ALERT_SLACK_WEBHOOK_URL": url})
    assert "ALERT_SLACK_WEBHOOK_URL" in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_a_bad_slack_url_given_in_code_fails_too() -> None:
    with pytest.raises(ConfigurationError) as raised:
        get_monitoring_config("test", env={}).replace(alert_slack_webhook_url=f"https://h.example/{TOKEN} x")
    assert "alert_slack_webhook_url" in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_an_http_proxy_from_the_environment_carries_the_request(receivers, monkeypatch) -> None:
    proxy = receivers()
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "")
    WebhookNotifier("http://hooks.example.com/hook?token=1")(note())
    (request,) = proxy.wait_for(1)
    assert request.path == "http://hooks.example.com:80/hook?token=1"  # the absolute form a forward proxy takes
