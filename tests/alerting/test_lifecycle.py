"""Lifecycle: acknowledge, silences, manual resolve, history, listeners, evaluation hooks, alerts_active."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from alerting_data import MetricSpec, metric_at, metrics_data

from chat_turbo_metrics.alerting import Alert, AlertManager, AlertTransition


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monitor(monitor_factory) -> Any:
    return monitor_factory()


@pytest.fixture
def manager(monitor, clock: Clock) -> AlertManager:
    manager = AlertManager(monitor, clock=clock, evaluation_interval_s=60)
    manager.add_rule({"id": "load", "name": "High Load", "metric": "load", "condition": "gt", "threshold": 5,
                      "duration": 60, "severity": "high"})  # fmt: skip
    manager.add_rule({"id": "disk", "name": "Disk", "metric": "disk", "condition": "gt", "threshold": 5,
                      "severity": "low"})  # fmt: skip
    return manager


def data(**values: float) -> Any:
    metrics = []
    for name, value in values.items():
        metric = metric_at(MetricSpec(name, "gauge", series={(("host", "a"),): [value]}), 0, 0)
        metrics.append(metric)
    return metrics_data(metrics)


def step(manager: AlertManager, clock: Clock, **values: float) -> tuple[Alert, ...]:
    alerts = manager.evaluate_data(data(**values), clock.now)
    clock.now += 60
    return alerts


def test_acknowledged_until_resolved_then_a_new_alert_starts_unacknowledged(manager, clock) -> None:
    step(manager, clock, load=9)
    (firing,) = step(manager, clock, load=9)
    assert manager.acknowledge(firing)
    (alert,) = step(manager, clock, load=9)
    assert (alert.state, alert.acknowledged) == ("firing", True)
    assert step(manager, clock, load=1) == ()
    resolved = manager.history(rule_id="load")[-1]
    assert (resolved.current, resolved.alert.acknowledged) == ("resolved", True)
    (again,) = step(manager, clock, load=9)
    assert (again.state, again.acknowledged) == ("pending", False)
    assert not manager.acknowledge("no-such-fingerprint")


def test_silence_marks_matching_alerts_while_active_and_evaluation_goes_on(manager, clock) -> None:
    transitions: list[AlertTransition] = []
    manager.add_listener(transitions.append)
    silence = manager.silence({"severity": "low"}, until=120)
    alerts = step(manager, clock, load=9, disk=9)  # t=0
    assert sorted((a.rule_id, a.silenced) for a in alerts) == [("disk", True), ("load", False)]
    assert [(t.alert.rule_id, t.current, t.alert.silenced) for t in transitions if t.alert.rule_id == "disk"] == [
        ("disk", "pending", True),
        ("disk", "firing", True),
    ]
    step(manager, clock, load=9, disk=9)  # t=60
    alerts = step(manager, clock, load=9, disk=9)  # t=120: the silence has ended
    assert sorted((a.rule_id, a.state, a.silenced) for a in alerts) == [
        ("disk", "firing", False),
        ("load", "firing", False),
    ]
    assert manager.silences() == ()
    assert silence.matchers == {"severity": "low"}


def test_expired_silence_unmarks_at_once(manager, clock) -> None:
    silence = manager.silence({"alertname": "High Load"}, until=10_000)
    (alert,) = step(manager, clock, load=9)
    assert alert.silenced
    manager.expire_silence(silence.id)
    assert [a.silenced for a in manager.alerts()] == [False]


def test_silence_needs_a_matcher_and_an_end_after_its_start(manager) -> None:
    with pytest.raises(ValueError, match="matcher"):
        manager.silence({}, until=100)
    with pytest.raises(ValueError, match="until"):
        manager.silence({"severity": "low"}, until=0)
    assert manager.silences() == ()


def test_manual_resolve_ends_the_alert_and_it_starts_over_if_still_true(manager, clock) -> None:
    step(manager, clock, load=9)
    (firing,) = step(manager, clock, load=9)
    clock.now = 130
    assert manager.resolve(firing.fingerprint)
    assert manager.alerts() == ()
    last = manager.history()[-1]
    assert (last.previous, last.current, last.at, last.alert.resolved_at) == ("firing", "resolved", 130, 130)
    clock.now = 180
    (again,) = step(manager, clock, load=9)
    assert (again.state, again.active_at) == ("pending", 180)
    assert manager.resolve(again)  # a pending alert is dropped, never "resolved": it never fired
    assert (manager.history()[-1].previous, manager.history()[-1].current) == ("pending", "inactive")
    assert not manager.resolve(again)


def test_history_is_bounded_and_queryable(monitor, clock) -> None:
    manager = AlertManager(monitor, clock=clock, history_size=3)
    manager.add_rule({"id": "load", "name": "Load", "metric": "load", "condition": "gt", "threshold": 5})
    for value in (9, 1, 9, 1):
        step(manager, clock, load=value)
    history = manager.history()
    assert [(t.current, t.at) for t in history] == [("pending", 120), ("firing", 120), ("resolved", 180)]
    assert [t.at for t in manager.history(since=150)] == [180]
    assert [t.current for t in manager.history(limit=1)] == ["resolved"]
    fp = history[0].alert.fingerprint
    assert len(manager.history(fingerprint=fp)) == 3
    assert manager.history(rule_id="other") == []


def test_a_raising_listener_is_logged_and_the_others_still_hear(manager, clock, caplog) -> None:
    heard: list[str] = []

    def broken(transition: AlertTransition) -> None:
        raise RuntimeError("listener bug")

    manager.add_listener(broken)
    manager.add_listener(lambda t: heard.append(t.current))
    with caplog.at_level(logging.ERROR, logger="chat_turbo_metrics.alerting"):
        step(manager, clock, load=9)
    assert heard == ["pending"]
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [RuntimeError]


def test_evaluation_hook_gets_every_current_alert_and_the_ones_that_just_resolved(manager, clock) -> None:
    calls: list[tuple[float, list[tuple[str, str]]]] = []
    manager.add_evaluation_hook(lambda now, alerts: calls.append((now, sorted((a.rule_id, a.state) for a in alerts))))
    step(manager, clock, load=9, disk=9)
    step(manager, clock, load=9, disk=1)
    step(manager, clock, load=1, disk=1)
    assert calls == [
        (0, [("disk", "firing"), ("load", "pending")]),
        (60, [("disk", "resolved"), ("load", "firing")]),
        (120, [("load", "resolved")]),
    ]


def alerts_active(monitor) -> dict[tuple[str, str, str], float]:
    return {
        (r["attributes"]["rule"], r["attributes"]["severity"], r["attributes"]["state"]): r["value"]
        for r in monitor.snapshot().records()
        if r["name"] == "alerts_active"
    }


def test_alerts_active_metric_counts_by_rule_severity_and_state(monitor, manager, clock) -> None:
    step(manager, clock, load=9, disk=9)
    assert alerts_active(monitor) == {
        ("load", "high", "pending"): 1,
        ("load", "high", "firing"): 0,
        ("disk", "low", "pending"): 0,
        ("disk", "low", "firing"): 1,
    }
    step(manager, clock, load=9, disk=1)
    assert alerts_active(monitor)[("load", "high", "firing")] == 1
    assert alerts_active(monitor)[("disk", "low", "firing")] == 0
    assert "alerts_active" in monitor.snapshot().to_prometheus()


def test_a_listener_may_resolve_and_remove_rules_from_inside_an_evaluation(manager, clock) -> None:
    def on_firing(transition: AlertTransition) -> None:
        if transition.current == "firing" and transition.alert.rule_id == "disk":
            manager.resolve(transition.alert)
            manager.remove_rule("load")

    manager.add_listener(on_firing)
    step(manager, clock, load=9, disk=9)
    assert [r.id for r in manager.rules()] == ["disk"]
    assert manager.alerts() == ()
    assert [(t.alert.rule_id, t.current) for t in manager.history()][-2:] == [
        ("disk", "resolved"),
        ("load", "inactive"),
    ]


def test_two_managers_on_one_pipeline_share_one_alerts_active_gauge(monitor, manager, clock) -> None:
    other = AlertManager(monitor, clock=clock)
    other.add_rule({"id": "load", "name": "Load again", "metric": "load", "condition": "gt", "threshold": 1,
                    "severity": "high"})  # fmt: skip
    data_now = data(load=9)
    manager.evaluate_data(data_now, 0)
    other.evaluate_data(data_now, 0)
    active = alerts_active(monitor)
    assert active[("load", "high", "pending")] == 1  # the first manager's, still pending (duration 60)
    assert active[("load", "high", "firing")] == 1  # the second manager's rule with the same id fires at once
