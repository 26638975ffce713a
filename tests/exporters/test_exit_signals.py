"""SIGTERM flushes every push exporter; SIGKILL leaves the file and database stores readable.

Real child processes get real signals. The SIGTERM children export only at shutdown (a one-hour interval), so
every value a receiver holds was sent by the final export: file, SQLite, PostgreSQL, OTLP/HTTP, OTLP/gRPC and
Datadog, from a plain script (idle, or recording in a loop on the main thread when the signal arrives) and
from a uvicorn server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import test_database
from datadog_intake import DD_KEY, STALL, Answer, DatadogIntake, running_intake, total
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from sqlalchemy import create_engine, text
from test_otlp import OtlpHttpReceiver, Received, _MetricsService, metrics_by_name, number

from chat_turbo_metrics.exporters.database import MetricHistory
from chat_turbo_metrics.exporters.file import FileExporter, read_metric_records
from conftest import clean_env, free_port

database_url = test_database.database_url  # the fixture: a new SQLite file or a new PostgreSQL schema
N = 4321  # orders recorded before the signal: every store must hold exactly this many
PATIENCE_S = 30.0

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http
    from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
    from chat_turbo_metrics.exporters import DatabaseExporter, DataDogExporter, FileExporter

    spec = json.loads(os.environ["FAULTS_SPEC"])
    monitor = PerformanceMonitor(MonitoringConfig(
        metrics_exporters=(), export_interval_s=spec.get("interval_s", 3600),
        export_timeout_s=spec.get("timeout_s", 10), shutdown_timeout_s=spec.get("timeout_s", 20)))
    exporters = [FileExporter(spec["file"]), DatabaseExporter(spec["database"])]
    if "otlp_http" in spec:
        exporters += [
            Http(endpoint=spec["otlp_http"], timeout=10),
            Grpc(endpoint=spec["otlp_grpc"], insecure=True, timeout=10),
            DataDogExporter(spec["dd_key"], endpoint=spec["datadog"]),
        ]
    for exporter in exporters:
        monitor.add_exporter(exporter)

    def record_orders(n):
        for i in range(n):
            monitor.increment_counter("orders", {"shop": "eu"})
            monitor.record_histogram("basket_size", i % 7, {"shop": "eu"})
    """
)

SCRIPT = CHILD + textwrap.dedent(
    """
    record_orders(int(spec["orders"]))
    print("ready", flush=True)
    if spec["main_thread"] == "busy":  # recording on the main thread when the signal arrives
        spin = monitor.counter("spin")
        while True:
            spin.inc()
    while True:
        time.sleep(60)
    """
)

ASGI_APP = CHILD + textwrap.dedent(
    """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        record_orders(int(spec["orders"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    """
)


class Receivers:
    """Every push endpoint at once, on 127.0.0.1: OTLP/HTTP, OTLP/gRPC and a Datadog intake."""

    def __init__(self, intake: DatadogIntake) -> None:
        self.datadog = intake
        self.http = OtlpHttpReceiver()
        threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True).start()
        self.grpc = Received()
        self._grpc_server = grpc.server(ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self.grpc), self._grpc_server)
        self.grpc_port = self._grpc_server.add_insecure_port("127.0.0.1:0")
        self._grpc_server.start()

    def spec(self) -> dict[str, str]:
        return {
            "otlp_http": self.http.endpoint,
            "otlp_grpc": f"http://127.0.0.1:{self.grpc_port}",
            "datadog": self.datadog.url,
            "dd_key": DD_KEY,
        }

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self._grpc_server.stop(grace=None).wait()


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    with running_intake() as intake:
        started = Receivers(intake)
        yield started
        started.stop()


def last_otlp_orders(received: Received) -> float:
    """The cumulative ``orders`` total of the last OTLP request that carried it."""
    totals = [
        sum(number(point) for point in metrics_by_name(request)["orders"].sum.data_points)
        for request in received.requests
        if "orders" in metrics_by_name(request)
    ]
    assert totals, f"no OTLP request carried orders ({len(received.requests)} requests)"
    return totals[-1]


def stored_orders(url: str) -> float:
    now = time.time()
    with MetricHistory(url) as history:
        return sum(row.total for row in history.counter_rate("orders", now - 3600, now + 3600, bucket_s=7200))


def file_orders(path: Path) -> float:
    values = [record["value"] for record in read_metric_records(path) if record["name"] == "orders"]
    assert values, f"no orders in {path}"
    return float(values[-1])


def assert_every_store_holds(spec: dict[str, Any], receivers: Receivers, expected: int) -> None:
    assert file_orders(Path(spec["file"])) == expected
    assert stored_orders(spec["database"]) == expected
    assert last_otlp_orders(receivers.http.received) == expected
    assert last_otlp_orders(receivers.grpc) == expected
    assert total(receivers.datadog.accepted_series(), "orders") == expected


def spawn(args: list[str], spec: dict[str, Any], **options: Any) -> subprocess.Popen[str]:
    env = clean_env(FAULTS_SPEC=json.dumps(spec), PYTHONUNBUFFERED="1")
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def finish(child: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, stderr = child.communicate(timeout=PATIENCE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        _, stderr = child.communicate()
        raise AssertionError(f"the child did not end within {PATIENCE_S} s of SIGTERM: {stderr[-3000:]}") from None
    return child.returncode, stderr


@pytest.mark.parametrize("main_thread", ["idle", "busy"])
def test_sigterm_to_a_plain_script_flushes_every_exporter_then_ends_it_by_sigterm(
    receivers: Receivers, database_url: str, tmp_path: Path, main_thread: str
) -> None:
    spec = {
        **receivers.spec(),
        "file": str(tmp_path / "metrics.jsonl"),
        "database": database_url,
        "orders": N,
        "main_thread": main_thread,
    }
    child = spawn([sys.executable, "-c", SCRIPT], spec)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    assert receivers.http.received.requests == []  # nothing exported before the signal

    child.send_signal(signal.SIGTERM)
    returncode, stderr = finish(child)

    assert returncode == -signal.SIGTERM, stderr[-3000:]  # still "killed by SIGTERM" for its parent
    assert_every_store_holds(spec, receivers, N)


def test_a_second_sigterm_ends_the_process_while_the_final_export_hangs(receivers: Receivers, tmp_path: Path) -> None:
    spec = {
        **receivers.spec(),
        "file": str(tmp_path / "metrics.jsonl"),
        "database": f"sqlite:///{tmp_path / 'metrics.db'}",
        "orders": N,
        "main_thread": "idle",
        "timeout_s": 600,  # the final export would wait for the stalled intake far longer than the test does
    }
    receivers.datadog.answer(Answer(STALL))
    child = spawn([sys.executable, "-c", SCRIPT], spec)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"

    child.send_signal(signal.SIGTERM)
    assert receivers.datadog.stalled.wait(PATIENCE_S)  # the final export is under way, and hangs
    path = Path(spec["file"])
    _wait_until(lambda: path.exists() and b'"orders"' in path.read_bytes())  # others are not held back by it
    child.send_signal(signal.SIGTERM)
    returncode, stderr = finish(child)

    assert returncode == -signal.SIGTERM, stderr[-3000:]
    assert not receivers.datadog.release.is_set()  # it ended while the intake still held the request
    assert file_orders(path) == N


def test_sigterm_to_a_uvicorn_server_flushes_every_exporter(
    receivers: Receivers, database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "shop.py").write_text(ASGI_APP)
    port = free_port()
    spec = {**receivers.spec(), "file": str(tmp_path / "metrics.jsonl"), "database": database_url, "orders": N}
    args = [sys.executable, "-m", "uvicorn", "shop:app", "--port", str(port), "--log-level", "warning"]
    child = spawn(args, spec, cwd=tmp_path)
    try:
        _get(f"http://127.0.0.1:{port}/", child)
    except BaseException:
        child.kill()
        raise

    child.send_signal(signal.SIGTERM)
    returncode, stderr = finish(child)

    assert returncode in (0, -signal.SIGTERM), stderr[-3000:]
    assert_every_store_holds(spec, receivers, N)


def _get(url: str, child: subprocess.Popen[str]) -> None:
    """GET ``url`` once the server listens (it may still be starting)."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=PATIENCE_S) as reply:
                assert reply.status == 200
                return
        except OSError:
            if child.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- SIGKILL ----------------------------------------------------------------------------------------


KILLED = CHILD + textwrap.dedent(
    """
    print("ready", flush=True)
    while True:  # exports every 20 ms while recording: a kill lands mid-export sooner or later
        record_orders(500)
    """
)


def test_sigkill_leaves_the_metrics_file_and_the_database_readable_and_writable(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.jsonl"
    spec = {"file": str(path), "database": database_url, "interval_s": 0.02}
    child = spawn([sys.executable, "-c", KILLED], spec)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    _wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") > 200 and _orders_or_zero(database_url) > 0)

    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=PATIENCE_S)
    assert child.returncode == -signal.SIGKILL

    # The file: every complete line parses; at most the last one is torn, and it is skipped.
    content = path.read_bytes()
    records = list(read_metric_records(path))
    assert len(records) == content.count(b"\n")
    orders = [record["value"] for record in records if record["name"] == "orders"]
    assert orders == sorted(orders)
    assert orders[-1] > 0
    assert {"orders", "basket_size"} <= {record["name"] for record in records}
    # The database: each export is one transaction, so every export stored holds both metrics' rows.
    stored = _orders_or_zero(database_url)
    exports = _exports_per_metric(database_url)
    assert stored > 0
    assert {"orders", "basket_size"} <= set(exports)
    assert exports["orders"] == exports["basket_size"]
    with MetricHistory(database_url) as history:
        now = time.time()
        [histogram] = history.histogram_stats("basket_size", now - 3600, now + 3600, bucket_s=7200)
    assert histogram.count >= stored - 500  # queryable; collected a moment apart from the counter

    # A new process appends to both stores after the kill, and its lines and rows read back.
    spec["orders"], spec["main_thread"] = 7, "idle"
    again = spawn([sys.executable, "-c", SCRIPT], {**spec, "interval_s": 3600})
    assert again.stdout is not None
    assert again.stdout.readline() == "ready\n"
    again.send_signal(signal.SIGTERM)
    finish(again)
    assert file_orders(path) == 7  # a new process starts its counters at zero
    assert [record["value"] for record in read_metric_records(path) if record["name"] == "orders"][:-1] == orders
    assert _orders_or_zero(database_url) == stored + 7


def _orders_or_zero(url: str) -> float:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM ctm_points LIMIT 1")).first():
                return 0.0
    except Exception:
        return 0.0  # not created yet
    finally:
        engine.dispose()
    return stored_orders(url)


def _exports_per_metric(url: str) -> dict[str, list[int]]:
    """Per metric name, the end times of the exports that stored it."""
    engine = create_engine(url)
    query = text(
        "SELECT DISTINCT s.name, p.end_ns FROM ctm_points p JOIN ctm_streams s ON s.id = p.stream_id ORDER BY 2"
    )
    try:
        with engine.connect() as conn:
            found: dict[str, list[int]] = {}
            for name, end_ns in conn.execute(query):
                found.setdefault(name, []).append(end_ns)
            return found
    finally:
        engine.dispose()


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, "the child did not export in time"
        time.sleep(0.05)


# --- who handles SIGTERM ------------------------------------------------------------------------------


@pytest.fixture
def default_sigterm() -> Iterator[None]:
    """SIGTERM at its default disposition for the test; the suite's own handler is put back after."""
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, before)


def test_an_application_handler_for_sigterm_is_kept(
    default_sigterm: None, monitor_factory: Callable[..., Any], tmp_path: Path
) -> None:
    def handler(signum: int, frame: object) -> None: ...

    signal.signal(signal.SIGTERM, handler)
    monitor_factory(metrics_exporters=("chat_turbo_file",), file_path=str(tmp_path / "m.jsonl"))

    assert signal.getsignal(signal.SIGTERM) is handler


def test_only_a_pipeline_with_a_push_exporter_handles_sigterm(
    default_sigterm: None, monitor_factory: Callable[..., Any], tmp_path: Path
) -> None:
    monitor = monitor_factory()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    monitor.add_exporter(FileExporter(tmp_path / "m.jsonl"))

    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)


def test_a_pipeline_built_off_the_main_thread_leaves_sigterm_alone(
    default_sigterm: None, monitor_factory: Callable[..., Any], tmp_path: Path
) -> None:
    built: list[Any] = []
    worker = threading.Thread(
        target=lambda: built.append(
            monitor_factory(metrics_exporters=("chat_turbo_file",), file_path=str(tmp_path / "m.jsonl"))
        )
    )
    worker.start()
    worker.join(PATIENCE_S)

    assert len(built) == 1
    assert built[0].pipeline.exporters  # it has its push exporter, and relies on atexit
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
