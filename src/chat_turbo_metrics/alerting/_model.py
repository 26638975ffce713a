"""The alert objects shared by evaluation (Alerting I) and notification (Alerting II).

Evaluation produces :class:`Alert` snapshots and :class:`AlertTransition` events; dispatch consumes them.
Both sides depend on this module only, so either can change without the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

AlertState = Literal["pending", "firing", "resolved"]
"""``pending`` (condition true, ``duration`` not yet reached), ``firing``, ``resolved`` (was firing, is no longer)."""


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable identity of a label set (order-independent), like Alertmanager's alert fingerprint.

    Example:
        >>> fingerprint({"alertname": "HighLatency", "severity": "high"}) == fingerprint(
        ...     {"severity": "high", "alertname": "HighLatency"}
        ... )
        True
    """
    digest = hashlib.sha256()
    for key in sorted(labels):  # "surrogatepass": a lone surrogate in a value is data too, never an error here
        digest.update(key.encode("utf-8", "surrogatepass"))
        digest.update(b"\xff")
        digest.update(str(labels[key]).encode("utf-8", "surrogatepass"))
        digest.update(b"\xff")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Alert:
    """One alert instance (one rule, one label set) at one moment; immutable, safe to hand to other threads.

    Example:
        >>> alert = Alert(rule_id="high-response-time", name="High API Response Time",
        ...               labels={"alertname": "High API Response Time", "severity": "high"},
        ...               state="firing", active_at=100.0, value=2.5)
        >>> alert.fingerprint == fingerprint(alert.labels)
        True

    Attributes:
        rule_id: the rule's ``id``.
        name: the rule's ``name`` (also the ``alertname`` label).
        labels: series labels + ``alertname`` + ``severity`` + the rule's extra labels.
        state: see :data:`AlertState`.
        active_at: when the condition first became true (clock seconds).
        value: the value the rule read at the last evaluation (None: no data).
        annotations: the rule's annotations, templated with value and labels.
        fired_at: when it started firing (None while pending).
        resolved_at: when it resolved (None unless ``state == "resolved"``).
        acknowledged: acknowledged by a user; no repeat notifications until it resolves.
        silenced: muted by a silence at the last evaluation.
    """

    rule_id: str
    name: str
    labels: Mapping[str, str]
    state: AlertState
    active_at: float
    value: float | None
    annotations: Mapping[str, str] = field(default_factory=dict)
    fired_at: float | None = None
    resolved_at: float | None = None
    acknowledged: bool = False
    silenced: bool = False

    @property
    def fingerprint(self) -> str:
        """The identity of this alert instance: :func:`fingerprint` of its labels."""
        return fingerprint(self.labels)


@dataclass(frozen=True)
class AlertTransition:
    """One change of an alert's state, as received by listeners.

    ``previous`` is ``"inactive"`` for a new alert; ``current`` is ``"inactive"`` when a pending alert is
    dropped without ever firing.
    """

    alert: Alert
    previous: Literal["inactive", "pending", "firing", "resolved"]
    current: Literal["inactive", "pending", "firing", "resolved"]
    at: float


class AlertListener(Protocol):
    """Receives every transition, on the evaluating thread: must be quick and must not raise."""

    def __call__(self, transition: AlertTransition) -> None: ...


class EvaluationHook(Protocol):
    """Called after each evaluation with its time and every current (pending, firing, just resolved) alert."""

    def __call__(self, now: float, alerts: tuple[Alert, ...]) -> None: ...
