"""The vocabulary of alert rules and the parsers of their fields: conditions, statistics, kinds, durations.

Shared by :mod:`chat_turbo_metrics.alerting.rules` (which re-exports the public names) and everything that reads
rules. The parsers take a raw field value (a TOML or YAML value, or one given in code) and raise ``TypeError`` or
``ValueError`` with the reason; :meth:`AlertRule.from_dict <chat_turbo_metrics.alerting.rules.AlertRule.from_dict>`
names the rule and the field around it.
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
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# The template syntax annotations may use: Prometheus's, so exported rules render the same text.
TEMPLATE = re.compile(r"\{\{\s*\$(value|labels\.([a-zA-Z_][a-zA-Z0-9_]*))\s*\}\}")


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
OPTIONAL_KEYS = frozenset(RULE_KEYS) - {"id", "name", "condition", "threshold"}
