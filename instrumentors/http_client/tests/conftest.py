"""Fixtures of the HTTP client instrumentors' tests: a real HTTP server on 127.0.0.1, a private monitor, a reader.

Helpers are fixtures (not imports): ``conftest`` as a module name belongs to the core's ``tests/conftest.py``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor


@dataclass
class Served:
    """The server of one test: its address, and the requests each path received."""

    host: str
    port: int
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served: Served

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # keep the connection reusable
        path = self.path.split("?", 1)[0]
        hits = self.served.hits
        hits[path] += 1
        if path == "/slow":
            time.sleep(0.5)
            self._answer(200, b"late")
        elif path == "/fail":
            self._answer(500, b"broken")
        elif path == "/missing":
            self._answer(404, b"no")
        elif path == "/redirect":
            self._answer(302, b"", {"Location": "/ok"})
        elif path == "/flaky":  # 503 twice, then 200: what a client's own retries get past
            self._answer(503 if hits[path] <= 2 else 200, b"flaky")
        elif path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(3):
                self.wfile.write(b"5\r\nchunk\r\n")
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._answer(200, b"ok")

    do_POST = do_GET
    do_DELETE = do_GET

    def do_PURGE(self) -> None:
        self.served.hits["PURGE"] += 1
        self._answer(200, b"purged")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout, a cancellation) breaks the pipe: expected here


@pytest.fixture
def client_server() -> Iterator[Served]:
    """A threaded HTTP/1.1 server on 127.0.0.1 (a port the OS chose), stopped after the test."""
    served = Served("127.0.0.1", 0)
    handler = type("Handler", (_Handler,), {"served": served})
    server = _Server(("127.0.0.1", 0), handler)
    served.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def refused_port() -> int:
    """A loopback port nothing listens on (bound by the OS, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def client_monitor() -> Iterator[PerformanceMonitor]:
    """A monitor on a private pipeline with no exporters, shut down after the test."""
    monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=()))
    yield monitor
    monitor.shutdown()


@pytest.fixture
def instrumented(client_monitor: PerformanceMonitor) -> Iterator[Callable[..., None]]:
    """``instrumented(Instrumentor, **kwargs)``: instrument into the test's monitor; all undone after the test."""
    done: list[Any] = []

    def use(cls: Any, **kwargs: Any) -> None:
        kwargs.setdefault("monitor", client_monitor)
        cls().instrument(**kwargs)
        done.append(cls())

    yield use
    for instrumentor in done:
        instrumentor.uninstrument()


@pytest.fixture
def client_series() -> Callable[..., Any]:
    """``client_series(monitor)``: {frozen tags: count} of every client duration series (seed names)."""

    def read(monitor: PerformanceMonitor, name: str = "http_client_request_duration_seconds") -> dict[Any, int]:
        return {
            frozenset(record["attributes"].items()): record["count"]
            for record in monitor.snapshot().records()
            if record["name"] == name
        }

    return read
