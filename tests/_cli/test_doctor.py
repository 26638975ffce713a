"""``chat-turbo-metrics doctor`` reports what it finds: values checked against real ports, databases and files."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor, Secret
from chat_turbo_metrics._cli import doctor_endpoints
from chat_turbo_metrics._cli.doctor import diagnose, unusable
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
from conftest import directory_listing, free_port, old_file_history, port_open, require


def _config(**settings: object) -> MonitoringConfig:
    settings.setdefault("environment", "test")
    settings.setdefault("prometheus_host", "127.0.0.1")
    return MonitoringConfig(**settings)  # type: ignore[arg-type]


def test_a_running_service_port_is_held_and_its_metrics_and_tags_are_listed() -> None:
    service = PerformanceMonitor(_config(metrics_exporters=()))
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    service.add_exporter(exporter)
    try:
        for route in ("/a", "/b", "/c"):
            service.increment_counter("requests", {"route": route, "method": "GET"})
        service.record_histogram("latency_seconds", 0.2, {"route": "/a"})

        report = diagnose(_config(prometheus_port=exporter.port), env={})
    finally:
        service.shutdown()

    prometheus = report["endpoints"]["prometheus"]
    assert prometheus["port"] == "held"
    assert prometheus["metrics"]["requests_total"] == {"type": "counter", "series": 3, "tags": ["method", "route"]}
    assert prometheus["metrics"]["latency_seconds"]["series"] == 1
    assert prometheus["metrics"]["latency_seconds"]["tags"] == ["route"]


def test_a_free_port_is_reported_free_with_advice_naming_the_url() -> None:
    port = free_port()
    report = diagnose(_config(prometheus_port=port), env={})

    assert report["endpoints"]["prometheus"]["port"] == "free"
    assert any(f"127.0.0.1:{port}" in tip for tip in report["advice"])


def test_a_port_held_by_something_else_is_held_without_metrics(one_second_checks: None) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        report = diagnose(_config(prometheus_port=squatter.getsockname()[1]), env={})

    assert report["endpoints"]["prometheus"]["port"] == "held"
    assert "metrics" not in report["endpoints"]["prometheus"]


def test_an_unreachable_database_is_unreachable_and_its_password_never_shown() -> None:
    url = f"postgresql+psycopg://user:hunter2@127.0.0.1:{free_port()}/x"
    report = diagnose(_config(metrics_exporters=("chat_turbo_database",), database_url=Secret(url)), env={})

    database = report["endpoints"]["database"]
    assert database["reachable"] is False
    assert "hunter2" not in json.dumps(report, default=str)


def test_a_reachable_database_is_reachable() -> None:
    require(port_open("127.0.0.1", 5432), "PostgreSQL is not running on 127.0.0.1:5432")
    url = Secret("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    report = diagnose(_config(metrics_exporters=("chat_turbo_database",), database_url=url), env={})

    assert report["endpoints"]["database"]["reachable"] is True


def test_file_path_writability_is_checked(tmp_path: Path) -> None:
    writable = diagnose(_config(metrics_exporters=("chat_turbo_file",), file_path=str(tmp_path / "m.jsonl")), env={})
    missing_dir = diagnose(
        _config(metrics_exporters=("chat_turbo_file",), file_path=str(tmp_path / "nope" / "m.jsonl")), env={}
    )

    assert writable["endpoints"]["file"]["writable"] is True
    assert missing_dir["endpoints"]["file"]["writable"] is False


def test_otlp_collector_reachability_follows_the_endpoint_variable(collector: Collector) -> None:
    up = f"http://127.0.0.1:{collector.port}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": up, "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=chat%20team"}
    reachable = diagnose(_config(metrics_exporters=("otlp",)), env=env)
    down = diagnose(
        _config(metrics_exporters=("otlp",)), env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    )

    assert reachable["endpoints"]["otlp"] == {
        "enabled": True,
        "endpoint": f"{up}/v1/metrics",
        "reachable": True,
        "answer": "HTTP 200",
    }
    assert collector.requests == [("POST", "/v1/metrics", "application/x-protobuf", "chat team")]
    assert down["endpoints"]["otlp"]["reachable"] is False


def test_an_otlp_metrics_endpoint_variable_is_used_as_it_is(collector: Collector) -> None:
    url = f"http://127.0.0.1:{collector.port}/custom/path"
    report = diagnose(_config(metrics_exporters=("otlp_proto_http",)), env={"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": url})

    assert report["endpoints"]["otlp"]["endpoint"] == url
    assert report["endpoints"]["otlp"]["answer"] == "HTTP 404"  # the collector answered: wrong path
    assert report["endpoints"]["otlp"]["reachable"] is False
    assert collector.requests[0][:2] == ("POST", "/custom/path")


def test_an_otlp_grpc_collector_is_asked_over_grpc() -> None:
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

    class Service(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        report = diagnose(
            _config(metrics_exporters=("otlp",), otlp_protocol="grpc"),
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"},
        )
    finally:
        server.stop(None)

    assert report["endpoints"]["otlp"] == {
        "enabled": True,
        "endpoint": f"http://127.0.0.1:{port}",
        "reachable": True,
        "answer": "OK",
    }


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"metrics_exporters": ("otlp",)}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"metrics_exporters": ("otlp",), "otlp_protocol": "grpc"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"metrics_exporters": ("datadog",), "datadog_api_key": "k" * 32}, "datadog_endpoint"),
        ({"metrics_exporters": ("chat_turbo_database",)}, "database_url"),
        ({"metrics_exporters": ("prometheus",)}, "prometheus_port"),
    ],
    ids=["otlp-http", "otlp-grpc", "datadog", "postgresql", "prometheus"],
)
def test_an_endpoint_that_accepts_and_never_answers_is_reported_not_answering(
    silent_port: int, one_second_checks: None, settings: dict[str, Any], variable: str
) -> None:
    where = f"http://127.0.0.1:{silent_port}"
    env = {variable: where} if variable.startswith("OTEL_") else {}
    if variable == "datadog_endpoint":
        settings = {**settings, "datadog_endpoint": where}
    elif variable == "database_url":
        settings = {**settings, "database_url": f"postgresql+psycopg://u:pw@127.0.0.1:{silent_port}/db"}
    elif variable == "prometheus_port":
        settings = {**settings, "prometheus_port": silent_port}

    report = diagnose(_config(**settings), env=env)

    name = {"otlp": "otlp", "datadog": "datadog", "chat_turbo_database": "database", "prometheus": "prometheus"}[
        settings["metrics_exporters"][0]
    ]
    found = report["endpoints"][name]
    assert found["enabled"] is True
    assert "metrics" not in found
    assert found["reachable"] is False
    assert unusable(report) == [name]


def test_a_trickling_endpoint_is_cut_off_at_the_deadline(trickling_port: int) -> None:
    started = time.monotonic()
    report = diagnose(_config(metrics_exporters=("prometheus",), prometheus_port=trickling_port), env={}, deadline_s=1)

    assert report["endpoints"]["prometheus"] == {"enabled": True, "reachable": False, "error": "no answer within 1 s"}
    assert time.monotonic() - started < 10  # not the minute a byte a second would take


def test_disabled_instrumentations_are_reported_disabled() -> None:
    report = diagnose(_config(), env={"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "sqlalchemy"})
    active = diagnose(_config(), env={})

    assert report["instrumentors"]["sqlalchemy"] == "disabled"
    assert active["instrumentors"]["sqlalchemy"] == "active"


def test_disabled_monitoring_and_no_exporters_are_reported() -> None:
    report = diagnose(_config(enabled=False, metrics_exporters=()), env={})

    assert report["enabled"] is False
    assert report["exporters"] == []
    assert report["config"]["enabled"] is False


def test_high_cardinality_metric_gets_memory_advice_naming_it() -> None:
    service = PerformanceMonitor(_config(metrics_exporters=(), cardinality_limit=600))
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    service.add_exporter(exporter)
    try:
        for user in range(700):  # a user id as a tag: the classic mistake
            service.increment_counter("logins", {"user": str(user)})
        report = diagnose(_config(prometheus_port=exporter.port), env={})
    finally:
        service.shutdown()

    family = report["endpoints"]["prometheus"]["metrics"]["logins_total"]
    assert family["series"] == 601  # the limit, plus the overflow series
    assert "otel_metric_overflow" in family["tags"]
    assert any("logins_total" in tip and "601 series" in tip for tip in report["advice"])


def test_cli_prints_json_masks_secrets_and_exits_1_for_a_broken_endpoint(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    env.update(
        {
            "CHAT_TURBO_ENV": "test",
            "OTEL_METRICS_EXPORTER": "chat_turbo_database",
            "METRICS_DATABASE_URL": f"postgresql+psycopg://u:s3cret@127.0.0.1:{free_port()}/db",
            "ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/tok3n",
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "chat_turbo_metrics", "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["endpoints"]["database"]["reachable"] is False
    assert report["config"]["alert_slack_webhook_url"] == "https://hooks.slack.com/***"
    assert "s3cret" not in done.stdout + done.stderr
    assert "tok3n" not in done.stdout + done.stderr


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_text_and_json_agree_on_the_port(as_json: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    port = free_port()
    env.update(
        {"CHAT_TURBO_ENV": "test", "OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT": str(port)}
    )
    command = [sys.executable, "-m", "chat_turbo_metrics", "doctor", *(["--json"] if as_json else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    if as_json:
        assert json.loads(done.stdout)["endpoints"]["prometheus"]["port"] == "free"
    else:
        assert f"url=http://127.0.0.1:{port}/metrics, port=free" in done.stdout


# --- the service's metrics and self-telemetry, through the real CLI ------------------------------------------

SERVICE = """
import sys, chat_turbo_metrics
monitor = chat_turbo_metrics.configure()
for user in range(8):
    monitor.increment_counter("logins", {"user": str(user)})
monitor.increment_counter("logins", value=float("nan"))
monitor.record_histogram("latency_seconds", 0.2, {"route": "/a"})
monitor.force_flush(10)
print("ready", flush=True)
sys.stdin.read()  # serve until the test closes stdin
monitor.shutdown()
"""


def _doctor(env: dict[str, str], cwd: Path | None = None, timeout_s: float = 60) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "chat_turbo_metrics", "doctor", "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    env.update({"CHAT_TURBO_ENV": "test", "METRICS_MULTIPROCESS": "false", **settings})
    return env


def test_cli_reports_a_running_services_overflow_failing_exporter_and_drops_with_advice() -> None:
    port, collector = free_port(), f"http://127.0.0.1:{free_port()}"  # nothing listens at the collector
    env = _env(
        OTEL_METRICS_EXPORTER="prometheus,otlp",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(port),
        OTEL_EXPORTER_OTLP_ENDPOINT=collector,
        OTEL_METRIC_EXPORT_TIMEOUT="1000",
        METRICS_CARDINALITY_LIMIT="5",
    )
    service = subprocess.Popen(
        [sys.executable, "-c", SERVICE], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert service.stdout is not None
        assert service.stdout.readline() == "ready\n"
        status, report = _doctor(env)
    finally:
        service.communicate("", timeout=30)

    assert status == 1  # the collector cannot be reached
    listed: Any = report["metrics"]
    assert (listed["source"], listed["where"]) == ("prometheus", f"http://127.0.0.1:{port}/metrics")
    tags = ["otel_metric_overflow", "user"]
    assert listed["metrics"]["logins_total"] == {"type": "counter", "series": 6, "tags": tags}
    assert listed["metrics"]["latency_seconds"]["tags"] == ["route"]
    found: Any = report["health"]
    assert found["overflow"] == {"logins": 3}
    assert found["dropped"] == {"not_finite": 1}
    otlp = found["exports"]["OTLPMetricExporter"]
    # Refused, then retried until its 1 s ran out or not (as the machine's load decides): failed either way.
    assert otlp["failure"] + otlp["timeout"] >= 1
    assert otlp["success"] == 0
    advice: Any = report["advice"]
    assert [tip for tip in advice if "logins" in tip and "(6 series" in tip and " 3 " in tip and "(5 " in tip]
    assert [tip for tip in advice if "OTLPMetricExporter" in tip and collector in tip]


def test_cli_lists_metrics_from_the_file_when_no_service_answers(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    env = _env(OTEL_METRICS_EXPORTER="chat_turbo_file", METRICS_FILE_PATH=str(path))
    record = (
        "import chat_turbo_metrics\n"
        "monitor = chat_turbo_metrics.configure()\n"
        "for queue in ('mail', 'sms'): monitor.increment_counter('jobs', {'queue': queue})\n"
        "monitor.increment_counter('jobs', value=-3)\n"
        "monitor.shutdown()\n"
    )
    subprocess.run([sys.executable, "-c", record], env=env, check=True, timeout=60)

    status, report = _doctor(env)

    assert status == 0
    listed: Any = report["metrics"]
    assert (listed["source"], listed["where"]) == ("file", str(path))
    assert listed["metrics"]["jobs"] == {"type": "counter", "series": 2, "tags": ["queue"]}
    found: Any = report["health"]
    assert found["dropped"] == {"negative_value": 1}
    assert found["exports"]["chat_turbo_file"]["failure"] == 0
    assert found["series"]["jobs"] == 2


def test_cli_lists_metrics_and_tags_from_the_history_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    env = _env(OTEL_METRICS_EXPORTER="chat_turbo_database", METRICS_DATABASE_URL=url)
    record = (
        "import chat_turbo_metrics\n"
        "monitor = chat_turbo_metrics.configure()\n"
        "monitor.record_histogram('query_seconds', 0.1, {'table': 'users', 'operation': 'select'})\n"
        "monitor.shutdown()\n"
    )
    subprocess.run([sys.executable, "-c", record], env=env, check=True, timeout=60)

    status, report = _doctor(env)

    assert status == 0
    listed: Any = report["metrics"]
    assert listed["source"] == "database"
    assert listed["metrics"]["query_seconds"] == {"type": "histogram", "series": 1, "tags": ["operation", "table"]}


def test_without_a_database_url_the_doctor_reads_the_history_the_exporter_writes_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default history is a SQLite file in the working directory
    config = _config(metrics_exporters=("chat_turbo_database",), self_telemetry=False)
    monitor = PerformanceMonitor(config)
    monitor.increment_counter("jobs", {"queue": "mail"})
    monitor.shutdown()

    report = diagnose(config, env={})

    assert report["endpoints"]["database"]["reachable"] is True
    listed: Any = report["metrics"]
    assert listed["source"] == "database"
    assert listed["metrics"]["jobs"]["tags"] == ["queue"]


def test_cli_says_plainly_when_no_metrics_can_be_listed() -> None:
    status, report = _doctor(_env(OTEL_METRICS_EXPORTER="prometheus", OTEL_EXPORTER_PROMETHEUS_PORT=str(free_port())))

    assert status == 0
    assert report["metrics"] == {"source": None, "where": None, "metrics": {}}
    assert report["health"] == {
        "exports": {},
        "dropped": {},
        "overflow": {},
        "queues": {},
        "series": {},
        "notifications": {},
    }


def test_alert_notifications_a_service_sent_and_dropped_become_alert_spam_advice() -> None:
    from chat_turbo_metrics.alerting import DeliveryStats

    service = PerformanceMonitor(_config(metrics_exporters=()))
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    service.add_exporter(exporter)
    assert service.pipeline is not None
    stats = DeliveryStats(meter_provider=service.pipeline.meter_provider)  # what the alert dispatcher counts with
    try:
        for outcome in ("sent", "sent", "sent", "dropped", "failed"):
            stats.count("slack", outcome)
        report = diagnose(_config(prometheus_port=exporter.port), env={})
    finally:
        service.shutdown()

    assert report["health"]["notifications"] == {"slack": {"sent": 3, "dropped": 1, "failed": 1}}
    assert [tip for tip in report["advice"] if "slack" in tip and " 3 " in tip and " 1 " in tip]


def test_datadog_intake_reachability_and_key_acceptance_are_reported_without_the_key(collector: Collector) -> None:
    up = f"http://127.0.0.1:{collector.port}"
    key = "feedc0ffee1234"
    collector.datadog_key = key
    accepted = diagnose(_config(metrics_exporters=("datadog",), datadog_endpoint=up, datadog_api_key=key), env={})
    rejected = diagnose(
        _config(metrics_exporters=("datadog",), datadog_endpoint=up, datadog_api_key="0ther" + key), env={}
    )
    down = diagnose(_config(metrics_exporters=("datadog",), datadog_endpoint=f"http://127.0.0.1:{free_port()}"), env={})
    bad = diagnose(_config(metrics_exporters=("datadog",), datadog_endpoint="http://example.com"), env={})

    assert accepted["endpoints"]["datadog"] == {
        "enabled": True,
        "endpoint": f"{up}/api/v2/series",
        "api_key": "accepted",
        "reachable": True,
        "answer": "HTTP 200",
    }
    assert unusable(accepted) == []
    assert rejected["endpoints"]["datadog"]["api_key"] == "rejected by the intake"
    assert unusable(rejected) == ["datadog"]
    assert key not in json.dumps(accepted, default=str) + json.dumps(rejected, default=str)
    assert down["endpoints"]["datadog"]["reachable"] is False
    assert down["endpoints"]["datadog"]["api_key"] == "missing (DD_API_KEY)"
    assert [tip for tip in down["advice"] if down["endpoints"]["datadog"]["endpoint"] in tip]
    assert bad["endpoints"]["datadog"]["reachable"] is False
    assert "http://example.com" in bad["endpoints"]["datadog"]["error"]


def test_cli_deletes_no_rotated_file_a_shorter_retention_would_and_creates_no_database(tmp_path: Path) -> None:
    before = old_file_history(tmp_path, rotations=3, age_days=8)
    env = _env(
        OTEL_METRICS_EXPORTER="chat_turbo_file,chat_turbo_database",  # the database: the default SQLite file
        METRICS_FILE_PATH=str(tmp_path / "metrics.jsonl"),
        METRICS_RETENTION_DAYS="1",
    )
    status, report = _doctor(env, cwd=tmp_path)

    assert status == 0
    endpoints: Any = report["endpoints"]
    assert endpoints["database"]["reachable"] is True  # the directory it will be created in is writable
    listed: Any = report["metrics"]
    assert listed["source"] == "file"
    assert directory_listing(tmp_path) == before


def test_cli_against_a_database_that_never_answers_finishes_and_exits_1(silent_port: int) -> None:
    url = f"postgresql+psycopg://u:pw@127.0.0.1:{silent_port}/db"
    env = _env(OTEL_METRICS_EXPORTER="chat_turbo_database", METRICS_DATABASE_URL=url)

    status, report = _doctor(env, timeout_s=40)  # it took 134 s: the listing's engine had no connect timeout

    assert status == 1
    endpoints: Any = report["endpoints"]
    assert endpoints["database"]["reachable"] is False
    assert report["metrics"] == {"source": None, "where": None, "metrics": {}}


# --- peers ---------------------------------------------------------------------------------------------------


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP collector (POST /v1/metrics) and a Datadog key validation (GET /api/v1/validate)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.port = self.server_address[1]
        self.requests: list[tuple[str, str, str, str]] = []
        self.datadog_key = ""


class _CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(
            (self.command, self.path, self.headers.get("Content-Type", ""), self.headers.get("x-tenant", ""))
        )
        status = 200 if self.path == "/v1/metrics" and body == b"" else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        valid = self.path == "/api/v1/validate" and self.headers.get("DD-API-KEY") == self.server.datadog_key
        payload = b'{"valid":true}' if valid else b'{"errors":["Forbidden"]}'
        self.send_response(200 if valid else 403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def one_second_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each connection, request or query of a check gives up after 1 s instead of 3: what a silent peer costs."""
    monkeypatch.setattr(doctor_endpoints, "TIMEOUT_S", 1.0)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes them) and never answers a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
def trickling_port() -> Iterator[int]:
    """An HTTP server that answers /metrics one byte a second."""
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)

    def trickle(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while not stop.wait(1):
                connection.sendall(b"#")

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=trickle, args=(connection,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    yield listener.getsockname()[1]
    stop.set()
    server.join()
    listener.close()
