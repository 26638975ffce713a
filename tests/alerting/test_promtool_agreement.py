"""Hand-over to Prometheus: the exported rules, run by `promtool test rules` over the same series this engine
evaluated, must show the same pending and firing alerts (labels and annotations) at every step.

Each test feeds a scenario to an AlertManager, then writes a promtool unit test whose expectations ARE this
engine's states; promtool fails the test on any disagreement at any step.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from alerting_data import HistogramValue, MetricSpec, run_steps

from chat_turbo_metrics._core.naming import prometheus_name
from chat_turbo_metrics.alerting import AlertManager, AlertRule
from chat_turbo_metrics.alerting.promql import alert_name, prometheus_rules
from conftest import require_tool

INTERVAL_S = 60.0


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "}"


def _values(values: Sequence[float | None]) -> str:
    return " ".join("_" if v is None else repr(float(v)) for v in values)


def input_series(spec: MetricSpec) -> list[dict[str, str]]:
    """The series a Prometheus scraping this metric would hold, in promtool's notation."""
    name = prometheus_name(spec.name, spec.unit, spec.kind)  # type: ignore[arg-type]
    out = []
    for labels, values in spec.series.items():
        if spec.kind != "histogram":
            out.append({"series": name + _labels(dict(labels)), "values": _values(values)})
            continue
        for i, bound in enumerate([*spec.bounds, "+Inf"]):
            le = {"le": bound if isinstance(bound, str) else repr(float(bound))}
            cumulative = [None if v is None else sum(v.counts[: i + 1]) for v in values]
            out.append({"series": f"{name}_bucket" + _labels({**dict(labels), **le}), "values": _values(cumulative)})
        sums = [None if v is None else v.sum for v in values]
        counts = [None if v is None else sum(v.counts) for v in values]
        out.append({"series": f"{name}_sum" + _labels(dict(labels)), "values": _values(sums)})
        out.append({"series": f"{name}_count" + _labels(dict(labels)), "values": _values(counts)})
    return out


def promtool_test(states: list[dict[str, Any]], specs: Sequence[MetricSpec], rules: Sequence[AlertRule]) -> dict:
    """A promtool unit test expecting exactly this engine's alerts at every step."""
    expr_tests, alert_tests = [], []
    for step, alerts in enumerate(states):
        eval_time = f"{int(step * INTERVAL_S)}s"
        samples = []
        for state, labels, _annotations in alerts.values():
            exported = {**labels, "alertname": alert_name(labels["alertname"]), "alertstate": state}
            samples.append({"labels": "ALERTS" + _labels(exported), "value": 1})
        expr_tests.append({"expr": "ALERTS", "eval_time": eval_time, "exp_samples": samples})
        for rule in rules:
            firing = [
                {
                    "exp_labels": {**labels, "alertname": alert_name(rule.name)},
                    "exp_annotations": annotations,
                }
                for state, labels, annotations in alerts.values()
                if state == "firing" and labels["alertname"] == rule.name
            ]
            alert_tests.append({"eval_time": eval_time, "alertname": alert_name(rule.name), "exp_alerts": firing})
    series = [s for spec in specs for s in input_series(spec)]
    return {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": expr_tests,
                "alert_rule_test": alert_tests,
            }
        ],
    }


def run_tool(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=60)


def agree(tmp_path: Path, rules: Sequence[dict[str, Any]], specs: Sequence[MetricSpec], steps: int, monitor) -> list:
    """Run the scenario through this engine and through promtool; returns this engine's states."""
    promtool = require_tool("promtool")
    manager = AlertManager(monitor, evaluation_interval_s=INTERVAL_S)
    parsed = [manager.add_rule(rule) for rule in rules]
    states = run_steps(manager, specs, steps, INTERVAL_S)
    (tmp_path / "rules.yml").write_text(prometheus_rules(parsed, interval_s=INTERVAL_S))
    check = run_tool([promtool, "check", "rules", "rules.yml"], tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(parsed)} rules found" in check.stdout
    (tmp_path / "test.yml").write_text(json.dumps(promtool_test(states, specs, parsed), indent=1))
    result = run_tool([promtool, "test", "rules", "test.yml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return states


def kinds_seen(states: list[dict[str, Any]]) -> set[str]:
    return {state for step in states for state, _labels, _annotations in step.values()}


@pytest.fixture
def monitor(monitor_factory):
    return monitor_factory()


def test_gauge_rules_agree_for_every_condition_boundary_flap_and_staleness(tmp_path: Path, monitor) -> None:
    a = [1, 5, 5, 5, 3, 5, 5, 5, 5, None, None, None, None, None, None, None]
    b = [5, 4, 6, 2, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2.5, 2]
    spec = MetricSpec("memory_usage_mb", "gauge", "MBy", series={(("host", "a"),): a, (("host", "b"),): b})
    rules = [
        {
            "id": f"{c}",
            "name": f"Memory {c}",
            "metric": "memory_usage_mb",
            "condition": c,
            "threshold": 5,
            "duration": d,
            "severity": "high",
            "annotations": {"summary": "{{ $labels.host }} at {{ $value }}"},
        }
        for c, d in [("gt", 0), ("gte", 120), ("lt", "90s"), ("lte", 60), ("eq", "2m"), ("ne", 0)]
    ]
    rules.append(
        {
            "id": "kff",
            "name": "Memory kept",
            "metric": "memory_usage_mb",
            "condition": "gte",
            "threshold": 5,
            "duration": 60,
            "keep_firing_for": "2m",
            "labels": {"team": "chat"},
        }
    )
    states = agree(tmp_path, rules, [spec], len(a), monitor)
    assert kinds_seen(states) == {"pending", "firing"}


def test_counter_rate_increase_and_value_rules_agree_across_resets_and_gaps(tmp_path: Path, monitor) -> None:
    a = [0, 10, 30, 60, 100, 100, 100, 100, 100, 100, 5, 20, 40, 60, 80, 100, 130]
    b = [None, None, 5, 6, 7, 8, None, None, 9, 14, 35, 36, 37, None, None, None, None]
    spec = MetricSpec("errors", "counter", series={(("route", "/a"),): a, (("route", "/b"),): b})
    rules = [
        {
            "id": "rate",
            "name": "Error rate",
            "metric": "errors_total",
            "condition": "gt",
            "threshold": 0.2,
            "duration": "2m",
            "annotations": {"summary": "{{ $value }} errors/s on {{ $labels.route }}"},
        },
        {
            "id": "increase",
            "name": "Error increase",
            "metric": "errors",
            "statistic": "increase",
            "window": "3m",
            "condition": "gte",
            "threshold": 50,
            "keep_firing_for": "2m",
            "severity": "critical",
        },
        {
            "id": "total",
            "name": "Error total",
            "metric": "errors_total",
            "statistic": "value",
            "condition": "gt",
            "threshold": 90,
        },
        {
            "id": "rate-150",
            "name": "Error rate 150s",
            "metric": "errors_total",
            "window": "150s",
            "condition": "lt",
            "threshold": 0.3,
            "duration": 60,
        },
        {
            "id": "increase-130",
            "name": "Errors in 130s",
            "metric": "errors",
            "statistic": "increase",
            "window": "130s",
            "condition": "gt",
            "threshold": 0,
            "annotations": {"summary": "{{ $value }}"},
        },
        {
            "id": "rate-b",
            "name": "Error rate b",
            "metric": "errors",
            "statistic": "rate",
            "window": "2m",
            "matchers": {"route": "/b"},
            "condition": "gt",
            "threshold": 0.001,
            "duration": 60,
        },
    ]
    states = agree(tmp_path, rules, [spec], len(a), monitor)
    assert kinds_seen(states) == {"pending", "firing"}


BOUNDS = (0.1, 0.5, 1.0, 2.5, 5.0)


def _histogram(increments: list[tuple[float, ...] | None]) -> list[HistogramValue | None]:
    """Cumulative histogram values from per-step new observations per bucket (None: not reported)."""
    counts = [0.0] * (len(BOUNDS) + 1)
    mids = (0.05, 0.3, 0.75, 1.75, 3.75, 7.0)  # a representative value per bucket, for the sum
    total, out = 0.0, []
    for added in increments:
        if added is None:
            out.append(None)
            continue
        counts = [c + n for c, n in zip(counts, added, strict=True)]
        total += sum(n * m for n, m in zip(added, mids, strict=True))
        out.append(HistogramValue(tuple(counts), total))
    return out


def test_histogram_quantile_and_mean_rules_agree(tmp_path: Path, monitor) -> None:
    fast, slow, mixed = (50, 40, 5, 5, 0, 0), (2, 3, 5, 30, 50, 10), (20, 20, 20, 20, 15, 5)
    a = _histogram([fast, fast, slow, slow, slow, mixed, fast, fast, fast, fast, fast, slow])
    b = _histogram([mixed, None, mixed, slow, slow, None, None, None, None, None, None, None])
    spec = MetricSpec(
        "http_request_duration_seconds", "histogram", "s", BOUNDS, {(("route", "/a"),): a, (("route", "/b"),): b}
    )
    rules = [
        {
            "id": "p95",
            "name": "High API Response Time",
            "metric": "http_request_duration_seconds",
            "condition": "gt",
            "threshold": 2.0,
            "duration": 120,
            "severity": "high",
            "annotations": {"summary": "p95 {{ $value }}s on {{ $labels.route }}"},
        },
        {
            "id": "p50",
            "name": "Median",
            "metric": "http_request_duration_seconds",
            "statistic": "p50",
            "window": "2m",
            "condition": "gt",
            "threshold": 0.5,
        },
        {
            "id": "p90",
            "name": "P90",
            "metric": "http_request_duration_seconds",
            "statistic": "p90",
            "condition": "gte",
            "threshold": 1.0,
            "duration": 60,
        },
        {
            "id": "p90-odd",
            "name": "P90 odd window",
            "metric": "http_request_duration_seconds",
            "statistic": "p90",
            "window": "150s",
            "matchers": {"route": "/a"},
            "condition": "lte",
            "threshold": 0.5,
        },
        {
            "id": "p99",
            "name": "P99",
            "metric": "http_request_duration_seconds",
            "statistic": "p99",
            "window": "3m",
            "condition": "gt",
            "threshold": 4.0,
        },
        {
            "id": "mean",
            "name": "Mean latency",
            "metric": "http_request_duration_seconds",
            "statistic": "mean",
            "condition": "gt",
            "threshold": 1.0,
            "duration": 60,
            "keep_firing_for": 60,
        },
    ]
    states = agree(tmp_path, rules, [spec], len(a), monitor)
    assert kinds_seen(states) == {"pending", "firing"}


def test_timer_rule_named_as_recorded_agrees_with_the_prometheus_name(tmp_path: Path, monitor) -> None:
    fast, slow = (50, 40, 5, 5, 0, 0), (0, 0, 10, 30, 10, 0)
    values = _histogram([fast, fast, slow, slow, slow, fast, fast, fast, fast, fast])
    spec = MetricSpec("api_request_duration", "histogram", "s", BOUNDS, {(("method", "GET"),): values})
    rules = [
        {
            "id": "timer",
            "name": "Slow API",
            "metric": "api_request",
            "kind": "timer",
            "statistic": "mean",
            "condition": "gt",
            "threshold": 0.5,
            "duration": 60,
            "annotations": {"summary": "{{ $value }}"},
        },
    ]
    states = agree(tmp_path, rules, [spec], len(values), monitor)
    assert kinds_seen(states) == {"pending", "firing"}
