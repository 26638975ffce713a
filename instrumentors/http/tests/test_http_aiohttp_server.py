"""aiohttp's server on 127.0.0.1, measured after ``instrument()``: route templates, errors, streams, sub-apps."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_app import Application

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http.aiohttp_server import AiohttpServerInstrumentor

Reader = Callable[..., Any]


@pytest.fixture
def aiohttp_instrumented(http_monitor: PerformanceMonitor) -> Iterator[PerformanceMonitor]:
    original = Application._handle
    AiohttpServerInstrumentor().instrument(monitor=http_monitor, excluded_paths=["/health"])
    yield http_monitor
    AiohttpServerInstrumentor().uninstrument()
    assert Application._handle is original


def build_app() -> web.Application:
    async def message(request: web.Request) -> web.Response:
        return web.Response(text=f"message {request.match_info['id']}")

    async def fail(request: web.Request) -> web.Response:
        raise KeyError("gone")

    async def forbidden(request: web.Request) -> web.Response:
        raise web.HTTPForbidden()

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(3):
            await response.write(b"chunk")
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    app = web.Application()
    app.add_routes([
        web.get(r"/api/messages/{id:\d+}", message), web.get("/fail", fail), web.get("/forbidden", forbidden),
        web.post("/echo", echo), web.get("/stream", stream), web.get("/health", echo), web.get("/slow", slow),
    ])  # fmt: skip

    async def user(request: web.Request) -> web.Response:
        return web.Response(text=f"user {request.match_info['name']}")

    users = web.Application()
    users.add_routes([web.get("/{name}", user)])
    app.add_subapp("/users/", users)
    return app


def serve_and_call(calls: Callable[[aiohttp.ClientSession, str], Any]) -> Any:
    async def run() -> Any:
        # Created after instrument(); a handler is cancelled when its client goes away.
        runner = web.AppRunner(build_app(), handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                return await calls(session, f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    return asyncio.run(run())


def test_requests_are_measured_per_route_template_with_errors(
    aiohttp_instrumented: PerformanceMonitor, requests_of: Reader
) -> None:
    async def calls(session: aiohttp.ClientSession, base: str) -> list[int]:
        statuses = []
        for path in ("/api/messages/1", "/api/messages/2", "/users/ann", "/fail", "/forbidden", "/nope", "/health"):
            async with session.get(base + path) as response:
                await response.read()
                statuses.append(response.status)
        async with session.post(base + "/echo", data=b"z" * 321) as response:
            assert await response.read() == b"z" * 321
        async with session.get(base + "/stream") as response:
            assert await response.read() == b"chunk" * 3
        return statuses

    assert serve_and_call(calls) == [200, 200, 200, 500, 403, 404, 200]
    monitor = aiohttp_instrumented
    assert requests_of(monitor, "/api/messages/{id}", 200) == 2
    assert requests_of(monitor, "/users/{name}", 200) == 1
    assert requests_of(monitor, "/fail", 500) == 1
    assert requests_of(monitor, "/forbidden", 403) == 1
    assert requests_of(monitor, "unmatched", 404) == 1
    assert requests_of(monitor, "/health", 200) is None  # excluded
    error = {"method": "GET", "endpoint": "/fail", "status": 500, "error_type": "KeyError"}
    assert monitor.snapshot().value("errors", error) == 1
    echo = {"method": "POST", "endpoint": "/echo", "status": 200}
    assert monitor.snapshot().value("http_request_size_bytes", echo)["sum"] == 321
    assert monitor.snapshot().value("http_response_size_bytes", echo)["sum"] == 321
    streamed = {"method": "GET", "endpoint": "/stream", "status": 200}
    assert monitor.snapshot().value("http_response_size_bytes", streamed)["sum"] == 0  # chunked: no length known
    assert monitor.snapshot().value("http_request_duration_seconds", streamed)["sum"] >= 0.15
    assert monitor.snapshot().value("http_requests_in_flight") == 0
    prometheus = monitor.snapshot().to_prometheus()
    assert "/api/messages/1" not in prometheus
    assert "ann" not in prometheus


def test_a_client_that_goes_away_is_one_request_cancelled(
    aiohttp_instrumented: PerformanceMonitor, requests_of: Reader
) -> None:
    async def calls(session: aiohttp.ClientSession, base: str) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(base + "/slow", timeout=aiohttp.ClientTimeout(total=0.2))
        await asyncio.sleep(0.3)  # the server notices the closed connection and cancels the handler

    serve_and_call(calls)
    tags = {"method": "GET", "endpoint": "/slow", "status": 500, "error_type": "CancelledError"}
    assert aiohttp_instrumented.snapshot().value("errors", tags) == 1
    assert aiohttp_instrumented.snapshot().value("http_requests_in_flight") == 0


def test_uninstrument_stops_measuring(http_monitor: PerformanceMonitor, requests_of: Reader) -> None:
    AiohttpServerInstrumentor().instrument(monitor=http_monitor)
    AiohttpServerInstrumentor().uninstrument()

    async def calls(session: aiohttp.ClientSession, base: str) -> int:
        async with session.get(base + "/api/messages/1") as response:
            return response.status

    assert serve_and_call(calls) == 200
    assert requests_of(http_monitor, "/api/messages/{id}", 200) is None


class _OwnResponse(web.Response):
    """A subclass: measured by its own ``content_length``."""


def _responses() -> list[tuple[str, web.StreamResponse, int]]:
    with_length = web.Response(body=b"abc")
    with_length.headers["Content-Length"] = "7"  # what the application declared wins, as in content_length
    chunked = web.Response(body=b"abcdef")
    chunked.enable_chunked_encoding()
    return [
        ("text", web.Response(text="héllo"), 6),
        ("bytes", web.Response(body=b"x" * 321), 321),
        ("empty", web.Response(), 0),
        ("declared", with_length, 7),
        ("chunked", chunked, 0),
        ("bytearray", web.Response(body=bytearray(b"abcd")), 4),
        ("json", web.json_response({"a": 1}), 8),
        ("payload", web.Response(body=aiohttp.payload.BytesIOPayload(io.BytesIO(b"12345"))), 0),  # length unknown
        ("subclass", _OwnResponse(body=b"xyz"), 3),
        ("stream", web.StreamResponse(), 0),
    ]


@pytest.mark.parametrize(("name", "response", "size"), _responses(), ids=[name for name, _, _ in _responses()])
def test_the_response_size_is_what_content_length_says(name: str, response: web.StreamResponse, size: int) -> None:
    """The size taken without ``content_length`` for a plain ``Response`` agrees with ``content_length``."""
    from chat_turbo_metrics_http.aiohttp_server import _sent

    declared = response.content_length
    assert max(declared or 0, 0) == size  # the case is what its name says
    assert _sent(response, web.Response) == size
