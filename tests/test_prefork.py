"""Pre-fork servers keep working under the distro: gunicorn workers forked after the pipeline was built."""

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

from chat_turbo_metrics.exporters.file import read_metric_records
from conftest import clean_env, free_port, require_tool

APP = textwrap.dedent(
    """
    import json, os
    from chat_turbo_metrics import PerformanceMonitor

    def app(environ, start_response):
        monitor = PerformanceMonitor.get_instance()
        monitor.increment_counter("messages_sent", {"channel": "public"})
        with monitor.timer("api_request", {"method": "GET"}):
            mine = monitor.snapshot().value("messages_sent", {"channel": "public"})
        body = json.dumps({"pid": os.getpid(), "count": mine}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    """
)


def wait_for(url: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_gunicorn_workers_record_and_export_under_opentelemetry_instrument(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    gunicorn = str(bindir / "gunicorn") if (bindir / "gunicorn").exists() else require_tool("gunicorn")
    instrument = str(bindir / "opentelemetry-instrument")
    (tmp_path / "app.py").write_text(APP)
    app_port, metrics_port = free_port(), free_port()
    metrics_file = tmp_path / "metrics.jsonl"
    env = clean_env()
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(tmp_path), *(p for p in sys.path if p)]),
            "CHAT_TURBO_ENV": "test",
            "OTEL_METRICS_EXPORTER": "prometheus,chat_turbo_file",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
            "METRICS_FILE_PATH": str(metrics_file),
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
        }
    )
    command = [instrument, gunicorn, "-w", "2", "-b", f"127.0.0.1:{app_port}", "--graceful-timeout", "5", "app:app"]
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{app_port}/", 30)
        replies = [
            json.loads(urllib.request.urlopen(f"http://127.0.0.1:{app_port}/", timeout=5).read()) for _ in range(40)
        ]
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scrape.status == 200
        time.sleep(1.0)  # a few export intervals, so forked workers' periodic export has run
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)

    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    # Every worker counts its own requests exactly: its last reply is how many it served (+1 for the probe).
    last_by_pid: dict[int, int] = {}
    for reply in replies:
        last_by_pid[reply["pid"]] = reply["count"]
    assert sum(last_by_pid.values()) in (40, 41)
    exported = [record for record in read_metric_records(metrics_file) if record["name"] == "messages_sent"]
    assert exported, "forked workers exported nothing to the file"
    assert max(record["value"] for record in exported) >= max(last_by_pid.values()) - 1
