"""An SQLAlchemy + Redis workload with no monitoring code, run under ``opentelemetry-instrument``.

The series the database, cache and system instrumentors promise are read from the Prometheus endpoint
with exact counts, and contrib's SQLAlchemy and Redis instrumentations, loaded by the same command, still
print one span per statement and command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import free_port, port_open, require

WORKLOAD = textwrap.dedent(
    """
    import sys
    import redis
    from sqlalchemy import create_engine, text

    path, prefix = sys.argv[1], sys.argv[2]
    engine = create_engine(f"sqlite:///{path}", logging_name="notes-db")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (id integer, body text)"))
        for i in range(5):
            connection.execute(text("INSERT INTO notes VALUES (:id, :body)"), {"id": i, "body": "private"})
        connection.execute(text("SELECT * FROM notes WHERE id > :id"), {"id": 1}).all()
    client = redis.Redis(host="127.0.0.1", port=6379)
    client.set(f"{prefix}:a", "1")
    for _ in range(3):
        client.get(f"{prefix}:a")
    client.get(f"{prefix}:missing")
    client.get(f"{prefix}:missing")
    client.mget([f"{prefix}:a", f"{prefix}:b"])
    print("ready", flush=True)
    sys.stdin.readline()  # stay up until the test has scraped
    """
)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name{labels}`` (labels in any order), or None."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


@pytest.fixture
def prefix() -> Iterator[str]:
    require(port_open("127.0.0.1", 6379), "Redis is not running at 127.0.0.1:6379")
    name = f"ctmi{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def run_workload(tmp_path: Path, prefix: str, **extra_env: str) -> tuple[str, list[dict[str, Any]]]:
    """Run the workload under opentelemetry-instrument: the Prometheus text scraped once it is done, and the
    spans the console exporter printed (when ``OTEL_TRACES_EXPORTER=console``)."""
    (tmp_path / "workload.py").write_text(WORKLOAD)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    env.update(
        {
            "CHAT_TURBO_ENV": "test",
            "METRICS_PROMETHEUS_SCOPE_LABELS": "false",  # the expected lines are written without them
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
            **extra_env,
        }
    )
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    command = [instrument, sys.executable, "workload.py", str(tmp_path / "notes.db"), prefix]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdin is not None
        line = process.stdout.readline()
        assert line == "ready\n", process.stderr.read() if process.stderr else ""
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        process.stdin.write("\n")
        process.stdin.flush()
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return text, console_spans(stdout)


def console_spans(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects ConsoleSpanExporter printed, one after the other."""
    decoder, spans, index = json.JSONDecoder(), [], 0
    while (start := stdout.find("{", index)) != -1:
        span, index = decoder.raw_decode(stdout, start)
        spans.append(span)
    return spans


def test_sqlalchemy_redis_and_process_series_with_exact_counts(tmp_path: Path, prefix: str) -> None:
    text, spans = run_workload(tmp_path, prefix, OTEL_TRACES_EXPORTER="console")
    queries = "database_query_duration_seconds_count"
    assert sample(text, queries, table="notes", operation="create", status="success") == 1
    assert sample(text, queries, table="notes", operation="insert", status="success") == 5
    assert sample(text, queries, table="notes", operation="select", status="success") == 1
    assert sample(text, "database_connections", pool="notes-db", state="used") == 0
    assert sample(text, "database_connections", pool="notes-db", state="idle") == 1
    assert "private" not in text  # parameter values are never recorded
    assert sample(text, "cache_hits_total", cache=prefix) == 4
    assert sample(text, "cache_misses_total", cache=prefix) == 3
    assert sample(text, "cache_hit_ratio", cache=prefix) == pytest.approx(4 / 7)
    commands = "redis_command_duration_seconds_count"
    assert [sample(text, commands, command=c, status="success") for c in ("SET", "GET", "MGET")] == [1, 5, 1]
    assert sample(text, "process_threads") >= 1  # type: ignore[operator]
    assert sample(text, "memory_usage_mb") > 0  # type: ignore[operator]
    assert sample(text, "cpu_usage_percent") is not None
    assert sample(text, "process_open_fds") > 0  # type: ignore[operator]
    # contrib's SQLAlchemy and Redis instrumentations ran beside ours: a span per statement and per command.
    statements = [s["attributes"].get("db.statement", "") for s in spans]
    assert sum(1 for statement in statements if statement.startswith("INSERT INTO notes")) == 5
    assert sum(1 for s in spans if s["name"] == "GET") == 5


def test_disabled_instrumentations_record_nothing(tmp_path: Path, prefix: str) -> None:
    text, _ = run_workload(tmp_path, prefix, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="chat_turbo_redis,chat_turbo_system")
    assert (
        sample(text, "database_query_duration_seconds_count", table="notes", operation="insert", status="success") == 5
    )
    assert "cache_hits_total" not in text
    assert "redis_command_duration_seconds" not in text
    assert "process_threads" not in text
