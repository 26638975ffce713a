"""Tag sets checked once where they are first seen, on both recording paths: normalised to text every exporter
encodes the same way, or refused (counted, warned once) when they exceed the limits on keys and values."""

from __future__ import annotations

import enum
import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

from chat_turbo_metrics import PerformanceMonitor

# json.loads turns the escape into a lone surrogate, as it does for any client that sends one.
POISONED = json.loads(b'{"channel":"general\\udce9"}')["channel"]
FROM_BYTES = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
KEY_LIMIT = 255
TAG_LIMIT = 128
VALUE_LIMIT = 2048


@pytest.fixture
def monitor_factory(monitor_factory: Callable[..., PerformanceMonitor]) -> Callable[..., PerformanceMonitor]:
    """Monitors without self-telemetry: the tests read the application's series only."""
    return functools.partial(monitor_factory, self_telemetry=False)


def attribute_sets(monitor: PerformanceMonitor, name: str) -> list[dict[str, Any]]:
    return [record["attributes"] for record in monitor.snapshot().records() if record["name"] == name]


def otlp_encodes(monitor: PerformanceMonitor) -> None:
    """Raises when OTLP cannot encode what the pipeline collects (a lone surrogate makes protobuf raise)."""
    assert monitor.pipeline is not None
    encode_metrics(monitor.pipeline.collect()).SerializeToString()


def test_a_lone_surrogate_in_a_tag_value_becomes_u_fffd_in_one_series(
    monitor: PerformanceMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics"):
        for _ in range(3):
            monitor.increment_counter("messages_sent", {"channel": POISONED})
        monitor.increment_counter("messages_sent", {"channel": FROM_BYTES})

    assert monitor.snapshot().value("messages_sent", {"channel": "general\ufffd"}) == 3
    assert monitor.snapshot().value("messages_sent", {"channel": "caf\ufffd \ufffd"}) == 1
    assert monitor.dropped == 0
    otlp_encodes(monitor)
    # Changed, not dropped: warned once per metric and key however many values come.
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_a_lone_surrogate_in_a_tag_key_becomes_u_fffd(monitor: PerformanceMonitor) -> None:
    monitor.record_gauge("depth", 4, {FROM_BYTES: "x", "queue": POISONED})

    assert attribute_sets(monitor, "depth") == [{"caf\ufffd \ufffd": "x", "queue": "general\ufffd"}]
    otlp_encodes(monitor)


def test_text_that_is_valid_is_recorded_exactly(monitor: PerformanceMonitor) -> None:
    text = "nul\x00 bell\x07 esc\x1b[2J cr\r lf\n ls\u2028 ps\u2029 del\x7f 日本 \U0001f600"
    monitor.record_histogram("sizes", 3, {text: text})

    assert attribute_sets(monitor, "sizes") == [{text: text}]
    otlp_encodes(monitor)


def test_bound_handles_get_normalised_tags(monitor: PerformanceMonitor) -> None:
    monitor.counter("jobs", {"queue": POISONED}).inc(2)

    assert monitor.snapshot().value("jobs", {"queue": "general\ufffd"}) == 2


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Channel(str, enum.Enum):
    PUBLIC = "public"


@pytest.mark.parametrize(
    ("value", "recorded"),
    [
        (2**64, str(2**64)),
        (-(2**63) - 1, str(-(2**63) - 1)),
        (2**63 - 1, 2**63 - 1),
        (math.nan, "NaN"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (Level.HIGH, 3),
        (Channel.PUBLIC, "public"),
        (True, True),
        (0.5, 0.5),
    ],
    ids=repr,
)
def test_tag_values_every_exporter_can_encode(monitor: PerformanceMonitor, value: object, recorded: object) -> None:
    monitor.increment_counter("events", {"k": value})
    monitor.increment_counter("events", {"k": value})

    (attributes,) = attribute_sets(monitor, "events")
    assert attributes == {"k": recorded}
    assert type(attributes["k"]) is type(recorded)
    assert monitor.snapshot().value("events", {"k": recorded}) == 2
    otlp_encodes(monitor)


@pytest.mark.parametrize(
    ("tags", "kept"),
    [
        ({"k" * KEY_LIMIT: "x"}, True),
        ({"k" * (KEY_LIMIT + 1): "x"}, False),
        ({"k" * 50_000: "x"}, False),
        ({f"k{i}": i for i in range(TAG_LIMIT)}, True),
        ({f"k{i}": i for i in range(TAG_LIMIT + 1)}, False),
        ({"k": "v" * VALUE_LIMIT}, True),
        ({"k": "v" * (VALUE_LIMIT + 1)}, False),
        ({"k": 10**2000}, False),  # its text would be longer than a value may be
        ({"k": Color.RED}, False),
    ],
    ids=["key at limit", "key over limit", "huge key", "tags at limit", "one tag too many", "value at limit",
         "value over limit", "int too long as text", "enum"],
)  # fmt: skip
def test_tag_limits_refuse_the_recording_and_count_it(
    monitor: PerformanceMonitor, tags: dict[Any, Any], kept: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics"):
        for _ in range(3):
            monitor.increment_counter("requests", tags)
            monitor.record_gauge("depth", 1, tags)
        monitor.histogram("sizes", tags).observe(1)

    assert monitor.dropped == (0 if kept else 7)
    assert len(attribute_sets(monitor, "requests")) == (1 if kept else 0)
    assert len(attribute_sets(monitor, "sizes")) == (1 if kept else 0)
    # Warned once per metric; a line stays short however long the key or value was.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (0 if kept else 3)
    assert all(len(line) < 400 for line in warnings), warnings


def test_refused_and_normalised_tags_give_the_same_result_on_both_paths(
    monitor_factory: Callable[..., PerformanceMonitor],
) -> None:
    calls = [
        {"channel": POISONED},
        {FROM_BYTES: 1},
        {"k" * 300: "x"},
        {"n": 2**70},
        {f"k{i}": i for i in range(200)},
    ]
    seen = []
    for recording in ("fast", "sdk"):
        monitor = monitor_factory(recording=recording)
        for tags in calls:
            monitor.increment_counter("c", tags)
            monitor.increment_counter("c", tags)
        seen.append((monitor.dropped, sorted(map(str, attribute_sets(monitor, "c")))))
    assert seen[0] == seen[1]
    assert seen[0][0] == 4


def test_many_invalid_keys_are_warned_about_once_per_metric(
    monitor: PerformanceMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics"):
        for byte in range(0x80, 0xB0):
            monitor.increment_counter("uploads", {bytes([byte]).decode("utf-8", "surrogateescape"): "x"})

    assert monitor.snapshot().value("uploads", {"\ufffd": "x"}) == 0xB0 - 0x80
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
