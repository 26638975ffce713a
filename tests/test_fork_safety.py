"""fork() with monitoring running: children never hang, whatever another thread was doing at the fork.

Each scenario runs in its own interpreter (forking pytest itself would copy its threads); every child must
exit within a deadline, or the scenario fails and names how many hung.
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

from conftest import free_port, require_tool


def run(code: str, timeout_s: float = 600, **env: str) -> dict[str, object]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    environment.update({"CHAT_TURBO_ENV": "test", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1", **env})
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT "))  # type: ignore[no-any-return]


WAIT_CHILDREN = """
import os, time
def wait_all(pids, deadline_s):
    # Each child gets its own deadline: a loaded machine may be slow, a deadlocked child never finishes.
    hung = []
    for pid in pids:
        deadline = time.monotonic() + deadline_s
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9); os.waitpid(pid, 0); hung.append(pid)
                break
            time.sleep(0.01)
    return hung
"""


def test_forked_child_with_prometheus_exits_normally(tmp_path: Path) -> None:
    report = run(
        WAIT_CHILDREN
        + textwrap.dedent(
            """
            import json, sys
            from chat_turbo_metrics import PerformanceMonitor
            monitor = PerformanceMonitor.get_instance()
            monitor.increment_counter("jobs")
            pids = []
            for _ in range(3):
                pid = os.fork()
                if pid == 0:
                    monitor.increment_counter("jobs")
                    sys.exit(0)        # atexit shuts the pipeline down in the child
                pids.append(pid)
            print("REPORT " + json.dumps({"hung": len(wait_all(pids, 10))}))
            """
        ),
        OTEL_METRICS_EXPORTER="prometheus,chat_turbo_file",
        METRICS_PROMETHEUS_PORT=str(free_port()),
        METRICS_FILE_PATH=str(tmp_path / "metrics.jsonl"),  # the file exporter writes only to a regular file
    )
    assert report == {"hung": 0}


@pytest.mark.parametrize("recording", ["fast", "sdk"])
def test_forks_during_concurrent_collection_never_deadlock_the_child(recording: str, tmp_path: Path) -> None:
    report = run(
        WAIT_CHILDREN
        + textwrap.dedent(
            """
            import json, sys, threading, urllib.request
            from chat_turbo_metrics import PerformanceMonitor
            monitor = PerformanceMonitor.get_instance()
            url = monitor.pipeline.pull_exporters[0].url
            stop = threading.Event()
            def scrape():
                while not stop.is_set():
                    urllib.request.urlopen(url, timeout=5).read()
            def snapshot():
                while not stop.is_set():
                    monitor.snapshot()
            def record():
                i = 0
                while not stop.is_set():
                    i += 1
                    monitor.increment_counter("jobs", {"n": str(i % 50)})
                    monitor.record_histogram("latency_seconds", 0.01, {"n": str(i % 50)})
            threads = [threading.Thread(target=f, daemon=True) for f in (scrape, snapshot, record, record)]
            for thread in threads:
                thread.start()
            pids = []
            for _ in range(40):
                pid = os.fork()
                if pid == 0:
                    # Everything the child can do must work: record, collect, push, exit.
                    monitor.increment_counter("child_jobs")
                    monitor.record_histogram("latency_seconds", 0.02, {"n": "child"})
                    monitor.snapshot()
                    monitor.force_flush(2)
                    sys.exit(0)
                pids.append(pid)
                time.sleep(0.005)
            # Every fork happened while the threads were busy; the children need not compete with them to finish.
            stop.set()
            hung = wait_all(pids, 30)
            print("REPORT " + json.dumps({"hung": len(hung)}))
            """
        ),
        # A push exporter too (its periodic collection runs while children fork); not console, whose output
        # from the children would mix with the report line.
        OTEL_METRICS_EXPORTER="prometheus,chat_turbo_file",
        METRICS_FILE_PATH=str(tmp_path / "metrics.jsonl"),  # the file exporter writes only to a regular file
        OTEL_METRIC_EXPORT_INTERVAL="5",
        METRICS_PROMETHEUS_PORT="0",
        METRICS_RECORDING=recording,
    )
    assert report == {"hung": 0}
    # The push exporter was working throughout, not failing (the parent's and the children's snapshots, rotated
    # many times over: which child's lines survive the rotation's deletions is not fixed).
    assert (tmp_path / "metrics.jsonl").stat().st_size > 0


@pytest.mark.parametrize("recording", ["fast", "sdk"])
def test_multiprocessing_fork_with_a_recording_thread(recording: str) -> None:
    report = run(
        """
        import json, multiprocessing, threading
        from chat_turbo_metrics import PerformanceMonitor
        monitor = PerformanceMonitor.get_instance()

        def work(n):
            monitor.increment_counter("child_jobs", {"n": str(n)})
            return monitor.snapshot().value("child_jobs", {"n": str(n)})

        stop = threading.Event()
        def record():
            while not stop.is_set():
                monitor.increment_counter("jobs", {"k": "v"})
                monitor.record_histogram("size", 3.0, {"k": "v"})
        threading.Thread(target=record, daemon=True).start()
        context = multiprocessing.get_context("fork")
        results, hung = [], 0
        for n in range(20):
            process_pool = context.Pool(1)
            result = process_pool.apply_async(work, (n,))
            try:
                results.append(result.get(timeout=15))
            except multiprocessing.TimeoutError:
                hung += 1
            process_pool.terminate()
        stop.set()
        print("REPORT " + json.dumps({"hung": hung, "results": results}))
        """,
        METRICS_RECORDING=recording,
    )
    assert report == {"hung": 0, "results": [1] * 20}


def test_shutdown_timeout_bounds_a_hanging_exporter() -> None:
    report = run(
        """
        import json, threading, time
        from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
        from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor

        class Stuck(MetricExporter):
            def export(self, metrics_data, timeout_millis=10_000, **kwargs):
                threading.Event().wait()          # a peer that never answers
                return MetricExportResult.SUCCESS
            def force_flush(self, timeout_millis=10_000):
                return True
            def shutdown(self, timeout_millis=30_000, **kwargs):
                threading.Event().wait()

        monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), export_timeout_s=60))
        monitor.add_exporter(Stuck())
        monitor.increment_counter("jobs")
        monitor.force_flush(0.2)
        started = time.monotonic()
        monitor.shutdown(timeout_s=1.0)
        print("REPORT " + json.dumps({"took": time.monotonic() - started}))
        """
    )
    assert float(report["took"]) < 2.0  # type: ignore[arg-type]


def test_gunicorn_sigterm_with_prometheus_and_file_is_well_under_the_graceful_timeout(tmp_path: Path) -> None:
    """SIGTERM once both workers run: every process flushes and exits well before gunicorn's graceful timeout.

    The signal waits for both workers' ``post_worker_init``: gunicorn loses a SIGTERM that reaches a worker before
    it installs its own handlers (the master's, inherited over the fork, queue it in the master's copy); that
    worker then serves on until the graceful timeout kills it, whoever instruments it.
    """
    bindir = Path(sys.executable).parent
    gunicorn = str(bindir / "gunicorn") if (bindir / "gunicorn").exists() else require_tool("gunicorn")
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            from chat_turbo_metrics import PerformanceMonitor

            def app(environ, start_response):
                PerformanceMonitor.get_instance().increment_counter("messages_sent")
                start_response("200 OK", [("Content-Length", "2")])
                return [b"ok"]
            """
        )
    )
    (tmp_path / "gunicorn_ready.py").write_text(
        "import os, pathlib\n"
        "def post_worker_init(worker):\n"
        f"    pathlib.Path({str(tmp_path)!r}, 'ready-' + str(os.getpid())).touch()\n"
    )
    app_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(tmp_path), *(p for p in sys.path if p)]),
            "CHAT_TURBO_ENV": "test",
            "OTEL_METRICS_EXPORTER": "prometheus,chat_turbo_file",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(free_port()),
            "METRICS_FILE_PATH": str(tmp_path / "metrics.jsonl"),
        }
    )
    command = [
        str(bindir / "opentelemetry-instrument"),
        gunicorn,
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{app_port}",
        "--graceful-timeout",
        "30",
        "-c",
        "gunicorn_ready.py",
        "app:app",
    ]
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{app_port}/", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        for _ in range(10):
            urllib.request.urlopen(f"http://127.0.0.1:{app_port}/", timeout=5).read()
        while len(list(tmp_path.glob("ready-*"))) < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.05)
    finally:
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
        took = time.monotonic() - started
    assert server.returncode == 0, stderr
    # Half the graceful timeout: a hang (an exporter waited on for ever) reaches it; three interpreters finalising
    # on a loaded two-core machine took up to 9 s.
    assert took < 15, f"SIGTERM took {took:.1f} s (graceful timeout 30 s)"
