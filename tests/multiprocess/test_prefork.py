"""Pre-fork servers keep working under the distro: gunicorn workers forked after the pipeline was built, each
pushing what it records itself under its own ``service.instance.id``."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

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


def wait_for(url: str, deadline_s: float) -> bytes:
    """The body of the first answer from ``url``."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read()
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


PRELOADED = textwrap.dedent(
    """
    import json, os
    from chat_turbo_metrics import PerformanceMonitor

    monitor = PerformanceMonitor.get_instance()
    monitor.increment_counter("boot", value=5)  # in the master, before it forks its workers (--preload)

    def app(environ, start_response):
        monitor.increment_counter("served")
        body = json.dumps({"pid": os.getpid()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    """
)


class _OtlpReceiver(BaseHTTPRequestHandler):
    """Decodes OTLP/HTTP metric exports into ``server.requests``."""

    server: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.requests.append(ExportMetricsServiceRequest.FromString(body))
        answer = ExportMetricsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def _last_values(requests: list[ExportMetricsServiceRequest], name: str) -> dict[str, float]:
    """The last cumulative value of metric ``name`` each ``service.instance.id`` exported."""
    latest: dict[str, tuple[int, float]] = {}
    for request in requests:
        for resource_metrics in request.resource_metrics:
            attributes = {kv.key: kv.value.string_value for kv in resource_metrics.resource.attributes}
            instance = attributes["service.instance.id"]
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.sum.data_points:
                        value = point.as_int or point.as_double
                        if point.time_unix_nano >= latest.get(instance, (0, 0.0))[0]:
                            latest[instance] = (point.time_unix_nano, value)
    return {instance: value for instance, (_, value) in latest.items()}


def test_each_process_pushes_only_what_it_recorded_under_its_own_instance_id(tmp_path: Path) -> None:
    # A --preload master records at import; its workers inherit that and must not push it again as their own.
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    receiver.requests = []  # type: ignore[attr-defined]
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    (tmp_path / "app.py").write_text(PRELOADED)
    app_port = free_port()
    env = clean_env(
        PYTHONPATH=os.pathsep.join([str(tmp_path), *(p for p in sys.path if p)]),
        CHAT_TURBO_ENV="test",
        OTEL_METRICS_EXPORTER="otlp_proto_http",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"http://127.0.0.1:{receiver.server_port}/v1/metrics",
        OTEL_METRIC_EXPORT_INTERVAL="200",
    )
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    command = [gunicorn, "-w", "4", "--preload", "-b", f"127.0.0.1:{app_port}", "--graceful-timeout", "5", "app:app"]
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The probe is a request too: the worker that served it counts, the first to come up, often no other.
        pids = {json.loads(wait_for(f"http://127.0.0.1:{app_port}/", 30))["pid"]}
        for _ in range(40):
            pids.add(json.loads(urllib.request.urlopen(f"http://127.0.0.1:{app_port}/", timeout=5).read())["pid"])
    finally:
        server.send_signal(signal.SIGTERM)  # every process flushes its exporters as it exits
        _, stderr = server.communicate(timeout=30)
        receiver.shutdown()

    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    served = _last_values(receiver.requests, "served")  # type: ignore[attr-defined]
    boot = _last_values(receiver.requests, "boot")  # type: ignore[attr-defined]
    assert sum(served.values()) == 41  # the probe and 40 requests, each counted by the worker that served it
    assert len(served) == len(pids)  # one instance id per worker that served
    # Five processes, five instance ids: the master's count once; each worker's inherited copy starts at 0.
    assert sorted(boot.values()) == [0, 0, 0, 0, 5]
