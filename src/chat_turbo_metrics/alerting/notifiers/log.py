"""Logging: one structured record per notification, for log pipelines that alert on their own."""

from __future__ import annotations

import json
import logging
import math

from chat_turbo_metrics.alerting._notification import Notification
from chat_turbo_metrics.alerting.notifiers._render import printable

_LEVELS = {"firing": logging.WARNING, "resolved": logging.INFO}


class LogNotifier:
    """Writes one log record per notification: the title, then the webhook payload (with values) as JSON.

    The record also carries the payload as the attribute ``alert_notification`` (a dict), for structured
    handlers. Firing notifications log at WARNING, resolved ones at INFO, unless ``level`` is given.

    Example:
        >>> import logging
        >>> notifier = LogNotifier(logging.getLogger("alerts"))
        >>> notifier
        LogNotifier('alerts')

    Args:
        logger: where to log (default: ``chat_turbo_metrics.alerts``).
        level: one level for every record instead of WARNING/INFO.
    """

    name = "log"

    def __init__(self, logger: logging.Logger | None = None, level: int | None = None) -> None:
        self._logger = logger or logging.getLogger("chat_turbo_metrics.alerts")
        self._level = level

    def __repr__(self) -> str:
        return f"LogNotifier({self._logger.name!r})"

    def __call__(self, notification: Notification) -> None:
        """Log ``notification``."""
        payload = notification.to_webhook_payload()
        for row, alert in zip(payload["alerts"], notification.alerts, strict=True):
            finite = alert.value is None or math.isfinite(alert.value)
            row["value"] = alert.value if finite else str(alert.value)  # JSON has no NaN or Infinity
        level = self._level if self._level is not None else _LEVELS[notification.status]
        self._logger.log(
            level,
            "%s %s",
            printable(notification.title),  # label values must not forge log lines or move the cursor
            json.dumps(payload, sort_keys=True, separators=(",", ":")),
            extra={"alert_notification": payload},
        )
