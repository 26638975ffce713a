"""Start-up, reconfiguration and exit, as the seed's users do them. Each test runs in its own interpreter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import free_port


def run(code: str, timeout_s: float = 60, **env: str) -> tuple[dict[str, object], str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    # configs/test.toml serves nothing; these tests want the default exporter, Prometheus, on loopback.
    defaults = {
        "CHAT_TURBO_ENV": "test",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_METRICS_EXPORTER": "prometheus",
        "METRICS_PROMETHEUS_SCOPE_LABELS": "false",  # the expected lines are written without them
    }
    environment.update({**defaults, **env})
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    return json.loads(report.removeprefix("REPORT ")), result.stderr


SCRAPE = """
import json, urllib.request
def scrape(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
"""


def test_seed_pattern_get_instance_at_import_then_configure_keeps_the_port() -> None:
    port = free_port()
    report, _ = run(
        SCRAPE
        + textwrap.dedent("""
        from chat_turbo_metrics import PerformanceMonitor, get_monitoring_config
        monitor = PerformanceMonitor.get_instance()          # a module, at import time
        monitor.increment_counter("before")
        PerformanceMonitor.configure(get_monitoring_config("test", service_name="configured"))
        monitor.increment_counter("messages_sent")
        PerformanceMonitor.configure(get_monitoring_config("test", service_name="twice"))
        monitor.increment_counter("messages_sent", value=2)
        text = scrape(THE_PORT)
        print("REPORT " + json.dumps({"text": text}))
        """).replace("THE_PORT", str(port)),
        METRICS_PROMETHEUS_PORT=str(port),
    )
    text = str(report["text"])
    assert "messages_sent_total 2\n" in text  # the live (third) pipeline answers on the same port
    assert 'service_name="twice"' in text


def test_failed_configure_leaves_the_running_pipeline_serving() -> None:
    port = free_port()
    report, _ = run(
        SCRAPE
        + textwrap.dedent("""
        from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor
        monitor = PerformanceMonitor.get_instance()
        monitor.increment_counter("kept", value=5)
        bad = MonitoringConfig(environment="test", prometheus_host="127.0.0.1", prometheus_port=THE_PORT,
                               metrics_exporters=("prometheus", "no_such_exporter"))
        try:
            PerformanceMonitor.configure(bad)
            raised = False
        except ConfigurationError:
            raised = True
        monitor.increment_counter("kept")
        print("REPORT " + json.dumps({"raised": raised, "text": scrape(THE_PORT),
                                      "same": monitor.config.metrics_exporters}))
        """).replace("THE_PORT", str(port)),
        METRICS_PROMETHEUS_PORT=str(port),
    )
    assert report["raised"] is True
    assert "kept_total 6\n" in str(report["text"])
    assert report["same"] == ["prometheus"]


def test_opentelemetry_globals_follow_configure_for_instruments_made_before_and_after() -> None:
    report, _ = run(
        """
        import json
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import chat_turbo_metrics
        chat_turbo_metrics.configure(metrics_exporters=())
        early = metrics.get_meter("contrib.lib").create_counter("lib_jobs")
        early_tracer = trace.get_tracer("contrib.lib")
        early.add(1)
        monitor = chat_turbo_metrics.configure(metrics_exporters=(), service_name="second")
        spans = InMemorySpanExporter()
        monitor.subscribe(SimpleSpanProcessor(spans))
        early.add(2)                                            # created before configure()
        metrics.get_meter("late.lib").create_counter("late_jobs").add(4)
        with early_tracer.start_as_current_span("early-span"):
            pass
        trace.get_tracer("late.lib").start_span("late-span").end()
        snap = monitor.snapshot()
        print("REPORT " + json.dumps({
            "early": snap.value("lib_jobs"), "late": snap.value("late_jobs"),
            "spans": sorted(s.name for s in spans.get_finished_spans()),
        }))
        """
    )
    assert report == {"early": 2, "late": 4, "spans": ["early-span", "late-span"]}


def test_get_instance_with_a_taken_port_logs_once_and_records() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        report, stderr = run(
            """
            import json
            from chat_turbo_metrics import PerformanceMonitor
            monitor = PerformanceMonitor.get_instance()
            again = PerformanceMonitor()
            monitor.increment_counter("jobs", value=3)
            print("REPORT " + json.dumps({"jobs": again.snapshot().value("jobs")}))
            """,
            METRICS_PROMETHEUS_PORT=str(port),
        )
    assert report == {"jobs": 3}
    assert stderr.count(f"127.0.0.1:{port}") == 1, stderr


def test_app_calling_configure_under_opentelemetry_instrument_keeps_the_port(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "app.py").write_text(
        SCRAPE
        + textwrap.dedent("""
            import chat_turbo_metrics
            monitor = chat_turbo_metrics.configure(service_name="app")   # the distro configured already
            monitor.increment_counter("app_jobs")
            print("REPORT " + json.dumps({"text": scrape(THE_PORT)}))
            """).replace("THE_PORT", str(port))
    )
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    environment.update(
        {
            "CHAT_TURBO_ENV": "test",
            "METRICS_PROMETHEUS_SCOPE_LABELS": "false",  # the expected lines are written without them
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "METRICS_PROMETHEUS_PORT": str(port),
        }
    )
    result = subprocess.run(
        [instrument, sys.executable, str(tmp_path / "app.py")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("REPORT ")).removeprefix("REPORT "))
    assert "app_jobs_total 1\n" in report["text"]
    assert 'service_name="app"' in report["text"]


def test_exit_with_an_unreachable_otlp_collector_is_bounded_by_the_shutdown_timeout() -> None:
    started = time.monotonic()
    run(
        """
        import json, time
        from chat_turbo_metrics import PerformanceMonitor
        monitor = PerformanceMonitor.get_instance()
        monitor.increment_counter("jobs")
        time.sleep(0.5)
        print("REPORT {}")
        """,
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_METRIC_EXPORT_INTERVAL="200",
        OTEL_METRIC_EXPORT_TIMEOUT="30000",  # the OTel default; the shutdown timeout must bound exit anyway
    )
    # Default shutdown timeout 5 s, plus interpreter start-up; the OTLP exporter alone retries for ~30 s.
    assert time.monotonic() - started < 12
