"""Slack incoming webhooks, with the message Alertmanager's Slack receiver sends (legacy ``attachments``)."""

from __future__ import annotations

import json
from typing import Any

from chat_turbo_metrics._core.endpoints import parse_secret_url
from chat_turbo_metrics._core.secret import Secret
from chat_turbo_metrics.alerting._notification import Notification
from chat_turbo_metrics.alerting.notifiers._http import post
from chat_turbo_metrics.alerting.notifiers._render import alert_fields, slack_text

_COLOR = {"firing": "danger", "resolved": "good"}


class SlackNotifier:
    """Posts each notification to a Slack incoming webhook: title ``[FIRING:2] …``, red while firing, green resolved.

    A 429 answer is retried after the ``Retry-After`` Slack sends; the webhook URL (a secret) never shows in
    logs, errors or this object's repr.

    Example:
        >>> slack = SlackNotifier("https://hooks.slack.com/services/T0/B0/token")
        >>> slack
        SlackNotifier(Secret('https://hooks.slack.com/***'))
        >>> slack(notification)  # doctest: +SKIP

    Args:
        webhook_url: the incoming-webhook URL (a ``str`` or :class:`Secret`).
        channel: override the webhook's channel.
        username: override the webhook's user name.
        max_alerts: alerts described per message; the rest are counted (Slack truncates long messages).
        timeout_s: per request.
    """

    name = "slack"

    def __init__(
        self,
        webhook_url: str | Secret,
        *,
        channel: str | None = None,
        username: str | None = None,
        max_alerts: int = 20,
        timeout_s: float = 10.0,
    ) -> None:
        try:
            self._url = parse_secret_url(webhook_url)
        except ValueError as error:  # the message shows no part of the URL
            raise ValueError(f"webhook_url: {error}") from None
        self._channel = channel
        self._username = username
        self._max_alerts = max_alerts
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"SlackNotifier({self._url.secret!r})"

    def message(self, notification: Notification) -> dict[str, Any]:
        """The JSON body posted for ``notification``."""
        shown = notification.truncated(self._max_alerts)
        lines = []
        for alert in shown.alerts:
            lines.append("\n".join(f"*{name}:* {slack_text(text)}" for name, text in alert_fields(alert)))
        if shown.truncated_alerts:
            lines.append(f"_… and {shown.truncated_alerts} more_")
        title = slack_text(notification.title)
        attachment: dict[str, Any] = {
            "color": _COLOR[notification.status],
            "title": title,
            "fallback": title,
            "text": "\n\n".join(lines),
            "mrkdwn_in": ["text"],
        }
        if notification.external_url:
            attachment["title_link"] = notification.external_url
        body: dict[str, Any] = {"attachments": [attachment]}
        if self._channel:
            body["channel"] = self._channel
        if self._username:
            body["username"] = self._username
        return body

    def __call__(self, notification: Notification) -> None:
        """Post ``notification``.

        Raises:
            DeliveryError: Slack refused it or could not be reached (retryable on 429, 5xx and network errors).
        """
        body = json.dumps(self.message(notification)).encode()
        post(self._url, body, {"Content-Type": "application/json"}, self._timeout_s)
