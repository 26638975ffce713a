"""Alert rules: the seed's ``{id, name, metric, condition, threshold, duration, severity, enabled}`` and more.

A rule is parsed once, when it is added or its file is loaded; every mistake is a :class:`RuleError` naming
the rule's id and the field. Defaults follow Prometheus where the seed says nothing, and so do the limits: a rule
that is valid here exports to a rule file ``promtool check rules`` accepts (label and annotation names, durations
from 1 ms for a window up to Prometheus's longest, 106751d23h47m16s854ms, at millisecond resolution).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chat_turbo_metrics._core.config import ConfigurationError
from chat_turbo_metrics.alerting._rule_fields import (
    CONDITIONS,
    DEFAULT_STATISTICS,
    DEFAULT_WINDOW_S,
    KINDS,
    LABEL_NAME,
    MAX_DURATION_S,
    MISSING_DATA,
    OPTIONAL_KEYS,
    RULE_KEYS,
    SPAN_KINDS,
    STATISTICS,
    TEMPLATE,
    Condition,
    MissingData,
    SpanSelector,
    parse_duration,
)

__all__ = [
    "CONDITIONS",
    "DEFAULT_STATISTICS",
    "DEFAULT_WINDOW_S",
    "KINDS",
    "MAX_DURATION_S",
    "MISSING_DATA",
    "RULE_KEYS",
    "SPAN_KINDS",
    "STATISTICS",
    "TEMPLATE",
    "AlertRule",
    "Condition",
    "MissingData",
    "RuleError",
    "SpanSelector",
    "parse_duration",
]


class RuleError(ConfigurationError):
    """A rule that cannot be used: names the rule's id and the field.

    Attributes:
        rule_id: the rule's ``id`` (``"?"`` when it has none).
        field: the offending key.
    """

    def __init__(self, rule_id: str, field_name: str, problem: str) -> None:
        super().__init__(f"alert rule {rule_id!r}: {field_name}: {problem}")
        self.rule_id = rule_id
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule. Build it from the seed's dict with :meth:`from_dict` (what ``add_rule`` does).

    Example:
        >>> rule = AlertRule.from_dict({"id": "high-response-time", "name": "High API Response Time",
        ...     "metric": "http_request_duration_seconds", "condition": "gt", "threshold": 2.0,
        ...     "duration": "5m", "severity": "high", "enabled": True})
        >>> rule.duration_s, rule.resolved_statistic("histogram"), rule.window_s
        (300.0, 'p95', 300.0)

    Attributes:
        metric: the recording name or the Prometheus name (``messages_sent`` or ``messages_sent_total``; a
            timer ``api_request`` or ``api_request_duration_seconds``). Empty for a span rule.
        statistic: what is compared (see :data:`STATISTICS`); None: the kind's default (:data:`DEFAULT_STATISTICS`).
        window_s: the range of ``rate``/``increase`` and of histogram statistics (Prometheus's ``[5m]``).
        matchers: label equality matchers selecting series (attribute keys or their Prometheus label names).
        keep_firing_for_s: how long a firing alert stays firing after its condition turned false.
        missing_data: ``ok`` (Prometheus: an absent series resolves), ``alerting`` (absence is a breach),
            ``keep_last`` (the last value keeps counting) or ``no_data`` (a separate alert labelled ``no_data``).
        kind: the metric's kind, needed only by the Prometheus export when the name does not tell.
        spans: for a span rule, the spans it reads (see :class:`SpanSelector`).
    """

    id: str
    name: str
    metric: str
    condition: Condition
    threshold: float
    duration_s: float = 0.0
    severity: str = "warning"
    enabled: bool = True
    statistic: str | None = None
    window_s: float = DEFAULT_WINDOW_S
    matchers: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    keep_firing_for_s: float = 0.0
    missing_data: MissingData = "ok"
    kind: str | None = None
    spans: SpanSelector | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> AlertRule:
        """Parse and validate the seed's rule dict (plus the optional keys in :data:`RULE_KEYS`).

        Args:
            spec: the rule; ``duration`` and ``window`` in seconds or as ``"5m"``-style strings.

        Returns:
            The rule.

        Raises:
            RuleError: a missing, unknown or bad field, naming the rule's id and the field.
        """
        if not isinstance(spec, Mapping):
            raise RuleError("?", "rule", f"expected a table of fields, got {type(spec).__name__}")
        rule_id = spec.get("id")
        if not isinstance(rule_id, str) or not rule_id.strip():
            raise RuleError(str(rule_id) if rule_id is not None else "?", "id", "required: a non-empty string")
        unknown = sorted(set(spec) - set(RULE_KEYS))
        if unknown:
            raise RuleError(rule_id, unknown[0], f"unknown field (known: {', '.join(RULE_KEYS)})")
        values: dict[str, Any] = {"id": rule_id, "metric": ""}
        for key, parse in RULE_KEYS.items():
            if key == "id" or (key not in spec and key in OPTIONAL_KEYS):
                continue
            if key not in spec:
                raise RuleError(rule_id, key, "required")
            try:
                attribute, value = parse(spec[key])
            except (TypeError, ValueError) as error:
                raise RuleError(rule_id, key, f"{error} (got {spec[key]!r})") from None
            values[attribute] = value
        rule = cls(**values)
        rule.validate()
        return rule

    def validate(self) -> None:
        """Check the combination of fields (a rule built directly is checked by ``add_rule``).

        Raises:
            RuleError: a bad combination, e.g. a histogram statistic on a gauge or a span rule with a metric.
        """
        if self.condition not in CONDITIONS:
            raise RuleError(self.id, "condition", f"one of {', '.join(CONDITIONS)} (got {self.condition!r})")
        if not self.metric and self.spans is None:
            raise RuleError(self.id, "metric", "required (or `spans` for a span rule)")
        if self.metric and self.spans is not None:
            raise RuleError(self.id, "spans", "a rule reads either a metric or spans, not both")
        self._validate_statistic()
        self._validate_durations()
        self._validate_text()
        for key in self.labels:
            if not LABEL_NAME.match(key) or key == "__name__":  # Prometheus rejects __name__ as a rule label
                raise RuleError(self.id, "labels", f"{key!r} is not a valid label name")
        for key, text in self.annotations.items():
            if not LABEL_NAME.match(key):  # Prometheus checks annotation names as label names
                raise RuleError(self.id, "annotations", f"{key!r} is not a valid annotation name")
            if not _only_placeholders(text):
                raise RuleError(self.id, "annotations", f"{key}: only {{{{ $value }}}} and {{{{ $labels.name }}}}")
        for key in self.matchers:
            if key.startswith("__"):
                raise RuleError(self.id, "matchers", f"{key!r}: names starting with __ are Prometheus's own")
        for reserved in ("alertname", "severity"):
            if reserved in self.labels:
                raise RuleError(self.id, "labels", f"{reserved!r} is set from the rule's own field")

    def _validate_durations(self) -> None:
        bounds = (
            ("window", self.window_s, 0.001),  # PromQL: a range must be greater than 0 (it counts milliseconds)
            ("duration", self.duration_s, 0.0),
            ("keep_firing_for", self.keep_firing_for_s, 0.0),
        )
        for name, seconds, least in bounds:
            if not least <= seconds <= MAX_DURATION_S:  # also NaN
                shown = "1ms" if least else "0"
                raise RuleError(self.id, name, f"must be from {shown} to {MAX_DURATION_S:.3f} s (got {seconds!r})")

    def _validate_text(self) -> None:
        """Every text must be valid Unicode: a lone surrogate cannot be written to a rule file (or a payload)."""
        texts: list[tuple[str, str]] = [("id", self.id), ("name", self.name), ("metric", self.metric)]
        texts.append(("severity", self.severity))
        for field_name in ("matchers", "labels", "annotations"):
            texts += [(field_name, text) for item in getattr(self, field_name).items() for text in item]
        if self.spans is not None:
            texts += [
                ("spans", self.spans.name or ""),
                *(("spans", t) for i in self.spans.attributes.items() for t in i),
            ]
        for field_name, text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise RuleError(self.id, field_name, "contains a lone surrogate, which is not valid text") from None

    def _validate_statistic(self) -> None:
        if self.statistic is None:
            return
        kinds = STATISTICS.get(self.statistic)
        if kinds is None:
            raise RuleError(self.id, "statistic", f"one of {', '.join(STATISTICS)} (got {self.statistic!r})")
        applies = "spans" in kinds if self.spans is not None else bool(kinds - {"spans"})
        if not applies:
            data = "spans" if self.spans is not None else "metrics"
            raise RuleError(self.id, "statistic", f"{self.statistic!r} does not apply to {data}")
        if self.statistic == "slow_count" and (self.spans is None or self.spans.slow_threshold_s is None):
            raise RuleError(self.id, "spans", "slow_count needs spans.slow_threshold")
        if self.kind is not None and self.spans is None:
            kind = "histogram" if self.kind == "timer" else self.kind
            if kind not in kinds:
                raise RuleError(self.id, "statistic", f"{self.statistic!r} does not apply to a {self.kind}")

    def resolved_statistic(self, kind: str) -> str:
        """The statistic read from data of ``kind`` (the rule's own, else the kind's default)."""
        return self.statistic or DEFAULT_STATISTICS.get(kind, "value")

    def definition(self) -> tuple[Any, ...]:
        """Everything that decides when the rule fires: equal definitions under two ids are duplicates."""
        return (
            self.metric,
            self.spans.key if self.spans else None,
            self.statistic,
            self.window_s,
            tuple(sorted(self.matchers.items())),
            self.condition,
            self.threshold,
            self.duration_s,
        )


def _only_placeholders(text: str) -> bool:
    """Every ``{{`` of ``text`` opens a ``{{ $value }}`` or ``{{ $labels.name }}``, read left to right as Prometheus's
    Go template does: in ``{{{ $value }}`` the action opens at the first brace, and ``{ $value`` is no command."""
    start = text.find("{{")
    while start != -1:
        found = TEMPLATE.match(text, start)
        if found is None:
            return False
        start = text.find("{{", found.end())
    return True
