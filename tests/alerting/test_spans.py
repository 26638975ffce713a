"""Span rules: a real TracerProvider's finished spans become values that rules evaluate."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from chat_turbo_metrics.alerting import AlertingSpanProcessor, AlertManager, RuleError, SpanSelector

SECOND_NS = 1_000_000_000


def finish(tracer: Any, name: str, seconds: float, *, kind=SpanKind.SERVER, error=False, **attributes) -> None:
    """One finished span of exactly ``seconds`` (explicit timestamps: no sleeping)."""
    span = tracer.start_span(name, kind=kind, attributes=attributes, start_time=10 * SECOND_NS)
    if error:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=10 * SECOND_NS + int(seconds * SECOND_NS))


@pytest.fixture
def monitor(monitor_factory):
    return monitor_factory()


def span_rule(**fields: Any) -> dict[str, Any]:
    return {"id": "slow-checkout", "name": "Slow Checkout", "condition": "gt", "threshold": 1.0,
            "spans": {"name": "POST /checkout", "kind": "server"}, **fields}  # fmt: skip


def test_span_rule_on_the_pipelines_tracer_provider_fires_on_p95(monitor) -> None:
    manager = AlertManager(monitor)
    manager.add_rule(span_rule())
    tracer = monitor.pipeline.tracer_provider.get_tracer("shop")
    assert manager.evaluate(now=0) == ()
    for _ in range(20):
        finish(tracer, "POST /checkout", 3.0)
    finish(tracer, "GET /", 9.0)  # another span name: not selected
    (alert,) = manager.evaluate(now=60)
    assert (alert.state, alert.value, alert.labels["alertname"]) == ("firing", pytest.approx(4.875), "Slow Checkout")


@pytest.mark.parametrize(
    ("fields", "spans", "value"),
    [
        ({"statistic": "error_rate", "threshold": 0.2}, [(0.1, True)] * 3 + [(0.1, False)] * 7, 0.3),
        ({"statistic": "slow_count", "threshold": 2, "spans": {"name": "POST /checkout", "slow_threshold": "500ms"}},
         [(0.6, False)] * 3 + [(0.4, False)] * 5 + [(0.5, False)], 3.0),
        ({"statistic": "mean", "threshold": 0.5}, [(0.25, False), (1.75, False)], 1.0),
        ({"statistic": "max", "threshold": 5}, [(0.25, False), (6.5, False)], 6.5),
        ({"statistic": "increase", "threshold": 3}, [(0.1, False)] * 4, 4.0 * 60 / 60),
    ],
)  # fmt: skip
def test_span_statistics(monitor, fields: dict[str, Any], spans, value: float) -> None:
    provider = TracerProvider()
    processor = AlertingSpanProcessor()
    provider.add_span_processor(processor)
    manager = AlertManager(monitor, span_processor=processor, collect=lambda: None, evaluation_interval_s=60)
    manager.add_rule(span_rule(**fields, window="1m"))
    tracer = provider.get_tracer("shop")
    manager.evaluate(now=0)
    for seconds, error in spans:
        finish(tracer, "POST /checkout", seconds, error=error)
    (alert,) = manager.evaluate(now=60)
    assert alert.value == pytest.approx(value)


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({"name": "POST /checkout"}, True),
        ({"name": "POST /cart"}, False),
        ({"kind": "server"}, True),
        ({"kind": "client"}, False),
        ({"attributes": {"http.route": "/checkout", "retry": True}}, True),
        ({"attributes": {"http.route": "/cart"}}, False),
        ({"attributes": {"missing": "x"}}, False),
        ({}, True),
    ],
)
def test_selectors(selector: dict[str, Any], matches: bool) -> None:
    provider = TracerProvider()
    processor = AlertingSpanProcessor()
    provider.add_span_processor(processor)
    chosen = SpanSelector(
        name=selector.get("name"),
        kind=selector.get("kind"),
        attributes={k: str(v).lower() if isinstance(v, bool) else v for k, v in selector.get("attributes", {}).items()},
    )
    processor.track(chosen)
    finish(provider.get_tracer("t"), "POST /checkout", 0.2, **{"http.route": "/checkout", "retry": True})
    assert processor.points()[chosen.key].count == (1.0 if matches else 0.0)


def test_memory_is_one_aggregate_per_selector_whatever_the_spans(monitor) -> None:
    processor = AlertingSpanProcessor()
    provider = TracerProvider()
    provider.add_span_processor(processor)
    processor.track(SpanSelector(kind="server"))
    tracer = provider.get_tracer("t")
    for i in range(2000):
        finish(tracer, f"GET /item/{i}", 0.01, id=i)
    (point,) = processor.points().values()
    assert point.count == 2000
    assert len(point.counts) == len(point.bounds) + 1


def test_spans_ended_on_many_threads_are_all_counted() -> None:
    processor = AlertingSpanProcessor()
    provider = TracerProvider()
    provider.add_span_processor(processor)
    processor.track(SpanSelector(name="work"))
    tracer = provider.get_tracer("t")

    def work() -> None:
        for _ in range(500):
            finish(tracer, "work", 0.001, error=True)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (point,) = processor.points().values()
    assert (point.count, point.errors, sum(point.counts)) == (2000, 2000, 2000)


def test_removing_the_last_span_rule_stops_aggregating(monitor) -> None:
    processor = AlertingSpanProcessor()
    manager = AlertManager(monitor, span_processor=processor)
    manager.add_rule(span_rule())
    assert len(processor.points()) == 1
    manager.remove_rule("slow-checkout")
    assert processor.points() == {}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"metric": "x"}, "spans"),
        ({"statistic": "value"}, "statistic"),
        ({"statistic": "slow_count"}, "spans"),
        ({"spans": {"kind": "sideways"}}, "spans"),
        ({"spans": {"name": "x", "colour": "red"}}, "spans"),
    ],
)
def test_bad_span_rules(monitor, fields: dict[str, Any], field: str) -> None:
    manager = AlertManager(monitor, span_processor=AlertingSpanProcessor())
    with pytest.raises(RuleError) as caught:
        manager.add_rule(span_rule(**fields))
    assert (caught.value.rule_id, caught.value.field) == ("slow-checkout", field)
