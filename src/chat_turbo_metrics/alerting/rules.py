"""Alert rules: the seed's ``{id, name, metric, condition, threshold, duration, severity, enabled}`` and more.

A rule is parsed once, when it is added or its file is loaded; every mistake is a :class:`RuleError` naming
the rule's id and the field. Defaults follow Prometheus where the seed says nothing, and so do the limits: a rule
that is valid here exports to a rule file ``promtool check rules`` accepts (label and annotation names, durations
from 1 ms for a window up to Prometheus's longest, 106751d23h47m16s854ms, at millisecond resolution).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal

from chat_turbo_metrics._config import ConfigurationError

Condition = Literal["gt", "gte", "lt", "lte", "eq", "ne"]
MissingData = Literal["ok", "alerting", "keep_last", "no_data"]

# condition -> (Python comparison, PromQL operator)
CONDITIONS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "gt": (operator.gt, ">"),
    "gte": (operator.ge, ">="),
    "lt": (operator.lt, "<"),
    "lte": (operator.le, "<="),
    "eq": (operator.eq, "=="),
    "ne": (operator.ne, "!="),
}
_CONDITION_ALIASES = {"ge": "gte", "le": "lte", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte", "==": "eq", "!=": "ne"}

# statistic -> the metric kinds it reads. "value" is the latest value (a counter's running total).
STATISTICS: dict[str, frozenset[str]] = {
    "value": frozenset({"gauge", "counter", "updowncounter"}),
    "rate": frozenset({"counter", "spans"}),
    "increase": frozenset({"counter", "spans"}),
    "mean": frozenset({"histogram", "spans"}),
    "max": frozenset({"histogram", "spans"}),
    "p50": frozenset({"histogram", "spans"}),
    "p90": frozenset({"histogram", "spans"}),
    "p95": frozenset({"histogram", "spans"}),
    "p99": frozenset({"histogram", "spans"}),
    "error_rate": frozenset({"spans"}),
    "slow_count": frozenset({"spans"}),
}
# What a rule reads when it names no statistic. A histogram's default is p95: latency alerts such as the seed's
# "http_request_duration_seconds gt 2.0" are about the slow tail, which a mean hides behind fast requests, and
# Prometheus computes the same number with histogram_quantile, so the exported rule agrees with this engine.
DEFAULT_STATISTICS: dict[str, str] = {
    "gauge": "value",
    "updowncounter": "value",
    "counter": "rate",
    "histogram": "p95",
    "spans": "p95",
}
KINDS = ("gauge", "counter", "updowncounter", "histogram", "timer")
MISSING_DATA = ("ok", "alerting", "keep_last", "no_data")
SPAN_KINDS = ("internal", "server", "client", "producer", "consumer")
DEFAULT_WINDOW_S = 300.0
MAX_DURATION_S = 9_223_372_036.854
"""Prometheus's longest duration: 2**63 - 1 nanoseconds (Go's ``time.Duration``), in whole milliseconds."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# The template syntax annotations may use: Prometheus's, so exported rules render the same text.
TEMPLATE = re.compile(r"\{\{\s*\$(value|labels\.([a-zA-Z_][a-zA-Z0-9_]*))\s*\}\}")


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
class SpanSelector:
    """Which finished spans a span rule reads: all given parts must match.

    Example:
        >>> SpanSelector(name="GET /api/messages", kind="server").key
        ('GET /api/messages', 'server', (), None)
    """

    name: str | None = None
    kind: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    slow_threshold_s: float | None = None

    @property
    def key(self) -> tuple[str | None, str | None, tuple[tuple[str, str], ...], float | None]:
        """A hashable identity: rules with the same selector share one aggregate."""
        return (self.name, self.kind, tuple(sorted(self.attributes.items())), self.slow_threshold_s)


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
            if key == "id" or (key not in spec and key in _OPTIONAL):
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
            if not _LABEL_NAME.match(key) or key == "__name__":  # Prometheus rejects __name__ as a rule label
                raise RuleError(self.id, "labels", f"{key!r} is not a valid label name")
        for key, text in self.annotations.items():
            if not _LABEL_NAME.match(key):  # Prometheus checks annotation names as label names
                raise RuleError(self.id, "annotations", f"{key!r} is not a valid annotation name")
            if "{{" in TEMPLATE.sub("", text):
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


def parse_duration(value: object) -> float:
    """Seconds from a number or a Prometheus-style duration (``"90s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``).

    Durations have Prometheus's range and resolution: whole milliseconds, at most :data:`MAX_DURATION_S`.

    Args:
        value: non-negative seconds, or a duration string.

    Returns:
        Seconds, rounded to the millisecond.

    Raises:
        ValueError: negative, not finite, longer than Prometheus's longest duration, or not a duration.

    Example:
        >>> parse_duration("1h30m"), parse_duration(45), parse_duration("250ms")
        (5400.0, 45.0, 0.25)
    """
    if isinstance(value, str):
        text = value.strip()
        parts = _DURATION.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            raise ValueError("expected seconds or a duration such as '5m', '1h30m', '90s'")
        seconds = sum(float(number) * _UNIT_S[unit] for number, unit in parts)  # a 309-digit number: inf
    else:
        seconds = _number(value)
        if seconds < 0:
            raise ValueError("must be >= 0")
    if not seconds <= MAX_DURATION_S:
        raise ValueError(f"longer than Prometheus's longest duration ({MAX_DURATION_S:.3f} s, about 292 years)")
    return round(seconds * 1000) / 1000


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise TypeError("expected a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError("too large") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError("expected a non-empty string")
    return value


def _string_map(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise TypeError("expected a table of names to values")
    if any(isinstance(item, Mapping | list | tuple) or item is None for item in value.values()):
        raise TypeError("values must be strings or numbers")
    return MappingProxyType({key: _label_value(item) for key, item in value.items()})


def _label_value(value: object) -> str:
    """Attribute values as Prometheus shows them (``True`` -> ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _condition(value: object) -> Condition:
    name = _CONDITION_ALIASES.get(str(value), value)
    if name not in CONDITIONS:
        raise ValueError(f"expected one of {', '.join(CONDITIONS)} (or ge, le)")
    return name  # type: ignore[return-value]


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(value)

    return parse


def _statistic(value: object) -> str:
    return _choice(tuple(STATISTICS))(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _spans(value: object) -> SpanSelector:
    if not isinstance(value, Mapping):
        raise TypeError("expected a table with name, kind, attributes, slow_threshold")
    unknown = set(value) - {"name", "kind", "attributes", "slow_threshold"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
    kind = value.get("kind")
    if kind is not None:
        kind = _choice(SPAN_KINDS)(str(kind).lower())
    slow = value.get("slow_threshold")
    return SpanSelector(
        name=_text(value["name"]) if value.get("name") is not None else None,
        kind=kind,
        attributes=_string_map(value.get("attributes", {})),
        slow_threshold_s=parse_duration(slow) if slow is not None else None,
    )


def _as(attribute: str, parse: Callable[[Any], Any]) -> Callable[[Any], tuple[str, Any]]:
    return lambda value: (attribute, parse(value))


# key of the seed's dict -> parser returning (AlertRule field, value)
RULE_KEYS: dict[str, Callable[[Any], tuple[str, Any]]] = {
    "id": _as("id", _text),
    "name": _as("name", _text),
    "metric": _as("metric", _text),
    "condition": _as("condition", _condition),
    "threshold": _as("threshold", _number),
    "duration": _as("duration_s", parse_duration),
    "severity": _as("severity", _text),
    "enabled": _as("enabled", _bool),
    "statistic": _as("statistic", _statistic),
    "window": _as("window_s", parse_duration),
    "matchers": _as("matchers", _string_map),
    "labels": _as("labels", _string_map),
    "annotations": _as("annotations", _string_map),
    "keep_firing_for": _as("keep_firing_for_s", parse_duration),
    "missing_data": _as("missing_data", _choice(MISSING_DATA)),
    "kind": _as("kind", _choice(KINDS)),
    "spans": _as("spans", _spans),
}
_OPTIONAL = frozenset(RULE_KEYS) - {"id", "name", "condition", "threshold"}
