"""The human-readable body shared by Slack and email: per alert, its summary, value, annotations and labels."""

from __future__ import annotations

from chat_turbo_metrics.alerting._notification import Notification, NotifiedAlert, rfc3339


def value_text(value: float | None) -> str:
    """The alert's value as people read it: ``2.5``, ``1e+06``, ``no data``.

    Args:
        value: the value the rule read, or None.

    Returns:
        The text.

    Example:
        >>> value_text(2.50), value_text(None)
        ('2.5', 'no data')
    """
    return "no data" if value is None else f"{value:.6g}"


def alert_fields(alert: NotifiedAlert) -> list[tuple[str, str]]:
    """(field, text) rows describing one alert, most useful first."""
    rows = [
        ("Alert", alert.annotations.get("summary") or alert.labels.get("alertname", "")),
        ("Status", alert.status),
        ("Severity", alert.labels.get("severity", "")),
        ("Value", value_text(alert.value)),
        ("Since", rfc3339(alert.starts_at)),
    ]
    if alert.ends_at is not None:
        rows.append(("Resolved", rfc3339(alert.ends_at)))
    rows.extend((key.capitalize(), text) for key, text in sorted(alert.annotations.items()) if key != "summary")
    rows.append(("Labels", ", ".join(f"{key}={value}" for key, value in sorted(alert.labels.items()))))
    return [(name, text) for name, text in rows if text]


def plain_text(notification: Notification) -> str:
    """The whole notification as plain text: the title, then one block per alert."""
    blocks = [notification.title]
    for alert in notification.alerts:
        blocks.append("\n".join(f"{name}: {text}" for name, text in alert_fields(alert)))
    if notification.truncated_alerts:
        blocks.append(f"... and {notification.truncated_alerts} more alert(s)")
    if notification.external_url:
        blocks.append(notification.external_url)
    return "\n\n".join(blocks) + "\n"
