"""Forwarding to Alertmanager: ``POST /api/v2/alerts`` to one or more instances, as Prometheus does.

Alertmanager then groups, silences and routes across every process that forwards to it. As Prometheus does, firing
alerts are re-sent while they fire (every ``resend_interval_s``) with ``endsAt`` a few intervals ahead, so
Alertmanager resolves them by itself if this process dies; a resolved alert is sent with its end time, and sent
again every interval for 15 minutes (Prometheus's ``resolvedRetention``), so one lost request loses no resolution.
Each instance gets every batch on its own delivery queue (Alertmanager replicas deduplicate among themselves).
Intervals are measured on a :class:`~chat_turbo_metrics.alerting._timeline.Timeline`: a wall clock stepping back
neither stops the re-sends (Alertmanager would then resolve a firing alert by its ``endsAt``) nor the retention.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from chat_turbo_metrics._core.endpoints import SecretURL, parse_secret_url
from chat_turbo_metrics._core.secret import Secret
from chat_turbo_metrics.alerting._model import Alert
from chat_turbo_metrics.alerting._notification import rfc3339
from chat_turbo_metrics.alerting._timeline import Timeline
from chat_turbo_metrics.alerting.notifiers._http import post

_VALID_FOR_INTERVALS = 4  # Prometheus sets endsAt = now + 4 x the resend delay
_RESOLVED_RETENTION_S = 900.0  # Prometheus keeps re-sending a resolved alert for 15 minutes


class AlertmanagerForwarder:
    """Forwards firing and resolved alerts to Alertmanager instances; use with ``Dispatcher.add_forwarder``.

    Example:
        >>> forwarder = AlertmanagerForwarder(["http://127.0.0.1:9093"], resend_interval_s=60)
        >>> forwarder
        AlertmanagerForwarder(instances=1, resend_interval_s=60)
        >>> dispatcher.add_forwarder(forwarder)  # doctest: +SKIP

    Args:
        urls: base URLs of the instances (``http://host:9093``; a path prefix is kept), ``str`` or :class:`Secret`.
        resend_interval_s: re-send still-firing alerts this often.
        generator_url: ``generatorURL`` of every alert (a link back to this service).
        timeout_s: per request.

    Raises:
        ValueError: no URL, a URL that is not http(s), or a non-positive interval.
    """

    name = "alertmanager"

    def __init__(
        self,
        urls: str | Secret | Sequence[str | Secret],
        *,
        resend_interval_s: float = 60.0,
        generator_url: str = "",
        timeout_s: float = 10.0,
    ) -> None:
        items = [urls] if isinstance(urls, str | Secret) else list(urls)
        if not items:
            raise ValueError("urls: at least one Alertmanager URL is needed")
        self._urls: list[SecretURL] = []
        for number, url in enumerate(items, 1):
            text = url.reveal() if isinstance(url, Secret) else url
            try:
                self._urls.append(parse_secret_url(text.strip().rstrip("/") + "/api/v2/alerts"))
            except ValueError as error:  # the message shows no part of the URL
                raise ValueError(f"urls: URL {number}: {error}") from None
        if not resend_interval_s > 0:
            raise ValueError(f"resend_interval_s={resend_interval_s!r}: must be > 0")
        self._resend_s = resend_interval_s
        self._generator_url = generator_url
        self._timeout_s = timeout_s
        self._sent: dict[str, float] = {}  # fingerprint -> when last sent as firing (scheduling time)
        self._resolved: dict[str, tuple[dict[str, Any], float, float]] = {}  # fp -> (payload, resolved, last sent)
        self._timeline = Timeline()

    def __repr__(self) -> str:
        return f"AlertmanagerForwarder(instances={len(self._urls)}, resend_interval_s={self._resend_s:g})"

    def senders(self) -> list[tuple[str, Callable[[bytes], None]]]:
        """One (name, send) per instance; each send posts one prepared batch."""
        return [(self.name, self._sender(url)) for url in self._urls]

    def _sender(self, endpoint: SecretURL) -> Callable[[bytes], None]:
        def send(body: bytes) -> None:
            post(endpoint, body, {"Content-Type": "application/json"}, self._timeout_s)

        return send

    def due(self, now: float, alerts: Sequence[Alert]) -> list[bytes]:
        """The batches to post at ``now``: newly firing, due for re-sending, or just resolved; silenced ones wait.

        Args:
            now: clock seconds (Unix time: Alertmanager compares ``endsAt`` with its own clock).
            alerts: the firing and resolved alerts of this evaluation.

        Returns:
            Zero or one JSON body.
        """
        tick = self._timeline.at(now)
        batch: list[dict[str, Any]] = []
        for alert in alerts:
            fp = alert.fingerprint
            if alert.state == "firing" and not alert.silenced:
                self._resolved.pop(fp, None)
                last = self._sent.get(fp)
                if last is None or tick - last >= self._resend_s:
                    self._sent[fp] = tick
                    batch.append(self._payload(alert, now + _VALID_FOR_INTERVALS * self._resend_s))
            elif alert.state == "resolved" and self._sent.pop(fp, None) is not None:
                payload = self._payload(alert, alert.resolved_at if alert.resolved_at is not None else now)
                self._resolved[fp] = (payload, tick, tick)
                batch.append(payload)
        for fp, (payload, resolved, last) in list(self._resolved.items()):
            if tick - resolved > _RESOLVED_RETENTION_S:
                del self._resolved[fp]
            elif tick - last >= self._resend_s:
                self._resolved[fp] = (payload, resolved, tick)
                batch.append(payload)
        return [json.dumps(batch, separators=(",", ":")).encode()] if batch else []

    def _payload(self, alert: Alert, ends_at: float) -> dict[str, Any]:
        starts = alert.fired_at if alert.fired_at is not None else alert.active_at
        return {
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "startsAt": rfc3339(starts),
            "endsAt": rfc3339(ends_at),
            "generatorURL": self._generator_url,
        }
