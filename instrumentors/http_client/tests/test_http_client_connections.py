"""Open connections of the clients' pools, read at collection, against a real HTTP server on 127.0.0.1: keep-alive
reuse, a response held open, a refused connection, closing; one library never overwrites another's count."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import pytest
import requests
import urllib3

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http_client import (
    AiohttpClientInstrumentor,
    HttpxInstrumentor,
    RequestsInstrumentor,
    Urllib3Instrumentor,
)

Open = dict[tuple[str, int, str], float]


def open_connections(monitor: PerformanceMonitor, *ports: int, semconv: bool = False) -> Open:
    """{(server address, server port, state): value} of the open-connection series of the servers on ``ports`` (the
    pools are the process's: another test's connections may still be open), from one collection."""
    name, keys = ("http.client.open_connections", ("server.address", "server.port", "http.connection.state"))
    if not semconv:
        name, keys = ("http_client_open_connections", ("server_address", "server_port", "state"))
    found = {}
    for record in monitor.snapshot().records():
        if record["name"] == name and record["attributes"][keys[1]] in ports:
            found[tuple(record["attributes"][key] for key in keys)] = record["value"]
    return found


def test_requests_keep_alive_reuse_a_held_response_and_closing(
    instrumented: Callable[..., None], client_server: Any, client_monitor: PerformanceMonitor, refused_port: int
) -> None:
    instrumented(RequestsInstrumentor)
    port = client_server.port
    session = requests.Session()
    for _ in range(3):  # one connection, reused
        assert session.get(client_server.url("/ok"), timeout=5).text == "ok"
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 1}

    held = session.get(client_server.url("/stream"), stream=True, timeout=5)  # its body is not read yet
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 0, ("127.0.0.1", port, "active"): 1}
    second = requests.Session()
    assert second.get(client_server.url("/ok"), timeout=5).status_code == 200
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 1, ("127.0.0.1", port, "active"): 1}
    assert held.content == b"chunk" * 3  # read to its end: the connection goes back to its pool
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 2, ("127.0.0.1", port, "active"): 0}

    with pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{refused_port}/", timeout=5)
    assert open_connections(client_monitor, refused_port) == {}  # never opened
    session.close()
    second.close()
    del held  # it holds its pool, and so the pool's idle connection (urllib3 2 closes a pool's connections only
    gc.collect()  # when the pool is garbage, not when a PoolManager lets go of it)
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 0, ("127.0.0.1", port, "active"): 0}


def test_urllib3_and_requests_share_the_pools_and_count_them_once(
    instrumented: Callable[..., None], client_server: Any, client_monitor: PerformanceMonitor
) -> None:
    instrumented(RequestsInstrumentor)
    instrumented(Urllib3Instrumentor)
    port = client_server.port
    pool = urllib3.PoolManager()
    assert pool.request("GET", client_server.url("/ok")).data == b"ok"
    session = requests.Session()
    assert session.get(client_server.url("/ok"), timeout=5).status_code == 200
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 2}
    pool.clear()
    gc.collect()  # the pools PoolManager let go of are garbage: their connections closed
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 1}
    Urllib3Instrumentor().uninstrument()  # requests still follows urllib3's pools
    session.close()
    gc.collect()
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 0}


def test_httpx_sync_and_async_under_the_semconv_names(
    instrumented: Callable[..., None], client_server: Any, client_monitor: PerformanceMonitor, refused_port: int
) -> None:
    instrumented(HttpxInstrumentor, metric_names="semconv")
    port = client_server.port
    client = httpx.Client()
    for _ in range(2):
        assert client.get(client_server.url("/ok")).text == "ok"
    assert open_connections(client_monitor, port, semconv=True) == {("127.0.0.1", port, "idle"): 1}
    with client.stream("GET", client_server.url("/stream")) as response:
        assert response.status_code == 200
        assert open_connections(client_monitor, port, semconv=True) == {
            ("127.0.0.1", port, "idle"): 0,
            ("127.0.0.1", port, "active"): 1,
        }
        assert response.read() == b"chunk" * 3  # read to its end: the connection goes back to the pool
    with pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{refused_port}/")
    assert open_connections(client_monitor, refused_port, semconv=True) == {}

    async def run() -> Open:
        async with httpx.AsyncClient() as async_client:
            assert (await async_client.get(client_server.url("/ok"))).status_code == 200
            return open_connections(client_monitor, port, semconv=True)

    assert asyncio.run(run()) == {("127.0.0.1", port, "idle"): 2, ("127.0.0.1", port, "active"): 0}
    client.close()
    assert open_connections(client_monitor, port, semconv=True) == {
        ("127.0.0.1", port, "idle"): 0,
        ("127.0.0.1", port, "active"): 0,
    }
    assert open_connections(client_monitor, port) == {}  # the seed's name not asked for


def test_aiohttp_connections_while_a_response_is_held_and_after_closing(
    instrumented: Callable[..., None], client_server: Any, client_monitor: PerformanceMonitor
) -> None:
    instrumented(AiohttpClientInstrumentor)
    port = client_server.port

    async def run() -> list[Open]:
        seen = []
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.get(client_server.url("/ok")) as response:
                    assert await response.text() == "ok"
            seen.append(open_connections(client_monitor, port))
            async with session.get(client_server.url("/stream")) as response:  # chunks still coming
                seen.append(open_connections(client_monitor, port))
                assert await response.read() == b"chunk" * 3
            seen.append(open_connections(client_monitor, port))
        seen.append(open_connections(client_monitor, port))
        return seen

    idle, held, back, closed = asyncio.run(run())
    assert idle == {("127.0.0.1", port, "idle"): 1}
    assert held == {("127.0.0.1", port, "idle"): 0, ("127.0.0.1", port, "active"): 1}
    assert back == {("127.0.0.1", port, "idle"): 1, ("127.0.0.1", port, "active"): 0}
    assert closed == {("127.0.0.1", port, "idle"): 0, ("127.0.0.1", port, "active"): 0}


def test_two_libraries_on_one_server_add_up(
    instrumented: Callable[..., None], client_server: Any, client_monitor: PerformanceMonitor
) -> None:
    instrumented(RequestsInstrumentor)
    instrumented(HttpxInstrumentor)
    instrumented(AiohttpClientInstrumentor)
    port = client_server.port
    session, client = requests.Session(), httpx.Client()
    assert session.get(client_server.url("/ok"), timeout=5).status_code == 200
    assert client.get(client_server.url("/ok")).status_code == 200

    async def run() -> Open:
        async with aiohttp.ClientSession() as aiohttp_session:
            async with aiohttp_session.get(client_server.url("/ok")) as response:
                await response.read()
            return open_connections(client_monitor, port)

    assert asyncio.run(run()) == {("127.0.0.1", port, "idle"): 3}
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 2}
    session.close()
    client.close()


def test_uninstrument_stops_the_readings_and_restores_the_libraries(
    client_server: Any, client_monitor: PerformanceMonitor
) -> None:
    import httpcore
    from urllib3.connectionpool import HTTPConnectionPool

    originals = (HTTPConnectionPool._new_conn, httpcore.ConnectionPool.__init__, aiohttp.BaseConnector.__init__)
    RequestsInstrumentor().instrument(monitor=client_monitor)
    HttpxInstrumentor().instrument(monitor=client_monitor)
    AiohttpClientInstrumentor().instrument(monitor=client_monitor)
    port = client_server.port
    session = requests.Session()
    session.get(client_server.url("/ok"), timeout=5)
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 1}
    RequestsInstrumentor().uninstrument()
    HttpxInstrumentor().uninstrument()
    AiohttpClientInstrumentor().uninstrument()
    assert (HTTPConnectionPool._new_conn, httpcore.ConnectionPool.__init__, aiohttp.BaseConnector.__init__) == originals
    session.close()
    gc.collect()
    assert open_connections(client_monitor, port) == {("127.0.0.1", port, "idle"): 1}  # no longer read


def test_a_forked_child_follows_pools_though_a_parent_thread_held_the_lock(
    instrumented: Callable[..., None], client_server: Any, client_monitor: PerformanceMonitor
) -> None:
    from chat_turbo_metrics_http_client._connections import URLLIB3

    instrumented(Urllib3Instrumentor)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with URLLIB3._known_lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: its copy of the lock would stay held forever without the repair
        try:
            pool = urllib3.PoolManager()
            status = pool.request("GET", client_server.url("/ok")).status
            found = URLLIB3.read()[("idle", "127.0.0.1", client_server.port)]
            os._exit(0 if (status, found) == (200, 1) else 1)
        finally:
            os._exit(2)
    release.set()
    holder.join(5)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if done == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the lock its parent's thread held")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_pools_that_cannot_be_followed_leave_the_durations_measured(
    instrumented: Callable[..., None],
    client_server: Any,
    client_monitor: PerformanceMonitor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from chat_turbo_metrics_http_client._connections import HTTPCORE

    def refuse(patches: Any, module: Any) -> None:
        raise AttributeError("no pool class in this httpcore")

    monkeypatch.setattr(HTTPCORE, "_patch", refuse)
    instrumented(HttpxInstrumentor)  # does not raise
    port = client_server.port
    with httpx.Client() as client:
        assert client.get(client_server.url("/ok")).status_code == 200
    tags = {"method": "GET", "server_address": "127.0.0.1", "server_port": port, "status": 200}
    assert client_monitor.snapshot().value("http_client_request_duration_seconds", tags)["count"] == 1
    assert open_connections(client_monitor, port) == {}
    assert "no pool class in this httpcore" in caplog.text  # the library's refusal, logged once
    HttpxInstrumentor().uninstrument()
    assert HTTPCORE._holders == 0
