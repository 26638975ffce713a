"""The demo: a small Chat-Turbo HTTP service instrumented with the seed's API, with synthetic traffic.

Everything runs on 127.0.0.1: the service on a free port, a traffic generator calling it, and the
Prometheus endpoint of the configured environment (``development``: http://localhost:9464/metrics).
"""

from __future__ import annotations

import contextlib
import json
import random
import resource
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chat_turbo_metrics._monitor import PerformanceMonitor, configure
from chat_turbo_metrics._pipeline.ports import PortInUseError

_CHANNELS = ("public", "private", "support")
_STARTED = time.monotonic()


class _ChatStore:
    """Messages in an in-memory SQLite database, every query timed as the seed's database metric."""

    def __init__(self, monitor: PerformanceMonitor) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, channel TEXT, body TEXT)")
        self._lock = threading.Lock()
        self._monitor = monitor

    def _query(self, operation: str, sql: str, params: tuple[Any, ...]) -> list[Any]:
        start = time.perf_counter()
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
            self._db.commit()
        self._monitor.record_histogram(
            "database_query_duration_seconds",
            time.perf_counter() - start,
            {"table": "messages", "operation": operation},
        )
        return rows

    def add(self, channel: str, body: str) -> None:
        self._query("insert", "INSERT INTO messages (channel, body) VALUES (?, ?)", (channel, body))

    def get(self, message_id: int) -> list[Any]:
        return self._query("select", "SELECT id, channel, body FROM messages WHERE id = ?", (message_id,))


def _make_handler(monitor: PerformanceMonitor, store: _ChatStore) -> type[BaseHTTPRequestHandler]:
    class ChatHandler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            start = monitor.start_timer("api_request")
            endpoint, status = self._route(method)
            tags = {"method": method, "endpoint": endpoint, "status": status}
            monitor.record_timer("api_request", start, tags)
            monitor.record_histogram("http_request_duration_seconds", time.perf_counter() - start, tags)
            monitor.increment_counter("api_requests_total", tags)
            if status >= 500:
                monitor.increment_counter("errors_total", {"endpoint": endpoint})

        def _route(self, method: str) -> tuple[str, int]:
            if method == "POST" and self.path == "/api/messages":
                processing = time.perf_counter()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                channel = body.get("channel", "public")
                store.add(channel, body.get("text", ""))
                monitor.increment_counter("messages_sent", {"channel": channel})
                monitor.record_histogram("message_size", len(body.get("text", "")), {"channel": channel})
                monitor.record_histogram(
                    "message_processing_time_seconds", time.perf_counter() - processing, {"channel": channel}
                )
                return "/api/messages", self._reply(201, b'{"ok": true}')
            if method == "GET" and self.path.startswith("/api/messages/"):
                found = store.get(int(self.path.rsplit("/", 1)[1] or 0))
                return "/api/messages/{id}", self._reply(200 if found else 404, b"{}")
            return "unmatched", self._reply(500 if self.path == "/api/fail" else 404, b"{}")

        def _reply(self, status: int, body: bytes) -> int:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return status

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            """The demo's traffic is not worth a log line per request."""

    return ChatHandler


def _traffic(base: str, stop: threading.Event, monitor: PerformanceMonitor) -> None:
    rng = random.Random(7)
    while not stop.is_set():
        monitor.record_gauge("active_connections", rng.randint(5, 40))
        path, data = rng.choice(
            [
                ("/api/messages", {"channel": rng.choice(_CHANNELS), "text": "hi " * rng.randint(1, 80)}),
                (f"/api/messages/{rng.randint(1, 50)}", None),
                ("/api/fail", None),
            ]
        )
        request = urllib.request.Request(base + path, data=json.dumps(data).encode() if data else None)
        with contextlib.suppress(urllib.error.HTTPError):  # 404s and 500s are part of the traffic
            urllib.request.urlopen(request, timeout=5).read()
        stop.wait(rng.uniform(0.005, 0.03))


def _system_metrics(stop: threading.Event, monitor: PerformanceMonitor) -> None:
    # The first reading covers the time since the demo started, so even a short run records both gauges.
    last_cpu, last_wall = 0.0, _STARTED
    while True:
        cpu, wall = time.process_time(), time.monotonic()
        monitor.record_gauge("cpu_usage_percent", 100.0 * (cpu - last_cpu) / max(wall - last_wall, 1e-9))
        last_cpu, last_wall = cpu, wall
        monitor.record_gauge("memory_usage_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
        if stop.wait(1.0):
            return


def _start(environment: str | None) -> PerformanceMonitor | None:
    """The configured monitor, or None after printing why the demo cannot start."""
    try:
        return configure(environment=environment) if environment else configure()
    except PortInUseError as error:
        # Most often a second demo (or another program) holds the Prometheus port; the message says which.
        print(f"demo not started: {error}.", file=sys.stderr)
        return None
    except OSError as error:
        print(
            f"demo not started: {error.strerror or error}. "
            "Free the port or choose another with METRICS_PROMETHEUS_PORT=<port>.",
            file=sys.stderr,
        )
        return None


def _summary(monitor: PerformanceMonitor) -> str:
    """What the demo recorded: totals, then the Prometheus exposition in whole lines, buckets left out."""
    snapshot = monitor.snapshot()
    records = snapshot.records()

    def total(name: str, field: str = "value") -> float:
        return float(sum(record[field] for record in records if record["name"] == name))

    names = sorted(snapshot.names())
    lines = [line for line in snapshot.to_prometheus().splitlines() if "_bucket{" not in line]
    return (
        f"recorded {total('api_requests'):g} API requests, {total('messages_sent'):g} messages sent, "
        f"{total('database_query_duration_seconds', 'count'):g} database queries; "
        f"{len(names)} metrics: {', '.join(names)}\n"
        "Prometheus exposition at the end of the run (histogram bucket lines left out):\n" + "\n".join(lines)
    )


def run_demo(duration_s: float = 30.0, environment: str | None = None) -> int:
    """Run the demo service for ``duration_s`` seconds (0: until interrupted); print what it recorded.

    Args:
        duration_s: how long the synthetic traffic runs.
        environment: the ``configs/<environment>.toml`` to load (default: ``$CHAT_TURBO_ENV``, then development).

    Returns:
        The exit status: 0, or 1 when the monitor could not start (e.g. its Prometheus port is taken).
    """
    monitor = _start(environment)
    if monitor is None:
        return 1
    store = _ChatStore(monitor)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(monitor, store))
    server.daemon_threads = False  # server_close() waits for requests in flight, so the summary sees them
    stop = threading.Event()
    threads = [
        threading.Thread(target=server.serve_forever, daemon=True),
        threading.Thread(target=_traffic, args=(f"http://127.0.0.1:{server.server_port}", stop, monitor), daemon=True),
        threading.Thread(target=_system_metrics, args=(stop, monitor), daemon=True),
    ]
    for thread in threads:
        thread.start()
    print(f"Chat-Turbo demo service on http://127.0.0.1:{server.server_port} ({monitor!r})")
    for exporter in monitor.pipeline.pull_exporters if monitor.pipeline else ():
        print(f"Prometheus metrics: {getattr(exporter, 'url', exporter)}")
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait(duration_s if duration_s > 0 else None)
    stop.set()
    for thread in threads[1:]:
        thread.join(timeout=10)
    server.shutdown()
    server.server_close()
    print(_summary(monitor))
    monitor.shutdown()
    return 0
