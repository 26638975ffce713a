"""`chat-turbo-metrics rules check FILE` and `rules export --format prometheus FILE`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chat_turbo_metrics.__main__ import main
from conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "alert_rules.toml"


def test_check_lists_each_valid_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(SHIPPED)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["high-response-time", "high-error-rate", "high-memory"]
    assert "3 rule(s) valid" in lines[-1]


def test_check_fails_with_the_rule_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[rules]]\nid = "cpu"\nname = "CPU"\nmetric = "cpu_usage_percent"\ncondition = "over"\nthreshold = 1\n'
    )
    assert main(["rules", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "'cpu'" in err
    assert "condition" in err


def test_export_of_the_shipped_rules_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    out = tmp_path / "rules.yml"
    result = subprocess.run(
        [sys.executable, "-m", "chat_turbo_metrics", "rules", "export", "--format", "prometheus", str(SHIPPED),
         "-o", str(out)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 3 rules found" in check.stdout
    (group,) = yaml.safe_load(out.read_text())["groups"]
    by_name = {rule["alert"]: rule for rule in group["rules"]}
    assert by_name["HighAPIResponseTime"]["expr"] == (
        "histogram_quantile(0.95, rate(http_request_duration_seconds_bucket[5m])) > 2.0"
    )
    assert by_name["HighAPIResponseTime"]["for"] == "5m"
    assert by_name["HighErrorRate"]["expr"] == "rate(errors_total[5m]) > 1.0"
    assert by_name["HighErrorRate"]["keep_firing_for"] == "5m"
    assert by_name["HighMemoryUsage"]["expr"] == "memory_usage_mb >= 1024.0"
    assert by_name["HighMemoryUsage"]["labels"] == {"severity": "warning"}


def test_export_leaves_rules_without_an_equivalent_as_comments(tmp_path: Path, capsys) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {id: spans, name: Slow spans, condition: gt, threshold: 1, spans: {name: GET}}\n"
        "  - {id: max, name: Max, metric: api_request, kind: timer, statistic: max, condition: gt, threshold: 1}\n"
        "  - {id: disabled, name: Disabled, metric: load, condition: gt, threshold: 1, enabled: false}\n"
        "  - {id: absent, name: Absent, metric: load, condition: gt, threshold: 1, missing_data: alerting}\n"
        "  - {id: kept, name: Kept, metric: api_request, kind: timer, statistic: p99, condition: gt, threshold: 1}\n"
    )
    assert main(["rules", "export", "--format", "prometheus", str(rules)]) == 0
    text = capsys.readouterr().out
    (group,) = yaml.safe_load(text)["groups"]
    assert [r["alert"] for r in group["rules"]] == ["Kept"]
    assert group["rules"][0]["expr"] == "histogram_quantile(0.99, rate(api_request_duration_seconds_bucket[5m])) > 1.0"
    commented = [line.split(":")[0].strip('# "') for line in text.splitlines() if line.strip().startswith("#")][1:]
    assert commented == ["spans", "max", "disabled", "absent"]
