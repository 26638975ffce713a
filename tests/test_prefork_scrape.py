"""One scrape of the Prometheus port shows the whole service under real pre-fork servers.

gunicorn (sync and uvicorn workers) and ``uvicorn --workers`` (spawned workers), with and without
``opentelemetry-instrument``, and across ``max_requests`` recycling. Load comes from a client in another
process, in batches; after each batch (every response received) the client scrapes, and the scrape must
show exactly the requests sent so far: counter total, histogram count and sum.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

APP = textwrap.dedent(
    """
    import json, os
    from chat_turbo_metrics import PerformanceMonitor

    monitor = PerformanceMonitor.get_instance()

    def _record():
        monitor.increment_counter("served", {"route": "/"})
        monitor.record_histogram("payload_bytes", 3, {"route": "/"})
        monitor.record_gauge("worker_up", 1)
        return json.dumps({"pid": os.getpid()}).encode()

    def app(environ, start_response):
        body = _record()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        body = _record()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
    """
)

CLIENT = textwrap.dedent(
    """
    import http.client, json, re, sys, threading, time, urllib.request
    from concurrent.futures import ThreadPoolExecutor

    app_url, metrics_url, batches, per_batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def hit(_):
        for _ in range(5):
            try:
                with urllib.request.urlopen(app_url, timeout=10) as reply:
                    return json.loads(reply.read())["pid"]
            except http.client.RemoteDisconnected:
                # uvicorn closes connections it accepted but will not serve once it reaches
                # --limit-max-requests; the request never reached the application.
                continue
        raise RuntimeError("no worker answered")

    def scrape():
        deadline = time.monotonic() + 10
        while True:  # the port changes hands when the process holding it is recycled
            try:
                with urllib.request.urlopen(metrics_url, timeout=10) as reply:
                    return reply.read().decode()
            except (OSError, http.client.HTTPException):  # the holder exited mid-scrape
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def value(text, pattern):
        found = re.search("^" + pattern + r" (\\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    base = value(scrape(), r'served_total\\{route="/"\\}')  # the probes that waited for the server
    sent, seen, pids = 0, [], set()
    during, loading = [], threading.Event()

    def watch():  # scrapes while requests are in flight: the totals only ever grow
        while loading.is_set():
            during.append(value(scrape(), r'served_total\\{route="/"\\}'))

    loading.set()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(batches):
            pids.update(pool.map(hit, range(per_batch)))
            sent += per_batch
            text = scrape()
            seen.append({
                "sent": sent,
                "total": value(text, r'served_total\\{route="/"\\}'),
                "count": value(text, r'payload_bytes_count\\{route="/"\\}'),
                "sum": value(text, r'payload_bytes_sum\\{route="/"\\}'),
                "workers": sorted(set(re.findall(r'^worker_up\\{process_pid="(\\d+)"\\} 1$', text, re.M))),
            })
    loading.clear()
    watcher.join()
    print(json.dumps({"base": base, "scrapes": seen, "pids": sorted(pids), "during": during}))
    """
)

BIN = Path(sys.executable).parent


def _server_env(tmp_path: Path, metrics_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(tmp_path), *(p for p in sys.path if p)]),
            "CHAT_TURBO_ENV": "test",
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
            "METRICS_MULTIPROCESS_DIR": str(tmp_path / "mp"),
            "METRICS_MULTIPROCESS_GAUGES": "worker_up=worker",
            **extra,
        }
    )
    return env


def _wait_for(url: str, deadline_s: float, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                os.killpg(server.pid, signal.SIGKILL)
                raise AssertionError(f"server did not start: {server.communicate()[1][-3000:]}") from None
            time.sleep(0.1)


SERVERS = {
    "gunicorn-sync": ["gunicorn", "-w", "4", "--graceful-timeout", "10", "app:app"],
    "gunicorn-uvicorn-worker": [
        "gunicorn",
        "-w",
        "4",
        "--graceful-timeout",
        "10",
        "-k",
        "uvicorn.workers.UvicornWorker",
        "app:asgi",
    ],
    "uvicorn-workers": ["uvicorn", "--workers", "4", "--log-level", "warning", "app:asgi"],
}


def _command(server: str, instrument: bool, app_port: int, extra: list[str]) -> list[str]:
    program, *args = SERVERS[server]
    bind = ["-b", f"127.0.0.1:{app_port}"]
    if program == "uvicorn":
        bind = ["--host", "127.0.0.1", "--port", str(app_port)]
    command = [str(BIN / program), *args, *bind, *extra]
    return [str(BIN / "opentelemetry-instrument"), *command] if instrument else command


def _run_load(
    tmp_path: Path, server: str, instrument: bool, *, batches: int, per_batch: int, extra: list[str] = ()
) -> tuple[dict[str, object], str]:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "client.py").write_text(CLIENT)
    app_port, metrics_port = free_port(), free_port()
    env = _server_env(tmp_path, metrics_port)
    command = _command(server, instrument, app_port, list(extra))
    # A session of its own: if the server does not stop in time, its whole process group is ended.
    process = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{app_port}/", 30, process)
        client = subprocess.run(
            [
                sys.executable,
                str(tmp_path / "client.py"),
                f"http://127.0.0.1:{app_port}/",
                f"http://127.0.0.1:{metrics_port}/metrics",
                str(batches),
                str(per_batch),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if client.returncode != 0:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(client.stderr[-2000:] + process.communicate()[1][-4000:])
        result: dict[str, object] = json.loads(client.stdout)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            raise AssertionError(f"server did not stop within 30 s of SIGTERM: {stderr[-3000:]}") from None
    return result, stderr


def _assert_exact(result: dict[str, object]) -> None:
    scrapes, base = result["scrapes"], result["base"]
    assert isinstance(scrapes, list)
    assert isinstance(base, float)
    assert base >= 1  # the probe that waited for the server to start
    for scrape in scrapes:
        expected = scrape["sent"] + base
        assert (scrape["total"], scrape["count"], scrape["sum"]) == (expected, expected, 3 * expected), scrapes
    during = result["during"]
    assert isinstance(during, list)
    assert len(during) >= 3, "no scrape overlapped the load"
    assert during == sorted(during), "a scrape during the load went backwards"
    assert during[-1] <= scrapes[-1]["total"]


@pytest.mark.parametrize("instrument", [False, True], ids=["plain", "opentelemetry-instrument"])
@pytest.mark.parametrize("server", list(SERVERS))
def test_one_scrape_counts_every_request_of_every_worker(tmp_path: Path, server: str, instrument: bool) -> None:
    result, stderr = _run_load(tmp_path, server, instrument, batches=5, per_batch=24)

    _assert_exact(result)
    pids = result["pids"]
    assert isinstance(pids, list)
    assert len(pids) > 1, "the load reached one worker only; the test proves nothing about merging"
    # Each worker that served a request shows its own gauge series (mode "worker"), in the last scrape.
    last = result["scrapes"][-1]  # type: ignore[index]
    assert {int(pid) for pid in last["workers"]} >= set(pids)
    assert "Traceback" not in stderr, stderr
    assert "Address already in use" not in stderr, stderr


# Recycling while a worker (not the master) holds the port is left out: a worker taking the port over can
# still start the totals afresh (issue 11 stays open for it), and a test that is allowed to fail proves nothing.
RECYCLING = {
    "gunicorn-opentelemetry-instrument": ("gunicorn-sync", True, ["--max-requests", "7"]),
}


@pytest.mark.parametrize("case", sorted(RECYCLING))
def test_counters_survive_max_requests_recycling(tmp_path: Path, case: str) -> None:
    # Every worker is replaced after 7 requests: many recycles, all workers at once included; the master
    # (opentelemetry-instrument built the pipeline there) holds the port throughout.
    server, instrument, extra = RECYCLING[case]
    result, stderr = _run_load(tmp_path, server, instrument, batches=8, per_batch=16, extra=extra)

    _assert_exact(result)
    assert len(result["pids"]) > 8, "workers were not recycled"  # type: ignore[arg-type]
    assert "Traceback" not in stderr, stderr
