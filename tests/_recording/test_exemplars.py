"""Exemplars on every fast-path histogram update: the recorder's calls, bound handles and bundles.

Our instrumentors record through bound handles and bundles, so an HTTP request served inside a sampled span (a
tracing middleware outside ours) must leave its trace id on the request-duration bucket it landed in, as a
``record_histogram`` call does (tests/exporters/test_openmetrics.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.instrumentation import bundle_produced

Factory = Callable[..., PerformanceMonitor]
tracer = TracerProvider().get_tracer("test_exemplars")
unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test_exemplars_off")


@pytest.fixture
def monitor(monitor_factory: Factory) -> PerformanceMonitor:
    return functools.partial(monitor_factory, self_telemetry=False)(recording="fast")


def exemplars(monitor: PerformanceMonitor, family: str) -> dict[str, Any]:
    """The family's exemplars by bucket upper bound (``le``), from an OpenMetrics scrape parsed by prometheus_client."""
    text = monitor.snapshot().to_prometheus(openmetrics=True)
    return {
        s.labels["le"]: s.exemplar
        for f in parse_openmetrics(text)
        if f.name == family
        for s in f.samples
        if s.name.endswith("_bucket") and s.exemplar is not None
    }


def ids(span: Any) -> dict[str, str]:
    context = span.get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def test_a_bound_handle_keeps_the_latest_sampled_observation_per_bucket(monitor: PerformanceMonitor) -> None:
    handle = monitor.histogram("payload_bytes", {"route": "/x"})
    handle.observe(3)  # the first call finds the cell on the slow path: outside a span, no exemplar
    handle.observe(4)
    with unsampled.start_as_current_span("not sampled"):
        handle.observe(2000)
    with tracer.start_as_current_span("request") as first:
        handle.observe(512)
    with tracer.start_as_current_span("request") as second:
        handle.observe(600)  # the same bucket as 512: the latest is kept
        handle.observe(9000)
    found = exemplars(monitor, "payload_bytes")
    assert set(found) == {"750.0", "10000.0"}
    assert (found["750.0"].value, found["750.0"].labels) == (600, ids(second))
    assert (found["10000.0"].value, found["10000.0"].labels) == (9000, ids(second))
    assert ids(first) != ids(second)
    assert monitor.snapshot().value("payload_bytes", {"route": "/x"}) is not None


def test_a_handles_first_observation_in_a_span_keeps_its_exemplar(monitor: PerformanceMonitor) -> None:
    handle = monitor.histogram("payload_bytes")
    with tracer.start_as_current_span("request") as span:
        handle.observe(7)  # the slow path: the cell is found and the value recorded there
    found = exemplars(monitor, "payload_bytes")
    assert (found["10.0"].value, found["10.0"].labels) == (7, ids(span))


@pytest.mark.parametrize("make", [PerformanceMonitor.bundle, bundle_produced], ids=["bundle", "bundle_produced"])
def test_a_bundle_keeps_an_exemplar_in_each_histogram(monitor: PerformanceMonitor, make: Any) -> None:
    duration = monitor.histogram("took_seconds", {"route": "/x"})
    size = monitor.histogram("size_bytes", {"route": "/x"})
    count = monitor.counter("requests", {"route": "/x"})
    record = (
        make(monitor, [[duration], [size]], [count])
        if make is PerformanceMonitor.bundle
        else make([[duration], [size]], [count])
    )
    record(0.2, 100)  # every handle finds its cell: the next calls update the cells directly
    record(0.3, 120)
    with tracer.start_as_current_span("request") as span:
        record(0.04, 300)
    took, sizes = exemplars(monitor, "took_seconds"), exemplars(monitor, "size_bytes")
    assert {le: (e.value, e.labels) for le, e in took.items()} == {"0.05": (0.04, ids(span))}
    assert {le: (e.value, e.labels) for le, e in sizes.items()} == {"500.0": (300, ids(span))}
    snapshot = monitor.snapshot()
    assert snapshot.value("requests", {"route": "/x"}) == 3
    took_record = next(r for r in snapshot.records() if r["name"] == "took_seconds")
    assert took_record["count"] == 3


def test_an_http_request_served_in_a_sampled_span_leaves_its_trace_on_the_duration(
    monitor: PerformanceMonitor,
) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from chat_turbo_metrics_http.asgi import AsgiMetricsMiddleware

    seen: list[dict[str, str]] = []

    async def message(request: Request) -> PlainTextResponse:
        seen.append(ids(trace.get_current_span()))
        return PlainTextResponse("ok")

    app = AsgiMetricsMiddleware(Starlette(routes=[Route("/api/messages/{id}", message)]), monitor=monitor)

    async def traced(scope: Any, receive: Any, send: Any) -> None:  # a tracing middleware outside ours
        with tracer.start_as_current_span("server"):
            await app(scope, receive, send)

    async def run() -> None:
        transport = httpx.ASGITransport(app=traced)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for n in range(3):
                assert (await client.get(f"/api/messages/{n}")).status_code == 200

    asyncio.run(run())
    found = exemplars(monitor, "http_request_duration_seconds")
    assert found, "no exemplar on the request duration"
    assert {e.labels["trace_id"] for e in found.values()} <= {s["trace_id"] for s in seen}
    assert seen[-1] in [e.labels for e in found.values()]  # the latest request's is kept in its bucket
