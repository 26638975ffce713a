"""Property: whatever `rules check` accepts, `promtool check rules` accepts once exported.

Hypothesis builds rule files from hostile parts (any Unicode text, lone surrogates, control characters, huge and
tiny durations, odd thresholds, label and annotation names of every shape, disabled rules), keeps the rules this
package accepts, exports them and runs the real promtool on the file. The example count is modest so the test runs
in seconds; each example is one promtool run.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_turbo_metrics.alerting import AlertRule, RuleError
from chat_turbo_metrics.alerting.promql import NotExportable, export_rule, prometheus_rules
from chat_turbo_metrics.alerting.rules import KINDS, MISSING_DATA, STATISTICS
from conftest import require_tool

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # lone surrogates and controls included
VALID_CHAR = st.characters(codec="utf-8")  # any character that is valid text: controls, U+2028, non-BMP, ...
HOSTILE = ["\U0001f600", "a\nb", "x\r\n      - alert: Injected", "{{", "}}", '"', "\\", "\x1b[2J", "\u2028", "\x9b"]
VALID_TEXT = st.sampled_from(["x", "High CPU", "web-1", *HOSTILE]) | st.text(VALID_CHAR, min_size=1, max_size=12)
NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True)
UNITS = st.sampled_from(["ms", "s", "m", "h", "d", "w"])
TEMPLATE = st.sampled_from(["{{ $value }}", "{{ $labels.host }}", "{{$labels.x}}", ""])

# (valid, edge) per field: a rule mostly draws valid values, so most rules get as far as the export, and now and
# then an edge value, which this package must either refuse or export so that promtool accepts it.
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "id": (VALID_TEXT, st.text(ANY_CHAR, max_size=6)),
    "name": (VALID_TEXT, st.text(ANY_CHAR, max_size=6)),
    "metric": (
        st.sampled_from(["errors_total", "http_request_duration_seconds", "memory_usage_mb", "api_request"]),
        VALID_TEXT | st.text(ANY_CHAR, max_size=6),
    ),
    "condition": (st.sampled_from(["gt", "gte", "lt", "lte", "eq", "ne", "ge", ">", "<="]), st.just("over")),
    "threshold": (
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats() | st.integers(-(10**400), 10**400) | st.decimals(allow_nan=False, places=3),
    ),
    "kind": (st.sampled_from(KINDS), st.just(None)),
}
DURATION = (
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**6), UNITS),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**330), UNITS)
    | st.builds(lambda n, u: f"{n}{u}", st.decimals(0, 1000, places=4).map(str), UNITS)
    | st.floats()
    | st.integers(-5, 10**20),
)
OPTIONAL: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "duration": DURATION,
    "window": DURATION,
    "keep_firing_for": DURATION,
    "severity": (VALID_TEXT, st.text(ANY_CHAR, max_size=6)),
    "enabled": (st.just(True), st.just(False)),
    "statistic": (st.just(None), st.sampled_from(list(STATISTICS))),
    "missing_data": (st.just("ok"), st.sampled_from(MISSING_DATA)),
    "labels": (
        st.dictionaries(NAME, VALID_TEXT, max_size=3),
        st.dictionaries(NAME | st.sampled_from(["__name__", "9a", "a-b"]), st.text(ANY_CHAR, max_size=4), max_size=2),
    ),
    "annotations": (
        st.dictionaries(NAME, st.builds(lambda a, t, b: a + t + b, VALID_TEXT, TEMPLATE, VALID_TEXT), max_size=3),
        st.dictionaries(NAME | st.sampled_from(["run-book", "a b"]), VALID_TEXT | st.just("{{ bad }}"), max_size=2),
    ),
    "matchers": (st.dictionaries(NAME, VALID_TEXT, max_size=2), st.dictionaries(VALID_TEXT, VALID_TEXT, max_size=2)),
}


@st.composite
def rule_specs(draw: st.DrawFn) -> dict[str, Any]:
    """One rule: each field valid nine times in ten, else an edge value; optional fields in half the rules."""
    spec: dict[str, Any] = {}
    for key, (valid, edge) in FIELDS.items():
        spec[key] = draw(edge if draw(st.integers(0, 9)) == 0 else valid)
    for key, (valid, edge) in OPTIONAL.items():
        if draw(st.booleans()):
            spec[key] = draw(edge if draw(st.integers(0, 9)) == 0 else valid)
    return {key: value for key, value in spec.items() if value is not None}


def accepted(specs: list[dict[str, Any]]) -> list[AlertRule]:
    """What `rules check` accepts: each valid rule, the first of each id."""
    rules: dict[str, AlertRule] = {}
    for spec in specs:
        try:
            rule = AlertRule.from_dict(spec)
        except RuleError:
            continue
        rules.setdefault(rule.id, rule)
    return list(rules.values())


def _note(rule: AlertRule) -> str:
    try:
        export_rule(rule)
    except NotExportable as reason:
        return str(reason)
    return ""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(specs=st.lists(rule_specs(), min_size=1, max_size=8), interval=st.integers(1, 10**6))
def test_what_rules_check_accepts_promtool_accepts(specs: list[dict[str, Any]], interval: int) -> None:
    promtool = require_tool("promtool")
    rules = accepted(specs)
    text = prometheus_rules(rules, interval_s=interval)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rules.yml"
        path.write_text(text, encoding="utf-8")
        check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, f"{check.stdout}{check.stderr}\n{text}"
    (group,) = yaml.safe_load(text)["groups"]
    exported = [rule for rule in rules if rule.enabled and not _note(rule)]
    assert len(group["rules"] or []) == len(exported)  # no rule more (none was injected), none lost
