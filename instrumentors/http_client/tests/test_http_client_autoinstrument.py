"""``opentelemetry-instrument`` finds the client instrumentors by their entry points: a script with no monitoring
code, its clients (and its aiohttp session) created after ``instrument()``, is measured; one turned off is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

SCRIPT = """
import asyncio, json, sys

import aiohttp, httpx, requests, urllib3

from chat_turbo_metrics import PerformanceMonitor

base = sys.argv[1]
requests.get(base + "/ok?token=s3cret", timeout=5)
urllib3.PoolManager().request("GET", base + "/missing")
httpx.get(base + "/fail")

async def main():
    async with httpx.AsyncClient() as client:
        await client.get(base + "/ok")
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/ok") as response:
            await response.read()

asyncio.run(main())
records = PerformanceMonitor.get_instance().snapshot().records()
print(json.dumps([[r["name"], r["attributes"], r["count"]] for r in records if "client" in r["name"]]))
"""


def run(tmp_path: Path, base: str, **extra: str) -> list[Any]:
    (tmp_path / "client_script.py").write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    # contrib's client instrumentations, when installed (for the benchmarks), are not what is tested here; its Redis
    # and SQLAlchemy ones (installed for the coexistence tests) would import their libraries at start-up
    contrib = "requests,urllib3,httpx,aiohttp-client,redis,sqlalchemy"
    env.update(CHAT_TURBO_ENV="test", OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=contrib)
    env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] += extra.pop("disabled", "")
    env.update(extra)
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    done = subprocess.run(
        [instrument, sys.executable, "client_script.py", base],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return sorted(json.loads(done.stdout.strip().splitlines()[-1]), key=json.dumps)


def test_opentelemetry_instrument_measures_every_client_with_no_code_change(client_server: Any, tmp_path: Path) -> None:
    port = client_server.port
    server = {"server_address": "127.0.0.1", "server_port": port}
    name = "http_client_request_duration_seconds"
    assert run(tmp_path, client_server.url("")) == sorted(
        [
            [name, {"method": "GET", **server, "status": 200}, 3],  # requests, httpx async, aiohttp
            [name, {"method": "GET", **server, "status": 404, "error_type": "404"}, 1],  # urllib3
            [name, {"method": "GET", **server, "status": 500, "error_type": "500"}, 1],  # httpx
        ],
        key=json.dumps,
    )


def test_each_entry_point_turns_off_by_its_name(client_server: Any, tmp_path: Path) -> None:
    disabled = ",chat_turbo_requests,chat_turbo_aiohttp_client"
    found = run(tmp_path, client_server.url(""), disabled=disabled, CHAT_TURBO_HTTP_METRIC_NAMES="semconv")
    server = {"server.address": "127.0.0.1", "server.port": client_server.port}
    assert found == sorted(
        [
            [
                "http.client.request.duration",
                {"http.request.method": "GET", **server, "http.response.status_code": 200},
                2,
            ],  # requests via urllib3
            [
                "http.client.request.duration",
                {"http.request.method": "GET", **server, "http.response.status_code": 404, "error.type": "404"},
                1,
            ],
            [
                "http.client.request.duration",
                {"http.request.method": "GET", **server, "http.response.status_code": 500, "error.type": "500"},
                1,
            ],
        ],
        key=json.dumps,
    )
