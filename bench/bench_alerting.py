"""Alerting benchmark: one evaluation of 100 rules over 1,000 series per metric.

Run: ``python bench/bench_alerting.py`` (``--quick`` for fewer repeats). Three metrics recorded on the fast path,
each with 1,000 series (tag ``instance``): a gauge ``memory_usage_mb``, a counter ``api_requests`` and a
histogram ``http_request_duration_seconds`` (semconv buckets). 100 rules: 25 gauge value rules, 25 counter rate
rules (5m), 25 histogram quantile rules (p50/p90/p95/p99 over 5m) and 25 histogram mean rules, so one
evaluation compares 100,000 (rule, series) values. The history holds a full 5-minute window (6 points a
series at a 60 s interval) before timing starts.

Printed, from the same run: the time of one ``evaluate()`` (collection + history + every rule), the time of
the pipeline's collection alone (which the export cycle pays anyway), their ratio, and the evaluation's share
of the default 60 s export interval that it runs on. Timings are minimums of repeats; compare ratios.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics.alerting import AlertManager

QUICK = "--quick" in sys.argv
REPEAT = 3 if QUICK else 7
SERIES = 1_000
INTERVAL_S = 60.0
TARGET_SHARE = 0.05  # our bar: an evaluation uses under 5 % of the interval it runs on


def build() -> tuple[PerformanceMonitor, AlertManager, Callable[[], None]]:
    monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), recording="fast"))
    manager = AlertManager(monitor, evaluation_interval_s=INTERVAL_S)
    tags = [{"instance": f"i-{i}"} for i in range(SERIES)]
    counters = [monitor.counter("api_requests", t) for t in tags]
    histograms = [monitor.histogram("http_request_duration_seconds", t) for t in tags]
    gauges = [monitor.gauge("memory_usage_mb", t) for t in tags]

    def record() -> None:
        for i in range(SERIES):
            counters[i].inc(10 + i % 100)
            gauges[i].set(100 + i)
            slow = 4.0 if i % 50 == 0 else 0.3  # a few slow instances: the ones latency rules catch
            for value in (0.02, 0.2, 0.7, slow):
                histograms[i].observe(value)

    quantiles = ("p50", "p90", "p95", "p99")
    for n in range(25):
        manager.add_rule({"id": f"g{n}", "name": f"Memory {n}", "metric": "memory_usage_mb", "condition": "gt",
                          "threshold": 1070 + n, "duration": "5m"})  # fmt: skip
        manager.add_rule({"id": f"c{n}", "name": f"Requests {n}", "metric": "api_requests_total", "condition": "gt",
                          "threshold": 1.75 + 0.001 * n, "duration": "2m"})  # fmt: skip
        manager.add_rule({"id": f"q{n}", "name": f"Latency {n}", "metric": "http_request_duration_seconds",
                          "statistic": quantiles[n % 4], "condition": "gt", "threshold": 2.0 + 0.01 * n})  # fmt: skip
        manager.add_rule({"id": f"m{n}", "name": f"Mean {n}", "metric": "http_request_duration_seconds",
                          "statistic": "mean", "condition": "gte", "threshold": 1.2 + 0.01 * n})  # fmt: skip
    return monitor, manager, record


def main() -> None:
    monitor, manager, record = build()
    assert monitor.pipeline is not None
    now = 0.0
    for _ in range(6):  # fill the 5-minute window
        record()
        manager.evaluate(now)
        now += INTERVAL_S
    evaluations, collections, alerts = [], [], 0
    for _ in range(REPEAT):
        record()
        started = time.perf_counter()
        alerts = len(manager.evaluate(now))
        evaluations.append(time.perf_counter() - started)
        started = time.perf_counter()
        monitor.pipeline.collect()
        collections.append(time.perf_counter() - started)
        now += INTERVAL_S
    evaluate_s, collect_s = min(evaluations), min(collections)
    share = evaluate_s / INTERVAL_S
    print(f"alerting: {len(manager.rules())} rules x {SERIES} series per metric, {alerts} alerts active")
    per_pair_us = evaluate_s / (len(manager.rules()) * SERIES) * 1e6
    print(f"  evaluate()          {evaluate_s * 1000:9.1f} ms  ({per_pair_us:.2f} us per rule x series)")
    print(f"  pipeline.collect()  {collect_s * 1000:9.1f} ms  (peer: the collection the export cycle does anyway)")
    print(f"  ratio evaluate/collect       {evaluate_s / collect_s:6.2f}x")
    print(f"  share of a {INTERVAL_S:.0f} s interval     {share * 100:6.2f} %  (target < {TARGET_SHARE * 100:.0f} %)")
    monitor.shutdown()


if __name__ == "__main__":
    main()
