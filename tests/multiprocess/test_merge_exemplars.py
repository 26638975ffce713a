"""Exemplars survive the pre-fork merge: each process's travel in its state, the scrape shows the latest per bucket."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.exporters._prometheus_text import to_prometheus_text
from chat_turbo_metrics.multiprocess._merge import encode, merge, retire
from conftest import make_config

tracer = TracerProvider().get_tracer("test_merge_exemplars")


def observe_in_span(monitor: PerformanceMonitor, value: float) -> str:
    with tracer.start_as_current_span("work") as span:
        monitor.record_histogram("work_seconds", value)
        return f"{span.get_span_context().trace_id:032x}"


def exemplars(text: str) -> dict[str, tuple[str, float]]:
    """le -> (trace id, value) of each bucket's exemplar."""
    return {
        s.labels["le"]: (s.exemplar.labels["trace_id"], s.exemplar.value)
        for f in parse_openmetrics(text)
        for s in f.samples
        if s.name == "work_seconds_bucket" and s.exemplar is not None
    }


def state_of(monitor: PerformanceMonitor) -> dict[str, Any]:
    return json.loads(json.dumps(encode(monitor.pipeline.collect())))  # type: ignore[union-attr]  # as on the wire


def test_the_merged_scrape_shows_each_buckets_latest_exemplar_of_any_process() -> None:
    first, second = PerformanceMonitor(make_config()), PerformanceMonitor(make_config())
    try:
        first.record_histogram("work_seconds", 0.004)  # no span: no exemplar
        old = observe_in_span(first, 0.3)
        slow = observe_in_span(first, 3.0)
        new = observe_in_span(second, 0.4)  # same bucket as `old`, later: it wins
        merged = merge([("1-a", state_of(first)), ("2-b", state_of(second))], None, lambda name: "sum")
        found = exemplars(to_prometheus_text(merged, openmetrics=True))
        assert found == {"0.5": (new, 0.4), "5.0": (slow, 3.0)}
        assert old != new
    finally:
        first.shutdown()
        second.shutdown()


def test_retired_totals_keep_counts_but_not_a_gone_processs_exemplars() -> None:
    worker = PerformanceMonitor(make_config())
    try:
        observe_in_span(worker, 0.3)
        final = state_of(worker)
        retired = retire(None, final)
        (entry,) = [e for e in retired["metrics"] if e["name"] == "work_seconds"]
        assert [len(point) for point in entry["points"]] == [9]  # the ledger's format is unchanged
        text = to_prometheus_text(merge([], retired, lambda name: "sum"), openmetrics=True)
        assert exemplars(text) == {}
        assert "work_seconds_count 1" in text.splitlines()
    finally:
        worker.shutdown()


def test_states_without_exemplars_merge_as_before() -> None:
    worker = PerformanceMonitor(make_config())
    try:
        worker.record_histogram("work_seconds", 0.3)
        state = state_of(worker)
        (entry,) = [e for e in state["metrics"] if e["name"] == "work_seconds"]
        assert [len(point) for point in entry["points"]] == [9]  # no 10th field without exemplars
        merged = merge([("1-a", state), ("2-b", state)], None, lambda name: "sum")
        assert "work_seconds_count 2" in to_prometheus_text(merged).splitlines()
    finally:
        worker.shutdown()
