"""httpx's AsyncClient and aiohttp's ClientSession against a real HTTP server: outcomes, streams, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http_client import AiohttpClientInstrumentor, HttpxInstrumentor

Series = Callable[..., dict[Any, int]]


def tags(port: int, method: str = "GET", status: int | None = 200, error: str | None = None) -> frozenset[Any]:
    found: dict[str, Any] = {"method": method, "server_address": "127.0.0.1", "server_port": port}
    if status is not None:
        found["status"] = status
    if error is not None:
        found["error_type"] = error
    return frozenset(found.items())


@pytest.fixture
def httpx_instrumented(client_monitor: PerformanceMonitor) -> Iterator[None]:
    HttpxInstrumentor().instrument(monitor=client_monitor)
    yield
    HttpxInstrumentor().uninstrument()


@pytest.fixture
def aiohttp_instrumented(client_monitor: PerformanceMonitor) -> Iterator[None]:
    original = aiohttp.ClientSession._request
    AiohttpClientInstrumentor().instrument(monitor=client_monitor)
    assert aiohttp.ClientSession._request is not original
    yield
    AiohttpClientInstrumentor().uninstrument()
    assert aiohttp.ClientSession._request is original


async def cancelled_while_waiting(request: Callable[[], Any]) -> None:
    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.1)  # the server sleeps 0.5 s before answering
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_httpx_async_outcomes_streams_and_cancellation(
    httpx_instrumented: None,
    client_server: Any,
    client_monitor: PerformanceMonitor,
    client_series: Series,
    refused_port: int,
) -> None:
    port = client_server.port

    async def run() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(client_server.url("/ok?token=s3cret"))).text == "ok"
            assert (await client.post(client_server.url("/fail"), content=b"x")).status_code == 500
            async with client.stream("GET", client_server.url("/stream")) as response:
                assert b"".join([chunk async for chunk in response.aiter_bytes()]) == b"chunk" * 3
            with pytest.raises(httpx.ReadTimeout):
                await client.get(client_server.url("/slow"), timeout=0.1)
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{refused_port}/")
            await cancelled_while_waiting(lambda: client.get(client_server.url("/slow")))
            # Concurrent requests each measured once (the "measuring" flag is per task).
            answers = await asyncio.gather(*(client.get(client_server.url("/ok")) for _ in range(5)))
            assert [answer.text for answer in answers] == ["ok"] * 5

    asyncio.run(run())
    assert client_series(client_monitor) == {
        tags(port): 7,
        tags(port, "POST", status=500, error="500"): 1,
        tags(port, status=None, error="ReadTimeout"): 1,
        tags(refused_port, status=None, error="ConnectError"): 1,
        tags(port, status=None, error="CancelledError"): 1,
    }
    assert "s3cret" not in client_monitor.snapshot().to_prometheus()


def test_aiohttp_client_outcomes_streams_and_cancellation(
    aiohttp_instrumented: None,
    client_server: Any,
    client_monitor: PerformanceMonitor,
    client_series: Series,
    refused_port: int,
) -> None:
    port = client_server.port

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(client_server.url("/ok?token=s3cret")) as response:
                assert await response.text() == "ok"
            async with session.get(client_server.url("/redirect")) as response:  # followed: one request
                assert await response.text() == "ok"
            async with session.delete(client_server.url("/fail")) as response:
                assert response.status == 500
            async with session.get(client_server.url("/stream")) as response:
                assert b"".join([chunk async for chunk in response.content.iter_any()]) == b"chunk" * 3
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"http://127.0.0.1:{refused_port}/")
            with pytest.raises(asyncio.TimeoutError):
                await session.get(client_server.url("/slow"), timeout=aiohttp.ClientTimeout(total=0.1))
            await cancelled_while_waiting(lambda: session.get(client_server.url("/slow")))
        # A relative URL: the server is the base URL's.
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as based, based.get("/ok") as response:
            assert response.status == 200

    asyncio.run(run())
    series = client_series(client_monitor)
    timeout = {key: count for key, count in series.items() if ("error_type", "ServerTimeoutError") in key}
    timeout = timeout or {key: count for key, count in series.items() if ("error_type", "TimeoutError") in key}
    assert timeout == {tags(port, status=None, error=dict(next(iter(timeout)))["error_type"]): 1}
    assert {key: count for key, count in series.items() if key not in timeout} == {
        tags(port): 4,
        tags(port, "DELETE", status=500, error="500"): 1,
        tags(refused_port, status=None, error="ClientConnectorError"): 1,
        tags(port, status=None, error="CancelledError"): 1,
    }
    assert "s3cret" not in client_monitor.snapshot().to_prometheus()
