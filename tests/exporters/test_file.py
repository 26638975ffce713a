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

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, get_monitoring_config
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
    pattern = re.compile(re.escape(path.name) + r"\.\d{8}T\d{6}(\.\d+)?")
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


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


def _rotate_every_minute(path: Path, clock: FakeClock, count: int, **settings: Any) -> FileExporter:
    """An exporter that has rotated ``count`` files away, one a minute (named by the clock)."""
    exporter = make_exporter(path, clock, rotation_interval_s=60, **settings)
    for value in range(count + 1):
        export_all(exporter, counter_data(value))
        clock.now += 60
    assert len(rotated(path)) == count
    return exporter


def test_retention_deletes_only_expired_rotated_files_the_exporter_created(tmp_path: Path) -> None:
    clock, active = FakeClock(), tmp_path / "metrics.jsonl"
    exporter = _rotate_every_minute(active, clock, 2, retention_days=7)
    expired, recent = rotated(active)
    # Files that look like rotated ones but were put there by someone else, and unrelated files.
    lookalikes = [tmp_path / "metrics.jsonl.20231101T000000", tmp_path / "metrics.jsonl.20231101T000000.1"]
    unrelated = [tmp_path / "other.jsonl.20231101T000000", tmp_path / "metrics.jsonl.bak"]
    for file in [*lookalikes, *unrelated]:
        file.write_text("{}\n")
        _age(file, clock, days=30)
    _age(expired, clock, days=8)
    _age(recent, clock, days=6)

    clock.now += 3600  # retention runs at most once an hour between rotations
    export_all(exporter, counter_data(9))

    assert not expired.exists()
    assert all(file.exists() for file in [recent, *lookalikes, *unrelated])


def test_retention_runs_after_each_rotation(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    exporter = _rotate_every_minute(path, clock, 1, retention_days=7)
    [expired] = rotated(path)
    _age(expired, clock, days=8)

    export_all(exporter, counter_data(2))  # a minute on: rotates, then retention

    assert not expired.exists()
    assert [p.name for p in rotated(path)] == ["metrics.jsonl.20231114T221520"]
    assert [r["value"] for r in read_metric_records(path)] == [2]


def test_the_constructor_deletes_nothing(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    _rotate_every_minute(path, clock, 2, retention_days=30).shutdown()
    for file in rotated(path):
        _age(file, clock, days=8)

    make_exporter(path, clock, retention_days=1)

    assert len(rotated(path)) == 2


def _recorded(path: Path) -> dict[str, int]:
    """The list of created files next to ``path``: name -> inode number."""
    lines = path.with_name(path.name + ".created").read_text().splitlines()
    return {name: int(inode) for inode, name in (line.split("\t") for line in lines)}


def test_the_list_of_created_files_names_each_file_with_its_inode(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    _rotate_every_minute(path, clock, 2)

    assert _recorded(path) == {file.name: file.stat().st_ino for file in [*rotated(path), path]}


def test_retention_forgets_created_files_that_are_gone(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    exporter = _rotate_every_minute(path, clock, 2)
    gone = rotated(path)[0]
    gone.unlink()  # removed by hand: its inode number may be reused by a stranger's file

    clock.now += 3600
    export_all(exporter, counter_data(9))  # rotates once more, then retention

    assert gone.name not in _recorded(path)
    assert _recorded(path) == {file.name: file.stat().st_ino for file in [*rotated(path), path]}


def test_a_lookalike_with_the_inode_of_a_rotated_file_but_another_name_is_kept(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    exporter = _rotate_every_minute(path, clock, 1, retention_days=7)
    [ours] = rotated(path)
    # As when a file system reuses the inode number of a deleted rotated file for a stranger's file: a hard
    # link gives the lookalike that inode for certain.
    lookalike = tmp_path / "metrics.jsonl.20231101T000000"
    os.link(ours, lookalike)
    ours.unlink()
    _age(lookalike, clock, days=30)

    clock.now += 3600
    export_all(exporter, counter_data(9))

    assert lookalike.exists()


def test_without_the_list_of_created_files_retention_deletes_nothing(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    exporter = _rotate_every_minute(path, clock, 2, retention_days=7)
    (tmp_path / "metrics.jsonl.created").unlink()
    old = rotated(path)
    for file in old:
        _age(file, clock, days=8)

    clock.now += 3600
    export_all(exporter, counter_data(9))

    assert all(file.exists() for file in old)


# --- links, owners and modes ------------------------------------------------------------------------


def test_a_symlink_at_the_active_path_is_not_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path = tmp_path / "metrics.jsonl"
    path.symlink_to(victim)

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        result = make_exporter(path).export(counter_data(1))

    assert result is MetricExportResult.FAILURE
    assert victim.read_text() == "precious\n"
    assert path.is_symlink()
    assert any(str(path) in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_a_dangling_symlink_at_the_active_path_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "created-by-us.jsonl"
    target.parent.mkdir()
    path = tmp_path / "metrics.jsonl"
    path.symlink_to(target)

    assert make_exporter(path).export(counter_data(1)) is MetricExportResult.FAILURE
    assert not target.exists()


def test_rotation_neither_follows_nor_replaces_what_is_at_the_rotated_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    exporter = make_exporter(path, clock, rotation_interval_s=60)
    export_all(exporter, counter_data(1))
    clock.now += 60
    taken = [tmp_path / f"metrics.jsonl.20231114T221420{suffix}" for suffix in ("", ".1", ".2")]
    taken[0].symlink_to(victim)
    taken[1].symlink_to(tmp_path / "nowhere")  # a dangling link: "does it exist?" says no
    taken[2].write_text("a user's file\n")

    export_all(exporter, counter_data(2))

    assert victim.read_text() == "precious\n"
    assert (taken[0].readlink(), taken[1].readlink()) == (victim, tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    assert taken[2].read_text() == "a user's file\n"
    assert [r["value"] for r in read_metric_records(tmp_path / "metrics.jsonl.20231114T221420.3")] == [1]
    assert [r["value"] for r in read_metric_records(path)] == [2]


def test_a_fifo_at_the_active_path_fails_the_export_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    os.mkfifo(path)

    assert make_exporter(path).export(counter_data(1)) is MetricExportResult.FAILURE


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_active_file_owned_by_another_user_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("")
    os.chown(path, 65534, 65534)

    assert make_exporter(path).export(counter_data(1)) is MetricExportResult.FAILURE
    assert path.read_text() == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_rotated_looking_file_of_another_user_is_never_deleted(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    exporter = _rotate_every_minute(path, clock, 1, retention_days=7)
    [ours] = rotated(path)
    os.chown(ours, 65534, 65534)  # same inode as recorded, but no longer this user's file
    _age(ours, clock, days=8)

    clock.now += 3600
    export_all(exporter, counter_data(9))

    assert ours.exists()


def _with_umask(umask: int, action: Callable[[], object]) -> None:
    previous = os.umask(umask)
    try:
        action()
    finally:
        os.umask(previous)


def test_files_are_created_0600_and_directories_0700_whatever_the_umask(tmp_path: Path) -> None:
    path, clock = tmp_path / "new" / "dirs" / "metrics.jsonl", FakeClock()
    exporter = make_exporter(path, clock, rotation_interval_s=60)
    _with_umask(0, lambda: [export_all(exporter, counter_data(1)), setattr(clock, "now", clock.now + 60)])
    _with_umask(0, lambda: export_all(exporter, counter_data(2)))

    files = [path, *rotated(path), path.with_name("metrics.jsonl.created")]
    assert {oct(file.stat().st_mode & 0o777) for file in files} == {"0o600"}
    assert {oct(d.stat().st_mode & 0o777) for d in (path.parent, path.parent.parent)} == {"0o700"}


def test_file_mode_lets_the_group_read_files_and_enter_directories(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.jsonl"
    _with_umask(0o077, lambda: export_all(make_exporter(path, file_mode=0o640), counter_data(1)))

    assert (oct(path.stat().st_mode & 0o777), oct(path.parent.stat().st_mode & 0o777)) == ("0o640", "0o750")


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    export_all(make_exporter(directory / "metrics.jsonl"), counter_data(1))

    assert oct(directory.stat().st_mode & 0o777) == "0o755"


@pytest.mark.parametrize("mode", [0o666, 0o700, 0o400, 0o4600, "rw"])
def test_a_file_mode_others_could_write_or_execute_is_refused(tmp_path: Path, mode: Any) -> None:
    with pytest.raises(ConfigurationError, match="file_mode="):
        make_exporter(tmp_path / "metrics.jsonl", file_mode=mode)


def test_a_process_sharing_the_path_does_not_rotate_the_file_another_one_just_started(tmp_path: Path) -> None:
    path, clock = tmp_path / "metrics.jsonl", FakeClock()
    first, second = (make_exporter(path, clock, rotation_interval_s=60) for _ in range(2))
    export_all(first, counter_data(1))
    export_all(second, counter_data(2))
    clock.now += 60
    export_all(first, counter_data(3))  # rotates the shared file away and starts a new one

    export_all(second, counter_data(4))  # its file was rotated already: it moves to the new one

    assert [[r["value"] for r in read_metric_records(file)] for file in [*rotated(path), path]] == [[1, 2], [3, 4]]


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
