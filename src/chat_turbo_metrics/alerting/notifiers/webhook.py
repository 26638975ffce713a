"""Generic webhooks: Alertmanager's webhook JSON (version "4"), optionally signed with HMAC-SHA256."""

from __future__ import annotations

import hashlib
import hmac
import json

from chat_turbo_metrics._core.endpoints import parse_secret_url
from chat_turbo_metrics._core.secret import Secret
from chat_turbo_metrics.alerting._notification import Notification
from chat_turbo_metrics.alerting.notifiers._http import post

SIGNATURE_HEADER = "X-Chat-Turbo-Signature-256"
"""``sha256=<hex HMAC-SHA256 of the raw body with the shared secret>``, as GitHub signs its webhooks."""


def sign(body: bytes, secret: Secret) -> str:
    """The signature header's value for ``body``.

    Args:
        body: the exact bytes posted.
        secret: the shared secret.

    Returns:
        ``sha256=`` and the hex digest.

    Example:
        >>> sign(b"{}", Secret("s3cret"))[:7]
        'sha256='
    """
    return "sha256=" + hmac.new(secret.reveal().encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier:
    """Posts Alertmanager's webhook payload, so receivers written for Alertmanager work unchanged.

    With ``secret``, every request carries :data:`SIGNATURE_HEADER`; the receiver recomputes it over the raw body
    and compares with :func:`hmac.compare_digest`.

    Example:
        >>> hook = WebhookNotifier("https://hooks.example.com/alerts?token=abc", secret="s3cret")
        >>> hook
        WebhookNotifier(Secret('https://hooks.example.com/***'), signed=True)
        >>> hook(notification)  # doctest: +SKIP

    Args:
        url: where to post (``str`` or :class:`Secret`; it may carry a token).
        secret: the HMAC key, or None for unsigned requests.
        max_alerts: at most this many alerts per payload (0: all); the rest are counted in ``truncatedAlerts``.
        timeout_s: per request.
    """

    name = "webhook"

    def __init__(
        self,
        url: str | Secret,
        secret: str | Secret | None = None,
        *,
        max_alerts: int = 0,
        timeout_s: float = 10.0,
    ) -> None:
        try:
            self._url = parse_secret_url(url)
        except ValueError as error:  # the message shows no part of the URL
            raise ValueError(f"url: {error}") from None
        self._secret = secret if isinstance(secret, Secret) or secret is None else Secret(secret)
        self._max_alerts = max_alerts
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"WebhookNotifier({self._url.secret!r}, signed={self._secret is not None})"

    def __call__(self, notification: Notification) -> None:
        """Post ``notification``.

        Raises:
            DeliveryError: the receiver refused it or could not be reached.
        """
        payload = notification.truncated(self._max_alerts).to_webhook_payload()
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        post(self._url, body, headers, self._timeout_s)
