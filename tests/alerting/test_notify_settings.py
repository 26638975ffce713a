"""Settings of dispatch and notifiers: bad values fail when configured, naming the setting; matchers' semantics."""

from __future__ import annotations

import json
import logging

import pytest
from notify_peers import alert

from chat_turbo_metrics import Secret
from chat_turbo_metrics.alerting import (
    Dispatcher,
    EmailNotifier,
    Matcher,
    Notification,
    RetryPolicy,
    SlackNotifier,
    WebhookNotifier,
)
from chat_turbo_metrics.alerting._nflog import LogEntry, NotificationLog


@pytest.fixture
def dispatcher():
    made = Dispatcher()
    yield made
    made.shutdown(1.0)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"group_wait_s": -1}, "group_wait_s"),
        ({"group_interval_s": 0}, "group_interval_s"),
        ({"repeat_interval_s": float("nan")}, "repeat_interval_s"),
        ({"group_by": "alertname"}, "group_by"),
        ({"matchers": ['severity~"x"']}, "matchers"),
        ({"matchers": ['severity=~"(unclosed"']}, "matchers"),
    ],
)
def test_bad_route_settings_are_named(dispatcher, options, named) -> None:
    with pytest.raises(ValueError, match=named):
        dispatcher.add_route(print, **options)


def test_route_names_are_unique_and_an_explicit_duplicate_is_an_error(dispatcher) -> None:
    first, second = dispatcher.add_route(print), dispatcher.add_route(print)
    assert (first.name, second.name) == ("print", "print-2")
    dispatcher.add_route(print, name="ops")
    with pytest.raises(ValueError, match="'ops'"):
        dispatcher.add_route(print, name="ops")


def test_a_notifier_must_be_callable(dispatcher) -> None:
    with pytest.raises(ValueError, match="notifier"):
        dispatcher.add_route("https://hooks.slack.com/x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"queue_size": 0}, "queue_size"),
        ({"resolve_timeout_s": 0}, "resolve_timeout_s"),
        ({"resolve_timeout_s": float("nan")}, "resolve_timeout_s"),
    ],
)
def test_bad_dispatcher_settings_are_named(options, named) -> None:
    with pytest.raises(ValueError, match=named):
        Dispatcher(**options)


def test_bad_retry_policy_is_named() -> None:
    with pytest.raises(ValueError, match="deadline_s"):
        RetryPolicy(deadline_s=0)


def test_bad_inhibition_matcher_is_named(dispatcher) -> None:
    with pytest.raises(ValueError, match="target_matchers"):
        dispatcher.add_inhibition({"severity": "critical"}, ["=critical"])


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: SlackNotifier("hooks.slack.com/services/T0/B0/secret-token"), "webhook_url"),
        (lambda: WebhookNotifier("ftp://example.com/secret-token"), "url"),
        (lambda: EmailNotifier("smtp.example.com", 587, "a@x", []), "recipients"),
        (lambda: EmailNotifier("smtp.example.com", 587, "a@x", ["b@x"], tls="ssl"), "tls"),  # type: ignore[arg-type]
        (lambda: EmailNotifier("smtp.example.com", 587, "a@x", ["b@x"], password="secret-token"), "username"),
    ],
)
def test_bad_notifier_settings_fail_without_showing_secrets(build, named) -> None:
    with pytest.raises(ValueError, match=named) as caught:
        build()
    assert "secret-token" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ('severity="critical"', {"severity": "critical"}, True),
        ('severity=~"crit"', {"severity": "critical"}, False),  # anchored, as in Alertmanager
        ('severity=~"crit.*|high"', {"severity": "high"}, True),
        ('severity!~"warn.*"', {"severity": "warning"}, False),
        ('service!="db"', {}, True),  # a missing label is the empty string
        ('service=""', {}, True),
        ("team=ops", {"team": "ops"}, True),
        (r'summary="say \"hi\""', {"summary": 'say "hi"'}, True),
    ],
)
def test_matchers_follow_alertmanager(text, labels, expected) -> None:
    assert Matcher.parse(text).matches(labels) is expected


def test_notification_log_ignores_a_corrupt_file_and_rewrites_it(tmp_path, caplog) -> None:
    path = tmp_path / "nflog.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        log = NotificationLog(path)
    assert "nflog.json" in caplog.text
    log.set(("ops", "{}:{}"), LogEntry(frozenset({"a"}), frozenset(), at=100.0))
    log.save(100.0)
    assert NotificationLog(path).get(("ops", "{}:{}")) == LogEntry(frozenset({"a"}), frozenset(), 100.0)


def test_notification_log_forgets_entries_past_retention(tmp_path) -> None:
    path = tmp_path / "nflog.json"
    log = NotificationLog(path, retention_s=3600)
    log.set(("ops", "old"), LogEntry(frozenset({"a"}), frozenset(), at=0.0))
    log.set(("ops", "new"), LogEntry(frozenset({"b"}), frozenset(), at=5000.0))
    log.save(5000.0)
    assert [row["group"] for row in json.loads(path.read_text())["entries"]] == ["new"]
    assert log.get(("ops", "old")) is None


def test_truncated_webhook_payload_counts_what_it_left_out() -> None:
    alerts = [alert(instance=f"web-{i}") for i in range(5)]
    note = Notification.for_alerts("ops", alerts, {"alertname": "HighCPU"})
    payload = note.truncated(2).to_webhook_payload()
    assert (len(payload["alerts"]), payload["truncatedAlerts"]) == (2, 3)
    assert note.truncated(0) is note


def test_secret_urls_stay_masked_in_reprs() -> None:
    shown = repr(SlackNotifier(Secret("https://hooks.slack.com/services/T0/B0/secret-token")))
    shown += repr(WebhookNotifier("https://hooks.example.com/x?token=secret-token", secret="secret-token"))
    assert "secret-token" not in shown
