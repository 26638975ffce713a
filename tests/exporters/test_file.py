"""FileExporter and read_metric_records: record shape, rotation, retention, torn lines, failures.

Metrics come from a real SDK pipeline (MeterProvider + InMemoryMetricReader) and go to real files
under ``tmp_path``; time is a fake clock handed to the exporter.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from chat_turbo_metrics._config import ConfigurationError, MonitoringConfig, get_monitoring_config
from chat_turbo_metrics.exporters.file import FileExporter, read_metric_records

SRC = Path(__file__).resolve().parents[2] / "src"
LOGGER = "chat_turbo_metrics.exporters.file"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DAY = 86400.0
TRICKY = 'say "hi" \\ back\\slash\nnext line ünïcødé 日本 \u2028 end'
ATTRIBUTES: dict[str, Any] = {"route": TRICKY, "status": 200, "cached": False}


class FakeClock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def collect(record: Callable[[Meter], object], views: tuple[View, ...] = ()) -> MetricsData:
    reader = InMemoryMetricReader()
    resource = Resource.create({"service.name": "chat-api", "deployment.environment": "test"})
    provider = MeterProvider(metric_readers=[reader], resource=resource, views=views)
    record(provider.get_meter("tests.exporters.file"))
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


def counter_data(value: int = 3, attributes: dict[str, Any] | None = None) -> MetricsData:
    def record(meter: Meter) -> None:
        counter = meter.create_counter("requests", unit="1", description="Requests served")
        counter.add(value, ATTRIBUTES if attributes is None else attributes)

    return collect(record)


def make_exporter(path: Path, clock: FakeClock | None = None, **settings: Any) -> FileExporter:
    chosen = {"max_bytes": 10**9, "rotation_interval_s": 10**9, "retention_days": 30.0, **settings}
    return FileExporter(path, clock=clock or FakeClock(), **chosen)


def export_all(exporter: FileExporter, *batches: MetricsData) -> None:
    for batch in batches:
        assert exporter.export(batch) is MetricExportResult.SUCCESS


def rotated(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + "."))


def our_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# --- record shape ---------------------------------------------------------------------------------


def test_counter_record_is_self_describing(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path), counter_data(3))

    [record] = read_metric_records(path)
    start, end = record.pop("start_time_unix_nano"), record.pop("time_unix_nano")
    assert isinstance(start, int)
    assert isinstance(end, int)
    assert 0 < start <= end
    resource = record.pop("resource")
    assert resource["service.name"] == "chat-api"
    assert resource["deployment.environment"] == "test"
    assert record == {
        "name": "requests",
        "kind": "counter",
        "unit": "1",
        "description": "Requests served",
        "temporality": "cumulative",
        "attributes": ATTRIBUTES,
        "value": 3,
        "scope": "tests.exporters.file",
    }


@pytest.mark.parametrize(
    ("record", "kind", "value"),
    [
        (lambda meter: meter.create_counter("c").add(4, ATTRIBUTES), "counter", 4),
        (lambda meter: meter.create_up_down_counter("u").add(-2, ATTRIBUTES), "updowncounter", -2),
        (lambda meter: meter.create_gauge("g").set(7.5, ATTRIBUTES), "gauge", 7.5),
    ],
    ids=["counter", "updowncounter", "gauge"],
)
def test_kind_is_derived_from_the_data_type(
    tmp_path: Path, record: Callable[[Meter], None], kind: str, value: float
) -> None:
    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path), collect(record))

    [written] = read_metric_records(path)
    assert (written["kind"], written["value"], written["attributes"]) == (kind, value, ATTRIBUTES)


def test_histogram_record_has_summary_and_buckets(tmp_path: Path) -> None:
    def record(meter: Meter) -> None:
        latency = meter.create_histogram("latency", unit="s", explicit_bucket_boundaries_advisory=[0.1, 0.5, 1])
        for seconds in (0.05, 0.3, 0.3, 2.0):
            latency.record(seconds, {"route": "/chat"})

    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path), collect(record))

    [written] = read_metric_records(path)
    assert written["kind"] == "histogram"
    assert written["unit"] == "s"
    assert "value" not in written
    summary = {key: written[key] for key in ("count", "sum", "min", "max", "bucket_bounds", "bucket_counts")}
    assert summary == {
        "count": 4,
        "sum": pytest.approx(2.65),
        "min": 0.05,
        "max": 2.0,
        "bucket_bounds": [0.1, 0.5, 1.0],
        "bucket_counts": [1, 2, 0, 1],
    }


def test_infinite_histogram_min_and_max_are_written_as_strict_json_strings(tmp_path: Path) -> None:
    # Without min/max recording the SDK reports min=+inf and max=-inf, which plain json.dumps
    # would write as the non-JSON tokens Infinity/-Infinity.
    view = View(instrument_name="latency", aggregation=ExplicitBucketHistogramAggregation((1.0,), False))
    data = collect(lambda meter: meter.create_histogram("latency").record(0.5), views=(view,))
    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path), data)

    assert b"Infinity" not in path.read_bytes()
    [written] = read_metric_records(path)
    assert (written["min"], written["max"], written["count"]) == ("+Inf", "-Inf", 1)


def test_each_record_is_one_line_even_with_newlines_and_unicode_in_attributes(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path), counter_data(1), counter_data(2))

    assert path.read_bytes().count(b"\n") == 2
    assert [r["attributes"]["route"] for r in read_metric_records(path)] == [TRICKY, TRICKY]


def test_bytes_and_tuple_attribute_values_are_serialized_safely(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path), counter_data(1, {"raw": b"\xff\x00ok", "pair": ("a", "b")}))

    [written] = read_metric_records(path)
    assert written["attributes"] == {"raw": "\\xff\x00ok", "pair": ["a", "b"]}


def test_real_periodic_reader_exports_cumulative_values(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    reader = PeriodicExportingMetricReader(make_exporter(path), export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("tests.exporters.file")
    requests = meter.create_counter("requests")
    sessions = meter.create_up_down_counter("sessions")
    requests.add(2)
    sessions.add(1)
    provider.force_flush()
    requests.add(3)
    sessions.add(1)
    provider.shutdown()  # exports a last time and shuts the exporter down

    records = list(read_metric_records(path))
    assert {r["temporality"] for r in records} == {"cumulative"}
    assert [r["value"] for r in records if r["name"] == "requests"] == [2, 5]
    assert [r["value"] for r in records if r["name"] == "sessions"] == [1, 2]


# --- configuration ----------------------------------------------------------------------------------


def test_from_config_uses_the_file_settings(tmp_path: Path) -> None:
    path = tmp_path / "from-config.jsonl"
    config = MonitoringConfig(file_path=str(path), file_max_bytes=1, retention_days=2)
    exporter = FileExporter.from_config(config)
    export_all(exporter, counter_data(1), counter_data(2))

    assert exporter.path == path
    assert len(rotated(path)) == 1  # max_bytes=1: the second line went to a fresh file


def test_from_config_takes_the_path_from_the_environment_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "from-env.jsonl"
    config = get_monitoring_config("test", env={"METRICS_FILE_PATH": str(path)})
    export_all(FileExporter.from_config(config), counter_data(1))

    assert [r["value"] for r in read_metric_records(path)] == [1]


def test_missing_arguments_take_the_defaults_and_never_read_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_FILE_PATH", str(tmp_path / "from-env.jsonl"))
    monkeypatch.chdir(tmp_path)
    export_all(FileExporter(), counter_data(1))

    assert [r["value"] for r in read_metric_records(tmp_path / "metrics.jsonl")] == [1]
    assert not (tmp_path / "from-env.jsonl").exists()


@pytest.mark.parametrize("setting", ["max_bytes", "rotation_interval_s", "retention_days"])
def test_non_positive_setting_is_rejected_at_construction(tmp_path: Path, setting: str) -> None:
    settings: dict[str, Any] = {setting: 0}
    with pytest.raises(ConfigurationError, match=f"{setting}=0"):
        make_exporter(tmp_path / "metrics.jsonl", **settings)


def test_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "metrics.jsonl"
    export_all(make_exporter(path), counter_data(1))

    assert path.is_file()


# --- rotation and retention -------------------------------------------------------------------------


def test_size_rotation_happens_before_a_line_would_exceed_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    line_size = _line_size(tmp_path)
    exporter = make_exporter(path, max_bytes=2 * line_size + 1)
    export_all(exporter, counter_data(1), counter_data(2), counter_data(3))

    [old] = rotated(path)
    assert [r["value"] for r in read_metric_records(old)] == [1, 2]
    assert [r["value"] for r in read_metric_records(path)] == [3]
    assert old.stat().st_size <= 2 * line_size + 1


def _line_size(tmp_path: Path) -> int:
    probe = tmp_path / "probe" / "metrics.jsonl"
    export_all(make_exporter(probe), counter_data(1))
    return probe.stat().st_size


def test_line_larger_than_max_bytes_is_still_written(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path, max_bytes=10), counter_data(1))

    assert [r["value"] for r in read_metric_records(path)] == [1]
    assert rotated(path) == []


def test_time_rotation_uses_the_injected_clock_and_names_files_by_utc_time(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    exporter = make_exporter(path, clock, rotation_interval_s=60)
    export_all(exporter, counter_data(1))
    clock.now += 59
    export_all(exporter, counter_data(2))
    assert rotated(path) == []

    clock.now += 1
    export_all(exporter, counter_data(3))

    assert [p.name for p in rotated(path)] == ["metrics.jsonl.20231114T221420"]
    assert [r["value"] for r in read_metric_records(path, include_rotated=True)] == [1, 2, 3]


def test_rotated_names_are_unique_and_read_back_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    exporter = make_exporter(path, max_bytes=1)  # every line after the first rotates, all in one second
    export_all(exporter, *(counter_data(value) for value in range(1, 14)))

    names = {p.name for p in rotated(path)}
    assert len(names) == 12
    assert all(re.fullmatch(r"metrics\.jsonl\.20231114T221320(\.\d+)?", name) for name in names)
    # .10 sorts before .2 as text; the reader must order by sequence number.
    assert [r["value"] for r in read_metric_records(path, include_rotated=True)] == list(range(1, 14))


def _age(path: Path, clock: FakeClock, days: float) -> None:
    mtime = clock.now - days * DAY
    os.utime(path, (mtime, mtime))


def test_retention_at_start_deletes_only_expired_rotated_files_of_this_path(tmp_path: Path) -> None:
    clock = FakeClock()
    active = tmp_path / "metrics.jsonl"
    expired = [tmp_path / "metrics.jsonl.20231101T000000", tmp_path / "metrics.jsonl.20231101T000000.1"]
    recent = tmp_path / "metrics.jsonl.20231113T000000"
    unrelated = [tmp_path / "other.jsonl.20231101T000000", tmp_path / "metrics.jsonl.bak"]
    for file in [active, *expired, recent, *unrelated]:
        file.write_text("{}\n")
        _age(file, clock, days=8)
    _age(recent, clock, days=6)

    make_exporter(active, clock, retention_days=7)

    assert sorted(tmp_path.iterdir()) == sorted([active, recent, *unrelated])


def test_retention_runs_after_each_rotation(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    exporter = make_exporter(path, clock, rotation_interval_s=60, retention_days=7)
    export_all(exporter, counter_data(1))
    expired = tmp_path / "metrics.jsonl.20231101T000000"
    expired.write_text("{}\n")
    _age(expired, clock, days=8)

    clock.now += 60
    export_all(exporter, counter_data(2))

    assert not expired.exists()
    assert [p.name for p in rotated(path)] == ["metrics.jsonl.20231114T221420"]
    assert [r["value"] for r in read_metric_records(path)] == [2]


# --- torn and invalid lines -------------------------------------------------------------------------


CHILD = textwrap.dedent(
    """
    import sys
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from chat_turbo_metrics.exporters.file import FileExporter

    reader = InMemoryMetricReader()
    latency = MeterProvider(metric_readers=[reader]).get_meter("child").create_histogram("latency")
    for i in range(20):
        latency.record(i / 10, {"route": "/chat/" + str(i), "padding": "x" * 100})
    data = reader.get_metrics_data()
    exporter = FileExporter(sys.argv[1], max_bytes=10**12, rotation_interval_s=10**9, retention_days=1)
    print("ready", flush=True)
    while True:
        exporter.export(data)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_mid_write_loses_at_most_the_torn_last_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.5)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    content = path.read_bytes()
    torn = not content.endswith(b"\n")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        records = list(read_metric_records(path))

    assert len(records) == content.count(b"\n") > 20
    assert {r["name"] for r in records} == {"latency"}
    warnings = our_warnings(caplog)
    assert len(warnings) == int(torn)
    assert all("torn last line" in w and str(path) in w for w in warnings)


def test_torn_last_line_is_skipped_with_one_warning_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path), counter_data(1), counter_data(2))
    with path.open("ab") as file:
        file.write(b'{"name": "requests", "kind": "coun')

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        values = [r["value"] for r in read_metric_records(path)]

    assert values == [1, 2]
    [warning] = our_warnings(caplog)
    assert "torn last line" in warning
    assert str(path) in warning


def test_complete_but_unterminated_last_line_counts_as_torn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path), counter_data(1), counter_data(2))
    path.write_bytes(path.read_bytes()[:-1])  # killed between the JSON and its newline

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        values = [r["value"] for r in read_metric_records(path)]

    assert values == [1]
    assert len(our_warnings(caplog)) == 1


def test_invalid_lines_in_the_middle_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    exporter = make_exporter(path)
    export_all(exporter, counter_data(1))
    with path.open("ab") as file:
        file.write(b"not json\n[1, 2]\n")
    export_all(exporter, counter_data(2))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        values = [r["value"] for r in read_metric_records(path)]

    assert values == [1, 2]
    [warning] = our_warnings(caplog)
    assert f"{path}: skipped 2 invalid line(s), first at line 2" == warning


def test_restart_after_a_torn_line_keeps_new_lines_readable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    export_all(make_exporter(path), counter_data(1))
    with path.open("ab") as file:
        file.write(b'{"name": "req')  # the previous process died here

    export_all(make_exporter(path), counter_data(2))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        values = [r["value"] for r in read_metric_records(path)]
    assert values == [1, 2]
    [warning] = our_warnings(caplog)
    assert "1 invalid line(s), first at line 2" in warning


def test_include_rotated_skips_an_active_file_not_created_yet(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    (tmp_path / "metrics.jsonl.20231114T000000").write_bytes(b'{"value": 1}\n')

    assert list(read_metric_records(path, include_rotated=True)) == [{"value": 1}]


# --- lifecycle, failures and threads ----------------------------------------------------------------


def test_export_after_shutdown_returns_failure_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    exporter = make_exporter(path)
    export_all(exporter, counter_data(1))
    exporter.shutdown()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = exporter.export(counter_data(2))

    assert result is MetricExportResult.FAILURE
    assert any("after shutdown" in w for w in our_warnings(caplog))
    assert [r["value"] for r in read_metric_records(path)] == [1]


def test_export_returns_failure_and_logs_when_the_path_is_a_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.jsonl"
    exporter = make_exporter(path)
    path.mkdir()

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        result = exporter.export(counter_data(1))

    assert result is MetricExportResult.FAILURE
    assert any(r.name == LOGGER and str(path) in r.getMessage() for r in caplog.records)


def test_export_recovers_once_the_path_is_writable_again(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    exporter = make_exporter(path)
    path.mkdir()
    assert exporter.export(counter_data(1)) is MetricExportResult.FAILURE

    path.rmdir()

    assert exporter.export(counter_data(2)) is MetricExportResult.SUCCESS
    assert [r["value"] for r in read_metric_records(path)] == [2]


def test_force_flush_succeeds_before_and_after_writing(tmp_path: Path) -> None:
    exporter = make_exporter(tmp_path / "metrics.jsonl")
    assert exporter.force_flush() is True
    export_all(exporter, counter_data(1))
    assert exporter.force_flush() is True


def test_concurrent_exports_and_flushes_write_whole_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    exporter = make_exporter(path, max_bytes=2_000)  # a few lines per file: rotation races too
    data = counter_data(1)
    results: list[MetricExportResult] = []

    def export_many() -> None:
        results.extend(exporter.export(data) for _ in range(50))

    def flush_many() -> None:
        for _ in range(50):
            exporter.force_flush()

    threads = [threading.Thread(target=export_many) for _ in range(4)] + [threading.Thread(target=flush_many)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    exporter.shutdown()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        records = list(read_metric_records(path, include_rotated=True))
    assert results == [MetricExportResult.SUCCESS] * 200
    assert len(records) == 200
    assert our_warnings(caplog) == []


# --- a failure mid-export ----------------------------------------------------------------------------

PARTIAL_WRITE_SCRIPT = """
import json, os, resource, signal, sys
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from chat_turbo_metrics.exporters.file import FileExporter, read_metric_records

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG instead
path = sys.argv[1]
reader = InMemoryMetricReader()
provider = MeterProvider(metric_readers=[reader])
counter = provider.get_meter("t").create_counter("requests")
for i in range(100):
    counter.add(1, {"series": str(i)})
exporter = FileExporter(path)
results = [exporter.export(reader.get_metrics_data()).name]
size = os.path.getsize(path)
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, hard))  # room for half of the next snapshot
results.append(exporter.export(reader.get_metrics_data()).name)
size_after_failure = os.path.getsize(path)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
results.append(exporter.export(reader.get_metrics_data()).name)
times = [record["time_unix_nano"] for record in read_metric_records(path)]
print(json.dumps({"results": results, "size": size, "size_after_failure": size_after_failure,
                  "per_snapshot": sorted(times.count(t) for t in set(times))}))
"""


def test_a_write_failing_mid_export_leaves_no_partial_snapshot(tmp_path: Path) -> None:
    # A real file-size limit (RLIMIT_FSIZE, honoured even for root) makes the kernel accept part of the
    # snapshot and refuse the rest, as a full disk does; in a subprocess so the limit stays there.
    result = subprocess.run(
        [sys.executable, "-c", PARTIAL_WRITE_SCRIPT, str(tmp_path / "metrics.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["results"] == ["SUCCESS", "FAILURE", "SUCCESS"]
    assert report["size_after_failure"] == report["size"]  # the half-written snapshot was cut off again
    assert report["per_snapshot"] == [100, 100]  # two whole snapshots, nothing of the failed one
    assert "File too large" in result.stderr  # the failure was logged with its cause
