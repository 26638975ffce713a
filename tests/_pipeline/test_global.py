"""The process-wide monitor: get_instance, configure, reconfigure. Each test runs in its own interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import clean_env


def run(code: str, **env: str) -> str:
    environment = clean_env()
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_get_instance_and_plain_constructor_share_one_pipeline() -> None:
    out = run(
        """
        from chat_turbo_metrics import PerformanceMonitor
        a = PerformanceMonitor.get_instance()
        b = PerformanceMonitor()
        assert a is PerformanceMonitor.get_instance()
        assert a.pipeline is b.pipeline
        a.increment_counter("messages_sent")
        b.increment_counter("messages_sent")
        print("total", a.snapshot().value("messages_sent"))
        """,
        CHAT_TURBO_ENV="test",
    )
    assert "total 2" in out


def test_configure_installs_opentelemetry_global_providers() -> None:
    out = run(
        """
        import chat_turbo_metrics
        from opentelemetry import metrics, trace
        monitor = chat_turbo_metrics.configure(environment="test", service_name="svc")
        assert metrics.get_meter_provider().target is monitor.pipeline.meter_provider
        assert trace.get_tracer_provider().target is monitor.pipeline.tracer_provider
        # a third-party instrumentation using the global API lands in the same pipeline
        metrics.get_meter("other").create_counter("jobs").add(3)
        print("jobs", monitor.snapshot().value("jobs"))
        """
    )
    assert "jobs 3" in out


def test_reconfigure_rebinds_existing_monitors_and_warns() -> None:
    out = run(
        """
        import chat_turbo_metrics
        from chat_turbo_metrics import PerformanceMonitor
        early = PerformanceMonitor()
        chat_turbo_metrics.configure(environment="test", sampling_rate=0.5)
        assert early.config.sampling_rate == 0.5
        early.increment_counter("after")
        print("after", PerformanceMonitor.get_instance().snapshot().value("after"))
        """,
        CHAT_TURBO_ENV="test",
    )
    assert "after 1" in out


@pytest.mark.parametrize("variable", ["PERFORMANCE_MONITORING_ENABLED", "OTEL_SDK_DISABLED"])
def test_disabled_by_environment_makes_calls_no_ops(variable: str) -> None:
    value = "false" if variable.startswith("PERFORMANCE") else "true"
    out = run(
        """
        from chat_turbo_metrics import PerformanceMonitor
        monitor = PerformanceMonitor.get_instance()
        assert monitor.pipeline is None
        monitor.increment_counter("x", {"a": "b"})
        print("records", monitor.snapshot().records())
        """,
        CHAT_TURBO_ENV="test",
        **{variable: value},
    )
    assert "records []" in out
