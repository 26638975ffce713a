"""The reference service of the scale-out deployment (``scripts/scale_demo.py``): a small Chat-Turbo API in Flask.

It has no metrics code. Each host runs it as it would run on one machine::

    opentelemetry-instrument gunicorn -w 2 -b 127.0.0.2:8000 --pythonpath scripts scale_demo_service:app

and the HTTP instrumentor counts every request (``api_requests_total``) and every 5xx (``errors_total``) by
route template, method and status; the pre-fork workers share one scrape of ``/metrics``.

The one-machine stage alerts in process, from the same rule file the central Prometheus gets exported: set
``SERVICE_ALERT_RULES`` to the rule file and ``SERVICE_ALERT_WEBHOOK`` to a base URL (receiver ``oncall`` gets
``<base>/oncall``). Each worker then evaluates its own share of the requests. After the hand-over leave them unset.
"""

from __future__ import annotations

import os

from flask import Flask

app = Flask(__name__)


@app.get("/api/messages/<int:message_id>")
def get_message(message_id: int) -> dict[str, object]:
    return {"id": message_id, "text": "hello", "worker": os.getpid()}


@app.post("/api/messages")
def post_message() -> tuple[dict[str, object], int]:
    return {"ok": True}, 201


@app.get("/api/fail")
def fail() -> tuple[dict[str, object], int]:
    """A request the service cannot serve: how the demo and the tests make errors happen on purpose."""
    return {"error": "unavailable"}, 503


def _alert_in_process(rules: str, webhook: str) -> None:
    from chat_turbo_metrics.alerting import AlertManager, WebhookNotifier

    alerts = AlertManager()  # reads the process-wide pipeline opentelemetry-instrument built
    alerts.load_rules(rules)
    receivers = {name: WebhookNotifier(f"{webhook.rstrip('/')}/{name}") for name in ("oncall", "team")}
    alerts.load_routes(rules, receivers)
    alerts.start()  # evaluates on every export cycle (OTEL_METRIC_EXPORT_INTERVAL)


if os.environ.get("SERVICE_ALERT_RULES"):
    _alert_in_process(os.environ["SERVICE_ALERT_RULES"], os.environ["SERVICE_ALERT_WEBHOOK"])
