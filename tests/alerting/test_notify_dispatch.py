"""Dispatch scenarios on an injected clock: grouping, throttling, deduplication, inhibition, silences, acks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from notify_peers import Clock, FlappingSource, alert

from chat_turbo_metrics.alerting import Alert, Dispatcher, Notification

T0 = 1_800_000_000.0
# Real Alertmanager 0.25 webhook captures, kept beside the tests so they need nothing outside the repository.
REFERENCE = Path(__file__).parent / "data" / "alertmanager-0.25-webhook-payload.json"


class Recorder:
    """A custom handler that remembers each notification with the clock time it was dispatched at."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, Notification]] = []

    def __call__(self, notification: Notification) -> None:
        self.sent.append((self.clock.now - T0, notification))

    @property
    def titles(self) -> list[str]:
        return [notification.title for _, notification in self.sent]


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def make_dispatcher(clock: Clock) -> Iterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []

    def make(**options: object) -> Dispatcher:
        dispatcher = Dispatcher(clock=clock, **options)  # type: ignore[arg-type]
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.shutdown(5.0)


def step(dispatcher: Dispatcher, clock: Clock, offset: float, alerts: tuple[Alert, ...]) -> None:
    """One evaluation at T0 + offset, then wait for its deliveries (the clock stands still meanwhile)."""
    clock.now = T0 + offset
    dispatcher.on_evaluated(clock.now, alerts)
    assert dispatcher.flush(5.0)


def test_first_message_waits_for_group_wait_and_gathers_the_group(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_wait_s=30)
    web1 = alert(instance="web-1", at=T0)
    web2 = alert(instance="web-2", at=T0 + 10)
    step(dispatcher, clock, 0, (web1,))
    step(dispatcher, clock, 10, (web1, web2))
    step(dispatcher, clock, 29, (web1, web2))
    assert recorder.sent == []
    step(dispatcher, clock, 30, (web1, web2))
    assert [(at, len(n.alerts)) for at, n in recorder.sent] == [(30, 2)]
    assert recorder.titles == ["[FIRING:2] HighCPU (warning)"]


def test_fifty_alerts_make_one_message(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder)
    alerts = tuple(alert(instance=f"web-{i}", at=T0) for i in range(50))
    for offset in range(0, 3600, 15):
        step(dispatcher, clock, offset, alerts)
    assert len(recorder.sent) == 1
    notification = recorder.sent[0][1]
    assert len(notification.alerts) == 50
    assert {a.labels["instance"] for a in notification.alerts} == {f"web-{i}" for i in range(50)}
    assert notification.title.startswith("[FIRING:50] HighCPU")


def test_group_by_splits_groups_and_routes_select_by_severity(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    pager, chat = Recorder(clock), Recorder(clock)
    dispatcher.add_route(pager, matchers={"severity": "critical"}, group_by=("alertname", "service"))
    dispatcher.add_route(chat, matchers=['severity=~"warning|critical"'], group_by=("alertname", "service"))
    alerts = (
        alert("DBDown", severity="critical", service="db"),
        alert("HighCPU", service="api"),
        alert("HighCPU", service="web"),
    )
    step(dispatcher, clock, 0, alerts)
    step(dispatcher, clock, 30, alerts)
    assert pager.titles == ["[FIRING:1] DBDown db (critical)"]
    assert sorted(chat.titles) == [
        "[FIRING:1] DBDown db (critical)",
        "[FIRING:1] HighCPU api (warning)",
        "[FIRING:1] HighCPU web (warning)",
    ]


def test_unchanged_group_is_repeated_only_after_repeat_interval(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_wait_s=30, group_interval_s=300, repeat_interval_s=14400)
    firing = (alert(at=T0),)
    for offset in range(0, 5 * 3600, 30):
        step(dispatcher, clock, offset, firing)
    # flushes at 30 + 300k; the first one at least 4 h after the first message repeats it
    assert [at for at, _ in recorder.sent] == [30, 14430]


def test_new_alert_in_a_notified_group_waits_for_group_interval(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_wait_s=30, group_interval_s=300)
    web1, web2 = alert(instance="web-1", at=T0), alert(instance="web-2", at=T0 + 100)
    for offset in range(0, 100, 10):
        step(dispatcher, clock, offset, (web1,))
    for offset in range(100, 700, 10):
        step(dispatcher, clock, offset, (web1, web2))
    assert [(at, len(n.firing)) for at, n in recorder.sent] == [(30, 1), (330, 2)]


@pytest.mark.parametrize(("send_resolved", "expected"), [(True, ["firing", "resolved"]), (False, ["firing"])])
def test_resolved_notifications_follow_send_resolved(make_dispatcher, clock, send_resolved, expected) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, send_resolved=send_resolved)
    firing = alert(at=T0)
    for offset in range(0, 120, 10):
        step(dispatcher, clock, offset, (firing,))
    step(dispatcher, clock, 120, (dataclasses.replace(firing, state="resolved", resolved_at=T0 + 120),))
    for offset in range(130, 1200, 10):
        step(dispatcher, clock, offset, ())
    assert [n.status for _, n in recorder.sent] == expected
    if send_resolved:
        resolved = recorder.sent[1][1]
        assert (recorder.sent[1][0], resolved.alerts[0].ends_at) == (330, T0 + 120)


def test_flapping_alert_under_throttling_sends_twenty_messages_for_sixty_transitions(make_dispatcher, clock) -> None:
    """True 60 s, false 60 s for an hour, evaluated every 15 s; defaults (30 s / 5 min / 4 h)."""
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder)
    source = FlappingSource(T0, on_s=60, off_s=60)
    for offset in range(0, 3600, 15):
        step(dispatcher, clock, offset, source.at(T0 + offset))
    assert source.transitions == 60
    # A group lives from its first firing to the resolved message one group_interval later, then a new one
    # starts at the next firing: firing at 30 + 360k, resolved at 330 + 360k.
    expected = [(30 + 360 * k, "firing") for k in range(10)] + [(330 + 360 * k, "resolved") for k in range(10)]
    assert sorted((at, n.status) for at, n in recorder.sent) == sorted(expected)


def test_same_alert_is_not_resent_when_rules_reload_and_it_restarts_as_pending(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder)
    firing = alert(at=T0)
    for offset in range(0, 600, 15):
        step(dispatcher, clock, offset, (firing,))
    reloaded = dataclasses.replace(alert(at=T0 + 600), rule_id="reloaded-id")
    for offset in range(600, 660, 15):  # the reloaded rule is pending for a minute ...
        step(dispatcher, clock, offset, (dataclasses.replace(reloaded, state="pending", fired_at=None),))
    for offset in range(660, 3600, 15):  # ... then fires again, as a new object with the same labels
        step(dispatcher, clock, offset, (reloaded,))
    assert [(at, n.status) for at, n in recorder.sent] == [(30, "firing")]


def test_firing_alert_that_stops_being_reported_resolves_after_resolve_timeout(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher(resolve_timeout_s=300)
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_interval_s=60)
    firing = alert(at=T0)
    for offset in range(0, 100, 10):
        step(dispatcher, clock, offset, (firing,))
    for offset in range(100, 800, 10):  # its rule was removed: no more reports
        step(dispatcher, clock, offset, ())
    assert [(at, n.status) for at, n in recorder.sent] == [(30, "firing"), (390, "resolved")]  # last seen at 90, + 300
    assert recorder.sent[1][1].alerts[0].ends_at == T0 + 90  # when it was last seen firing


def test_inhibition_mutes_warnings_while_a_critical_alert_fires_on_the_same_service(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_by=("alertname", "service"), group_interval_s=60)
    dispatcher.add_inhibition({"severity": "critical"}, {"severity": "warning"}, equal=("service",))
    db_down = alert("DBDown", severity="critical", service="db")
    db_slow = alert("DBSlow", service="db")
    api_slow = alert("APISlow", service="api")
    for offset in range(0, 300, 10):
        step(dispatcher, clock, offset, (db_down, db_slow, api_slow))
    assert sorted(recorder.titles) == ["[FIRING:1] APISlow api (warning)", "[FIRING:1] DBDown db (critical)"]
    recorder.sent.clear()
    step(dispatcher, clock, 300, (dataclasses.replace(db_down, state="resolved", resolved_at=T0 + 300), db_slow))
    for offset in range(310, 600, 10):  # once the source resolves, the target is news
        step(dispatcher, clock, offset, (db_slow, api_slow))
    assert sorted(recorder.titles) == ["[FIRING:1] DBSlow db (warning)", "[RESOLVED] DBDown db (critical)"]


def test_silenced_alert_is_not_sent_until_the_silence_ends(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_interval_s=60)
    firing = alert(at=T0)
    silenced = dataclasses.replace(firing, silenced=True)
    for offset in range(0, 600, 10):
        step(dispatcher, clock, offset, (silenced,))
    assert recorder.sent == []
    for offset in range(600, 700, 10):
        step(dispatcher, clock, offset, (firing,))
    assert [(at, n.status) for at, n in recorder.sent] == [(630, "firing")]


def test_acknowledged_alert_is_not_repeated_but_its_resolution_is_sent(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_interval_s=60, repeat_interval_s=600)
    firing = alert(at=T0)
    acked = dataclasses.replace(firing, acknowledged=True)
    for offset in range(0, 100, 10):
        step(dispatcher, clock, offset, (firing,))
    for offset in range(100, 3000, 10):
        step(dispatcher, clock, offset, (acked,))
    step(dispatcher, clock, 3000, (dataclasses.replace(acked, state="resolved", resolved_at=T0 + 3000),))
    for offset in range(3010, 3200, 10):
        step(dispatcher, clock, offset, ())
    assert [(at, n.status) for at, n in recorder.sent] == [(30, "firing"), (3030, "resolved")]


def test_unacknowledged_alert_is_repeated_every_repeat_interval(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_interval_s=60, repeat_interval_s=600)
    for offset in range(0, 3000, 10):
        step(dispatcher, clock, offset, (alert(at=T0),))
    assert [at for at, _ in recorder.sent] == [30, 630, 1230, 1830, 2430]


def test_restart_with_a_notification_log_does_not_resend_within_repeat_interval(
    make_dispatcher, clock, tmp_path
) -> None:
    log = tmp_path / "nflog.json"
    firing = alert(at=T0)
    first = make_dispatcher(notification_log=log)
    before = Recorder(clock)
    first.add_route(before, name="ops")
    for offset in range(0, 120, 10):
        step(first, clock, offset, (firing,))
    assert first.shutdown(5.0)
    assert [at for at, _ in before.sent] == [30]

    second = make_dispatcher(notification_log=log)  # the restarted process, same alerts still firing
    after = Recorder(clock)
    second.add_route(after, name="ops")
    for offset in range(600, 14400, 30):
        step(second, clock, offset, (firing,))
    assert after.sent == []
    for offset in range(14400, 15000, 30):
        step(second, clock, offset, (firing,))
    # 4 h after the message sent before the restart, at the new group's next flush (600 + 300k)
    assert [at for at, _ in after.sent] == [14700]


def test_restart_without_a_notification_log_resends(make_dispatcher, clock) -> None:
    firing = alert(at=T0)
    for start in (0, 600):
        dispatcher = make_dispatcher()
        recorder = Recorder(clock)
        dispatcher.add_route(recorder, name="ops")
        for offset in range(start, start + 120, 10):
            step(dispatcher, clock, offset, (firing,))
        # the restarted one sends at once: the alert is older than group_wait
        assert [at for at, _ in recorder.sent] == [start + 30 if start == 0 else start]
        dispatcher.shutdown(5.0)


def test_replays_the_captured_alertmanager_scenario(make_dispatcher, clock) -> None:
    """The reference capture's timeline through our dispatcher gives the same messages, payload for payload."""
    reference = json.loads(REFERENCE.read_text())
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(
        recorder,
        group_by=("alertname", "service"),
        group_wait_s=2,
        group_interval_s=6,
        repeat_interval_s=3600,
        name="hook",
    )
    dispatcher.add_inhibition(['severity="critical"'], ['severity="warning"'], equal=["service"])

    def make(name: str, instance: str, service: str, severity: str) -> Alert:
        base = alert(name, at=T0, instance=instance, service=service, severity=severity)
        return dataclasses.replace(base, annotations={"summary": f"{name} on {instance}"})

    web1, web2 = make("HighCPU", "web-1", "api", "warning"), make("HighCPU", "web-2", "api", "warning")
    db_down, db_slow = make("DBDown", "db-1", "db", "critical"), make("DBSlow", "db-2", "db", "warning")
    for offset in range(25):
        current = [db_down, db_slow]
        if offset < 10:
            current.append(web1)
        elif offset == 10:
            current.append(dataclasses.replace(web1, state="resolved", resolved_at=T0 + 10))
        if offset < 16:
            current.append(web2)
        elif offset == 16:
            current.append(dataclasses.replace(web2, state="resolved", resolved_at=T0 + 16))
        step(dispatcher, clock, offset, tuple(current))

    def comparable(body: dict) -> dict:
        alerts = [{k: a[k] for k in ("status", "labels", "annotations")} for a in body["alerts"]]
        keep = ("receiver", "status", "groupLabels", "commonLabels", "commonAnnotations", "version", "groupKey")
        return {"alerts": alerts, **{k: body[k] for k in keep}, "keys": sorted(body)}

    ours = [(at, comparable(n.to_webhook_payload())) for at, n in recorder.sent]
    theirs = [(r["t_rel_s"], comparable(r["body"])) for r in reference["requests"]]
    key = lambda item: (item[0], item[1]["groupKey"])  # noqa: E731
    assert sorted(ours, key=key) == sorted(theirs, key=key)


def test_alert_resolved_between_evaluations_is_sent_at_the_next_one(make_dispatcher, clock) -> None:
    """A rule removed (or an alert resolved by hand) resolves outside an evaluation; listeners hear it."""
    from chat_turbo_metrics.alerting import AlertTransition

    dispatcher = make_dispatcher(resolve_timeout_s=3600)
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_interval_s=60)
    firing = alert(at=T0)
    for offset in range(0, 100, 10):
        step(dispatcher, clock, offset, (firing,))
    ended = dataclasses.replace(firing, state="resolved", resolved_at=T0 + 95)
    dispatcher.on_transition(AlertTransition(ended, "firing", "resolved", T0 + 95))
    for offset in range(100, 300, 10):
        step(dispatcher, clock, offset, ())
    assert [(at, n.status) for at, n in recorder.sent] == [(30, "firing"), (150, "resolved")]
    assert recorder.sent[1][1].alerts[0].ends_at == T0 + 95


def test_a_corrupt_notification_log_costs_a_repeat_not_a_message(make_dispatcher, clock, tmp_path) -> None:
    log = tmp_path / "nflog.json"
    log.write_bytes(b"\x00\xff garbage")
    dispatcher = make_dispatcher(notification_log=log)
    recorder = Recorder(clock)
    dispatcher.add_route(recorder)
    for offset in range(0, 60, 10):
        step(dispatcher, clock, offset, (alert(at=T0),))
    assert [at for at, _ in recorder.sent] == [30]
    assert json.loads(log.read_text())["entries"][0]["receiver"] == "Recorder"


def test_concurrent_evaluations_send_each_group_once(make_dispatcher, clock) -> None:
    import threading

    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_wait_s=0, group_by=("alertname", "instance"))
    alerts = tuple(alert(instance=f"web-{i}", at=T0) for i in range(20))
    start = threading.Barrier(4)

    def evaluate() -> None:
        start.wait()
        for _ in range(50):
            dispatcher.on_evaluated(T0, alerts)

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert dispatcher.flush(5.0)
    assert sorted(n.group_labels["instance"] for _, n in recorder.sent) == sorted(f"web-{i}" for i in range(20))


def test_group_by_every_label_sends_one_message_per_alert(make_dispatcher, clock) -> None:
    dispatcher = make_dispatcher()
    recorder = Recorder(clock)
    dispatcher.add_route(recorder, group_by=("...",), group_wait_s=0)
    one = alert(instance="web-1", at=T0)
    same_labels_other_order = dataclasses.replace(one, labels=dict(reversed(list(one.labels.items()))))
    step(dispatcher, clock, 0, (one, alert(instance="web-2", at=T0)))
    step(dispatcher, clock, 15, (same_labels_other_order, alert(instance="web-2", at=T0)))
    assert sorted(n.title for _, n in recorder.sent) == [
        "[FIRING:1] HighCPU web-1 warning",
        "[FIRING:1] HighCPU web-2 warning",
    ]


def test_a_wall_clock_step_back_does_not_delay_a_resolution(clock) -> None:
    """Evaluations pass wall-clock times; one hour back must not hold the group's next flush for an hour."""
    monotonic = Clock(0.0)
    dispatcher = Dispatcher(clock=clock, monotonic=monotonic)
    recorder = Recorder(clock)
    try:
        dispatcher.add_route(recorder, group_wait_s=0, group_interval_s=300)
        firing = alert(at=T0)
        step(dispatcher, clock, 0, (firing,))
        for minute in range(1, 4):  # the clock steps back one hour after three minutes
            monotonic.now = 60.0 * minute
            step(dispatcher, clock, 60 * minute - (3600 if minute == 3 else 0), (firing,))
        for minute in range(4, 7):  # the condition clears; wall times go on from the stepped clock
            monotonic.now = 60.0 * minute
            resolved = dataclasses.replace(firing, state="resolved", resolved_at=clock.now)
            step(dispatcher, clock, 60 * minute - 3600, (resolved,) if minute == 4 else ())
    finally:
        dispatcher.shutdown(5.0)
    assert recorder.titles == ["[FIRING:1] HighCPU (warning)", "[RESOLVED] HighCPU (warning)"]
    assert recorder.sent[1][0] == 300 - 3600  # 5 minutes after the first message, as it really elapsed
