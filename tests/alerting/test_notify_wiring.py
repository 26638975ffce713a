"""The AlertManager sends through its dispatcher: evaluate(now=t) dispatches what is due at t."""

from __future__ import annotations

import time
from typing import Any

import pytest
from notify_peers import receivers_fixture  # noqa: F401  (the `receivers` fixture)

from chat_turbo_metrics.alerting import AlertManager, Dispatcher, Notification


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Inbox:
    def __init__(self, clock: Clock, start: float) -> None:
        self.clock, self.start = clock, start
        self.got: list[tuple[float, str, str]] = []

    def __call__(self, notification: Notification) -> None:
        self.got.append((self.clock.now - self.start, notification.status, notification.title))


@pytest.fixture
def setup(monitor_factory) -> Any:
    monitor = monitor_factory()
    start = float(int(time.time()))
    clock = Clock(start)
    manager = AlertManager(monitor, clock=clock, evaluation_interval_s=15)
    manager.add_rule({"id": "cpu", "name": "HighCPU", "metric": "cpu_usage_percent", "condition": "gt",
                      "threshold": 90, "duration": 60, "severity": "warning"})  # fmt: skip
    inbox = Inbox(clock, start)
    yield monitor, manager, clock, inbox, start
    manager.dispatcher.shutdown(5.0)


def run(manager: AlertManager, clock: Clock, start: float, until: float, every: float = 15) -> None:
    while clock.now - start < until:
        manager.evaluate(now=clock.now)
        assert manager.flush(5.0)
        clock.now += every


def test_evaluate_sends_firing_after_group_wait_and_resolved_at_the_next_interval(setup) -> None:
    monitor, manager, clock, inbox, start = setup
    manager.add_route(inbox)
    monitor.record_gauge("cpu_usage_percent", 97.0, {"host": "a"})
    run(manager, clock, start, 300)
    monitor.record_gauge("cpu_usage_percent", 10.0, {"host": "a"})
    run(manager, clock, start, 900)
    # pending at 0, firing at 60 (duration 60), sent after group_wait at 90; resolved at 300, sent at 390
    assert inbox.got == [
        (90, "firing", "[FIRING:1] HighCPU (a warning)"),
        (390, "resolved", "[RESOLVED] HighCPU (a warning)"),
    ]
    # the manager's own dispatcher counts into the monitor's pipeline
    assert 'alert_notifications_total{notifier="Inbox",outcome="sent"} 2' in monitor.snapshot().to_prometheus()


def test_silenced_alerts_are_not_sent_and_acknowledged_ones_not_repeated(setup) -> None:
    monitor, manager, clock, inbox, start = setup
    manager.add_route(inbox, repeat_interval_s=600)
    manager.silence({"host": "a"}, until=start + 200)
    monitor.record_gauge("cpu_usage_percent", 97.0, {"host": "a"})
    run(manager, clock, start, 400)
    assert [at for at, _, _ in inbox.got] == [390]  # silenced at the flush at 90; the next one is at 390
    (firing,) = [alert for alert in manager.alerts() if alert.state == "firing"]
    assert manager.acknowledge(firing)
    run(manager, clock, start, 3000)
    assert [at for at, _, _ in inbox.got] == [390]  # unacknowledged, it would repeat at 990, 1590, ...


def test_removing_a_rule_sends_its_resolution_at_the_next_evaluation(setup) -> None:
    monitor, manager, clock, inbox, start = setup
    manager.add_route(inbox, group_interval_s=60)
    monitor.record_gauge("cpu_usage_percent", 97.0, {"host": "a"})
    run(manager, clock, start, 150)
    manager.remove_rule("cpu")
    run(manager, clock, start, 300)
    assert [(at, status) for at, status, _ in inbox.got] == [(90, "firing"), (150, "resolved")]


def test_a_given_dispatcher_keeps_its_notification_log_across_managers(monitor_factory, tmp_path) -> None:
    log = tmp_path / "nflog.json"
    start = float(int(time.time()))
    clock = Clock(start)
    sent: list[float] = []
    for restart in (0, 1):
        monitor = monitor_factory()
        dispatcher = Dispatcher(clock=clock, notification_log=log)
        manager = AlertManager(monitor, clock=clock, evaluation_interval_s=15, dispatcher=dispatcher)
        manager.add_rule({"id": "cpu", "name": "HighCPU", "metric": "cpu_usage_percent", "condition": "gt",
                          "threshold": 90, "severity": "warning"})  # fmt: skip
        manager.add_route(lambda n: sent.append(clock.now - start), name="ops")
        monitor.record_gauge("cpu_usage_percent", 97.0, {"host": "a"})
        run(manager, clock, start, 300 * (restart + 1))
        assert dispatcher.shutdown(5.0)
    assert sent == [30]  # the restarted manager's alert fired again, and was not resent


def test_alert_slack_webhook_url_alone_sends_alerts_to_slack(monitor_factory, receivers) -> None:
    """The seed's promise: set ALERT_SLACK_WEBHOOK_URL and alerts reach Slack."""
    from chat_turbo_metrics import Secret

    hook = receivers()
    monitor = monitor_factory(alert_slack_webhook_url=Secret(hook.url + "/services/T0/B0/token"))
    start = float(int(time.time()))
    clock = Clock(start)
    manager = AlertManager(monitor, clock=clock, evaluation_interval_s=15)
    manager.add_rule({"id": "cpu", "name": "HighCPU", "metric": "cpu_usage_percent", "condition": "gt",
                      "threshold": 90, "severity": "critical"})  # fmt: skip
    monitor.record_gauge("cpu_usage_percent", 97.0, {"host": "a"})
    try:
        run(manager, clock, start, 60)
        (request,) = hook.wait_for(1)
        assert request.path == "/services/T0/B0/token"
        assert request.json()["attachments"][0]["title"] == "[FIRING:1] HighCPU (a critical)"
    finally:
        manager.dispatcher.shutdown(5.0)


def test_email_enabled_without_a_server_fails_when_the_manager_is_made(monitor_factory) -> None:
    from chat_turbo_metrics import ConfigurationError

    monitor = monitor_factory(alert_email_enabled=True, alert_email_from="a@x", alert_email_to=("b@x",))
    with pytest.raises(ConfigurationError, match="ALERT_EMAIL_HOST"):
        AlertManager(monitor)


def test_background_evaluation_delivers_to_a_webhook_off_the_application_thread(monitor_factory, receivers) -> None:
    import threading

    from chat_turbo_metrics.alerting import WebhookNotifier

    hook = receivers()
    monitor = monitor_factory(export_interval_s=0.05)
    manager = AlertManager(monitor, evaluation_interval_s=0.05)
    manager.add_rule({"id": "mem", "name": "HighMemory", "metric": "memory_usage_mb", "condition": "gt",
                      "threshold": 500, "severity": "warning"})  # fmt: skip
    called_on: list[str] = []
    manager.add_route(lambda n: called_on.append(threading.current_thread().name), group_wait_s=0, name="spy")
    manager.add_route(WebhookNotifier(hook.url), group_wait_s=0)
    monitor.record_gauge("memory_usage_mb", 512)
    manager.start()
    try:
        (request,) = hook.wait_for(1, timeout_s=20)
        assert request.json()["commonLabels"]["alertname"] == "HighMemory"
        assert manager.flush(5.0)
        assert called_on == ["alert-notify-spy"]  # a delivery worker, not the application nor the evaluator
    finally:
        manager.stop()
        manager.dispatcher.shutdown(5.0)


def test_delivery_outcomes_are_metrics_of_the_monitors_pipeline(monitor_factory) -> None:
    from chat_turbo_metrics.alerting import RetryPolicy

    monitor = monitor_factory()
    start = float(int(time.time()))
    clock = Clock(start)
    retry = RetryPolicy(deadline_s=0.2, backoff_base_s=0.01, backoff_max_s=0.02)
    dispatcher = Dispatcher(clock=clock, retry=retry, meter_provider=monitor.pipeline.meter_provider)
    manager = AlertManager(monitor, clock=clock, evaluation_interval_s=15, dispatcher=dispatcher)
    manager.add_rule({"id": "cpu", "name": "HighCPU", "metric": "cpu_usage_percent", "condition": "gt",
                      "threshold": 90, "severity": "warning"})  # fmt: skip

    def broken(notification: Notification) -> None:
        raise RuntimeError("down")

    manager.add_route(lambda n: None, name="ops")
    manager.add_route(broken, name="pager")
    monitor.record_gauge("cpu_usage_percent", 97.0, {"host": "a"})
    try:
        run(manager, clock, start, 120)
        text = monitor.snapshot().to_prometheus()
        assert 'alert_notifications_total{notifier="ops",outcome="sent"} 1' in text
        assert 'alert_notifications_total{notifier="pager",outcome="failed"} 1' in text
        assert 'alert_notification_retries_total{notifier="pager"}' in text
    finally:
        dispatcher.shutdown(5.0)


def test_a_route_added_through_the_manager_is_grouped_and_throttled_as_the_dispatchers_default(
    monitor_factory: Any,
) -> None:
    manager = AlertManager(monitor_factory())
    dispatcher = Dispatcher()
    try:
        via_manager = manager.add_route(lambda notification: None)
        via_dispatcher = dispatcher.add_route(lambda notification: None)
        settings = ("group_by", "group_wait_s", "group_interval_s", "repeat_interval_s", "send_resolved")
        assert [getattr(via_manager, s) for s in settings] == [getattr(via_dispatcher, s) for s in settings]
        assert (via_dispatcher.group_by, via_dispatcher.group_wait_s) == (("alertname",), 30.0)  # Alertmanager's
    finally:
        dispatcher.shutdown(1.0)
        manager.dispatcher.shutdown(1.0)
