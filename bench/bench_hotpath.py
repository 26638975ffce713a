"""Hot-path benchmark: the fast and sdk recording paths against the raw OTel SDK and prometheus_client.

Run: ``python bench/bench_hotpath.py`` (add ``--quick`` for a rough, shorter run). Prints ns/op for each
case (timeit, minimum of repeats, like ``../shared/baselines/hotpath.py``), then the ratios the fast
path is judged by, each measured in this same run, then collection time and memory per series.
``--cpu-time`` times each case in the thread's CPU time over many short repeats instead: on a loaded host,
time spent preempted is then not counted (contention for caches still is).
"""

from __future__ import annotations

import gc
import sys
import time
import timeit
import tracemalloc
from collections.abc import Callable
from typing import Any

import prometheus_client as pc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor

QUICK = "--quick" in sys.argv
CPU_TIME = "--cpu-time" in sys.argv
REPEAT = 3 if QUICK else 5
TARGET_S = 0.05 if QUICK else 0.2  # each repeat runs about this long
SERIES = 2_000 if QUICK else 10_000
TAGS: dict[str, Any] = {"method": "GET", "endpoint": "/api/x", "status": 200}
LABELS = ("method", "endpoint", "status")


def ns_per_op(fn: Callable[[], Any]) -> float:
    """Minimum over REPEAT runs of a loop sized to take about TARGET_S, in ns per call."""
    if CPU_TIME:  # short repeats, so that some run without a cache-cold restart after preemption
        timer = timeit.Timer(fn, timer=time.thread_time)
        return min(timer.repeat(repeat=REPEAT * 12, number=2_000)) / 2_000 * 1e9
    timer = timeit.Timer(fn)
    number = max(1, int(TARGET_S / max(timer.timeit(1_000) / 1_000, 1e-9)))
    return min(timer.repeat(repeat=REPEAT, number=number)) / number * 1e9


def monitor(recording: str, **settings: Any) -> PerformanceMonitor:
    return PerformanceMonitor(MonitoringConfig(recording=recording, metrics_exporters=(), **settings))  # type: ignore[arg-type]


def per_call() -> dict[str, float]:
    fast, sdk = monitor("fast"), monitor("sdk")
    evicting = monitor("fast", series_idle_timeout_s=3600)  # idle-series eviction on: same hot path
    # OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=base2_exponential_bucket_histogram: histograms and
    # timers go through the SDK's exponential aggregation, counters stay on the fast path.
    exponential = monitor("fast", histogram_aggregation="base2_exponential_bucket_histogram")
    exponential_obs = exponential.histogram("bound_latency", TAGS)
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("bench")
    raw_counter = meter.create_counter("raw_requests")
    raw_histogram = meter.create_histogram("raw_latency", unit="s")
    registry = pc.CollectorRegistry()
    prom_counter = pc.Counter("prom_requests", "c", LABELS, registry=registry)
    prom_histogram = pc.Histogram("prom_latency_seconds", "h", LABELS, registry=registry)
    fast_inc, fast_obs = fast.counter("bound_requests", TAGS), fast.histogram("bound_latency", TAGS)
    sdk_inc, sdk_obs = sdk.counter("bound_requests", TAGS), sdk.histogram("bound_latency", TAGS)
    start = time.perf_counter()

    # Every case is a lambda, so each pays the same extra frame.
    cases: dict[str, Callable[[], Any]] = {
        "fast increment_counter": lambda: fast.increment_counter("api_requests", TAGS),
        "fast record_histogram": lambda: fast.record_histogram("payload_size", 0.123, TAGS),
        "fast record_timer": lambda: fast.record_timer("api_request", start, TAGS),
        "fast record_gauge": lambda: fast.record_gauge("queue_depth", 3, TAGS),
        "fast increment_counter, eviction on": lambda: evicting.increment_counter("api_requests", TAGS),
        "fast record_histogram, eviction on": lambda: evicting.record_histogram("payload_size", 0.123, TAGS),
        "fast record_histogram, exponential": lambda: exponential.record_histogram("payload_size", 0.123, TAGS),
        "fast record_timer, exponential": lambda: exponential.record_timer("api_request", start, TAGS),
        "fast bound observe(), exponential": lambda: exponential_obs.observe(0.123),
        "fast bound inc()": lambda: fast_inc.inc(),  # noqa: PLW0108
        "fast bound observe()": lambda: fast_obs.observe(0.123),
        "sdk increment_counter": lambda: sdk.increment_counter("api_requests", TAGS),
        "sdk record_histogram": lambda: sdk.record_histogram("payload_size", 0.123, TAGS),
        "sdk record_timer": lambda: sdk.record_timer("api_request", start, TAGS),
        "sdk bound inc()": lambda: sdk_inc.inc(),  # noqa: PLW0108
        "sdk bound observe()": lambda: sdk_obs.observe(0.123),
        "raw otel counter.add(1, attrs)": lambda: raw_counter.add(1, TAGS),
        "raw otel histogram.record(v, attrs)": lambda: raw_histogram.record(0.123, TAGS),
        "prom labels(a,b,c).inc()": lambda: prom_counter.labels("GET", "/api/x", "200").inc(),
        "prom labels(a,b,c).observe()": lambda: prom_histogram.labels("GET", "/api/x", "200").observe(0.123),
        # What record_timer does, written with prometheus_client: read the clock, observe the difference.
        "prom observe(perf_counter() - start)": lambda: prom_histogram.labels("GET", "/api/x", "200").observe(
            time.perf_counter() - start
        ),
    }
    # Measured while a sampled span is current: the fast path keeps an exemplar per bucket.
    in_span = {
        "fast record_histogram, in a span": cases["fast record_histogram"],
        "fast record_timer, in a span": cases["fast record_timer"],
        "prom labels(a,b,c).observe(), in a span": cases["prom labels(a,b,c).observe()"],
        "prom observe(perf_counter() - start), in a span": cases["prom observe(perf_counter() - start)"],
    }
    results = {}
    for name, fn in cases.items():
        fn()  # first call: slow path / series creation is not what is measured
        results[name] = ns_per_op(fn)
        print(f"{name:40s} {results[name]:9.0f} ns/op")
    with TracerProvider().get_tracer("bench").start_as_current_span("request"):
        for name, fn in in_span.items():
            fn()
            results[name] = ns_per_op(fn)
            print(f"{name:40s} {results[name]:9.0f} ns/op")
    fast.shutdown()
    sdk.shutdown()
    evicting.shutdown()
    exponential.shutdown()
    return results


def collection_ms(recording: str, **settings: Any) -> float:
    """Best time of the reader collecting SERIES histogram series recorded through ``recording``."""
    mon = monitor(recording, cardinality_limit=SERIES * 2, **settings)
    for i in range(SERIES):
        mon.record_histogram("request_latency_seconds", 0.1, {"endpoint": f"/api/{i}", "method": "GET"})
    pipeline = mon.pipeline
    assert pipeline is not None
    best = min(timeit.repeat(pipeline.collect, number=1, repeat=REPEAT))
    data = pipeline.collect()
    assert data is not None
    # The pipeline's self-telemetry (on by default, collected here too) adds series of its own.
    metrics = [m for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics]
    points = sum(len(m.data.data_points) for m in metrics if m.name == "request_latency_seconds")
    assert points == SERIES, points
    mon.shutdown()
    return best * 1e3


def bytes_per_series_fast() -> float:
    mon = monitor("fast", cardinality_limit=SERIES * 2)
    mon.record_histogram("request_latency_seconds", 0.1, {"endpoint": "/warm-up", "method": "GET"})
    gc.collect()
    tracemalloc.start()
    for i in range(SERIES):
        mon.record_histogram("request_latency_seconds", 0.1, {"endpoint": f"/api/{i}", "method": "GET"})
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mon.shutdown()
    return used / SERIES


def bytes_per_series_prometheus() -> float:
    registry = pc.CollectorRegistry()
    histogram = pc.Histogram("request_latency_seconds", "h", ["endpoint", "method"], registry=registry)
    histogram.labels("/warm-up", "GET").observe(0.1)
    gc.collect()
    tracemalloc.start()
    for i in range(SERIES):
        histogram.labels(f"/api/{i}", "GET").observe(0.1)
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return used / SERIES


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "MISSED"


def main() -> None:
    clock = f"thread CPU time, min of {REPEAT * 12} repeats" if CPU_TIME else f"min of {REPEAT} repeats"
    print(f"CPython {sys.version.split()[0]}; 3 tags {TAGS}; {clock}\n")
    r = per_call()
    ratios = [
        ("facade(sdk path)/raw SDK, counter", r["sdk increment_counter"] / r["raw otel counter.add(1, attrs)"], 1.10),
        (
            "facade(sdk path)/raw SDK, histogram",
            r["sdk record_histogram"] / r["raw otel histogram.record(v, attrs)"],
            1.10,
        ),
        ("fast/prometheus_client, counter", r["fast increment_counter"] / r["prom labels(a,b,c).inc()"], 0.45),
        ("fast/prometheus_client, histogram", r["fast record_histogram"] / r["prom labels(a,b,c).observe()"], 0.45),
        ("fast/prometheus_client, timer", r["fast record_timer"] / r["prom observe(perf_counter() - start)"], 0.45),
        (
            "fast/prometheus_client, histogram in a span (exemplar)",
            r["fast record_histogram, in a span"] / r["prom labels(a,b,c).observe(), in a span"],
            1.0,
        ),
        (
            "fast/prometheus_client, timer in a span (exemplar)",
            r["fast record_timer, in a span"] / r["prom observe(perf_counter() - start), in a span"],
            1.0,
        ),
        ("fast/raw SDK, counter", r["fast increment_counter"] / r["raw otel counter.add(1, attrs)"], 0.15),
        ("fast/raw SDK, histogram", r["fast record_histogram"] / r["raw otel histogram.record(v, attrs)"], 0.15),
        ("fast/raw SDK, timer", r["fast record_timer"] / r["raw otel histogram.record(v, attrs)"], 0.15),
        ("bound inc()/prom labels().inc()", r["fast bound inc()"] / r["prom labels(a,b,c).inc()"], 0.35),
        ("counter, eviction on/off", r["fast increment_counter, eviction on"] / r["fast increment_counter"], 1.05),
        ("histogram, eviction on/off", r["fast record_histogram, eviction on"] / r["fast record_histogram"], 1.05),
        (
            "bound observe()/prom labels().observe()",
            r["fast bound observe()"] / r["prom labels(a,b,c).observe()"],
            0.35,
        ),
    ]
    fast_ms, sdk_ms = collection_ms("fast"), collection_ms("sdk")
    evicting_ms = collection_ms("fast", series_idle_timeout_s=3600)
    fast_b, prom_b = bytes_per_series_fast(), bytes_per_series_prometheus()
    ratios.append((f"collect {SERIES} series fast/sdk ({fast_ms:.1f} / {sdk_ms:.1f} ms)", fast_ms / sdk_ms, 1.0))
    ratios.append(
        (f"collect {SERIES} series eviction on/off ({evicting_ms:.1f} / {fast_ms:.1f} ms)", evicting_ms / fast_ms, 1.15)
    )
    ratios.append((f"bytes/histogram series fast/prom ({fast_b:.0f} / {prom_b:.0f} B)", fast_b / prom_b, 1.0))
    print("\nratio" + " " * 58 + "value  target")
    for label, value, target in ratios:
        print(f"{label:62s} {value:6.3f}  <= {target:<5} {verdict(value, target)}")


if __name__ == "__main__":
    main()
