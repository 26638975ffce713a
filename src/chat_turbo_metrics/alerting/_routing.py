"""Routing rules: which alerts a route takes and how it groups them, inhibition, and when a group is news.

The pure decisions of dispatch, kept apart from its state so each can be read (and tested) on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chat_turbo_metrics.alerting._delivery import Channel, Sender
from chat_turbo_metrics.alerting._matchers import Matcher, match_all
from chat_turbo_metrics.alerting._model import Alert
from chat_turbo_metrics.alerting._nflog import LogEntry

ALL_LABELS = "..."
"""``group_by=("...",)`` groups by every label: one message per alert, as in Alertmanager."""

# A route's defaults, Alertmanager's: one message per alert name, gathered for 30 s, looked at every 5 minutes,
# an unchanged firing group sent again every 4 hours.
GROUP_BY: tuple[str, ...] = ("alertname",)
GROUP_WAIT_S = 30.0
GROUP_INTERVAL_S = 300.0
REPEAT_INTERVAL_S = 14400.0


@dataclass(frozen=True)
class Route:
    """Where alerts that match go, and how they are grouped and throttled (see :meth:`Dispatcher.add_route`)."""

    name: str
    notifier: Sender
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...]
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    send_resolved: bool
    channel: Channel = field(repr=False, compare=False)

    def group_of(self, labels: dict[str, str] | Any) -> dict[str, str]:
        """The labels that name this alert's group, in a fixed order (group_by's, or sorted for ``...``)."""
        if ALL_LABELS in self.group_by:
            return dict(sorted(labels.items()))
        return {key: labels[key] for key in self.group_by if key in labels}


@dataclass(frozen=True)
class Inhibition:
    """While an alert matching ``source`` fires, alerts matching ``target`` with the same ``equal`` labels are muted."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]

    def mutes(self, fp: str, alert: Alert, sources: Iterable[tuple[str, Alert]]) -> bool:
        """True when ``alert`` (fingerprint ``fp``) is a target and one of the firing ``sources`` mutes it.

        ``sources`` are (fingerprint, alert) pairs of the firing alerts that match ``source``.
        """
        if not match_all(self.target, alert.labels):
            return False
        return any(
            source_fp != fp and all(source.labels.get(key, "") == alert.labels.get(key, "") for key in self.equal)
            for source_fp, source in sources
        )


class Forwarder(Protocol):
    """Hands alerts to another alerting system (:class:`~chat_turbo_metrics.alerting.AlertmanagerForwarder`)."""

    def senders(self) -> list[tuple[str, Callable[[bytes], None]]]:
        """One (name, send) per destination; each gets its own delivery queue."""
        ...

    def due(self, now: float, alerts: Sequence[Alert]) -> list[bytes]:
        """The bodies to send at ``now``, given this evaluation's firing and resolved alerts."""
        ...


def group_key(route: Route, labels: dict[str, str]) -> str:
    """Alertmanager's group key: the route's matchers, then the group's labels."""
    inner = ", ".join(f'{key}="{labels[key]}"' for key in sorted(labels))
    return "{" + ", ".join(str(m) for m in route.matchers) + "}:{" + inner + "}"


def needs_update(
    previous: LogEntry | None,
    firing: dict[str, Alert],
    resolved: dict[str, Alert],
    route: Route,
    now: float,
    *,
    tick: float | None = None,
) -> bool:
    """Alertmanager's deduplication, per receiver and group, with acknowledgements silencing repeats.

    ``repeat_interval`` is measured in scheduling time (``tick``) when this process made the previous decision,
    else (an entry read from the notification log's file) in the evaluations' time ``now``.
    """
    if previous is None:
        return bool(firing)  # never told: only news of firing alerts is worth a message
    if not firing.keys() <= previous.firing:
        return True  # something new fires
    if not firing:
        return bool(previous.firing)  # everything the receiver knows of has resolved (or been muted)
    if route.send_resolved and not resolved.keys() <= previous.resolved:
        return True
    elapsed = tick - previous.tick if tick is not None and previous.tick is not None else now - previous.at
    repeat_due = elapsed >= route.repeat_interval_s
    return repeat_due and any(not alert.acknowledged for alert in firing.values())
