"""Prometheus's alerting state machine, one instance per label set of one rule.

First true evaluation: ``pending`` with ``active_at = now``. Firing at the first evaluation where
``now - active_at >= duration`` (inclusive; a zero duration fires at once). A pending instance is dropped on a
false evaluation; a firing one resolves on the first false evaluation unless ``keep_firing_for`` still holds
it. Mirrors ``rules/alerting.go`` of Prometheus 2.42, which ``promtool test rules`` runs.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from chat_turbo_metrics.alerting._model import Alert
from chat_turbo_metrics.alerting.rules import TEMPLATE, AlertRule

TransitionState = Literal["inactive", "pending", "firing", "resolved"]


def go_float(value: float | None) -> str:
    """A float as Go's ``fmt`` prints it (``{{ $value }}`` in a Prometheus template): ``2.5``, ``1e+06``."""
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exponent = decimal.Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    exp = len(digits) + int(exponent) - 1  # decimal exponent of the first digit
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:  # Go's shortest %g: exponent form outside [1e-4, 1e6)
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{prefix}0.{'0' * (-exp - 1)}{text}"
    whole = text[: exp + 1].ljust(exp + 1, "0")
    fraction = text[exp + 1 :]
    return f"{prefix}{whole}" + (f".{fraction}" if fraction else "")


def render(template: str, value: float | None, labels: Mapping[str, str]) -> str:
    """Fill ``{{ $value }}`` and ``{{ $labels.name }}`` the way Prometheus's template does."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(2) is None:
            return go_float(value)
        return labels.get(match.group(2), "<no value>")

    return TEMPLATE.sub(substitute, template)


@dataclass
class Instance:
    """Mutable state of one alert instance (the engine's; callers see :class:`Alert` snapshots)."""

    alert: Alert
    keep_firing_since: float | None = None


@dataclass(frozen=True)
class Change:
    """A state change produced by one step."""

    alert: Alert
    previous: TransitionState
    current: TransitionState


class RuleEvaluator:
    """The active instances of one rule and the step from one evaluation to the next.

    Example:
        >>> from chat_turbo_metrics.alerting.rules import AlertRule
        >>> rule = AlertRule("r", "R", "m", "gt", 1.0, duration_s=60)
        >>> evaluator = RuleEvaluator(rule)
        >>> [c.current for c in evaluator.step(0, {"fp": ({"alertname": "R"}, 2.0)})]
        ['pending']
        >>> [c.current for c in evaluator.step(60, {"fp": ({"alertname": "R"}, 2.0)})]
        ['firing']
    """

    def __init__(self, rule: AlertRule) -> None:
        self.rule = rule
        self.active: dict[str, Instance] = {}

    def step(self, now: float, results: Mapping[str, tuple[Mapping[str, str], float | None]]) -> list[Change]:
        """Advance every instance to ``now``; ``results`` are the label sets whose condition holds (by fingerprint).

        Returns:
            The changes, in a stable order (new and updated instances first, then dropped ones).
        """
        changes: list[Change] = []
        templates = self.rule.annotations
        for fp, (labels, value) in results.items():
            instance = self.active.get(fp)
            annotations = {k: render(v, value, labels) for k, v in templates.items()} if templates else {}
            if instance is None:
                alert = Alert(self.rule.id, self.rule.name, labels, "pending", now, value, annotations=annotations)
                instance = self.active[fp] = Instance(alert)
                changes.append(Change(alert, "inactive", "pending"))
            else:
                if instance.alert.value != value or instance.alert.annotations != annotations:
                    instance.alert = replace(instance.alert, value=value, annotations=annotations)
                instance.keep_firing_since = None
            self._advance(instance, now, changes)
        for fp in [fp for fp in self.active if fp not in results]:
            self._falsify(fp, now, changes)
        return changes

    def _advance(self, instance: Instance, now: float, changes: list[Change]) -> None:
        alert = instance.alert
        if alert.state == "pending" and now - alert.active_at >= self.rule.duration_s:
            instance.alert = replace(alert, state="firing", fired_at=now)
            changes.append(Change(instance.alert, "pending", "firing"))

    def _falsify(self, fp: str, now: float, changes: list[Change]) -> None:
        instance = self.active[fp]
        alert = instance.alert
        if alert.state == "firing" and self.rule.keep_firing_for_s > 0:
            if instance.keep_firing_since is None:
                instance.keep_firing_since = now
            if now - instance.keep_firing_since < self.rule.keep_firing_for_s:
                return
        del self.active[fp]
        if alert.state == "pending":
            changes.append(Change(alert, "pending", "inactive"))
        else:
            changes.append(Change(replace(alert, state="resolved", resolved_at=now), "firing", "resolved"))

    def resolve(self, fp: str, now: float) -> Change | None:
        """End an instance by hand (it starts over as pending if its condition still holds next time)."""
        instance = self.active.pop(fp, None)
        if instance is None:
            return None
        if instance.alert.state == "pending":  # it never fired: dropped, as a false evaluation drops it
            return Change(instance.alert, "pending", "inactive")
        return Change(replace(instance.alert, state="resolved", resolved_at=now), "firing", "resolved")

    def update(self, fp: str, **changes: object) -> None:
        """Set flags (``acknowledged``, ``silenced``) on a live instance."""
        instance = self.active.get(fp)
        if instance is not None:
            instance.alert = replace(instance.alert, **changes)  # type: ignore[arg-type]
