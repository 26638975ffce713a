"""``opentelemetry-instrument`` builds exactly the pipeline that ``configure()`` builds, in subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig
from chat_turbo_metrics._pipeline.registry import build_metric_exporter
from conftest import clean_env, free_port, require_tool

APP = textwrap.dedent(
    """
    import dataclasses, json, sys, urllib.request
    import chat_turbo_metrics
    from opentelemetry import metrics, trace
    if sys.argv[1] == "code":
        chat_turbo_metrics.configure(strict=False)
    monitor = chat_turbo_metrics.PerformanceMonitor.get_instance()
    monitor.increment_counter("messages_sent", {"channel": "public"})
    monitor.record_histogram("http_request_duration_seconds", 0.2, {"method": "GET"})
    pipeline = monitor.pipeline
    scrape = ""
    for exporter in pipeline.pull_exporters:
        scrape = urllib.request.urlopen(exporter.url, timeout=5).read().decode()
    resource = {k: v for k, v in pipeline.resource.attributes.items() if k != "service.instance.id"}
    print("REPORT " + json.dumps({
        # The globals are delegating providers that lead to the live pipeline (they follow configure()).
        "global_meter_provider_is_ours": metrics.get_meter_provider().target is pipeline.meter_provider,
        "global_tracer_provider_is_ours": trace.get_tracer_provider().target is pipeline.tracer_provider,
        "readers": [type(r).__name__ for r in pipeline.meter_provider._metric_readers],
        "pull": [type(e).__name__ for e in pipeline.pull_exporters],
        "push": [type(e).__name__ for e in pipeline.exporters],
        "resource": resource,
        "config": repr(dataclasses.replace(pipeline.config, prometheus_port=0)),
        "scrape": scrape,
    }))
    monitor.shutdown()
    """
)


def run_app(tmp_path: Path, mode: str, extra_env: dict[str, str]) -> tuple[dict[str, Any], str]:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = clean_env()
    env.update(extra_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    bindir = Path(sys.executable).parent
    command = [sys.executable, str(app), mode]
    if mode == "instrument":
        command = [str(require_tool_in(bindir, "opentelemetry-instrument")), *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    return json.loads(line[len("REPORT ") :]), result.stderr


def require_tool_in(bindir: Path, name: str) -> Path:
    path = bindir / name
    return path if path.exists() else Path(require_tool(name))


@pytest.fixture
def base_env() -> dict[str, str]:
    return {
        "CHAT_TURBO_ENV": "test",
        "OTEL_METRICS_EXPORTER": "prometheus,console",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_SERVICE_NAME": "distro-test",
    }


def test_instrument_and_configure_build_the_same_pipeline(tmp_path: Path, base_env: dict[str, str]) -> None:
    base_env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(free_port())
    by_code, _ = run_app(tmp_path, "code", base_env)
    base_env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(free_port())
    by_distro, _ = run_app(tmp_path, "instrument", base_env)
    for key in ("readers", "pull", "push", "resource"):
        assert by_code[key] == by_distro[key], key
    assert by_code["config"] == by_distro["config"]
    assert by_distro["readers"] == ["PipelineReader"]
    assert by_distro["pull"] == ["PrometheusExporter"]
    assert by_distro["push"] == ["ConsoleMetricExporter"]
    assert by_distro["resource"]["service.name"] == "distro-test"


def test_instrument_installs_global_meter_and_tracer_providers(tmp_path: Path, base_env: dict[str, str]) -> None:
    base_env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(free_port())
    report, _ = run_app(tmp_path, "instrument", base_env)
    assert report["global_meter_provider_is_ours"]
    assert report["global_tracer_provider_is_ours"]


def test_instrument_serves_seed_metrics_on_the_prometheus_port(tmp_path: Path, base_env: dict[str, str]) -> None:
    base_env["METRICS_PROMETHEUS_PORT"] = str(free_port())
    report, _ = run_app(tmp_path, "instrument", base_env)
    assert 'messages_sent_total{channel="public"} 1' in report["scrape"]
    assert 'http_request_duration_seconds_count{method="GET"} 1' in report["scrape"]


def test_unknown_exporter_gives_one_clear_error_and_the_rest_starts(tmp_path: Path, base_env: dict[str, str]) -> None:
    base_env["OTEL_METRICS_EXPORTER"] = "prometheus,nosuchexporter"
    base_env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(free_port())
    report, stderr = run_app(tmp_path, "instrument", base_env)
    errors = [line for line in stderr.splitlines() if "nosuchexporter" in line]
    assert len(errors) == 1, stderr
    assert "OTEL_METRICS_EXPORTER" in errors[0]
    assert "prometheus" in errors[0]
    assert "chat_turbo_file" in errors[0]
    assert 'messages_sent_total{channel="public"} 1' in report["scrape"]


def test_a_port_in_use_says_once_who_holds_it_and_what_to_set(tmp_path: Path, base_env: dict[str, str]) -> None:
    with socket.socket() as squatter:  # another program holds the port: this test's process
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        base_env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(port)
        report, stderr = run_app(tmp_path, "instrument", {**base_env, "TMPDIR": str(tmp_path)})
    (line,) = [line for line in stderr.splitlines() if f"127.0.0.1:{port}" in line]
    assert f"pid {os.getpid()}" in line
    assert "METRICS_PROMETHEUS_PORT" in line
    assert "Errno" not in line
    assert report["pull"] == []  # the application runs on without the endpoint, and the rest starts
    assert report["push"] == ["ConsoleMetricExporter"]


def test_unknown_trace_exporter_names_its_variable(tmp_path: Path, base_env: dict[str, str]) -> None:
    base_env["OTEL_TRACES_EXPORTER"] = "zipkinx"
    base_env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(free_port())
    report, stderr = run_app(tmp_path, "instrument", base_env)
    assert "OTEL_TRACES_EXPORTER='zipkinx'" in stderr
    assert report["global_tracer_provider_is_ours"]


def test_missing_exporter_package_names_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    # sys.modules[name] = None makes that import fail exactly as an uninstalled package does.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.metric_exporter", None)
    with pytest.raises(ConfigurationError) as caught:
        build_metric_exporter("otlp", MonitoringConfig(), "OTEL_METRICS_EXPORTER")
    message = str(caught.value)
    assert "OTEL_METRICS_EXPORTER='otlp'" in message
    assert "chat-turbo-metrics[otlp]" in message
    assert "Available:" in message


def test_bad_setting_under_instrument_is_reported_and_the_app_still_runs(tmp_path: Path) -> None:
    app = tmp_path / "plain.py"
    app.write_text("print('app ran')\n")
    env = clean_env()
    env.update({"METRICS_SAMPLING_RATE": "1.5", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    tool = require_tool_in(Path(sys.executable).parent, "opentelemetry-instrument")
    result = subprocess.run(
        [str(tool), sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert "app ran" in result.stdout
    assert "chat_turbo_metrics not started: METRICS_SAMPLING_RATE='1.5': must be > 0 and <= 1" in result.stderr


def test_taken_prometheus_port_is_reported_and_the_rest_starts(tmp_path: Path, base_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        base_env["OTEL_EXPORTER_PROMETHEUS_PORT"] = str(port)
        report, stderr = run_app(tmp_path, "instrument", base_env)
    assert f"127.0.0.1:{port}" in stderr
    assert report["push"] == ["ConsoleMetricExporter"]
    assert report["global_meter_provider_is_ours"]


def test_instrument_starts_quietly_with_the_pinned_instrumentations(tmp_path: Path) -> None:
    # An installed instrumentation whose library version is out of its range warns at every start
    # (opentelemetry-instrumentation-sqlalchemy with SQLAlchemy 2.1 did); pyproject pins pairs that fit.
    app = tmp_path / "plain.py"
    app.write_text("print('app ran')\n")
    env = clean_env(
        CHAT_TURBO_ENV="test",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="",  # contrib's too: they are what this is about
    )
    tool = require_tool_in(Path(sys.executable).parent, "opentelemetry-instrument")
    result = subprocess.run(
        [str(tool), sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "app ran\n"
    assert result.stderr == ""


LIBRARIES = (
    "aiohttp",
    "asyncpg",
    "celery",
    "django",
    "flask",
    "httpx",
    "psycopg",
    "psycopg2",
    "redis",
    "requests",
    "sqlalchemy",
    "starlette",
    "urllib3",
)


def test_instrument_loads_no_library_until_the_application_imports_it(tmp_path: Path) -> None:
    """Every instrumentor of ours patches its library when the application imports it, not at start-up.

    contrib's instrumentations in the test environment import theirs at start-up; they are disabled here
    (``clean_env``), as they would be in a service that runs ours only. Then the application imports requests and
    is measured.
    """
    from importlib.metadata import entry_points

    found = entry_points(group="opentelemetry_instrumentor")
    assert sum(point.value.startswith("chat_turbo_metrics") for point in found) >= 15
    app = tmp_path / "plain.py"
    app.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            loaded = [name for name in {LIBRARIES!r} if name in sys.modules]
            import requests
            try:
                requests.get("http://127.0.0.1:{free_port()}/?token=secret", timeout=5)
            except requests.ConnectionError:
                pass
            from chat_turbo_metrics import PerformanceMonitor
            records = PerformanceMonitor.get_instance().snapshot().records()
            counts = [r["count"] for r in records if r["name"] == "http_client_request_duration_seconds"]
            print("REPORT " + json.dumps({{"loaded": loaded, "counts": counts}}))
            """
        )
    )
    env = clean_env(
        CHAT_TURBO_ENV="test",
        OTEL_METRICS_EXPORTER="none",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    tool = require_tool_in(Path(sys.executable).parent, "opentelemetry-instrument")
    result = subprocess.run(
        [str(tool), sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert json.loads(line[len("REPORT ") :]) == {"loaded": [], "counts": [1]}
