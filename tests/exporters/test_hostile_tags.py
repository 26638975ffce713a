"""A tag value from a user of the application is data in every output: arbitrary text through every exporter.

Keys and values drawn from all of Unicode (lone surrogates, NUL, control characters, U+2028, invalid UTF-8
decoded with ``surrogateescape``) are recorded on both recording paths, then read back from every sink a user
would have: the ``/metrics`` scrape over HTTP (parsed with prometheus_client's parser), the JSON Lines file,
the SQLite history, an OTLP/HTTP receiver on 127.0.0.1, the Datadog intake on 127.0.0.1, and the alert engine
(rules over those series go pending, then firing). Each sink must hold the same text: the value with every
lone surrogate replaced by U+FFFD, and nothing else changed.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from datadog_intake import DD_KEY, DatadogIntake, running_intake
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from prometheus_client.parser import text_string_to_metric_families
from test_otlp import OtlpHttpReceiver, attributes, metrics_by_name

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics._core.naming import prometheus_label
from chat_turbo_metrics.alerting import AlertManager
from chat_turbo_metrics.exporters import DatabaseExporter, DataDogExporter, FileExporter
from chat_turbo_metrics.exporters.file import read_metric_records
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
from conftest import make_config

POISONED = json.loads(b'{"channel":"general\\udce9"}')["channel"]
SPECIAL = ["\x00", "\r", "\n", "\x1b[2J", "\u2028", "\u2029", "\x85", '"', "\\", "\ufffd", "\ud83d", "\udfff"]
RESERVED_KEYS = ["le", "quantile", "__name__", "__meta_x", "job", "a.b", "a_b", "9"]


def as_stored(text: str) -> str:
    """What every sink must hold for ``text``: each lone surrogate replaced by U+FFFD (the test's own rule)."""
    return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)


any_char = st.characters(exclude_categories=())  # all of Unicode, surrogates and controls included
texts = st.one_of(
    st.text(any_char, min_size=1, max_size=12),
    st.lists(st.sampled_from(SPECIAL), min_size=1, max_size=4).map("".join),
    st.binary(min_size=1, max_size=12).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)
tag_sets = st.dictionaries(st.one_of(texts, st.sampled_from(RESERVED_KEYS)), texts, min_size=1, max_size=3)


@dataclass
class Sinks:
    monitor: PerformanceMonitor
    scrape_url: str
    file: Path
    database: Path
    otlp: OtlpHttpReceiver
    datadog: DatadogIntake
    alerts: AlertManager
    numbers: Iterator[int]


@pytest.fixture(scope="module", params=["fast", "sdk"])
def sinks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sinks]:
    """One monitor per recording path with every exporter attached, each to a real peer on 127.0.0.1."""
    directory = tmp_path_factory.mktemp(f"hostile-{request.param}")
    monitor = PerformanceMonitor(make_config(recording=request.param, self_telemetry=False))
    receiver = OtlpHttpReceiver()
    threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True).start()
    prometheus = PrometheusExporter(host="127.0.0.1", port=0, scope_labels=False)
    with running_intake() as intake:
        for exporter in (
            prometheus,
            FileExporter(directory / "metrics.jsonl"),
            DatabaseExporter(f"sqlite:///{directory / 'history.db'}"),
            OTLPMetricExporter(endpoint=receiver.endpoint, timeout=10),
            DataDogExporter(DD_KEY, endpoint=intake.url),
        ):
            monitor.add_exporter(exporter)
        try:
            yield Sinks(
                monitor,
                prometheus.url,
                directory / "metrics.jsonl",
                directory / "history.db",
                receiver,
                intake,
                AlertManager(monitor, evaluation_interval_s=60),
                itertools.count(),
            )
        finally:
            monitor.shutdown()
            receiver.shutdown()
            receiver.server_close()


def prometheus_labels(tags: dict[str, str], *, histogram: bool = False) -> dict[str, str]:
    """The labels a scrape must show: keys that map to one label keep every value, ";"-joined in key order."""
    labels: dict[str, list[str]] = {}
    for key in sorted(tags):
        label = prometheus_label(key)
        if histogram and label == "le":
            label = "exported_le"
        labels.setdefault(label, []).append(tags[key])
    return {label: ";".join(values) for label, values in labels.items()}


def scraped(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")  # strict: the scrape is valid UTF-8
    return {family.name: family for family in text_string_to_metric_families(text)}


def stored_attributes(database: Path, name: str) -> list[dict[str, Any]]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT attributes FROM ctm_streams WHERE name = ?", (name,)).fetchall()
    return [json.loads(row[0]) for row in rows]


def otlp_attributes(receiver: OtlpHttpReceiver, name: str) -> list[dict[str, Any]]:
    for request in reversed(receiver.received.requests):
        metric = metrics_by_name(request).get(name)
        if metric is not None:
            return [attributes(point.attributes) for point in getattr(metric, metric.WhichOneof("data")).data_points]
    return []


# Export workers draw retry jitter from `random` in the background while Hypothesis generates an example.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(tags=tag_sets)
@example(tags={"channel": POISONED})
@example(tags={b"\xff\xfe".decode("utf-8", "surrogateescape"): "\x00\r\n\u2028"})
@example(tags={"le": "x", "__name__": "n", "quantile": "0.9"})
def test_every_sink_holds_the_same_valid_text(sinks: Sinks, tags: dict[str, str]) -> None:
    n = next(sinks.numbers)
    gauge, histogram, control = f"hostile_gauge_{n}", f"hostile_latency_{n}", f"plain_gauge_{n}"
    expected: dict[str, str] = {}
    for key, value in tags.items():
        expected.setdefault(as_stored(key), as_stored(value))  # two keys made alike: the first one's value
    sinks.monitor.record_gauge(gauge, 5.0, tags)
    sinks.monitor.record_histogram(histogram, 0.2, tags)
    sinks.monitor.record_gauge(control, 5.0, {"k": "v"})

    assert sinks.monitor.dropped == 0
    assert sinks.monitor.force_flush(30)

    families = scraped(sinks.scrape_url)
    assert [sample.labels for sample in families[gauge].samples] == [prometheus_labels(expected)]
    latency = families[histogram].samples
    assert [s.labels for s in latency if s.name.endswith("_count")] == [prometheus_labels(expected, histogram=True)]
    assert all({**s.labels, "le": ""} == {**prometheus_labels(expected, histogram=True), "le": ""} for s in latency)
    assert [r["attributes"] for r in read_metric_records(sinks.file) if r["name"] == gauge][-1:] == [expected]
    assert stored_attributes(sinks.database, gauge) == [expected]
    assert otlp_attributes(sinks.otlp, gauge) == [expected]
    assert sinks.datadog.violations == []
    assert any(series["metric"] == gauge for series in sinks.datadog.accepted_series())

    for metric in (gauge, control):
        sinks.alerts.add_rule({"id": metric, "name": metric, "metric": metric, "condition": "gt", "threshold": 1,
                               "duration": 60})  # fmt: skip
    started = 1_000_000.0 + 1000 * n
    states = [
        {alert.rule_id: alert.state for alert in sinks.alerts.evaluate(now) if alert.rule_id in (gauge, control)}
        for now in (started, started + 60)
    ]
    for metric in (gauge, control):
        sinks.alerts.remove_rule(metric)
    assert states == [{gauge: "pending", control: "pending"}, {gauge: "firing", control: "firing"}]


def test_one_poisoned_series_leaves_every_rule_transitioning(
    monitor_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = monitor_factory(self_telemetry=False)
    alerts = AlertManager(monitor, evaluation_interval_s=60)
    for rule_id, metric in (("room", "room_load"), ("queue", "queue_depth")):
        alerts.add_rule({"id": rule_id, "name": rule_id, "metric": metric, "condition": "gt", "threshold": 1,
                         "duration": 60})  # fmt: skip
    monitor.record_gauge("room_load", 9, {"channel": POISONED})
    monitor.record_gauge("queue_depth", 9, {"queue": "orders"})

    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.alerting"):
        pending = alerts.evaluate(1000.0)
        firing = alerts.evaluate(1060.0)

    assert sorted((a.rule_id, a.state) for a in pending) == [("queue", "pending"), ("room", "pending")]
    assert sorted((a.rule_id, a.state) for a in firing) == [("queue", "firing"), ("room", "firing")]
    room = next(a for a in firing if a.rule_id == "room")
    assert room.labels["channel"] == "general\ufffd"
    assert [r for r in caplog.records if r.name.startswith("chat_turbo_metrics.alerting")] == []
