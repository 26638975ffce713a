"""Values that used to break whole exports: bool, huge ints, Decimal, numpy, bad timer starts, hostile names/tags.

A recording call never raises and never poisons an export: every case here is checked on both recording
paths, against the scrape text (parsed by ``promtool``), OTLP's protobuf encoding and a push exporter.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

from chat_turbo_metrics import PerformanceMonitor
from conftest import make_config, require_tool

Factory = Any


@pytest.fixture
def monitor_factory(monitor_factory: Callable[..., PerformanceMonitor]) -> Callable[..., PerformanceMonitor]:
    """Monitors without self-telemetry: these tests compare the application's metrics exactly (the pipeline's
    own are tested in test_self_telemetry.py)."""
    return functools.partial(monitor_factory, self_telemetry=False)


class Level(enum.IntEnum):
    HIGH = 3


def promtool_errors(text: str) -> str:
    """What promtool says is wrong with the text format ('' when it parses; lint remarks are not errors)."""
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode("utf-8", "replace"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    output = (result.stdout + result.stderr).decode()
    return output if result.returncode not in (0, 3) or "error" in output else ""


def otlp_points(monitor: PerformanceMonitor) -> dict[str, list[Any]]:
    """Encode what the pipeline collects as OTLP protobuf (raises if any point cannot be encoded)."""
    assert monitor.pipeline is not None
    data = monitor.pipeline.collect()
    assert data is not None
    request = encode_metrics(data)
    request.SerializeToString()
    points: dict[str, list[Any]] = {}
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                points[metric.name] = list(getattr(metric, kind).data_points)
    return points


def test_bool_records_as_one_and_zero(monitor: PerformanceMonitor) -> None:
    monitor.record_gauge("service_healthy", True)
    monitor.record_gauge("service_degraded", False)
    monitor.increment_counter("flags", value=True)
    monitor.histogram("answers").observe(True)

    text = monitor.snapshot().to_prometheus()
    assert "service_healthy 1\n" in text
    assert "service_degraded 0\n" in text
    assert "flags_total 1\n" in text
    assert "answers_sum 1\n" in text
    assert promtool_errors(text) == ""
    healthy = otlp_points(monitor)["service_healthy"][0]
    assert healthy.WhichOneof("value") == "as_int"
    assert healthy.as_int == 1


def test_bool_gauge_after_a_float_keeps_one_series_value(monitor: PerformanceMonitor) -> None:
    monitor.record_gauge("ready", 0.5)
    monitor.record_gauge("ready", True)  # must not be stored as True in the cell the float found
    assert monitor.snapshot().value("ready") == 1
    assert "ready 1\n" in monitor.snapshot().to_prometheus()


def test_int_beyond_float64_is_dropped_counted_and_warned_briefly(
    monitor: PerformanceMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    monitor.increment_counter("ok")
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics"):
        monitor.increment_counter("huge", value=10**400)
        monitor.record_gauge("huge_gauge", -(10**400))
        monitor.record_histogram("huge_hist", 10**400)
    assert monitor.dropped == 3
    assert monitor.snapshot().names() == {"ok"}
    assert promtool_errors(monitor.snapshot().to_prometheus()) == ""
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3
    assert max(len(line) for line in lines) < 300, lines


@pytest.mark.parametrize("value", [2**64, 2**63, -(2**63) - 1])
def test_ints_beyond_int64_encode_in_otlp_and_the_scrape(monitor: PerformanceMonitor, value: int) -> None:
    if value > 0:
        monitor.increment_counter("big_counter", value=value)
    monitor.record_gauge("big_gauge", value)

    points = otlp_points(monitor)
    assert points["big_gauge"][0].as_double == float(value)
    if value > 0:
        assert points["big_counter"][0].as_double == float(value)
    assert promtool_errors(monitor.snapshot().to_prometheus()) == ""


def test_a_sum_that_outgrows_int64_still_encodes(monitor: PerformanceMonitor) -> None:
    for _ in range(4):
        monitor.increment_counter("bytes_moved", value=2**62)
    points = otlp_points(monitor)
    assert points["bytes_moved"][0].as_double == float(2**64)


def test_histogram_with_decimal_after_float_counts_each_observation_once(monitor: PerformanceMonitor) -> None:
    monitor.record_histogram("x", 1.5)
    monitor.record_histogram("x", Decimal("2"))
    monitor.record_histogram("x", Fraction(1, 2))
    point = otlp_points(monitor)["x"][0]
    assert point.count == 3
    assert point.sum == 4.0


NUMBER_KINDS: dict[str, Any] = {
    "bool": True,
    "int subclass": Level.HIGH,
    "Decimal": Decimal("2.5"),
    "Fraction": Fraction(5, 2),
    "numpy float64": np.float64(2.5),
    "numpy float32": np.float32(2.5),
    "numpy int64": np.int64(3),
}


@pytest.mark.parametrize("kind", list(NUMBER_KINDS))
def test_number_types_record_the_same_on_both_paths(monitor_factory: Factory, kind: str) -> None:
    value = NUMBER_KINDS[kind]
    texts = []
    for recording in ("sdk", "fast"):
        monitor = monitor_factory(recording=recording)
        for _ in range(2):  # the second call takes the fast path's cache, if the first one filled it
            monitor.increment_counter("c", {"k": "v"}, value=value)
            monitor.record_gauge("g", value, {"k": "v"})
            monitor.record_histogram("h", value, {"k": "v"})
            monitor.counter("bc", {"k": "v"}).inc(value)
            monitor.gauge("bg", {"k": "v"}).set(value)
        otlp_points(monitor)
        texts.append(monitor.snapshot().to_prometheus())
        assert monitor.dropped == 0
    assert texts[0] == texts[1]
    assert f'c_total{{k="v"}} {2 * float(value):g}\n' in texts[1].replace(".0\n", "\n")
    assert promtool_errors(texts[1]) == ""


@pytest.mark.parametrize(
    "start",
    [True, False, -5.0, 0, math.nan, math.inf, "yesterday", None, 10**400, "future"],
)
def test_record_timer_refuses_what_is_no_start_token(monitor: PerformanceMonitor, start: Any) -> None:
    if start == "future":
        start = time.perf_counter() + 3600
    monitor.record_timer("job", start)
    assert monitor.dropped == 1
    assert monitor.snapshot().names() == set()


def test_record_timer_accepts_a_real_start(monitor: PerformanceMonitor) -> None:
    start = monitor.start_timer("job")
    monitor.record_timer("job", start)
    monitor.record_timer("job", start)  # the cached series, second time
    point = otlp_points(monitor)["job_duration"][0]
    assert point.count == 2
    assert 0 <= point.sum < 60


class ExplodingTags(Mapping[str, Any]):
    """A tags mapping whose every access raises."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Any:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        raise RuntimeError("boom")

    def items(self) -> Any:
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.increment_counter(["x"]),
        lambda m: m.record_gauge({"x": 1}, 1.0),
        lambda m: m.record_histogram({1, 2}, 1.0),
        lambda m: m.record_timer(["x"], 1.0),
        lambda m: m.increment_counter("x", ExplodingTags()),
        lambda m: m.record_gauge("x", 1.0, ExplodingTags()),
        lambda m: m.record_histogram("x", 1.0, ExplodingTags()),
        lambda m: m.record_timer("x", m.start_timer("x"), ExplodingTags()),
        lambda m: m.counter("x", ExplodingTags()).inc(),
        lambda m: m.histogram(["x"], None).observe(1.0),
    ],
    ids=lambda _: "",
)
def test_hostile_names_and_tags_never_raise(monitor: PerformanceMonitor, call: Any) -> None:
    for _ in range(2):
        call(monitor)
    assert monitor.dropped == 2
    assert monitor.snapshot().names() == set()


def test_points_from_opentelemetry_api_instruments_are_made_exportable(monitor: PerformanceMonitor) -> None:
    assert monitor.pipeline is not None
    meter = monitor.pipeline.meter_provider.get_meter("some.library")
    meter.create_gauge("api_flag").set(True)
    meter.create_counter("api_big").add(2**64)
    huge = meter.create_counter("api_huge")
    huge.add(2**1023)
    huge.add(2**1023)  # the SDK's int sum is now beyond float64: no exporter can encode it
    meter.create_counter("api_ok").add(3)

    points = otlp_points(monitor)
    assert points["api_flag"][0].as_int == 1
    assert points["api_big"][0].as_double == float(2**64)
    assert not points.get("api_huge")
    assert points["api_ok"][0].as_int == 3
    assert monitor._runtime.pipeline.unexportable.counts["api_huge"] >= 1
    text = monitor.snapshot().to_prometheus()
    assert promtool_errors(text) == ""
    assert "api_ok_total 3\n" in text


def test_attributes_the_tag_check_never_saw_are_made_valid_text(
    monitor_factory: Factory, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chat_turbo_metrics.exporters.file import FileExporter, read_metric_records

    # The SDK reads OTEL_RESOURCE_ATTRIBUTES itself; os.environ decodes bytes that are not UTF-8 to surrogates.
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", b"team=caf\xe9".decode("utf-8", "surrogateescape"))
    monitor = monitor_factory()
    path = tmp_path / "metrics.jsonl"
    monitor.add_exporter(FileExporter(path))
    meter = monitor.pipeline.meter_provider.get_meter("some.library")
    poisoned = json.loads(b'{"p":"general\\udce9"}')["p"]
    meter.create_counter("api_hits").add(1, {"path": poisoned, "big": 2**70, "parts": (poisoned, "ok")})

    (point,) = otlp_points(monitor)["api_hits"]  # encodes
    assert monitor.force_flush(10)
    (record,) = [r for r in read_metric_records(path) if r["name"] == "api_hits"]
    assert record["attributes"] == {"path": "general\ufffd", "big": str(2**70), "parts": ["general\ufffd", "ok"]}
    assert record["resource"]["team"] == "caf\ufffd"
    assert len(point.attributes) == 3
    text = monitor.snapshot().to_prometheus()
    assert 'path="general\ufffd"' in text
    assert 'team="caf\ufffd"' in text


def test_push_exporters_get_the_good_points_of_a_batch_with_a_bad_one(monitor_factory: Factory, tmp_path: Any) -> None:
    from chat_turbo_metrics.exporters.file import FileExporter, read_metric_records

    monitor = monitor_factory()
    path = tmp_path / "metrics.jsonl"
    monitor.add_exporter(FileExporter(path))
    meter = monitor.pipeline.meter_provider.get_meter("some.library")
    huge = meter.create_counter("api_huge")
    huge.add(2**1023)
    huge.add(2**1023)
    monitor.increment_counter("good", value=2)
    assert monitor.force_flush(10)

    names = {record["name"] for record in read_metric_records(path)}
    assert "good" in names
    assert "api_huge" not in names


# --- property: a recording call never raises, the scrape stays valid, both paths agree ----------------------

names = st.one_of(
    st.sampled_from(["jobs", "latency_seconds", "queue_depth", "Jobs", "bad name", "", "9x"]),
    st.text(max_size=8),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=1),
)
values = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.fractions(),
    st.just(10**400),
    st.text(max_size=3),
    st.none(),
)
tag_values = st.one_of(
    st.text(max_size=5), st.integers(min_value=-5, max_value=5), st.none(), st.lists(st.text(), max_size=1)
)
tags = st.one_of(
    st.none(),
    st.dictionaries(
        st.one_of(st.sampled_from(["k", "a.b", "a_b", "", "ü"]), st.text(max_size=4)), tag_values, max_size=2
    ),
    st.lists(st.text(), max_size=1),
    st.just(ExplodingTags()),
)
calls = st.lists(
    st.tuples(st.sampled_from(["counter", "gauge", "histogram", "timer", "bound"]), names, values, tags),
    max_size=12,
)


def apply(monitor: PerformanceMonitor, call: tuple[str, Any, Any, Any]) -> None:
    method, name, value, tag_set = call
    if method == "counter":
        monitor.increment_counter(name, tag_set, value)
    elif method == "gauge":
        monitor.record_gauge(name, value, tag_set)
    elif method == "histogram":
        monitor.record_histogram(name, value, tag_set)
    elif method == "timer":
        # A valid start records a duration that differs between the two monitors by the time between the calls;
        # here only refused starts are compared (valid ones: test_record_timer_accepts_a_real_start).
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= time.perf_counter()
        monitor.record_timer(name, -1.0 if valid else value, tag_set)
    else:
        monitor.counter(name, tag_set).inc(value)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls)
def test_recording_never_raises_and_both_paths_export_the_same(batch: list[tuple[str, Any, Any, Any]]) -> None:
    monitors = [PerformanceMonitor(_config(recording)) for recording in ("sdk", "fast")]
    try:
        texts = []
        for monitor in monitors:
            for call in batch:
                apply(monitor, call)
            otlp_points(monitor) if monitor.snapshot().names() else None
            texts.append(monitor.snapshot().to_prometheus())
        assert texts[0] == texts[1]
        assert monitors[0].dropped == monitors[1].dropped
        if texts[1]:
            assert promtool_errors(texts[1]) == ""
    finally:
        for monitor in monitors:
            monitor.shutdown()


def _config(recording: str) -> Any:
    return make_config(recording=recording, self_telemetry=False)
