"""One scrape of the Prometheus port shows the whole service under real pre-fork servers.

gunicorn (sync and uvicorn workers) and ``uvicorn --workers`` (spawned workers), with and without
``opentelemetry-instrument``, across ``max_requests`` recycling (the port changing hands between workers
when no master runs the pipeline), and with a master that records before it forks (``--preload``). The
client, in another process, waits until every worker has joined the service, then sends the load in
batches; after each batch (every response received) it scrapes, and the scrape must show exactly the
requests sent so far: counter total, histogram count and sum. Scrapes during the load never go backwards.
"""

from __future__ import annotations

import contextlib
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

from conftest import WITHOUT_CONTRIB, free_port

APP = textwrap.dedent(
    """
    import glob, json, os
    from chat_turbo_metrics import PerformanceMonitor

    monitor = PerformanceMonitor.get_instance()
    monitor.record_gauge("worker_up", 1)  # at import: the client sees which workers have joined the service
    ENDPOINT = "127.0.0.1-" + os.environ["OTEL_EXPORTER_PROMETHEUS_PORT"] + ".*"
    HOLDER = os.path.join(os.environ["METRICS_MULTIPROCESS_DIR"], ENDPOINT, "holder.json")

    def _record():
        monitor.increment_counter("served", {"route": "/"})
        monitor.record_histogram("payload_bytes", 3, {"route": "/"})
        monitor.record_gauge("worker_up", 1)
        (path,) = glob.glob(HOLDER)  # the one group of this server
        with open(path) as holder:  # which process serves the Prometheus port now (tells the test it moved)
            return json.dumps({"pid": os.getpid(), "holder": json.load(holder)["pid"]}).encode()

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
    workers, pause = int(sys.argv[5]), float(sys.argv[6])

    def hit(_):
        for _ in range(5):
            try:
                with urllib.request.urlopen(app_url, timeout=60) as reply:
                    answer = json.loads(reply.read())
                    return answer["pid"], answer["holder"]
            except (http.client.RemoteDisconnected, ConnectionResetError):
                # uvicorn closes (or resets, with the request unread) connections it accepted but will not
                # serve once it reaches --limit-max-requests; the request never reached the application.
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

    def joined(text):
        return sorted(set(re.findall(r'^worker_up\\{process_pid="(\\d+)"\\} 1$', text, re.M)))

    deadline = time.monotonic() + 60
    while len(joined(scrape())) < workers:  # every worker has started (imported the app) and joined
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not join: " + scrape())
        time.sleep(0.1)
    base = value(scrape(), r'served_total\\{route="/"\\}')  # the probes that waited for the server
    sent, seen, pids, holders = 0, [], set(), set()
    during, loading = [], threading.Event()

    def watch():  # scrapes while requests are in flight: the totals only ever grow
        while loading.is_set():
            during.append(value(scrape(), r'served_total\\{route="/"\\}'))
            time.sleep(0.01)  # a scrape merges every worker's data: back to back, they starved the workers

    loading.set()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(batches):
            for pid, holder in pool.map(hit, range(per_batch)):
                pids.add(pid)
                holders.add(holder)
            sent += per_batch
            text = scrape()
            seen.append({
                "sent": sent,
                "total": value(text, r'served_total\\{route="/"\\}'),
                "count": value(text, r'payload_bytes_count\\{route="/"\\}'),
                "sum": value(text, r'payload_bytes_sum\\{route="/"\\}'),
                "boot": [value(text, "boot_total"), value(text, "boot_seconds_count"), value(text, "boot_seconds_sum")],
                "workers": joined(text),
            })
            time.sleep(pause)  # lets a server that checks its request limit on a timer recycle its workers
    loading.clear()
    watcher.join()
    print(json.dumps({
        "base": base, "scrapes": seen, "pids": sorted(pids), "holders": sorted(holders), "during": during
    }))
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
            "METRICS_PROMETHEUS_SCOPE_LABELS": "false",  # the expected lines are written without them
            **WITHOUT_CONTRIB,
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
                with contextlib.suppress(ProcessLookupError):  # it exited by itself: say why below
                    os.killpg(server.pid, signal.SIGKILL)
                raise AssertionError(f"server did not start: {server.communicate()[1][-3000:]}") from None
            time.sleep(0.1)


SERVERS = {  # each started with PROCESSES workers unless a test says otherwise
    "gunicorn-sync": ["gunicorn", "--graceful-timeout", "10", "app:app"],
    "gunicorn-uvicorn-worker": [
        "gunicorn",
        "--graceful-timeout",
        "10",
        "-k",
        "uvicorn.workers.UvicornWorker",
        "app:asgi",
    ],
    "uvicorn-workers": ["uvicorn", "--log-level", "warning", "app:asgi"],
}
PROCESSES = 4


def _command(server: str, instrument: bool, app_port: int, extra: list[str], processes: int) -> list[str]:
    program, *args = SERVERS[server]
    if program == "uvicorn":
        args += ["--workers", str(processes), "--host", "127.0.0.1", "--port", str(app_port)]
    else:
        args += ["-w", str(processes), "-b", f"127.0.0.1:{app_port}"]
    command = [str(BIN / program), *args, *extra]
    return [str(BIN / "opentelemetry-instrument"), *command] if instrument else command


def _run_load(
    tmp_path: Path,
    server: str,
    instrument: bool,
    *,
    batches: int,
    per_batch: int,
    extra: list[str] = (),  # type: ignore[assignment]
    app: str = APP,
    workers: int = 1,
    processes: int = PROCESSES,
    pause_s: float = 0.0,
    **settings: str,
) -> tuple[dict[str, object], str]:
    """Start the server with ``processes`` workers, wait until ``workers`` of them have joined its scrape, then run
    the client's load."""
    (tmp_path / "app.py").write_text(app)
    (tmp_path / "client.py").write_text(CLIENT)
    app_port, metrics_port = free_port(), free_port()
    env = _server_env(tmp_path, metrics_port, **settings)
    command = _command(server, instrument, app_port, list(extra), processes)
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
                str(workers),
                str(pause_s),
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
    result, stderr = _run_load(tmp_path, server, instrument, batches=5, per_batch=24, workers=4)

    _assert_exact(result)
    pids = result["pids"]
    assert isinstance(pids, list)
    assert len(pids) > 1, "the load reached one worker only; the test proves nothing about merging"
    # Each worker that served a request shows its own gauge series (mode "worker"), in the last scrape.
    last = result["scrapes"][-1]  # type: ignore[index]
    assert {int(pid) for pid in last["workers"]} >= set(pids)
    assert "Traceback" not in stderr, stderr
    assert "Address already in use" not in stderr, stderr


# Every worker is replaced again and again: the test needs more than two generations of workers (more pids than
# twice the worker count), all workers recycled at once included. Without opentelemetry-instrument a worker holds
# the port, so the port changes hands at every recycle of its holder (gunicorn forks its workers, uvicorn spawns
# them); under it, the master holds the port throughout. gunicorn replaces a worker after 7 requests: 64 requests
# take at least ten workers. uvicorn checks its limit on a timer (every 0.1 s), so its workers serve more than the
# limit: a pause after each batch lets it recycle the workers that served the batch. Each recycle starts a worker:
# that is this test's cost. A spawned uvicorn worker is a whole new interpreter (under opentelemetry-instrument,
# an instrumented one, about 1.5 s of CPU), so uvicorn runs two workers, not four: the same generations, half the
# interpreters.
RECYCLING = {  # server, opentelemetry-instrument, server options, pause after a batch, batches, workers
    "gunicorn-plain": ("gunicorn-sync", False, ["--max-requests", "7"], 0.0, 4, 4),
    "gunicorn-opentelemetry-instrument": ("gunicorn-sync", True, ["--max-requests", "7"], 0.0, 4, 4),
    "uvicorn-plain": ("uvicorn-workers", False, ["--limit-max-requests", "2"], 0.3, 6, 2),
    "uvicorn-opentelemetry-instrument": ("uvicorn-workers", True, ["--limit-max-requests", "2"], 0.3, 6, 2),
}


@pytest.mark.parametrize("case", sorted(RECYCLING))
def test_counters_survive_max_requests_recycling(tmp_path: Path, case: str) -> None:
    server, instrument, extra, pause_s, batches, processes = RECYCLING[case]
    result, stderr = _run_load(
        tmp_path, server, instrument, batches=batches, per_batch=16, extra=extra, pause_s=pause_s, processes=processes
    )

    _assert_exact(result)
    pids, holders = set(result["pids"]), set(result["holders"])  # type: ignore[call-overload]
    assert len(pids) > 2 * processes, "workers were not recycled"
    if not instrument:  # a worker holds the port: it changed hands, from a recycled worker to a sibling
        assert len(holders & pids) >= 2, holders
    else:  # the master holds the port throughout
        assert len(holders) == 1
        assert not holders & pids
    assert "Traceback" not in stderr, stderr


# The master imports the application (--preload) and records at import, before it forks its workers.
PRELOADED_APP = APP.replace(
    'monitor.record_gauge("worker_up", 1)',
    'monitor.increment_counter("boot", value=5)\nmonitor.record_histogram("boot_seconds", 2)\n'
    'monitor.record_gauge("worker_up", 1)',
    1,
)
PRELOAD = {
    "gunicorn-sync-fast": ("gunicorn-sync", False, "fast"),
    "gunicorn-sync-opentelemetry-instrument-sdk": ("gunicorn-sync", True, "sdk"),
    "gunicorn-uvicorn-worker-opentelemetry-instrument-fast": ("gunicorn-uvicorn-worker", True, "fast"),
}


@pytest.mark.parametrize("case", sorted(PRELOAD))
def test_what_the_master_records_before_forking_counts_once(tmp_path: Path, case: str) -> None:
    server, instrument, recording = PRELOAD[case]
    result, stderr = _run_load(
        tmp_path,
        server,
        instrument,
        batches=4,
        per_batch=24,
        extra=["--preload"],
        app=PRELOADED_APP,
        workers=5,  # the master's gauge, inherited by its four workers, each of which sets it again
        METRICS_RECORDING=recording,
    )

    _assert_exact(result)
    # Inherited by four workers, recorded once: not 25 (every worker's copy and the master's).
    assert [scrape["boot"] for scrape in result["scrapes"]] == [[5, 1, 2]] * 4  # type: ignore[index]
    assert len(result["pids"]) > 1, "the load reached one worker only"  # type: ignore[arg-type]
    assert "Traceback" not in stderr, stderr
