"""The demo (``make demo``) runs, serves traffic and records the seed's metrics with consistent values."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import clean_env, free_port, port_open

# The seed README's ten metric names, as Prometheus shows them (families; histograms by their _count).
SEED_FAMILIES = (
    "messages_sent_total",
    "api_requests_total",
    "errors_total",
    "active_connections",
    "memory_usage_mb",
    "cpu_usage_percent",
    "http_request_duration_seconds",
    "database_query_duration_seconds",
    "message_processing_time_seconds",
    "message_size",
)
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})? (\S+)$")


def run_demo(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_turbo_metrics", "demo", "--duration", "2"],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def totals(exposition: str) -> dict[str, float]:
    """Sum of every sample per sample name (``x_count`` summed over label sets)."""
    summed: dict[str, float] = defaultdict(float)
    for line in exposition.splitlines():
        match = SAMPLE.match(line)
        if match:
            summed[match.group(1)] += float(match.group(2))
    return summed


@pytest.fixture(scope="module")
def demo() -> tuple[subprocess.CompletedProcess[str], int]:
    """One two-second demo run shared by the tests that read its output."""
    port = free_port()
    return run_demo(METRICS_PROMETHEUS_PORT=str(port)), port


def test_demo_serves_prometheus_on_the_configured_port(demo: tuple[subprocess.CompletedProcess[str], int]) -> None:
    result, port = demo
    assert result.returncode == 0, result.stderr
    assert f"Prometheus metrics: http://localhost:{port}/metrics" in result.stdout


def test_demo_records_every_seed_metric_with_consistent_counts(
    demo: tuple[subprocess.CompletedProcess[str], int],
) -> None:
    result, _ = demo
    summary = re.search(r"recorded (\d+) API requests, (\d+) messages sent, (\d+) database queries", result.stdout)
    assert summary is not None, result.stdout
    requests, sent, queries = (int(group) for group in summary.groups())
    values = totals(result.stdout)
    for family in SEED_FAMILIES:
        assert family in values or f"{family}_count" in values, family
    assert requests > 0
    assert sent > 0
    # Every request is counted, timed twice and (for a POST) sends one message and runs one query.
    assert values["api_requests_total"] == requests
    assert values["api_request_duration_seconds_count"] == requests
    assert values["http_request_duration_seconds_count"] == requests
    assert values["messages_sent_total"] == sent
    assert values["message_size_count"] == sent
    assert values["message_processing_time_seconds_count"] == sent
    assert values["database_query_duration_seconds_count"] == queries
    assert queries >= sent
    assert 0 < values["errors_total"] < requests
    assert values["memory_usage_mb"] > 1


def test_demo_seed_metrics_have_written_help_texts(demo: tuple[subprocess.CompletedProcess[str], int]) -> None:
    result, _ = demo
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", result.stdout, flags=re.MULTILINE))
    # A generated text starts with the kind ("Histogram api request duration (s)."); a written one does not.
    for family in (*SEED_FAMILIES, "api_request_duration_seconds"):
        assert family in helps, family
        assert not helps[family].startswith(("Counter ", "Gauge ", "Histogram ")), (family, helps[family])


def test_demo_output_ends_on_whole_lines(demo: tuple[subprocess.CompletedProcess[str], int]) -> None:
    result, _ = demo
    exposition = result.stdout[result.stdout.index("# HELP") :]
    for line in exposition.splitlines():
        assert line.startswith("#") or SAMPLE.match(line), line


def test_taken_port_ends_with_a_one_line_hint_and_a_failure_status() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_demo(METRICS_PROMETHEUS_PORT=str(port), OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line
    assert "METRICS_PROMETHEUS_PORT" in line


def test_a_second_demo_on_the_same_port_fails_and_merges_nothing(tmp_path: Path) -> None:
    port = free_port()
    settings = {"METRICS_PROMETHEUS_PORT": str(port), "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1"}
    env = clean_env(**settings, TMPDIR=str(tmp_path))
    first = subprocess.Popen(
        [sys.executable, "-m", "chat_turbo_metrics", "demo", "--duration", "6"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            assert time.monotonic() < deadline, "the first demo did not start"
            assert first.poll() is None, "the first demo exited"
            time.sleep(0.1)

        second = run_demo(
            METRICS_PROMETHEUS_PORT=str(port), OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1", TMPDIR=str(tmp_path)
        )
    finally:
        output, _ = first.communicate(timeout=60)

    assert second.returncode == 1
    (line,) = second.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line
    assert f"pid {first.pid}" in line  # the holder: the first demo
    assert "METRICS_PROMETHEUS_PORT" in line
    # The first run's scrape at its end counts its own requests only: what it recorded equals what it served.
    recorded = re.search(r"recorded (\d+) API requests", output)
    assert recorded is not None, output
    assert totals(output)["api_requests_total"] == int(recorded.group(1))
