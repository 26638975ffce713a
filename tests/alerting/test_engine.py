"""Prometheus's alerting state machine, table-driven, with time given to every evaluation (no sleeps)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from alerting_data import MetricSpec, data_at, metric_at, metrics_data

from chat_turbo_metrics.alerting import AlertManager, AlertTransition
from chat_turbo_metrics.alerting._engine import go_float


@pytest.fixture
def manager(monitor_factory) -> AlertManager:
    return AlertManager(monitor_factory(), evaluation_interval_s=60)


def gauge(values: dict[str, float | None]) -> Any:
    """Collected data with one gauge `load`, one series per host (None: the host does not report)."""
    spec = MetricSpec("load", "gauge", series={(("host", h),): [v] for h, v in values.items()})
    metric = metric_at(spec, 0, 0)
    return metrics_data([metric] if metric is not None else [])


def rule(**fields: Any) -> dict[str, Any]:
    base = {"id": "load", "name": "High Load", "metric": "load", "condition": "gt", "threshold": 5.0}
    return {**base, **fields}


def run(manager: AlertManager, values: Sequence[float | None], interval_s: float = 60.0) -> list[str]:
    """State of host a's alert after each evaluation ("-" when it has none)."""
    out = []
    for step, value in enumerate(values):
        alerts = manager.evaluate_data(gauge({"a": value}), step * interval_s)
        out.append(alerts[0].state if alerts else "-")
    return out


@pytest.mark.parametrize(
    ("condition", "value", "breach"),
    [
        ("gt", 5.0, False), ("gt", 5.000001, True), ("gt", 4.9, False),
        ("gte", 5.0, True), ("gte", 4.999999, False), ("ge", 5.0, True),
        ("lt", 5.0, False), ("lt", 4.999999, True), ("lt", 6.0, False),
        ("lte", 5.0, True), ("lte", 5.000001, False), ("le", 5.0, True),
        ("eq", 5.0, True), ("eq", 5.000001, False),
        ("ne", 5.0, False), ("ne", 4.0, True),
        ("gt", float("nan"), False), ("ne", float("nan"), True),  # IEEE comparisons, as in PromQL
        ("gt", float("inf"), True), ("lt", float("-inf"), True),
    ],
)  # fmt: skip
def test_condition_boundary(manager: AlertManager, condition: str, value: float, breach: bool) -> None:
    manager.add_rule(rule(condition=condition))
    assert run(manager, [value]) == ["firing" if breach else "-"]


@pytest.mark.parametrize(
    ("duration", "interval_s", "expected"),
    [
        (0, 60, ["firing", "firing", "firing"]),
        (60, 60, ["pending", "firing", "firing"]),  # inclusive: now - active_at >= duration
        (90, 60, ["pending", "pending", "firing"]),  # checked only at ticks: 90 s fires at the 120 s tick
        ("2m", 60, ["pending", "pending", "firing"]),
        (121, 60, ["pending", "pending", "pending", "firing"]),
        (45, 30, ["pending", "pending", "firing"]),
    ],
)
def test_duration_rounds_up_to_the_evaluation_ticks(
    manager: AlertManager, duration: object, interval_s: float, expected: list[str]
) -> None:
    manager.add_rule(rule(duration=duration))
    assert run(manager, [9.0] * len(expected), interval_s) == expected


def test_flapping_never_fires_and_each_drop_is_a_transition_to_inactive(manager: AlertManager) -> None:
    manager.add_rule(rule(duration=120))
    transitions: list[AlertTransition] = []
    manager.add_listener(transitions.append)
    assert run(manager, [9, 9, 1, 9, 9, 1, 9, 1]) == [
        "pending",
        "pending",
        "-",
        "pending",
        "pending",
        "-",
        "pending",
        "-",
    ]
    assert [(t.previous, t.current) for t in transitions] == [("inactive", "pending"), ("pending", "inactive")] * 3
    assert [t.alert.active_at for t in transitions if t.current == "pending"] == [0, 180, 360]


def test_resolves_on_first_false_evaluation_and_refires_with_a_new_active_at(manager: AlertManager) -> None:
    manager.add_rule(rule(duration=60))
    transitions: list[AlertTransition] = []
    manager.add_listener(transitions.append)
    assert run(manager, [9, 9, 1, 9, 9]) == ["pending", "firing", "-", "pending", "firing"]
    resolved = [t for t in transitions if t.current == "resolved"]
    assert [(t.alert.state, t.alert.fired_at, t.alert.resolved_at, t.at) for t in resolved] == [
        ("resolved", 60, 120, 120)
    ]
    refired = [t.alert for t in transitions if t.current == "firing"]
    assert [(a.active_at, a.fired_at) for a in refired] == [(0, 60), (180, 240)]


@pytest.mark.parametrize(
    ("keep", "values", "expected"),
    [
        ("2m", [9, 1, 1, 1, 1], ["firing", "firing", "firing", "-", "-"]),  # held while now - since < 2m
        ("2m", [9, 1, 9, 1, 1, 1], ["firing"] * 5 + ["-"]),  # a true evaluation restarts the hold
        (0, [9, 1], ["firing", "-"]),
    ],
)
def test_keep_firing_for_holds_a_firing_alert(manager: AlertManager, keep: object, values, expected) -> None:
    manager.add_rule(rule(keep_firing_for=keep))
    assert run(manager, values) == expected


def test_keep_firing_for_does_not_hold_a_pending_alert(manager: AlertManager) -> None:
    manager.add_rule(rule(duration=300, keep_firing_for=600))
    assert run(manager, [9, 1]) == ["pending", "-"]


def test_each_label_set_is_its_own_alert(manager: AlertManager) -> None:
    manager.add_rule(rule(duration=60, labels={"team": "chat"}))
    steps = [{"a": 9, "b": 1}, {"a": 9, "b": 9}, {"a": 1, "b": 9}, {"a": 1, "b": 1}]
    seen = []
    for step, values in enumerate(steps):
        alerts = manager.evaluate_data(gauge(values), step * 60.0)
        seen.append(sorted((a.labels["host"], a.state) for a in alerts))
    assert seen == [[("a", "pending")], [("a", "firing"), ("b", "pending")], [("b", "firing")], []]
    labels = dict(manager.history()[-1].alert.labels)
    assert labels == {"host": "b", "team": "chat", "alertname": "High Load", "severity": "warning"}


def test_annotations_are_templated_with_value_and_labels(manager: AlertManager) -> None:
    manager.add_rule(rule(annotations={"summary": "{{ $labels.host }} load {{ $value }} ({{ $labels.nope }})"}))
    (alert,) = manager.evaluate_data(gauge({"a": 1234567.0}), 0)
    assert alert.annotations == {"summary": "a load 1.234567e+06 (<no value>)"}
    assert alert.value == 1234567.0


# -- missing data: host a reports at 0 s, then never again; the staleness window is 300 s -------------------

MISSING = [9.0, None, None, None, None, None, None]  # evaluations at 0, 60, ..., 360 s


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("ok", ["firing"] * 6 + ["-"]),  # the last sample counts for 300 s (inclusive), then the alert resolves
        ("alerting", ["firing"] * 7),  # absence is a breach
        ("keep_last", ["firing"] * 7),  # the last value keeps counting
    ],
)
def test_missing_data_after_the_staleness_window(manager: AlertManager, mode: str, expected: list[str]) -> None:
    manager.add_rule(rule(missing_data=mode))
    assert run(manager, MISSING) == expected


def test_keep_last_keeps_a_false_last_value_false(manager: AlertManager) -> None:
    manager.add_rule(rule(missing_data="keep_last"))
    assert run(manager, [1.0, None, None, None, None, None, None, None]) == ["-"] * 8


def test_no_data_mode_raises_a_separate_alert_for_the_silent_series(manager: AlertManager) -> None:
    manager.add_rule(rule(missing_data="no_data", duration=60))
    states = []
    for step, value in enumerate([9.0, None, None, None, None, None, None, None]):
        alerts = manager.evaluate_data(gauge({"a": value}), step * 60.0)
        states.append(sorted((a.labels.get("no_data", "-"), a.state) for a in alerts))
    assert states[:6] == [[("-", "pending")]] + [[("-", "firing")]] * 5
    assert states[6:] == [[("true", "pending")], [("true", "firing")]]


@pytest.mark.parametrize(("mode", "expected"), [("ok", []), ("alerting", ["firing"]), ("no_data", ["firing"])])
def test_a_metric_never_recorded(manager: AlertManager, mode: str, expected: list[str]) -> None:
    manager.add_rule(rule(missing_data=mode))
    alerts = manager.evaluate_data(gauge({}), 0)
    assert [a.state for a in alerts] == expected
    if expected:
        assert "host" not in alerts[0].labels
        assert (alerts[0].labels.get("no_data") == "true") == (mode == "no_data")


def test_evaluate_reads_the_injected_clock_and_source(monitor_factory) -> None:
    now = [1000.0]
    values = {"a": 9.0}
    manager = AlertManager(
        monitor_factory(), clock=lambda: now[0], collect=lambda: gauge(values), evaluation_interval_s=60
    )
    manager.add_rule(rule(duration=120))
    assert [a.state for a in manager.evaluate()] == ["pending"]
    now[0] += 119.999
    assert [a.state for a in manager.evaluate()] == ["pending"]
    now[0] += 0.001
    (alert,) = manager.evaluate()
    assert (alert.state, alert.active_at, alert.fired_at) == ("firing", 1000.0, 1120.0)


def test_a_counter_rule_reads_its_rate_by_default(manager: AlertManager) -> None:
    spec = MetricSpec("messages_sent", "counter", series={(): [0, 60, 180, 180, 180, 180, 180]})
    manager.add_rule({"id": "m", "name": "Busy", "metric": "messages_sent", "condition": "gt", "threshold": 0.5})
    values = []
    for step in range(7):
        alerts = manager.evaluate_data(data_at([spec], step, step * 60.0), step * 60.0)
        values.append(alerts[0].value if alerts else None)
    # rate over 5m extrapolated like Prometheus: 180 counted in the window -> 0.6/s; at 360 s the window
    # starts at the 60 s sample, so 120 counted -> 0.4/s, below the threshold (no alert)
    assert values == [None, None, pytest.approx(0.6), pytest.approx(0.6), pytest.approx(0.6), pytest.approx(0.6), None]


@pytest.mark.parametrize(
    ("value", "text"),
    [  # what promtool 2.42 prints for {{ $value }}
        (1234567.0, "1.234567e+06"),
        (1.2345678901234569e23, "1.2345678901234569e+23"),
        (0.00001234, "1.234e-05"),
        (100000.0, "100000"),
        (0.30000000000000004, "0.30000000000000004"),
        (2.0, "2"),
        (-0.5, "-0.5"),
        (0.0001, "0.0001"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_value_is_printed_like_prometheus_templates(value: float, text: str) -> None:
    assert go_float(value) == text


def test_a_clock_that_steps_back_replaces_the_newer_points(manager: AlertManager) -> None:
    spec = MetricSpec("messages_sent", "counter", series={(): [0, 60, 120, 180]})
    manager.add_rule({"id": "m", "name": "Busy", "metric": "messages_sent", "condition": "gt", "threshold": 0.5})
    for step, now in enumerate([0.0, 60.0, 120.0]):
        manager.evaluate_data(data_at([spec], step, now), now)
    # the wall clock is set back by 90 s: the 60 s and 120 s points are dropped, the rate comes from 0 s and 30 s
    (alert,) = manager.evaluate_data(data_at([spec], 3, 30.0), 30.0)
    assert alert.value == pytest.approx(180 / 300 * (30 + 0) / 30)


def _malformed_histogram(now_ns: int, count: int) -> Any:
    """A histogram point with fewer bucket counts than its bounds need (a broken producer's data)."""
    from opentelemetry.sdk.metrics.export import AggregationTemporality, Histogram, HistogramDataPoint, Metric

    point = HistogramDataPoint(
        attributes={"host": "a"}, start_time_unix_nano=0, time_unix_nano=now_ns, count=count, sum=count * 0.2,
        bucket_counts=[count], explicit_bounds=[0.1, 0.5], min=0.2, max=0.2,
    )  # fmt: skip
    data = Histogram(data_points=[point], aggregation_temporality=AggregationTemporality.CUMULATIVE)
    return Metric(name="latency", description="", unit="s", data=data)


def test_a_rule_that_fails_is_isolated_logged_once_and_counted(manager: AlertManager, caplog) -> None:
    manager.add_rule(rule(id="latency", name="Slow", metric="latency", statistic="p95", threshold=0.1, window="5m"))
    manager.add_rule(rule())
    states = []
    with caplog.at_level("WARNING", logger="chat_turbo_metrics.alerting"):
        for step in range(3):
            now = step * 60.0
            data = metrics_data(
                [
                    _malformed_histogram(int(now * 1e9), 10 * (step + 1)),
                    *gauge({"a": 9.0}).resource_metrics[0].scope_metrics[0].metrics,
                ]
            )
            states.append(sorted((a.rule_id, a.state) for a in manager.evaluate_data(data, now)))
    assert states == [[("load", "firing")]] * 3  # the other rule goes on
    assert manager.evaluation_failures() == {"latency": 2}  # from the second evaluation on: two points in the window
    failures = [r for r in caplog.records if "latency" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None


def test_a_lone_surrogate_in_a_label_value_stops_no_rule(manager: AlertManager) -> None:
    manager.add_rule(rule())
    manager.add_rule(rule(id="load-2", name="Very High Load", threshold=7.0))
    poisoned = "general\udce9"  # json.loads(b'{"channel":"general\\udce9"}') gives such a string
    alerts = manager.evaluate_data(gauge({poisoned: 9.0, "b": 9.0}), 0.0)
    assert sorted((a.rule_id, a.labels["host"]) for a in alerts) == [
        ("load", "b"), ("load", poisoned), ("load-2", "b"), ("load-2", poisoned)
    ]  # fmt: skip
    assert manager.evaluation_failures() == {}
