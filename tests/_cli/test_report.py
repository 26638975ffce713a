"""``chat-turbo-metrics report``: rates and percentiles of stored history (SQLite, PostgreSQL, JSON Lines)."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics.__main__ import main
from chat_turbo_metrics.exporters import DatabaseExporter
from chat_turbo_metrics.exporters.file import FileExporter

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# What the tests record, and what the report must say of it over a 600 s window.
FAST, MEDIUM, SLOW = [0.2] * 80, [1.5] * 10, [2.4] * 10
BUCKETS = [0.5, 1.0, 2.5]


def _record(exporter: object) -> None:
    monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))
    monitor.add_exporter(exporter)  # type: ignore[arg-type]
    monitor.define("request_seconds", "histogram", buckets=BUCKETS)
    # Two exports: the file exporter writes cumulative points, the database one deltas; both must add up once.
    monitor.increment_counter("messages_sent", {"channel": "public"}, value=100)
    for value in FAST[:40] + SLOW[:5]:
        monitor.record_histogram("request_seconds", value, {"route": "/chat"})
    monitor.record_gauge("memory_usage_mb", 70.0)
    monitor.force_flush()
    monitor.increment_counter("messages_sent", {"channel": "public"}, value=20)
    monitor.increment_counter("messages_sent", {"channel": "support"}, value=30)
    for value in FAST[40:] + MEDIUM + SLOW[5:]:
        monitor.record_histogram("request_seconds", value, {"route": "/chat"})
    monitor.record_gauge("memory_usage_mb", 64.0)
    monitor.force_flush()
    monitor.shutdown()


@pytest.fixture(params=["sqlite", "postgresql", "jsonl"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A history holding what :func:`_record` recorded, in each kind of store the report reads."""
    if request.param == "jsonl":
        path = tmp_path / "metrics.jsonl"
        _record(FileExporter(str(path)))
        yield str(path)
        return
    if request.param == "sqlite":
        path = tmp_path / "history.db"
        _record(DatabaseExporter(f"sqlite:///{path}"))
        yield str(path)  # a plain path to a SQLite file
        return
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL not reachable: {error}")
        pytest.skip(f"PostgreSQL not reachable: {error}")
    schema = f"ctm_report_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        _record(DatabaseExporter(url))
        yield url
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def table_rows(output: str, title: str) -> dict[str, list[str]]:
    """The rows (first cell -> other cells) of the table titled ``title``."""
    section = output[output.index(title) :]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["report", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_rates_and_percentiles_match_what_was_recorded(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = report(
        capsys, store, "--since", "10m", "--metric", "messages_sent_total", "--metric", "request_seconds"
    )
    assert status == 0, err
    counters = table_rows(out, "messages_sent_total (counter)")
    assert counters == {"channel=public": ["120", "0.2"], "channel=support": ["30", "0.05"]}  # per 600 s
    (histogram,) = table_rows(out, "request_seconds (histogram)").items()
    assert histogram[0] == "route=/chat"
    count, rate, mean, p50, p95, p99, largest = (float(cell) for cell in histogram[1])
    assert count == 100
    # Four significant digits are shown.
    assert rate == pytest.approx(100 / 600, rel=1e-3)
    assert mean == pytest.approx(sum(FAST + MEDIUM + SLOW) / 100, rel=1e-3)
    # histogram_quantile over the buckets: rank 50 of 80 in (0, 0.5]; rank 95 at 15 of 20 in (1, 2.5]; rank 99
    # at 19 of 20 gives 2.425, kept at the largest observation.
    assert p50 == pytest.approx(0.5 * 50 / 80, rel=1e-3)
    assert p95 == pytest.approx(1.0 + 1.5 * 15 / 20, rel=1e-3)
    assert p99 == pytest.approx(2.4)
    assert largest == pytest.approx(2.4)
    assert "request_seconds: percentiles per" in out  # the terminal chart's title
    assert "seconds into the window" in out


def test_png_charts_are_images_with_content(store: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from matplotlib.image import imread

    directory = tmp_path / "charts"
    status, out, err = report(
        capsys, store, "--since", "10m", "--metric", "request_seconds", "--metric", "memory_usage_mb", "--png",
        str(directory), "--no-charts",
    )  # fmt: skip
    assert status == 0, err
    assert sorted(path.name for path in directory.iterdir()) == ["memory_usage_mb.png", "request_seconds.png"]
    for path in directory.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(path)
        assert pixels.shape[0] >= 300
        assert pixels.shape[1] >= 800
        assert pixels.std() > 0.05  # axes, text and lines, not a blank image
    assert table_rows(out, "memory_usage_mb (gauge)") == {"(no attributes)": ["64", "64", "70"]}  # last, min, max


def test_a_metric_not_stored_is_refused_with_the_closest_names(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = report(capsys, store, "--metric", "request_secnds")
    assert status == 2
    assert out == ""
    assert "'request_secnds'" in err
    assert re.search(r"closest: request_seconds\b", err), err


def test_missing_store_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing.db"
    status, _, err = report(capsys, str(missing))
    assert status == 2
    assert str(missing) in err
    assert "Traceback" not in err
    status, _, err = report(capsys, f"sqlite:///{missing}")
    assert status == 2
    assert str(missing) in err


def test_empty_stores_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty_db = tmp_path / "empty.db"
    sqlite3.connect(empty_db).execute("CREATE TABLE unrelated (x)").connection.close()
    status, _, err = report(capsys, str(empty_db))
    assert status == 2
    assert "ctm_points" in err  # says what it looked for
    empty_lines = tmp_path / "metrics.jsonl"
    empty_lines.write_text("")
    status, _, err = report(capsys, str(empty_lines))
    assert status == 2
    assert str(empty_lines) in err


def test_unreachable_database_error_hides_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, _, err = report(capsys, f"postgresql+psycopg://chat:s3cr3tpw@127.0.0.1:{port}/x?connect_timeout=2")
    assert status == 2
    assert f"127.0.0.1:{port}" in err
    assert "s3cr3tpw" not in err


def test_demo_history_by_default_reports_the_key_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "history.db"
    monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))
    monitor.add_exporter(DatabaseExporter(f"sqlite:///{path}"))
    for status in (200, 200, 503):
        tags = {"method": "GET", "endpoint": "/api/search", "status": status}
        monitor.record_histogram("http_request_duration_seconds", 0.05, tags)
        monitor.increment_counter("api_requests_total", tags)
    monitor.record_gauge("cpu_usage_percent", 3.0)  # not a key metric: left out
    monitor.force_flush()
    monitor.shutdown()
    status, out, err = report(capsys, str(path), "--no-charts")
    assert status == 0, err
    assert "http_request_duration_seconds (histogram)" in out
    rows = table_rows(out, "api_requests_total (counter)")
    assert rows["endpoint=/api/search, method=GET, status=200"][0] == "2"
    assert "cpu_usage_percent" not in out


@pytest.mark.parametrize("since", ["0", "abc", "-5m", "10 minutes"])
def test_a_bad_window_is_refused(since: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "history.db"
    _record(DatabaseExporter(f"sqlite:///{path}"))
    status, out, err = report(capsys, str(path), f"--since={since}")
    assert status == 2
    assert out == ""
    assert f"--since={since!r}" in err


def test_a_window_without_the_metric_says_to_widen_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "metrics.jsonl"
    exporter = FileExporter(str(path))
    _record(exporter)
    old = time.time() - 7200  # a point of another metric two hours before the others
    with path.open("a") as stream:
        stream.write(
            json.dumps({"name": "old_total", "kind": "counter", "unit": "", "temporality": "delta", "attributes": {},
                        "time_unix_nano": int(old * 1e9), "start_time_unix_nano": int(old * 1e9), "value": 5})
            + "\n"
        )  # fmt: skip
    status, _, err = report(capsys, str(path), "--since", "1h", "--metric", "old_total")
    assert status == 2
    assert "'old_total'" in err
    assert "--since" in err
    status, out, err = report(capsys, str(path), "--since", "3h", "--metric", "old_total", "--no-charts")
    assert status == 0, err
    assert table_rows(out, "old_total (counter)") == {"(no attributes)": ["5", "0.000463"]}  # 5 per 3 h
