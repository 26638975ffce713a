"""``instrument()`` imports no client library: each is patched when the application imports it, in a fresh interpreter.

The four client instrumentors (and the open-connection following they share) run first; then requests, urllib3,
httpx and aiohttp are imported in turn and each sends a real request to a server on 127.0.0.1: one recording per
request, its pool's connection counted; after ``uninstrument()`` before the import, nothing is patched; after
instrument, uninstrument, instrument, everything is patched exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

SCRIPT = """
import asyncio, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_http_client import (
    AiohttpClientInstrumentor,
    HttpxInstrumentor,
    RequestsInstrumentor,
    Urllib3Instrumentor,
)

LIBRARIES = ("requests", "urllib3", "httpx", "httpcore", "aiohttp")
INSTRUMENTORS = (RequestsInstrumentor, Urllib3Instrumentor, HttpxInstrumentor, AiohttpClientInstrumentor)
monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=()))
report = {"at_start": sorted(name for name in LIBRARIES if name in sys.modules)}
for action in sys.argv[1].split(","):  # instrument, uninstrument...: each instrumentor in turn
    for cls in INSTRUMENTORS:
        getattr(cls(), action)(**({"monitor": monitor} if action == "instrument" else {}))
report["after_instrument"] = sorted(name for name in LIBRARIES if name in sys.modules)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: each client's connection stays open in its pool

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
port = server.server_address[1]
url = f"http://127.0.0.1:{port}/ok?token=x"


def layers(owner, name):
    # How many wrappers of ours stand over the original: 1 patched, 0 not, 2 patched twice.
    found, value = 0, owner.__dict__[name]
    while hasattr(value, "__wrapped__"):
        found, value = found + 1, value.__wrapped__
    return found


def recorded():
    # (requests recorded to the server, {state: its open connections}) from one collection
    count, opened = 0, {}
    for record in monitor.snapshot().records():
        attributes = record["attributes"]
        if attributes.get("server_port") != port:
            continue
        if record["name"] == "http_client_request_duration_seconds":
            count += record["count"]
        elif record["name"] == "http_client_open_connections" and record["value"]:
            opened[attributes["state"]] = record["value"]
    return count, opened


def step(name, run):
    # The library not loaded before its turn; then the statuses, the patch points, what was recorded since the last.
    loaded = name in sys.modules
    before = recorded()[0]
    statuses, patched = run()
    count, opened = recorded()
    report[name] = {"loaded_before": loaded, "statuses": statuses, "layers": patched, "recorded": count - before,
                    "open": opened}  # fmt: skip


kept = []  # the clients, their connections left open in their pools


def requests_step():
    import requests
    from urllib3.connectionpool import HTTPConnectionPool

    session = requests.Session()
    kept.append(session)
    statuses = [session.get(url, timeout=10).status_code]
    return statuses, [layers(requests.Session, "send"), layers(HTTPConnectionPool, "_new_conn")]


def urllib3_step():
    import urllib3
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    pool = urllib3.PoolManager()
    kept.append(pool)
    statuses = [pool.request("GET", url).status]
    return statuses, [layers(cls, name) for cls in (HTTPConnectionPool, HTTPSConnectionPool)
                      for name in ("urlopen", "_new_conn") if name in cls.__dict__]  # fmt: skip


def httpx_step():
    import httpx

    client = httpx.Client()
    kept.append(client)
    statuses = [client.get(url).status_code]

    async def run():
        async with httpx.AsyncClient() as client:
            return (await client.get(url)).status_code

    statuses.append(asyncio.run(run()))
    import httpcore

    patched = [layers(httpx.Client, "send"), layers(httpx.AsyncClient, "send")]
    patched += [layers(httpcore.ConnectionPool, "__init__"), layers(httpcore.AsyncConnectionPool, "__init__")]
    return statuses, patched


def aiohttp_step():
    import aiohttp

    async def run():
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                await response.read()
                return response.status

    patched = [layers(aiohttp.ClientSession, "_request"), layers(aiohttp.BaseConnector, "__init__")]
    patched.append(layers(aiohttp.TCPConnector, "_create_connection"))
    return [asyncio.run(run())], patched


step("requests", requests_step)
step("urllib3", urllib3_step)
step("httpx", httpx_step)
step("aiohttp", aiohttp_step)
print(json.dumps(report))
"""


MODES = {"lazy": "instrument", "cancelled": "instrument,uninstrument", "again": "instrument,uninstrument,instrument"}


def run(mode: str) -> dict[str, Any]:
    """The script in a fresh interpreter (whose imports are its own) after ``MODES[mode]``: what it saw, as JSON."""
    command = [sys.executable, "-c", textwrap.dedent(SCRIPT), MODES[mode]]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def seen(loaded_before: bool, statuses: list[int], layers: list[int], recorded: int, idle: int) -> dict[str, Any]:
    """What the script reports of one library's step (``idle``: the open connections to the server, all idle)."""
    return {"loaded_before": loaded_before, "statuses": statuses, "layers": layers, "recorded": recorded,
            "open": {"idle": idle} if idle else {}}  # fmt: skip


@pytest.mark.parametrize("mode", ["lazy", "again"])
def test_instrument_imports_no_client_and_each_is_measured_once_when_imported(mode: str) -> None:
    """``again``: instrument, uninstrument, instrument: one patch (one wrapper), each request recorded once."""
    report = run(mode)
    assert report.pop("at_start") == report.pop("after_instrument") == []
    assert report == {
        # requests sends through urllib3, imported with it: its pools are followed from then on; one recording
        "requests": seen(False, [200], [1, 1], 1, idle=1),
        "urllib3": seen(True, [200], [1, 1, 1], 1, idle=2),
        # the AsyncClient closed its pool on leaving: the Client's connection is the one more still open
        "httpx": seen(False, [200, 200], [1, 1, 1, 1], 2, idle=3),
        # the session closed its connection before the reading
        "aiohttp": seen(False, [200], [1, 1, 1], 1, idle=3),
    }


def test_uninstrument_before_the_import_leaves_every_client_unpatched() -> None:
    report = run("cancelled")
    assert report.pop("at_start") == report.pop("after_instrument") == []
    assert report == {
        "requests": seen(False, [200], [0, 0], 0, idle=0),
        "urllib3": seen(True, [200], [0, 0, 0], 0, idle=0),
        "httpx": seen(False, [200, 200], [0, 0, 0, 0], 0, idle=0),
        "aiohttp": seen(False, [200], [0, 0, 0], 0, idle=0),
    }
