"""The demo (``make demo``) runs, serves traffic and records the seed's metrics."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import free_port


def test_demo_records_the_seed_metrics_and_serves_prometheus() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    env["METRICS_PROMETHEUS_PORT"] = str(free_port())
    result = subprocess.run(
        [sys.executable, "-m", "chat_turbo_metrics", "demo", "--duration", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"http://localhost:{env['METRICS_PROMETHEUS_PORT']}/metrics" in result.stdout
    for name in ("messages_sent", "api_request_duration", "database_query_duration_seconds", "active_connections"):
        assert name in result.stdout
    assert "recorded" in result.stdout
    assert "messages sent" in result.stdout
