"""Rules: the seed's dict, validation errors naming rule and field, files, duplicates, names as recorded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chat_turbo_metrics import ConfigurationError, PerformanceMonitor
from chat_turbo_metrics.alerting import AlertManager, AlertRule, RuleError, load_rules

ROOT = Path(__file__).resolve().parents[2]
SEED_RULE = {
    "id": "high-response-time",
    "name": "High API Response Time",
    "metric": "http_request_duration_seconds",
    "condition": "gt",
    "threshold": 2.0,
    "duration": 300,
    "severity": "high",
    "enabled": True,
}


def test_seed_example_runs_verbatim_on_the_process_wide_monitor() -> None:
    code = """
        from chat_turbo_metrics import AlertManager, PerformanceMonitor
        monitor = PerformanceMonitor.get_instance()
        alertManager = AlertManager()
        alertManager.add_rule({"id": "high-response-time", "name": "High API Response Time",
            "metric": "http_request_duration_seconds", "condition": "gt", "threshold": 2.0,
            "duration": 300, "severity": "high", "enabled": True})
        for minute in range(7):  # slow responses, evaluated once a minute
            for _ in range(20):
                monitor.record_histogram("http_request_duration_seconds", 3.0, {"route": "/x"})
            alerts = alertManager.evaluate(now=60 * minute)
            print([(a.state, a.labels["severity"], round(a.value, 3), a.active_at) for a in alerts])
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    env["CHAT_TURBO_ENV"] = "test"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    # p95 of observations in the (2.5, 5] bucket: interpolated at 95 % of the bucket, 2.5 + 2.5 * 0.95
    pending, firing = "[('pending', 'high', 4.875, 60)]", "[('firing', 'high', 4.875, 60)]"
    assert result.stdout.splitlines() == ["[]", *[pending] * 5, firing]  # fires 300 s after it became pending


def test_seed_dict_parses_to_the_documented_defaults() -> None:
    rule = AlertRule.from_dict(SEED_RULE)
    assert (rule.duration_s, rule.window_s, rule.statistic, rule.missing_data) == (300.0, 300.0, None, "ok")
    assert [rule.resolved_statistic(k) for k in ("histogram", "counter", "gauge")] == ["p95", "rate", "value"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"condition": "above"}, "condition"),
        ({"threshold": "2.0"}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": 10**400}, "threshold"),
        ({"duration": float("inf")}, "duration"),
        ({"duration": "5 minutes"}, "duration"),
        ({"duration": -1}, "duration"),
        ({"enabled": "yes"}, "enabled"),
        ({"severity": 3}, "severity"),
        ({"statistic": "p42"}, "statistic"),
        ({"statistic": "p95", "kind": "gauge"}, "statistic"),
        ({"statistic": "error_rate"}, "statistic"),
        ({"kind": "summary"}, "kind"),
        ({"missing_data": "ignore"}, "missing_data"),
        ({"labels": {"severity": "low"}}, "labels"),
        ({"labels": {"bad-name": "x"}}, "labels"),
        ({"annotations": {"summary": "{{ $value | humanize }}"}}, "annotations"),
        ({"annotations": {"summary": "{{ .Labels.x }}"}}, "annotations"),
        ({"matchers": ["route"]}, "matchers"),
        ({"window": "1y"}, "window"),
        ({"treshold": 2.0}, "treshold"),
        ({"spans": {"name": "GET /"}}, "spans"),
    ],
)
def test_bad_rule_error_names_rule_and_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as caught:
        AlertRule.from_dict({**SEED_RULE, **changes})
    assert (caught.value.rule_id, caught.value.field) == ("high-response-time", field)
    assert "high-response-time" in str(caught.value)
    assert field in str(caught.value)


@pytest.mark.parametrize("missing", ["name", "condition", "threshold"])
def test_required_fields(missing: str) -> None:
    spec = {k: v for k, v in SEED_RULE.items() if k != missing}
    with pytest.raises(RuleError) as caught:
        AlertRule.from_dict(spec)
    assert caught.value.field == missing


def test_a_rule_without_id_is_named_by_a_question_mark() -> None:
    with pytest.raises(RuleError) as caught:
        AlertRule.from_dict({k: v for k, v in SEED_RULE.items() if k != "id"})
    assert (caught.value.rule_id, caught.value.field) == ("?", "id")


@pytest.mark.parametrize(("given", "parsed"), [("ge", "gte"), ("le", "lte"), (">=", "gte"), ("ne", "ne")])
def test_condition_aliases(given: str, parsed: str) -> None:
    assert AlertRule.from_dict({**SEED_RULE, "condition": given}).condition == parsed


@pytest.mark.parametrize(("given", "parsed"), [(Decimal("2.5"), 2.5), (3, 3.0), (10**20, 1e20), (-1.5, -1.5)])
def test_thresholds(given: object, parsed: float) -> None:
    assert AlertRule.from_dict({**SEED_RULE, "threshold": given}).threshold == parsed


@pytest.mark.parametrize(("given", "seconds"), [("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), (90, 90.0)])
def test_durations(given: object, seconds: float) -> None:
    assert AlertRule.from_dict({**SEED_RULE, "duration": given}).duration_s == seconds


def test_duplicate_id_is_refused_and_duplicate_definition_is_reported(
    monitor_factory, caplog: pytest.LogCaptureFixture
) -> None:
    manager = AlertManager(monitor_factory())
    manager.add_rule(SEED_RULE)
    with pytest.raises(RuleError) as caught:
        manager.add_rule({**SEED_RULE, "name": "Other"})
    assert (caught.value.rule_id, caught.value.field) == ("high-response-time", "id")
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.alerting"):
        manager.add_rule({**SEED_RULE, "id": "copy", "name": "Copy", "severity": "low"})
    (record,) = caplog.records
    assert record.args == ("copy", "high-response-time")
    assert [r.id for r in manager.rules()] == ["high-response-time", "copy"]


def test_shipped_toml_rules_load_and_match_the_yaml_form(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    import tomllib

    rules = load_rules(ROOT / "configs" / "alert_rules.toml")
    assert [r.id for r in rules] == ["high-response-time", "high-error-rate", "high-memory"]
    assert rules[0] == AlertRule.from_dict({**SEED_RULE, "annotations": rules[0].annotations})
    as_yaml = tmp_path / "rules.yaml"
    as_yaml.write_text(yaml.safe_dump(tomllib.loads((ROOT / "configs" / "alert_rules.toml").read_text())))
    assert load_rules(as_yaml) == rules


@pytest.mark.parametrize(
    ("name", "text", "rule_id", "field"),
    [
        ("r.toml", '[[rules]]\nid = "a"\nname = "A"\nmetric = "m"\ncondition = "gt"\nthreshold = "x"', "a",
         "threshold"),
        ("r.yaml", "rules:\n  - {id: b, name: B, metric: m, condition: gt, threshold: 1, duration: 5x}", "b",
         "duration"),
        ("r.toml", '[[rules]]\nid = "c"\nname = "C"\nmetric = "m"\ncondition = "gt"\nthreshold = 1\n' * 2, "c", "id"),
    ],
)  # fmt: skip
def test_bad_rule_in_a_file_names_file_rule_and_field(
    tmp_path: Path, name: str, text: str, rule_id: str, field: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert (caught.value.rule_id, caught.value.field) == (rule_id, field)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [("r.toml", "rules = [[["), ("r.yaml", "rules: [unclosed"), ("r.json", "{}"), ("r.toml", "title = 'no rules'")],
)
def test_unusable_rule_files(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_rules(path)
    assert str(path) in str(caught.value)


def test_load_rules_adds_all_or_nothing(tmp_path: Path, monitor_factory) -> None:
    manager = AlertManager(monitor_factory())
    manager.add_rule({**SEED_RULE, "id": "high-memory"})
    with pytest.raises(RuleError) as caught:
        manager.load_rules(ROOT / "configs" / "alert_rules.toml")
    assert caught.value.rule_id == "high-memory"
    assert [r.id for r in manager.rules()] == ["high-memory"]


@pytest.mark.parametrize(
    ("record", "metric"),
    [
        (lambda m: m.increment_counter("messages_sent", value=120), "messages_sent"),
        (lambda m: m.increment_counter("messages_sent", value=120), "messages_sent_total"),
        (lambda m: m.increment_counter("api_requests_total", value=120), "api_requests_total"),
        (lambda m: m.record_gauge("memory_usage_mb", 2048), "memory_usage_mb"),
        (lambda m: m.record_timer("api_request", m.start_timer() - 3.0), "api_request"),
        (lambda m: m.record_timer("api_request", m.start_timer() - 3.0), "api_request_duration_seconds"),
        (lambda m: m.record_histogram("message_size_bytes", 4096), "message_size_bytes"),
    ],
)
def test_rules_find_metrics_by_recording_and_prometheus_name(monitor: PerformanceMonitor, record, metric) -> None:
    manager = AlertManager(monitor)
    manager.add_rule({"id": "r", "name": "R", "metric": metric, "condition": "gt", "threshold": 0.1})
    record(monitor)
    manager.evaluate(now=0)
    record(monitor)
    (alert,) = manager.evaluate(now=60)
    assert alert.state == "firing"
    assert alert.value is not None
    assert alert.value > 0.1


def test_matchers_select_series_by_attribute_or_label_name(monitor_factory) -> None:
    monitor = monitor_factory()
    manager = AlertManager(monitor)
    manager.add_rule({"id": "a", "name": "A", "metric": "queue_depth", "condition": "gt", "threshold": 1,
                      "matchers": {"queue.name": "mail"}})  # fmt: skip
    manager.add_rule({"id": "b", "name": "B", "metric": "queue_depth", "condition": "gt", "threshold": 1,
                      "matchers": {"queue_name": "mail", "urgent": True}})  # fmt: skip
    monitor.record_gauge("queue_depth", 5, {"queue.name": "mail", "urgent": True})
    monitor.record_gauge("queue_depth", 9, {"queue.name": "sms", "urgent": True})
    alerts = manager.evaluate(now=0)
    assert sorted((a.rule_id, a.labels["queue_name"], a.value) for a in alerts) == [("a", "mail", 5), ("b", "mail", 5)]


def test_disable_resolves_enable_resumes_remove_ends(monitor_factory) -> None:
    monitor = monitor_factory()
    manager = AlertManager(monitor, clock=lambda: 500.0)
    manager.add_rule({"id": "mem", "name": "Mem", "metric": "memory_usage_mb", "condition": "gt", "threshold": 1})
    transitions = []
    manager.add_listener(lambda t: transitions.append((t.previous, t.current, t.at)))
    monitor.record_gauge("memory_usage_mb", 5)
    assert [a.state for a in manager.evaluate(now=0)] == ["firing"]
    manager.disable_rule("mem")
    assert manager.alerts() == ()
    assert manager.evaluate(now=60) == ()
    manager.enable_rule("mem")
    assert [a.state for a in manager.evaluate(now=120)] == ["firing"]
    manager.remove_rule("mem")
    assert manager.alerts() == ()
    assert manager.rules() == ()
    assert transitions == [
        ("inactive", "pending", 0),
        ("pending", "firing", 0),
        ("firing", "resolved", 500.0),
        ("inactive", "pending", 120),
        ("pending", "firing", 120),
        ("firing", "resolved", 500.0),
    ]
    with pytest.raises(KeyError):
        manager.disable_rule("mem")


def test_a_statistic_that_does_not_fit_the_data_is_warned_once(monitor_factory, caplog) -> None:
    monitor = monitor_factory()
    manager = AlertManager(monitor)
    manager.add_rule({"id": "p", "name": "P", "metric": "memory_usage_mb", "statistic": "p95", "condition": "gt",
                      "threshold": 1})  # fmt: skip
    monitor.record_gauge("memory_usage_mb", 5)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.alerting"):
        assert manager.evaluate(now=0) == ()
        assert manager.evaluate(now=60) == ()
    assert len(caplog.records) == 1
    assert caplog.records[0].args[0] == "p"


def test_the_rules_file_in_configs_is_not_an_environment() -> None:
    from chat_turbo_metrics import get_monitoring_config

    with pytest.raises(ConfigurationError, match="not an environment"):
        get_monitoring_config("alert_rules", env={})
