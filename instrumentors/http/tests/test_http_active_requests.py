"""``http.server.active_requests`` per ``http.request.method`` and ``url.scheme``, as the semantic conventions say.

Requests of several methods are held in flight at once (ASGI: coroutines parked on an event; WSGI: threads parked
on one), the monitor is read while they are, and again once they are done: each (method, scheme) series holds its
own count, then 0, and the seed's ``http_requests_in_flight`` stays one process-wide count (their sum).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http import _metrics
from chat_turbo_metrics_http.asgi import AsgiMetricsMiddleware
from chat_turbo_metrics_http.wsgi import WsgiMetricsMiddleware

ACTIVE = "http.server.active_requests"
# (method, scheme) of the requests held in flight together: an unknown method among them.
HELD = [("GET", "http"), ("GET", "http"), ("POST", "http"), ("POST", "http"), ("POST", "https"), ("PURGE", "http")]
WHILE_HELD = {("GET", "http"): 2, ("POST", "http"): 2, ("POST", "https"): 1, ("_OTHER", "http"): 1}


def active(monitor: PerformanceMonitor, method: str, scheme: str) -> Any:
    return monitor.snapshot().value(ACTIVE, {"http.request.method": method, "url.scheme": scheme})


def counts(monitor: PerformanceMonitor) -> dict[tuple[str, str], Any]:
    return {key: active(monitor, *key) for key in WHILE_HELD}


def test_asgi_counts_requests_in_flight_per_method_and_scheme(http_monitor: PerformanceMonitor) -> None:
    arrived: list[str] = []
    seen: dict[str, Any] = {}

    async def run() -> None:
        release = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            arrived.append(scope["method"])
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        measured = AsgiMetricsMiddleware(app, monitor=http_monitor, metric_names="both")

        async def request(method: str, scheme: str) -> None:
            scope = {"type": "http", "method": method, "scheme": scheme, "path": "/held", "headers": []}

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: Any) -> None:
                return None

            await measured(scope, receive, send)

        tasks = [asyncio.create_task(request(method, scheme)) for method, scheme in HELD]
        while len(arrived) < len(HELD):
            await asyncio.sleep(0.001)
        seen["held"] = counts(http_monitor)
        seen["total"] = http_monitor.snapshot().value("http_requests_in_flight")
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    assert seen["held"] == WHILE_HELD
    assert seen["total"] == len(HELD)  # the seed's gauge keeps its shape: one process-wide count
    assert counts(http_monitor) == dict.fromkeys(WHILE_HELD, 0)
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0
    assert active(http_monitor, "PURGE", "http") is None  # never a series of its own


def _environ(method: str, scheme: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": "/held",
        "SERVER_NAME": "x",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": scheme,
        "wsgi.input": None,
    }


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda data: None


def test_wsgi_counts_requests_in_flight_per_method_and_scheme(http_monitor: PerformanceMonitor) -> None:
    arrived = threading.Semaphore(0)
    release = threading.Event()

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        arrived.release()
        release.wait(10)
        start_response("200 OK", [])
        return [b"ok"]

    measured = WsgiMetricsMiddleware(app, monitor=http_monitor, metric_names="semconv")
    threads = [
        threading.Thread(target=lambda e: list(measured(e, _start_response)), args=(_environ(method, scheme),))
        for method, scheme in HELD
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in HELD:
            assert arrived.acquire(timeout=10)
        held = counts(http_monitor)
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert held == WHILE_HELD
    assert counts(http_monitor) == dict.fromkeys(WHILE_HELD, 0)
    assert "http_requests_in_flight" not in http_monitor.snapshot().names()  # semconv only: no seed gauge


def test_an_application_rewriting_the_method_leaves_the_counts_right(http_monitor: PerformanceMonitor) -> None:
    """A method-override middleware inside ours changes ``REQUEST_METHOD``: the request leaves what it entered."""

    def app(environ: Any, start_response: Any) -> Iterable[bytes]:
        environ["REQUEST_METHOD"] = "DELETE"  # as werkzeug's HTTPMethodOverride does from a header
        start_response("200 OK", [])
        return [b"ok"]

    measured = WsgiMetricsMiddleware(app, monitor=http_monitor, metric_names="semconv")
    for _ in range(3):
        assert list(measured(_environ("POST", "http"), _start_response)) == [b"ok"]
    assert active(http_monitor, "POST", "http") == 0
    assert active(http_monitor, "DELETE", "http") in (None, 0)
    assert all(len(flight) == 0 for flight in _metrics._in_flight.values())


def test_unknown_methods_share_other_and_never_make_keys_of_their_own() -> None:
    assert _metrics.in_flight("FROB", "http") is _metrics.in_flight("_OTHER", "http")
    assert _metrics.in_flight("get", "http") is _metrics.in_flight("_OTHER", "http")  # methods are case-sensitive
    assert ("FROB", "http") not in _metrics._in_flight
    assert _metrics.in_flight("GET", "https") is not _metrics.in_flight("GET", "http")


def test_url_scheme_values_are_bounded(monkeypatch: Any) -> None:
    """A scheme a proxy header chose: past the limit, requests count under one overflow series."""
    monkeypatch.setattr(_metrics, "_in_flight", {})
    for number in range(_metrics._SCHEME_LIMIT):
        assert _metrics.in_flight("GET", f"s{number}") is _metrics._in_flight["GET", f"s{number}"]
    overflow = _metrics.in_flight("GET", "one-too-many")
    assert overflow is _metrics._in_flight["_OTHER", "_OTHER"]
    assert ("GET", "one-too-many") not in _metrics._in_flight
    assert _metrics.in_flight("POST", "s0") is _metrics._in_flight["POST", "s0"]  # a known scheme still counts


def test_aiohttp_server_counts_requests_in_flight_per_method(http_monitor: PerformanceMonitor) -> None:
    """aiohttp on 127.0.0.1 (port chosen by the OS): GETs and an unknown method held in flight together."""
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    from chat_turbo_metrics_http.aiohttp_server import AiohttpServerInstrumentor

    async def run() -> dict[tuple[str, str], Any]:
        release, arrived = asyncio.Event(), []

        async def held(request: Any) -> Any:
            arrived.append(request.method)
            await release.wait()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_route("*", "/held", held)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as session:
                calls = [session.request(method, base + "/held") for method in ("GET", "GET", "PURGE")]
                tasks = [asyncio.ensure_future(call) for call in calls]
                for _ in range(500):
                    if len(arrived) == len(tasks):
                        break
                    await asyncio.sleep(0.01)
                held_counts = {key: active(http_monitor, *key) for key in (("GET", "http"), ("_OTHER", "http"))}
                release.set()
                for response in await asyncio.gather(*tasks):
                    response.release()
        finally:
            await runner.cleanup()
        return held_counts

    AiohttpServerInstrumentor().instrument(monitor=http_monitor, metric_names="semconv")
    try:
        seen = asyncio.run(run())
    finally:
        AiohttpServerInstrumentor().uninstrument()
    assert seen == {("GET", "http"): 2, ("_OTHER", "http"): 1}
    assert active(http_monitor, "GET", "http") == 0
    assert active(http_monitor, "_OTHER", "http") == 0
