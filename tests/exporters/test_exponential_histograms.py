"""``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=base2_exponential_bucket_histogram`` end to end.

The OTLP side (a real receiver decoding the exponential point) is in ``test_otlp.py``; here: the ``/metrics``
scrape of the same data, Datadog's series, the file records, the pre-fork merge and the refused values.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from datadog_intake import DD_KEY, DatadogIntake, points, running_intake
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Buckets,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor, get_monitoring_config
from chat_turbo_metrics._cli.config import run_config_command
from chat_turbo_metrics.exporters import DataDogExporter
from chat_turbo_metrics.exporters._prometheus_text import to_prometheus_text
from chat_turbo_metrics.exporters.file import FileExporter, read_metric_records
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
from chat_turbo_metrics.multiprocess._merge import encode, merge, retire

MonitorFactory = Callable[..., PerformanceMonitor]
VARIABLE = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"
EXPONENTIAL = "base2_exponential_bucket_histogram"
VALUES = (0, 1, 2, 4, 8)


@pytest.fixture
def intake() -> Iterator[DatadogIntake]:
    with running_intake() as server:
        yield server


def exponential_data(
    time_ns: int, count: int, scale: int, offset: int, counts: list[int], *, zero: int = 0
) -> MetricsData:
    """One cumulative exponential histogram point (started at 1 ns, sum = count, min 0, max 9) of metric ``h``."""
    point = ExponentialHistogramDataPoint(
        {}, 1, time_ns, count, float(count), scale, zero, Buckets(offset, counts), Buckets(0, []), 0, 0.0, 9.0
    )
    metric = Metric("h", "", "", ExponentialHistogram([point], AggregationTemporality.CUMULATIVE))
    scope = ScopeMetrics(InstrumentationScope("third.party"), [metric], "")
    return MetricsData([ResourceMetrics(Resource({}), [scope], "")])


def exponential_monitor(factory: MonitorFactory, recording: str = "fast", **settings: Any) -> PerformanceMonitor:
    return factory(recording=recording, histogram_aggregation=EXPONENTIAL, **settings)


def scrape(exporter: PrometheusExporter) -> str:
    with urllib.request.urlopen(exporter.url, timeout=5) as response:
        return str(response.read().decode("utf-8"))


def histogram_samples(text: str, family: str) -> dict[str, float]:
    """``le`` -> cumulative count, plus ``_count`` and ``_sum``, of the one series of ``family``."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{family}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            found[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith((f"{family}_count", f"{family}_sum")):
            found[line.split("{", 1)[0].split(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


def test_the_scrape_has_classic_buckets_with_the_exact_counts_and_sum(
    monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = exponential_monitor(monitor_factory, recording)
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    monitor.add_exporter(exporter)
    for value in VALUES:
        monitor.record_histogram("render_seconds", value, {"route": "/chat"})
    data = monitor.pipeline.collect()
    kinds = {m.name: type(m.data) for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert kinds["render_seconds"] is ExponentialHistogram

    samples = histogram_samples(scrape(exporter), "render_seconds")
    assert samples["render_seconds_count"] == 5
    assert samples["render_seconds_sum"] == 15
    assert samples["+Inf"] == 5
    assert samples["0"] == 1  # the zero bucket
    # Scale 5: bucket i is (2**(i/32), 2**((i+1)/32)]; 1 is the upper bound of bucket -1, 2 of bucket 31...
    assert samples["1"] == 2
    assert samples["2"] == 3
    assert samples["4"] == 4
    assert samples["8"] == 5
    below = [le for le in samples if le not in ("+Inf",) and not le.startswith("render") and 0 < float(le) < 1]
    assert below == []  # nothing observed between 0 and 1: the first positive bucket ends at 1
    between = [count for le, count in samples.items() if not le.startswith("render") and 4 < float(le) < 8]
    assert len(between) == 31  # the 31 buckets between 4 and 8 at scale 5, each holding the 4 values up to 4
    assert set(between) == {4}


def test_datadog_gets_count_sum_min_max_of_each_interval(
    intake: DatadogIntake, monitor_factory: MonitorFactory, recording: str
) -> None:
    monitor = exponential_monitor(monitor_factory, recording, service_name="chat-api")
    monitor.add_exporter(DataDogExporter(DD_KEY, endpoint=intake.url, histogram_buckets=True))
    for value in (1, 2):
        monitor.record_histogram("latency_ms", value)
    assert monitor.force_flush()
    monitor.record_histogram("latency_ms", 4)
    assert monitor.force_flush()
    assert monitor.force_flush()  # nothing new: an empty interval

    series = intake.accepted_series()
    values = {
        suffix: [one["points"][0]["value"] for one in points(series, f"latency_ms.{suffix}")]
        for suffix in ("count", "sum", "min", "max")
    }
    # The pipeline's data is cumulative: each interval's count and sum are the difference from the last one sent.
    assert values == {"count": [2, 1, 0], "sum": [3, 4, 0], "min": [1], "max": [2, 4]}
    assert all(one["type"] == 1 for one in points(series, "latency_ms.count") + points(series, "latency_ms.sum"))
    assert all(one["type"] == 3 for one in points(series, "latency_ms.min") + points(series, "latency_ms.max"))
    assert points(series, "latency_ms.bucket") == []  # Datadog maps exponential buckets to a sketch, not series
    intervals = [one.get("interval") for one in points(series, "latency_ms.count")]
    assert all(isinstance(interval, int) and interval >= 1 for interval in intervals)


def test_file_records_keep_scale_and_buckets(monitor_factory: MonitorFactory, tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    monitor = exponential_monitor(monitor_factory)
    monitor.add_exporter(FileExporter(str(path)))
    for value in VALUES:
        monitor.record_histogram("render_seconds", value)
    assert monitor.force_flush()
    (record,) = [r for r in read_metric_records(path) if r["name"] == "render_seconds"]
    assert record["kind"] == "exponential_histogram"
    assert (record["count"], record["sum"], record["min"], record["max"]) == (5, 15, 0, 8)
    assert (record["scale"], record["zero_count"]) == (5, 1)
    positive = record["positive"]
    found = {positive["offset"] + i: n for i, n in enumerate(positive["bucket_counts"]) if n}
    assert found == {-1: 1, 31: 1, 63: 1, 95: 1}


def test_the_pre_fork_merge_adds_exponential_histograms_of_different_scales() -> None:
    config = MonitoringConfig(metrics_exporters=(), histogram_aggregation=EXPONENTIAL)
    workers = [PerformanceMonitor(config), PerformanceMonitor(config)]
    try:
        for value in (1, 2):
            workers[0].record_histogram("lat", value)  # one power of two: scale 7
        for value in (1.5, 1000):
            workers[1].record_histogram("lat", value)  # ten powers of two: scale 3
        # States travel as JSON between processes.
        states = [(f"{n}-x", json.loads(json.dumps(encode(w.pipeline.collect())))) for n, w in enumerate(workers)]
    finally:
        for worker in workers:
            worker.shutdown()
    merged = merge(states, retired=None, gauge_mode=lambda name: "sum")
    (metric,) = [m for r in merged.resource_metrics for s in r.scope_metrics for m in s.metrics if m.name == "lat"]
    assert isinstance(metric.data, ExponentialHistogram)
    (point,) = metric.data.data_points
    assert (point.count, point.sum, point.min, point.max, point.scale) == (4, 1004.5, 1, 1000, 3)
    buckets = {point.positive.offset + i: n for i, n in enumerate(point.positive.bucket_counts) if n}
    # At scale 3 the bucket of v is ceil(8 * log2(v)) - 1.
    expected: dict[int, int] = {}
    for value in (1, 2, 1.5, 1000):
        index = math.ceil(8 * math.log2(value)) - 1
        expected[index] = expected.get(index, 0) + 1
    assert buckets == expected
    samples = histogram_samples(to_prometheus_text(merged), "lat")
    assert (samples["lat_count"], samples["lat_sum"], samples["+Inf"], samples["1"], samples["2"]) == (
        4,
        1004.5,
        4,
        1,
        3,
    )
    assert retire(None, states[0][1])["metrics"][0]["type"] == "exponential"  # a worker's exit keeps them


def test_the_merge_keeps_a_wide_exponential_histogram_within_160_buckets() -> None:

    # Two single buckets 2**20 apart at scale 20: merged, they must fit 160 buckets. At scale 7 they are 2**7 = 128
    # apart (129 buckets); at scale 8, 257 would be too many.
    merged = merge(
        [("1", encode(exponential_data(2, 1, 20, 0, [1]))), ("2", encode(exponential_data(2, 1, 20, 2**20, [1])))],
        retired=None,
        gauge_mode=lambda name: "sum",
    )
    point = merged.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]
    assert (point.count, point.scale) == (2, 7)
    assert {point.positive.offset + i: n for i, n in enumerate(point.positive.bucket_counts) if n} == {0: 1, 128: 1}


@pytest.mark.parametrize("value", ["exponential", "base2_exponential", "explicit", "none"])
def test_other_values_are_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        get_monitoring_config("test", env={VARIABLE: value})
    assert VARIABLE in str(raised.value)
    with pytest.raises(ConfigurationError):
        run_config_command("test", {VARIABLE: value}, io.StringIO())


def test_the_spec_values_are_accepted() -> None:
    for value in ("explicit_bucket_histogram", EXPONENTIAL, "BASE2_Exponential_Bucket_Histogram"):
        config = get_monitoring_config("test", env={VARIABLE: value})
        assert config.histogram_aggregation == value.lower()
    assert get_monitoring_config("test", env={}).histogram_aggregation == ("explicit_bucket_histogram")


def test_the_config_command_exits_2_on_a_bad_value() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "METRICS_", "CHAT_TURBO"))}
    env.update({VARIABLE: "exponential", "CHAT_TURBO_ENV": "test"})
    done = subprocess.run(
        [sys.executable, "-m", "chat_turbo_metrics", "config"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{VARIABLE}='exponential'" in done.stderr


def test_the_database_stores_each_interval_as_the_classic_histogram_it_converts_to(
    monitor_factory: MonitorFactory, tmp_path: Path
) -> None:
    import time

    from chat_turbo_metrics.exporters.database import DatabaseExporter

    monitor = exponential_monitor(monitor_factory)
    exporter = DatabaseExporter(f"sqlite:///{tmp_path / 'metrics.db'}", retention_days=1)
    monitor.add_exporter(exporter)
    for value in (1, 2):
        monitor.record_histogram("latency_ms", value)
    assert monitor.force_flush()
    for value in (4, 1000):  # a wider range: the cumulative point lowers its scale, the delta still subtracts
        monitor.record_histogram("latency_ms", value)
    assert monitor.force_flush()
    now = time.time()
    (row,) = exporter.history().histogram_stats("latency_ms", now - 600, now + 600, bucket_s=3600)
    assert (row.count, row.sum, row.min, row.max) == (4, 1007, 1, 1000)
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{tmp_path / 'metrics.db'}")
    with engine.connect() as conn:
        stored = conn.execute(
            text(
                "SELECT p.count, p.bounds, p.bucket_counts FROM ctm_points p JOIN ctm_streams s ON p.stream_id = s.id "
                "WHERE s.name = 'latency_ms' ORDER BY p.id"
            )
        ).all()
        kinds = set(conn.execute(text("SELECT kind FROM ctm_streams WHERE name = 'latency_ms'")).scalars())
    engine.dispose()
    assert kinds == {"histogram"}
    counts = [row[0] for row in stored]
    assert counts == [2, 2]  # each row is its own interval
    for count, bounds, buckets in stored:
        assert sum(json.loads(buckets)) == count
        assert len(json.loads(bounds)) + 1 == len(json.loads(buckets))
    # The second interval holds 4 and 1000 only: at scale 3, 4.0 is a bucket's upper bound (inclusive).
    bounds, buckets = json.loads(stored[1][1]), json.loads(stored[1][2])
    assert sum(n for bound, n in zip(bounds, buckets, strict=False) if bound < 4) == 0
    assert buckets[bounds.index(4.0)] == 1


def test_the_delta_of_an_exponential_histogram_whose_scale_went_down() -> None:
    from chat_turbo_metrics._pipeline.temporality import DeltaConverter

    def point_of(metrics: MetricsData) -> Any:
        return metrics.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]

    converter = DeltaConverter(monotonic_sums=False, non_monotonic_sums=False, histograms=True)
    first, pending = converter.convert(
        exponential_data(10, 4, 2, 4, [1, 1, 1], zero=1)
    )  # buckets 4, 5, 6 at scale 2 (+1 zero)
    converter.commit(pending)
    assert point_of(first).count == 4  # a series' first delta is all of it
    # At scale 1 those are buckets 2, 2, 3; two more observations went to bucket 3 and one to bucket 5.
    second, _ = converter.convert(exponential_data(20, 7, 1, 2, [2, 3, 0, 1], zero=1))
    delta = point_of(second)
    assert second.resource_metrics[0].scope_metrics[0].metrics[0].data.aggregation_temporality == (
        AggregationTemporality.DELTA
    )
    assert (delta.start_time_unix_nano, delta.count, delta.zero_count, delta.scale) == (10, 3, 0, 1)
    assert (delta.positive.offset, list(delta.positive.bucket_counts)) == (2, [0, 2, 0, 1])
    # A point that does not contain the earlier one (a restart) is all of its own interval.
    restarted, _ = converter.convert(exponential_data(30, 1, 1, 2, [0, 0, 0, 0], zero=1))
    assert point_of(restarted).count == 1


def test_the_snapshot_gives_the_record_of_an_exponential_histogram(monitor_factory: MonitorFactory) -> None:
    monitor = exponential_monitor(monitor_factory)
    for value in VALUES:
        monitor.record_histogram("render_seconds", value, {"route": "/chat"})
    record = monitor.snapshot().value("render_seconds", {"route": "/chat"})
    assert record["kind"] == "exponential_histogram"
    assert (record["count"], record["sum"], record["scale"], record["zero_count"]) == (5, 15, 5, 1)


def test_an_alert_rule_reads_the_quantile_of_an_exponential_histogram(monitor_factory: MonitorFactory) -> None:
    from chat_turbo_metrics.alerting import AlertManager

    monitor = exponential_monitor(monitor_factory)
    manager = AlertManager(monitor, evaluation_interval_s=60)
    base = {"name": "Slow", "metric": "render_seconds", "statistic": "p95", "window": "5m", "condition": "gt"}
    manager.add_rule({**base, "id": "slow", "threshold": 0.5})
    manager.add_rule({**base, "id": "very-slow", "threshold": 5.0})
    states = []
    for step in range(4):
        for _ in range(20):
            monitor.record_histogram("render_seconds", 1.0)  # every observation takes a second: p95 is about 1 s
        alerts = manager.evaluate_data(monitor.pipeline.collect(), step * 60.0)
        states.append(sorted((alert.rule_id, alert.state) for alert in alerts))
        values = [alert.value for alert in alerts]
    assert states[-1] == [("slow", "firing")]
    # All observations are 1.0, the one populated bucket: converted, it is le="1" right after le="0", so
    # histogram_quantile interpolates 95 % of (0, 1], as Prometheus would from the scrape.
    assert values == [pytest.approx(0.95)]


def test_idle_eviction_says_it_does_not_evict_exponential_histograms(
    monitor_factory: MonitorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="chat_turbo_metrics"):
        exponential_monitor(monitor_factory, series_idle_timeout_s=600)
    assert any("does not evict histogram series" in record.getMessage() for record in caplog.records)
