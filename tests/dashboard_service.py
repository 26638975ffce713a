"""A small instrumented service for tests/test_dashboards.py: HTTP, database, cache, process and alerting metrics.

Run as ``python tests/dashboard_service.py METRICS_PORT SQLITE_PATH REDIS_PREFIX``: it configures monitoring with
its Prometheus endpoint on 127.0.0.1:METRICS_PORT, serves a Flask application (measured by the WSGI
instrumentor) on a free port, stores messages in SQLite through SQLAlchemy (the database instrumentor), caches
them in Redis (the cache instrumentor), reads the process (the system instrumentor), evaluates the shipped alert
rules plus one that fires at once, notifies a log route, and drives traffic against itself until it is killed.
Every name it records is one the instrumentors record in a real service: the dashboards are checked against them.
Under ``OTEL_SEMCONV_STABILITY_OPT_IN=http,database`` the instrumentors record the semantic conventions' names, and
the rule that fires at once reads failed requests from ``http_server_request_duration_seconds`` instead.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(metrics_port: int, sqlite_path: str, redis_prefix: str) -> None:
    import chat_turbo_metrics
    from chat_turbo_metrics.alerting import AlertManager, LogNotifier
    from chat_turbo_metrics.instrumentation import SemconvMode, semconv_mode
    from chat_turbo_metrics_cache import RedisInstrumentor
    from chat_turbo_metrics_database import SQLAlchemyInstrumentor
    from chat_turbo_metrics_http.wsgi import WsgiMetricsInstrumentor
    from chat_turbo_metrics_system import SystemInstrumentor

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request
    monitor = chat_turbo_metrics.configure(
        environment="test",
        metrics_exporters=("prometheus",),
        prometheus_host="127.0.0.1",
        prometheus_port=metrics_port,
        export_interval_s=1.0,
        self_telemetry=True,
    )
    for instrumentor in (
        WsgiMetricsInstrumentor(),
        SQLAlchemyInstrumentor(),
        RedisInstrumentor(),
        SystemInstrumentor(),
    ):
        instrumentor.instrument()

    import flask
    import redis
    import sqlalchemy
    from werkzeug.serving import make_server

    engine = sqlalchemy.create_engine(f"sqlite:///{sqlite_path}", pool_size=2)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, body TEXT)"))
    cache = redis.Redis(host="127.0.0.1", port=6379)

    app = flask.Flask("chat")
    app.logger.disabled = True  # the failing route's traceback, at every call

    @app.post("/api/messages")
    def post() -> tuple[str, int]:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("INSERT INTO messages (body) VALUES (:b)"), {"b": "hi"})
        return "{}", 201

    @app.get("/api/messages/<int:message_id>")
    def get(message_id: int) -> tuple[str, int]:
        key = f"{redis_prefix}:message:{message_id}"
        if cache.get(key) is None:
            with engine.connect() as connection:
                row = connection.execute(
                    sqlalchemy.text("SELECT body FROM messages WHERE id = :i"), {"i": message_id}
                ).first()
            cache.set(key, row[0] if row else "", ex=60)
        return "{}", 200

    @app.get("/api/broken")
    def broken() -> tuple[str, int]:
        with engine.connect() as connection, contextlib.suppress(sqlalchemy.exc.OperationalError):
            connection.execute(sqlalchemy.text("SELECT * FROM no_such_table"))  # a failing query, on purpose
        raise RuntimeError("the deliberately failing route")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    manager = AlertManager(monitor)
    manager.load_rules(ROOT / "configs" / "alert_rules.toml")
    errors = {"metric": "errors_total", "statistic": "increase"}  # the seed's names
    if semconv_mode("http", monitor) is SemconvMode.SEMCONV:  # OTEL_SEMCONV_STABILITY_OPT_IN=http: no errors_total
        errors = {"metric": "http_server_request_duration_seconds", "statistic": "max",
                  "matchers": {"error.type": "RuntimeError"}}  # fmt: skip
    manager.add_rule(
        {"id": "errors-seen", "name": "Errors Seen", **errors,
         "window": "1m", "condition": "gt", "threshold": 0, "duration": 0, "severity": "warning"}
    )  # fmt: skip
    manager.add_route(LogNotifier(), name="log", group_wait_s=0.5, group_interval_s=1.0)
    manager.start()

    base = f"http://127.0.0.1:{server.server_port}"
    rng = random.Random(23)
    print("ready", flush=True)
    while True:
        path, data = rng.choice(
            [("/api/messages", b"{}"), (f"/api/messages/{rng.randint(1, 20)}", None), ("/api/broken", None)]
        )
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(urllib.request.Request(base + path, data=data), timeout=5).read()
        time.sleep(0.01)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
