"""What a notifier receives: one message about one group of alerts, shaped like Alertmanager's webhook payload.

A :class:`Notification` carries what Alertmanager's webhook (version "4") carries, plus each alert's value, and
renders itself as that JSON (:meth:`Notification.to_webhook_payload`), so receivers written for Alertmanager work
unchanged. Times are clock seconds (Unix time) here and RFC 3339 in the payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from chat_turbo_metrics.alerting._model import Alert

NotificationStatus = Literal["firing", "resolved"]

ZERO_TIME = "0001-01-01T00:00:00Z"
"""How Alertmanager writes "no end time" (a firing alert's ``endsAt``)."""


def rfc3339(seconds: float | None) -> str:
    """Clock seconds as Alertmanager writes them (UTC, microseconds, ``Z``); ``None`` is the zero time.

    Args:
        seconds: Unix time, or ``None``.

    Returns:
        The timestamp text.

    Example:
        >>> rfc3339(0.5)
        '1970-01-01T00:00:00.500000Z'
        >>> rfc3339(None)
        '0001-01-01T00:00:00Z'
    """
    if seconds is None:
        return ZERO_TIME
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class NotifiedAlert:
    """One alert as a notification reports it.

    Example:
        >>> alert = Alert(rule_id="r", name="HighCPU", labels={"alertname": "HighCPU", "severity": "warning"},
        ...               state="firing", active_at=10.0, value=93.5, fired_at=40.0)
        >>> NotifiedAlert.from_alert(alert).starts_at
        40.0
    """

    status: NotificationStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float | None
    value: float | None
    fingerprint: str
    generator_url: str = ""

    @classmethod
    def from_alert(cls, alert: Alert, generator_url: str = "") -> NotifiedAlert:
        """The alert's firing or resolved view; it starts when it started firing."""
        status: NotificationStatus = "resolved" if alert.state == "resolved" else "firing"
        starts = alert.fired_at if alert.fired_at is not None else alert.active_at
        return cls(
            status=status,
            labels=dict(alert.labels),
            annotations=dict(alert.annotations),
            starts_at=starts,
            ends_at=alert.resolved_at if status == "resolved" else None,
            value=alert.value,
            fingerprint=alert.fingerprint,
            generator_url=generator_url,
        )

    def to_webhook_alert(self) -> dict[str, Any]:
        """This alert as one element of the webhook payload's ``alerts``."""
        return {
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at),
            "generatorURL": self.generator_url,
            "fingerprint": self.fingerprint,
        }


def _common(items: list[Mapping[str, str]]) -> dict[str, str]:
    if not items:
        return {}
    first = items[0]
    return {key: value for key, value in first.items() if all(other.get(key) == value for other in items[1:])}


@dataclass(frozen=True)
class Notification:
    """One message about one group of alerts, for one receiver.

    Example:
        >>> alert = Alert(rule_id="r", name="HighCPU", state="firing", active_at=0.0, value=93.5,
        ...               labels={"alertname": "HighCPU", "service": "api", "severity": "warning"})
        >>> note = Notification.for_alerts("ops", [alert], group_labels={"alertname": "HighCPU"})
        >>> note.title
        '[FIRING:1] HighCPU (api warning)'
        >>> note.to_webhook_payload()["version"]
        '4'
    """

    receiver: str
    status: NotificationStatus
    group_labels: Mapping[str, str]
    alerts: tuple[NotifiedAlert, ...]
    group_key: str = ""
    external_url: str = ""
    truncated_alerts: int = 0
    common_labels: Mapping[str, str] = field(init=False)
    common_annotations: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "common_labels", _common([alert.labels for alert in self.alerts]))
        object.__setattr__(self, "common_annotations", _common([alert.annotations for alert in self.alerts]))

    @classmethod
    def for_alerts(
        cls,
        receiver: str,
        alerts: list[Alert],
        group_labels: Mapping[str, str],
        group_key: str = "",
        external_url: str = "",
    ) -> Notification:
        """Build the notification for a group: ``firing`` if any alert still fires, else ``resolved``."""
        notified = tuple(NotifiedAlert.from_alert(alert) for alert in alerts)
        status: NotificationStatus = "firing" if any(a.status == "firing" for a in notified) else "resolved"
        return cls(receiver, status, dict(group_labels), notified, group_key, external_url)

    @property
    def firing(self) -> tuple[NotifiedAlert, ...]:
        """The alerts still firing."""
        return tuple(alert for alert in self.alerts if alert.status == "firing")

    @property
    def resolved(self) -> tuple[NotifiedAlert, ...]:
        """The alerts resolved since the group's last notification."""
        return tuple(alert for alert in self.alerts if alert.status == "resolved")

    @property
    def title(self) -> str:
        """Alertmanager's default title: ``[FIRING:2] <group label values> (<other common label values>)``."""
        head = f"[FIRING:{len(self.firing)}]" if self.status == "firing" else "[RESOLVED]"
        parts = [head, *(self.group_labels[key] for key in sorted(self.group_labels))]
        rest = {key: value for key, value in self.common_labels.items() if key not in self.group_labels}
        if rest:
            parts.append("(" + " ".join(rest[key] for key in sorted(rest)) + ")")
        return " ".join(parts)

    def truncated(self, max_alerts: int) -> Notification:
        """A copy with at most ``max_alerts`` alerts (0: all), counting the rest in ``truncated_alerts``."""
        if max_alerts <= 0 or len(self.alerts) <= max_alerts:
            return self
        kept = self.alerts[:max_alerts]
        dropped = len(self.alerts) - max_alerts + self.truncated_alerts
        return Notification(
            self.receiver, self.status, self.group_labels, kept, self.group_key, self.external_url, dropped
        )

    def to_webhook_payload(self) -> dict[str, Any]:
        """Alertmanager's webhook JSON, version "4": same keys, same shapes."""
        return {
            "receiver": self.receiver,
            "status": self.status,
            "alerts": [alert.to_webhook_alert() for alert in self.alerts],
            "groupLabels": dict(self.group_labels),
            "commonLabels": dict(self.common_labels),
            "commonAnnotations": dict(self.common_annotations),
            "externalURL": self.external_url,
            "version": "4",
            "groupKey": self.group_key,
            "truncatedAlerts": self.truncated_alerts,
        }
