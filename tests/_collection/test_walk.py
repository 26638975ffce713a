"""The one walk over a collection: read in order, rewritten keeping what did not change, metrics added to a scope."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics._collection.walk import add_metrics, resources, rewrite, walk

APP, LIB = InstrumentationScope("app"), InstrumentationScope("lib")
FIRST, SECOND = Resource({"service.name": "a"}), Resource({"service.name": "b"})


def gauge(name: str, value: float = 1.0) -> Metric:
    return Metric(name, "", "", Gauge([NumberDataPoint({}, None, 1, value)]))  # type: ignore[arg-type]


def counter(name: str) -> Metric:
    data = Sum([NumberDataPoint({}, 0, 1, 1)], AggregationTemporality.CUMULATIVE, True)
    return Metric(name, "", "", data)


def collection() -> MetricsData:
    return MetricsData(
        [
            ResourceMetrics(
                FIRST, [ScopeMetrics(APP, [gauge("a1"), counter("a2")], ""), ScopeMetrics(LIB, [], "")], ""
            ),
            ResourceMetrics(SECOND, [ScopeMetrics(LIB, [gauge("b1")], "")], ""),
            ResourceMetrics(Resource({"empty": True}), [], ""),
        ]
    )


def test_walk_yields_every_metric_in_order_with_its_resource_and_scope() -> None:
    found = [(f.resource, f.scope.name, f.metric.name) for f in walk(collection())]
    assert found == [(FIRST, "app", "a1"), (FIRST, "app", "a2"), (SECOND, "lib", "b1")]
    assert list(walk(None)) == []
    assert [r.attributes.get("empty") for r in resources(collection())] == [None, None, True]


def test_a_rewrite_that_changes_nothing_returns_the_same_collection() -> None:
    data = collection()
    seen: list[str] = []

    def keep(resource: Resource, scope: InstrumentationScope, metrics: Sequence[Metric]) -> Sequence[Metric]:
        seen.append(scope.name)
        return metrics

    assert rewrite(data, keep) is data
    assert seen == ["app", "lib", "lib"]
    assert rewrite(None, keep) is None


def test_a_rewrite_replaces_only_what_changed() -> None:
    data = collection()

    def drop_counters(resource: Resource, scope: InstrumentationScope, metrics: Sequence[Metric]) -> Sequence[Metric]:
        kept = [m for m in metrics if not isinstance(m.data, Sum)]
        return metrics if len(kept) == len(metrics) else kept

    rewritten = rewrite(data, drop_counters)
    assert rewritten is not None
    assert rewritten is not data
    assert [f.metric.name for f in walk(rewritten)] == ["a1", "b1"]
    assert rewritten.resource_metrics[1] is data.resource_metrics[1]  # untouched resources are kept as they are
    assert rewritten.resource_metrics[0].scope_metrics[1] is data.resource_metrics[0].scope_metrics[1]


def test_a_rewrite_of_the_resource_alone_changes_the_collection() -> None:
    data = collection()
    renamed = Resource({"service.name": "renamed"})

    def keep(resource: Resource, scope: InstrumentationScope, metrics: Sequence[Metric]) -> Sequence[Metric]:
        return metrics

    rewritten = rewrite(data, keep, lambda resource: renamed if resource is FIRST else resource)
    assert rewritten is not None
    assert [r.attributes.get("service.name") for r in resources(rewritten)][:2] == ["renamed", "b"]


def test_added_metrics_join_their_scope_of_the_first_resource_or_a_new_one() -> None:
    data = collection()
    into_app = add_metrics(data, [gauge("new")], APP, lambda: SECOND)
    assert [(f.resource, f.scope.name, f.metric.name) for f in walk(into_app)][:3] == [
        (FIRST, "app", "a1"),
        (FIRST, "app", "a2"),
        (FIRST, "app", "new"),
    ]
    own = InstrumentationScope("own")
    into_new = add_metrics(data, [gauge("mine")], own, lambda: SECOND)
    assert into_new is not None
    assert [s.scope.name for s in into_new.resource_metrics[0].scope_metrics] == ["app", "lib", "own"]
    assert add_metrics(data, [], own, lambda: SECOND) is data
    from_nothing = add_metrics(None, [gauge("alone")], own, lambda: SECOND)
    assert [(f.resource, f.scope.name, f.metric.name) for f in walk(from_nothing)] == [(SECOND, "own", "alone")]
