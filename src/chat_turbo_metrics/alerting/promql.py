"""Hand-over to Prometheus: alert rules as a Prometheus rule file with the same meaning.

Each rule becomes one alerting rule whose PromQL reads the Prometheus name of the metric (``_total``,
``_bucket``, unit suffixes) with the rule's statistic, matchers, condition and threshold, plus ``for``,
``keep_firing_for`` (Prometheus 2.42+), labels and annotations. Rules without an exact PromQL equivalent (span
rules, the histogram ``max``, missing-data modes other than ``ok``, disabled rules) are left out with a
comment saying why, rather than exported with a different meaning.

Everything a user wrote is data in the file, never structure: strings are YAML double-quoted scalars with control
characters escaped (and characters beyond the BMP written as themselves, not as the surrogate pairs YAML rejects),
PromQL strings are quoted, ``{{`` in a label value is written so that Prometheus's templating leaves it as it is
(this engine does not template labels), and a rule left out is named in a quoted comment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chat_turbo_metrics._core.naming import (
    KNOWN_METRICS,
    Kind,
    counter_name,
    infer_unit,
    prometheus_label,
    prometheus_name,
    timer_name,
)
from chat_turbo_metrics.alerting.rules import CONDITIONS, AlertRule

_QUANTILES = {"p50": "0.5", "p90": "0.9", "p95": "0.95", "p99": "0.99"}
# Escaped in a YAML double-quoted scalar: the quote, the backslash, and what YAML does not allow as it is (C0 and C1
# controls, DEL) or what would break a line or reorder the text when the file is read.
_YAML_ESCAPED = re.compile(
    r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff\ufffe\uffff]'
)
_UNITS_MS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


class NotExportable(ValueError):
    """A rule whose meaning PromQL cannot express exactly."""


@dataclass(frozen=True)
class ExportedRule:
    """One Prometheus alerting rule."""

    alert: str
    expr: str
    for_: str
    keep_firing_for: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


def prometheus_duration(seconds: float) -> str:
    """A Prometheus duration string (``300`` -> ``"5m"``, ``90`` -> ``"1m30s"``, ``0.25`` -> ``"250ms"``).

    Example:
        >>> prometheus_duration(300), prometheus_duration(90), prometheus_duration(0)
        ('5m', '1m30s', '0s')
    """
    remaining = round(seconds * 1000)
    parts = []
    for unit, size in _UNITS_MS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def yaml_string(text: str) -> str:
    """``text`` as a YAML double-quoted scalar that Go's YAML parser (Prometheus's) reads back unchanged.

    Example:
        >>> print(yaml_string('a "b"\\n\U0001f600'))
        "a \\"b\\"\\x0a\U0001f600"
    """

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in '"\\':
            return "\\" + char
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return '"' + _YAML_ESCAPED.sub(escape, text) + '"'


def promql_string(text: str) -> str:
    """``text`` as a PromQL string literal (Go's escapes; characters beyond the BMP as themselves)."""
    return json.dumps(text, ensure_ascii=False)


def template_literal(text: str) -> str:
    """``text`` that Prometheus's label templating renders as it is (``{{`` would start an action)."""
    return text.replace("{{", '{{ "{{" }}')


def alert_name(name: str) -> str:
    """A valid Prometheus alert name from a rule name (``"High API Response Time"`` -> ``HighAPIResponseTime``)."""
    words = [w for w in re.split(r"[^A-Za-z0-9_]+", name) if w]
    text = "".join(w[0].upper() + w[1:] for w in words) or "Alert"
    return f"Alert{text}" if text[0].isdigit() else text


def metric_kind(rule: AlertRule) -> str:
    """The kind of the rule's metric: its ``kind``, the seed's table, else what its statistic reads.

    Raises:
        NotExportable: the kind cannot be told.
    """
    if rule.kind is not None:
        return rule.kind
    known = KNOWN_METRICS.get(counter_name(rule.metric)) or KNOWN_METRICS.get(rule.metric)
    if known is not None:
        return known.kind
    if rule.statistic in ("rate", "increase") or (rule.statistic in (None, "value") and rule.metric.endswith("_total")):
        return "counter"
    if rule.statistic in ("mean", "max", *_QUANTILES):
        return "histogram"
    if rule.statistic == "value":
        return "gauge"
    raise NotExportable("its metric's kind is unknown: set `kind` or `statistic`")


def metric_name(rule: AlertRule, kind: str) -> str:
    """The Prometheus family name of the rule's metric, whichever name the rule used."""
    instrument, unit = rule.metric, infer_unit(rule.metric)
    if kind == "counter":
        instrument = counter_name(rule.metric)
        unit = infer_unit(instrument)
    elif kind == "timer":  # a timer records `<name>_duration` in seconds
        instrument, unit, kind = timer_name(rule.metric), "s", "histogram"
    prom_kind: Kind = kind  # type: ignore[assignment]
    return prometheus_name(instrument, unit, prom_kind)


def expression(rule: AlertRule) -> str:
    """The PromQL expression that is true for exactly the series the rule fires on.

    Raises:
        NotExportable: the rule has no exact PromQL equivalent.
    """
    if rule.spans is not None:
        raise NotExportable("span rules read spans, which Prometheus does not have")
    if rule.missing_data != "ok":
        raise NotExportable(f"missing_data={rule.missing_data!r} has no PromQL equivalent")
    kind = metric_kind(rule)
    name = metric_name(rule, kind)
    statistic = rule.resolved_statistic("histogram" if kind == "timer" else kind)
    matchers = ",".join(f"{prometheus_label(k)}={promql_string(v)}" for k, v in sorted(rule.matchers.items()))
    selector = "{" + matchers + "}" if matchers else ""
    window = f"[{prometheus_duration(rule.window_s)}]"
    if statistic == "value":
        query = f"{name}{selector}"
    elif statistic in ("rate", "increase"):
        query = f"{statistic}({name}{selector}{window})"
    elif statistic in _QUANTILES:
        query = f"histogram_quantile({_QUANTILES[statistic]}, rate({name}_bucket{selector}{window}))"
    elif statistic == "mean":
        query = f"(rate({name}_sum{selector}{window}) / rate({name}_count{selector}{window}))"
    else:
        raise NotExportable(f"statistic {statistic!r} has no PromQL equivalent on a classic histogram")
    return f"{query} {CONDITIONS[rule.condition][1]} {rule.threshold!r}"


def export_rule(rule: AlertRule) -> ExportedRule:
    """The Prometheus alerting rule of one rule.

    Raises:
        NotExportable: the rule has no exact PromQL equivalent, or is disabled.
    """
    if not rule.enabled:
        raise NotExportable("disabled")
    return ExportedRule(
        alert=alert_name(rule.name),
        expr=expression(rule),
        for_=prometheus_duration(rule.duration_s),
        keep_firing_for=prometheus_duration(rule.keep_firing_for_s) if rule.keep_firing_for_s else None,
        labels={key: template_literal(value) for key, value in {"severity": rule.severity, **rule.labels}.items()},
        annotations=dict(rule.annotations),
    )


def _mapping(indent: str, key: str, values: Mapping[str, str]) -> list[str]:
    if not values:
        return []
    return [f"{indent}{key}:", *(f"{indent}  {yaml_string(k)}: {yaml_string(v)}" for k, v in values.items())]


def prometheus_rules(rules: Iterable[AlertRule], *, group: str = "chat_turbo_metrics", interval_s: float = 60) -> str:
    """A Prometheus rule file (YAML) for ``rules``; rules without an equivalent appear as comments.

    Args:
        rules: the rules to export.
        group: the rule group's name.
        interval_s: the group's evaluation interval (use the alert manager's).

    Returns:
        The file's text; ``promtool check rules`` accepts it.

    Example:
        >>> rule = AlertRule("memory", "High Memory", "memory_usage_mb", "gt", 512.0, duration_s=300)
        >>> print(prometheus_rules([rule]).splitlines()[6].strip())
        expr: "memory_usage_mb > 512.0"
    """
    lines = [
        "# Generated by `chat-turbo-metrics rules export --format prometheus`.",
        "groups:",
        f"  - name: {yaml_string(group)}",
        f"    interval: {prometheus_duration(interval_s)}",
        "    rules:",
    ]
    exported = 0
    for rule in rules:
        try:
            out = export_rule(rule)
        except NotExportable as reason:
            lines.append(f"      # {yaml_string(f'{rule.id}: not exported: {reason}')}")  # one line, whatever the id
            continue
        exported += 1
        lines += [f"      - alert: {yaml_string(out.alert)}", f"        expr: {yaml_string(out.expr)}"]
        lines.append(f"        for: {out.for_}")
        if out.keep_firing_for:
            lines.append(f"        keep_firing_for: {out.keep_firing_for}")
        lines += _mapping("        ", "labels", out.labels) + _mapping("        ", "annotations", out.annotations)
    if not exported:
        lines[4] = "    rules: []"
    return "\n".join(lines) + "\n"
