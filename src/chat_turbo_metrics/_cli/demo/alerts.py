"""The demo's alerting: the seed's high-response-time rule on short timings, a log and a webhook receiver."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chat_turbo_metrics._core.config import ConfigurationError
from chat_turbo_metrics._core.config.files import config_dirs
from chat_turbo_metrics._monitor import PerformanceMonitor
from chat_turbo_metrics.alerting import AlertListener, AlertManager, AlertRule, LogNotifier, WebhookNotifier, load_rules

ALERT_LOGGER = "chat_turbo_metrics.alerts"  # where LogNotifier writes


def seed_rule(window_s: float, for_s: float) -> AlertRule:
    """The seed's ``high-response-time`` rule as shipped in ``configs/alert_rules.toml``, on the demo's timings.

    The seed reads p95 of ``http_request_duration_seconds`` over 5 minutes and needs it above 2 s for 5 minutes;
    the demo keeps the metric, statistic, threshold and labels and shortens the window and ``for``.
    """
    shipped = [d / "alert_rules.toml" for d in config_dirs()[-2:] if (d / "alert_rules.toml").is_file()]
    if not shipped:
        raise ConfigurationError("the shipped configs/alert_rules.toml was not found: reinstall chat-turbo-metrics")
    (rule,) = [rule for rule in load_rules(shipped[0]) if rule.id == "high-response-time"]
    return replace(rule, window_s=window_s, duration_s=for_s, statistic=rule.statistic or "p95")


@dataclass
class Delivery:
    """One notification a webhook receiver got: Alertmanager's webhook JSON, reduced to what the demo shows."""

    at: float
    status: str  # firing | resolved
    alerts: list[dict[str, Any]]


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 (a free port) keeping every webhook notification it receives."""

    on_delivery: Callable[[Delivery], None] = lambda delivery: None
    deliveries: list[Delivery] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                    delivery = Delivery(time.time(), str(payload["status"]), list(payload["alerts"]))
                except (ValueError, KeyError, TypeError):
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.deliveries.append(delivery)
                self.send_response(200)
                self.end_headers()
                receiver.on_delivery(delivery)

            def log_message(self, format: str, *args: Any) -> None:
                """Deliveries are shown by the demo's display, not as access-log lines."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-webhook", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/alerts"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_alerting(
    monitor: PerformanceMonitor,
    webhooks: list[str],
    window_s: float,
    for_s: float,
    on_transition: AlertListener,
) -> AlertManager:
    """Evaluate the seed rule on every export cycle; notify the log and each webhook, quickly (demo timings)."""
    manager = AlertManager(monitor)
    manager.add_rule(seed_rule(window_s, for_s))
    manager.add_listener(on_transition)
    notifiers: list[tuple[str, Any]] = [("log", LogNotifier(logging.getLogger(ALERT_LOGGER)))]
    notifiers += [(f"webhook-{index}", WebhookNotifier(url, timeout_s=5.0)) for index, url in enumerate(webhooks)]
    for name, notifier in notifiers:
        manager.add_route(notifier, name=name, group_wait_s=0.5, group_interval_s=1.0, repeat_interval_s=3600.0)
    manager.start()
    return manager
