"""Datadog benchmark: series per second serialized (mapping + JSON + gzip) for 10,000 Datadog series.

Run: ``python bench/bench_datadog.py`` (``--quick`` for a shorter, rougher run). The input is what the
exporter really gets: a monitor records 5,000 counter series, 1,000 histogram series (four Datadog series
each: ``.count``, ``.sum``, ``.min``, ``.max``) and 1,000 gauge series with three tags, and the fan-out's
delta converter turns the collection into deltas. In one run it prints

- ours: ``SeriesMapper.map`` (mapping, written straight to JSON) + ``Batcher`` (gzip bodies under the intake's
  limits), and each stage on its own;
- peers on the same data: the OpenTelemetry OTLP exporter's protobuf encoding + gzip (what an OTLP export
  of the same collection costs), and datadog-api-client's models (``MetricPayload``/``MetricSeries``) +
  ``json.dumps`` + gzip for the same 10,000 series (the official Datadog client's way to build a payload).

Timings are minimums of repeats; compare the ratios, measured in the same run, not the absolutes.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics._pipeline.temporality import DeltaConverter
from chat_turbo_metrics.exporters.datadog import DataDogExporter
from chat_turbo_metrics.exporters.datadog._batching import Batcher
from chat_turbo_metrics.exporters.datadog._mapping import MappingOptions, SeriesMapper

QUICK = "--quick" in sys.argv
REPEAT = 3 if QUICK else 7
KEY = "0123456789abcdef0123456789abcdef"


def delta_collection() -> MetricsData:
    """The delta data the exporter's fan-out worker hands it: 10,000 Datadog series' worth."""
    monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), cardinality_limit=20_000))
    for i in range(5000):
        monitor.increment_counter("api_requests_total", {"method": "GET", "endpoint": f"/api/r{i}", "status": 200})
    for i in range(1000):
        tags = {"method": "POST", "endpoint": f"/api/h{i}", "status": 201}
        monitor.record_histogram("http_request_duration_seconds", 0.01 * (i % 50 + 1), tags)
        monitor.record_gauge("active_connections", i, {"pool": f"p{i}", "region": "eu", "tier": "web"})
    assert monitor.pipeline is not None
    cumulative = monitor.pipeline.collect()
    assert cumulative is not None
    converter = DeltaConverter.for_exporter(DataDogExporter(KEY))
    assert converter is not None
    delta, _ = converter.convert(cumulative)
    monitor.shutdown()
    return delta


def best_of(run: Callable[[], Any]) -> float:
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    data = delta_collection()
    mapper = SeriesMapper(MappingOptions(service="bench", env="bench", tags=("team:chat",)))
    encoded, _ = mapper.map(data)
    count = len(encoded)
    series = [json.loads(one) for one in encoded]  # for the datadog-api-client peer

    # The exporter keeps one mapper, whose tag cache is warm after the first export: so does the benchmark.
    def ours() -> None:
        mapped, _ = mapper.map(data)
        list(Batcher().batches(mapped))

    def otlp() -> None:
        gzip.compress(encode_metrics(data).SerializeToString(), compresslevel=6)

    def datadog_client() -> None:
        from datadog_api_client.model_utils import model_to_dict
        from datadog_api_client.v2.model.metric_intake_type import MetricIntakeType
        from datadog_api_client.v2.model.metric_payload import MetricPayload
        from datadog_api_client.v2.model.metric_point import MetricPoint
        from datadog_api_client.v2.model.metric_series import MetricSeries

        models = [
            MetricSeries(
                metric=one["metric"],
                type=MetricIntakeType(one["type"]),
                points=[MetricPoint(**point) for point in one["points"]],
                tags=one["tags"],
                **({"interval": one["interval"]} if "interval" in one else {}),
            )
            for one in series
        ]
        body = json.dumps(model_to_dict(MetricPayload(series=models))).encode()
        gzip.compress(body, compresslevel=6)

    stages = {
        "mapping + JSON (SeriesMapper.map)": lambda: mapper.map(data),
        "  same, cold tag cache (a first export)": lambda: SeriesMapper(MappingOptions()).map(data),
        "gzip + batching only (Batcher)": lambda: list(Batcher().batches(encoded)),
    }
    ours_s = best_of(ours)
    metrics = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    otel_points = sum(len(m.data.data_points) for m in metrics)
    print(f"{count} Datadog series from {otel_points} OTel points; best of {REPEAT}")
    print(f"{'ours: mapping + JSON + gzip':44s} {ours_s * 1000:8.1f} ms  {count / ours_s:>10,.0f} series/s")
    for name, run in stages.items():
        seconds = best_of(run)
        print(f"  {name:42s} {seconds * 1000:8.1f} ms")
    for name, run in (
        ("peer: OTLP protobuf encode + gzip", otlp),
        ("peer: datadog-api-client models + JSON + gzip", datadog_client),
    ):
        try:
            seconds = best_of(run)
        except ImportError as error:  # datadog-api-client comes with the test extra only
            print(f"{name:44s} skipped: {error.name} is not installed (pip install -e '.[test]')")
            continue
        ratio = seconds / ours_s
        print(
            f"{name:44s} {seconds * 1000:8.1f} ms  {count / seconds:>10,.0f} series/s  (its time / ours: {ratio:.2f})"
        )
    bodies = list(Batcher().batches(encoded))
    compressed, raw = sum(len(b.body) for b in bodies), sum(b.raw_size for b in bodies)
    print(f"bodies: {len(bodies)}, {compressed:,} bytes gzip from {raw:,} bytes JSON")


if __name__ == "__main__":
    main()
