"""A real gunicorn serving a small WSGI application that records one counter per request, for the pre-fork tests.

The application calls ``chat_turbo_metrics.configure()`` at import, in every worker (or uses
``get_instance()``, or runs under ``opentelemetry-instrument``), and answers with the pid that served the
request. The server runs in a session of its own; :meth:`Server.stop` ends it and returns its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import clean_env, free_port

BIN = Path(sys.executable).parent

APP = textwrap.dedent(
    """
    import json, os, time
    import chat_turbo_metrics

    monitor = {monitor}

    def app(environ, start_response):
        time.sleep(0.02)  # long enough that concurrent requests reach different workers
        monitor.increment_counter("orders")
        body = json.dumps({{"pid": os.getpid()}}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    """
)
CONFIGURE = "chat_turbo_metrics.configure()  # strict: a port this worker cannot share raises"
GET_INSTANCE = "chat_turbo_metrics.PerformanceMonitor.get_instance()"


def monitored_env(metrics_port: int, **extra: str) -> dict[str, str]:
    """The environment of a program that serves Prometheus on 127.0.0.1:``metrics_port`` (plus ``extra``)."""
    settings = {
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "CHAT_TURBO_ENV": "test",
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
    }
    return clean_env(**{**settings, **extra})


class Server:
    """``gunicorn -w <workers>`` serving :data:`APP` on a free port, its Prometheus endpoint on another."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        workers: int = 4,
        monitor: str = CONFIGURE,
        instrument: bool = False,
        extra: tuple[str, ...] = (),
        metrics_port: int | None = None,
        **env: str,
    ) -> None:
        self.directory = tmp_path
        (tmp_path / "app.py").write_text(APP.format(monitor=monitor))
        self.app_port = free_port()
        self.metrics_port = metrics_port or free_port()
        self.log = tmp_path / f"server-{self.app_port}.log"
        self.sent = 0  # requests answered, the probes that waited for the workers included
        self._lock = threading.Lock()
        environment = monitored_env(
            self.metrics_port, PYTHONPATH=os.pathsep.join([str(tmp_path), *filter(None, sys.path)]), **env
        )
        command = [str(BIN / "gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{self.app_port}"]
        command += ["--graceful-timeout", "5", *extra, "app:app"]
        if instrument:
            command = [str(BIN / "opentelemetry-instrument"), *command]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, env=environment, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True
            )
        self._wait_ready(workers)

    def _wait_ready(self, workers: int) -> None:
        """Until every worker has served a request (so every worker has started, and configured monitoring)."""
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while len(pids) < workers:
            try:
                pids |= self.load(2 * workers)
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"the server did not start:\n{self.stop()[-3000:]}") from None
                time.sleep(0.1)
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(pids)} of {workers} workers served:\n{self.stop()[-3000:]}")

    def request(self) -> int:
        """One request to the application; the pid of the worker that served it."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.app_port}/", timeout=10) as reply:
            pid = int(json.loads(reply.read())["pid"])
        with self._lock:
            self.sent += 1
        return pid

    def load(self, requests: int) -> set[int]:
        """``requests`` requests, four at a time (so that every worker takes some); the pids that served them."""
        with ThreadPoolExecutor(4) as pool:
            return set(pool.map(lambda _: self.request(), range(requests)))

    def scrape(self) -> str:
        """The Prometheus endpoint's answer (see :func:`scrape`)."""
        return scrape(self.metrics_port)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> str:
        """SIGTERM, then the whole session killed if it is not gone in 30 s; the server's log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.read_log()


def scrape(port: int) -> str:
    """What 127.0.0.1:``port``/metrics answers; it must be 200 (a refused connection is retried for 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                assert reply.status == 200
                return reply.read().decode()  # type: ignore[no-any-return]
        except urllib.error.HTTPError:
            raise
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def value(text: str, sample: str) -> float | None:
    """The value of the sample line ``sample`` (name and labels exactly as exposed) in a scrape, or None."""
    found = re.search("^" + re.escape(sample) + r" (\S+)$", text, re.M)
    return float(found.group(1)) if found else None
