"""Rules say what is wrong: Prometheus's limits at validation, user text as data in exports, warnings for rules
that would read nothing, and `rules check` reporting every bad rule."""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from chat_turbo_metrics.__main__ import main
from chat_turbo_metrics.alerting import AlertManager, AlertRule, RuleError
from chat_turbo_metrics.alerting.promql import prometheus_rules
from conftest import require_tool

BASE = {"id": "r", "name": "R", "metric": "queue_depth", "condition": "gt", "threshold": 1.0}
GAUGE = {**BASE, "kind": "gauge"}
HUGE = "1" * 309 + "s"  # parses to infinity


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"duration": HUGE}, "duration"),
        ({"window": HUGE}, "window"),
        ({"keep_firing_for": HUGE}, "keep_firing_for"),
        ({"duration": "106752d"}, "duration"),  # past 2**63 ns: "duration out of range" in Prometheus
        ({"window": "0s"}, "window"),  # PromQL: "duration must be greater than 0"
        ({"window": 0.0004}, "window"),  # under a millisecond: 0 in Prometheus
        ({"annotations": {"run-book": "https://wiki"}}, "annotations"),
        ({"labels": {"__name__": "x"}}, "labels"),
        ({"matchers": {"__name__": "x"}}, "matchers"),
        ({"labels": {"team": "ops\udce9"}}, "labels"),
        ({"annotations": {"summary": "\ud83d"}}, "annotations"),
        # Go's template opens the action at the first "{{": "{ $value" is no command (promtool: unexpected "{")
        ({"annotations": {"summary": "{{{ $value }}x"}}, "annotations"),
        ({"annotations": {"summary": "{{{{ $value }}"}}, "annotations"),
        ({"name": "High\udce9"}, "name"),
    ],
)
def test_what_prometheus_rejects_is_a_rule_error(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as caught:
        AlertRule.from_dict({**BASE, **changes})
    assert caught.value.field == field


def test_the_longest_prometheus_duration_is_accepted() -> None:
    rule = AlertRule.from_dict({**BASE, "duration": "106751d23h47m16s854ms", "window": "1ms"})
    assert (rule.duration_s, rule.window_s) == (9_223_372_036.854, 0.001)


def test_a_309_digit_duration_is_refused_before_the_rule_is_stored(monitor_factory) -> None:
    manager = AlertManager(monitor_factory(), evaluation_interval_s=60)
    with pytest.raises(RuleError):
        manager.add_rule({**BASE, "duration": HUGE})
    with pytest.raises(RuleError):  # built directly, checked by add_rule
        manager.add_rule(AlertRule("w", "W", "queue_depth", "gt", 1.0, window_s=float("inf")))
    assert manager.rules() == ()
    manager.add_rule(BASE)  # the manager is still usable
    assert [rule.id for rule in manager.rules()] == ["r"]


def _promtool_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    path = tmp_path / "rules.yml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)


def test_a_disabled_rules_id_cannot_inject_a_rule(tmp_path: Path) -> None:
    forged = 'x\n      - alert: "AlwaysFiring"\n        expr: "vector(1)"\n#'
    rules = [AlertRule(forged, "Off", "queue_depth", "gt", 1.0, enabled=False), AlertRule.from_dict(GAUGE)]
    text = prometheus_rules(rules)
    check = _promtool_check(tmp_path, text)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rules found" in check.stdout
    (group,) = yaml.safe_load(text)["groups"]
    assert [rule["alert"] for rule in group["rules"]] == ["R"]


def test_text_beyond_the_bmp_and_control_characters_round_trip_through_promtool(tmp_path: Path) -> None:
    text = 'grin \U0001f600 tab\t del\x7f csi\x9b nl\n sep\u2028 quote" back\\ }} end'
    rule = AlertRule.from_dict(
        {**GAUGE, "labels": {"team": text + " {{ x"}, "annotations": {"summary": f"{text} {{{{ $value }}}}"},
         "matchers": {"queue": text}}
    )  # fmt: skip
    exported = prometheus_rules([rule])
    assert "\\ud83d" not in exported  # no surrogate escapes: Go's YAML rejects them
    check = _promtool_check(tmp_path, exported)
    assert check.returncode == 0, check.stdout + check.stderr
    (out,) = yaml.safe_load(exported)["groups"][0]["rules"]
    assert out["labels"]["team"] == text + ' {{ "{{" }} x'  # which Prometheus renders as the rule's text
    assert out["annotations"]["summary"] == f"{text} {{{{ $value }}}}"
    assert f"queue={json.dumps(text, ensure_ascii=False)}" in out["expr"]


def test_a_label_with_braces_renders_as_written_in_prometheus(tmp_path: Path) -> None:
    """promtool test rules: the alert's label is the rule's text, as this engine sets it."""
    promtool = require_tool("promtool")
    rule = AlertRule("b", "Braces", "queue_depth", "gt", 1.0, labels={"team": "{{ $value }} ops"}, kind="gauge")
    (tmp_path / "rules.yml").write_text(prometheus_rules([rule]), encoding="utf-8")
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": "queue_depth", "values": "5 5"}],
                "alert_rule_test": [
                    {
                        "eval_time": "1m",
                        "alertname": "Braces",
                        "exp_alerts": [{"exp_labels": {"severity": "warning", "team": "{{ $value }} ops"}}],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_metric_never_seen_is_warned_about_once_with_the_closest_names(monitor_factory, caplog) -> None:
    monitor = monitor_factory()
    manager = AlertManager(monitor, evaluation_interval_s=60)
    manager.add_rule({**BASE, "metric": "http_request_duraton_seconds"})  # a typo
    monitor.record_histogram("http_request_duration_seconds", 0.3)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.alerting"):
        for step in range(6):
            manager.evaluate(now=60.0 * step)
    (record,) = caplog.records
    assert record.args[0] == "r"  # type: ignore[index]
    assert "'http_request_duration_seconds'" in record.getMessage()


def test_a_metric_that_appears_after_start_up_is_not_warned_about(monitor_factory, caplog) -> None:
    monitor = monitor_factory()
    manager = AlertManager(monitor, evaluation_interval_s=60)
    manager.add_rule(BASE)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.alerting"):
        manager.evaluate(now=0.0)
        monitor.record_gauge("queue_depth", 0)
        for step in range(1, 6):
            manager.evaluate(now=60.0 * step)
    assert caplog.records == []


@pytest.mark.parametrize(("window", "warned"), [("1m", True), ("119s", True), ("2m", False)])
def test_a_window_that_cannot_hold_two_collections_is_warned_about(monitor_factory, caplog, window, warned) -> None:
    monitor = monitor_factory()
    manager = AlertManager(monitor, evaluation_interval_s=60)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.alerting"):
        manager.add_rule({**BASE, "metric": "errors_total", "window": window})  # a counter: rate over the window
        monitor.increment_counter("errors")
        for step in range(3):
            manager.evaluate(now=60.0 * step)
    assert len(caplog.records) == (1 if warned else 0)


RULES = """
[[rules]]
id = "typo"
name = "Slow"
metric = "http_request_duraton_seconds"
statistic = "p95"
condition = "gt"
threshold = 2.0

[[rules]]
id = "first-bad"
name = "X"
metric = "m"
condition = "over"
threshold = 1

[[rules]]
id = "fine"
name = "Errors"
metric = "errors_total"
condition = "gt"
threshold = 1

[[rules]]
id = "second-bad"
name = "Y"
metric = "m"
condition = "gt"
threshold = 1
annotations = { run-book = "https://wiki" }
"""


def test_check_reports_every_bad_rule_and_warns_about_a_typo(tmp_path: Path, capsys) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    assert main(["rules", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert "'first-bad'" in captured.err
    assert "'second-bad'" in captured.err
    warnings = [line for line in captured.out.splitlines() if ": warning: " in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("typo:")
    assert "'http_request_duration_seconds'" in warnings[0]


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """A /metrics endpoint on 127.0.0.1 exposing two families, as a running service would."""
    body = (
        b"# TYPE errors_total counter\nerrors_total 3\n"
        b"# TYPE http_request_duration_seconds histogram\n"
        b'http_request_duration_seconds_bucket{le="+Inf"} 1\n'
        b"http_request_duration_seconds_sum 0.2\nhttp_request_duration_seconds_count 1\n"
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def test_check_against_a_running_services_metrics(tmp_path: Path, capsys, metrics_url: str) -> None:
    path = tmp_path / "rules.toml"
    head = RULES.split('[[rules]]\nid = "first-bad"', maxsplit=1)[0]
    path.write_text(
        head + '[[rules]]\nid = "custom"\nname = "C"\nmetric = "orders_total"\ncondition = "gt"\nthreshold = 1\n'
    )
    assert main(["rules", "check", str(path)]) == 0  # a custom name is fine without a scrape to compare with
    capsys.readouterr()
    assert main(["rules", "check", str(path), "--metrics", metrics_url]) == 2
    warned = {line.split(":")[0] for line in capsys.readouterr().out.splitlines() if ": warning: " in line}
    assert warned == {"typo", "custom"}
    scrape = tmp_path / "scrape.txt"
    scrape.write_text("# TYPE orders_total counter\norders_total 1\nhttp_request_duration_seconds_count 1\n")
    assert main(["rules", "check", str(path), "--metrics", str(scrape)]) == 2
    warned = {line.split(":")[0] for line in capsys.readouterr().out.splitlines() if ": warning: " in line}
    assert warned == {"typo"}


def test_check_warns_about_a_short_window_for_the_interval(tmp_path: Path, capsys) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rules]]\nid = "w"\nname = "W"\nmetric = "errors_total"\nwindow = "1m"\ncondition = "gt"\n'
                    "threshold = 1\n")  # fmt: skip
    assert main(["rules", "check", str(path), "--interval", "60"]) == 0
    assert "w: warning: " in capsys.readouterr().out
    assert main(["rules", "check", str(path), "--interval", "15"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_the_shipped_rules_annotation_names_a_label_the_http_instrumentor_records(monitor_factory) -> None:
    """configs/alert_rules.toml renders the route of a slow request, not `<no value>`."""
    import dataclasses

    flask = pytest.importorskip("flask")
    wsgi = pytest.importorskip("chat_turbo_metrics_http.wsgi")
    from werkzeug.test import Client

    from chat_turbo_metrics.alerting import load_rules

    monitor = monitor_factory()
    app = flask.Flask("shop")
    app.add_url_rule("/orders/<int:id>", "order", lambda id: f"order {id}")
    client = Client(wsgi.WsgiMetricsMiddleware(app.wsgi_app, monitor=monitor))
    shipped = {rule.id: rule for rule in load_rules(Path(__file__).parents[2] / "configs" / "alert_rules.toml")}
    manager = AlertManager(monitor, evaluation_interval_s=60)
    manager.add_rule(dataclasses.replace(shipped["high-response-time"], threshold=-1.0))  # any request is "slow"
    for step in range(2):
        client.get(f"/orders/{step}", buffered=True)  # the body read and closed: the request ends
        alerts = manager.evaluate(now=60.0 * step)
    (alert,) = alerts
    assert alert.annotations["summary"].endswith("on /orders/{id}")
