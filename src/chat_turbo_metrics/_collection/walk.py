"""The one walk over a collection (resource -> scope -> metric), read or rewritten, and the one way metrics join it.

A collected :class:`MetricsData` nests metrics in scopes in resources. Everything that reads one (the exporters,
the alert store, the self-telemetry, the pre-fork merge) reads it through :func:`walk`; everything that changes one
(the post-processing steps, the delta conversion) through :func:`rewrite`, which keeps what did not change (the
same objects, the same ``MetricsData`` when nothing changed at all); and metrics made at collection time (a
recorder's, the self-telemetry's) join it through :func:`add_metrics`.

Example:
    >>> monitor.increment_counter("jobs")
    >>> [(found.scope.name, found.metric.name) for found in walk(monitor.snapshot().data)]
    [('chat_turbo_metrics', 'jobs')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from opentelemetry.sdk.metrics.export import Metric, MetricsData, ResourceMetrics, ScopeMetrics
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

RewriteMetrics = Callable[[Resource, InstrumentationScope, Sequence[Metric]], Sequence[Metric]]


class Found(NamedTuple):
    """One metric of a collection, with the resource and the scope it belongs to."""

    resource: Resource
    scope: InstrumentationScope
    metric: Metric


def walk(data: MetricsData | None) -> Iterator[Found]:
    """Every metric of ``data`` (nothing for None), in order, with its resource and scope."""
    if data is None:
        return
    for resource_metrics in data.resource_metrics:
        resource = resource_metrics.resource
        for scope_metrics in resource_metrics.scope_metrics:
            scope = scope_metrics.scope
            for metric in scope_metrics.metrics:
                yield Found(resource, scope, metric)


def resources(data: MetricsData | None) -> Iterator[Resource]:
    """Every resource of ``data``, in order (including one with no metrics)."""
    if data is not None:
        yield from (resource_metrics.resource for resource_metrics in data.resource_metrics)


def _same(resource: Resource) -> Resource:
    return resource


def rewrite(
    data: MetricsData | None, metrics: RewriteMetrics, resource: Callable[[Resource], Resource] = _same
) -> MetricsData | None:
    """``data`` with each scope's metrics replaced by ``metrics(resource, scope, its metrics)`` and each resource by
    ``resource(it)``.

    A callback that changes nothing returns what it was given (the very object); then that part of ``data`` is kept
    as it is, and when nothing changed anywhere, ``data`` itself is returned.
    """
    if data is None:
        return None
    changed = False
    rewritten = []
    for resource_metrics in data.resource_metrics:
        scopes = []
        for scope_metrics in resource_metrics.scope_metrics:
            new = metrics(resource_metrics.resource, scope_metrics.scope, scope_metrics.metrics)
            if new is not scope_metrics.metrics:
                scope_metrics = ScopeMetrics(scope_metrics.scope, list(new), scope_metrics.schema_url)  # noqa: PLW2901
            scopes.append(scope_metrics)
        new_resource = resource(resource_metrics.resource)
        if new_resource is not resource_metrics.resource or any(
            new is not old for new, old in zip(scopes, resource_metrics.scope_metrics, strict=True)
        ):
            changed = True
            resource_metrics = ResourceMetrics(new_resource, scopes, resource_metrics.schema_url)  # noqa: PLW2901
        rewritten.append(resource_metrics)
    return MetricsData(rewritten) if changed else data


def add_metrics(
    data: MetricsData | None, metrics: Sequence[Metric], scope: InstrumentationScope, resource: Callable[[], Resource]
) -> MetricsData | None:
    """``data`` with ``metrics`` added to ``scope`` of its first resource (``resource()`` when it has none).

    The metrics go after those the scope already has; a scope it lacks is added after the others.
    """
    if not metrics:
        return data
    if data is None or not data.resource_metrics:
        own = resource()
        scope_metrics = ScopeMetrics(scope=scope, metrics=list(metrics), schema_url=scope.schema_url or "")
        return MetricsData([ResourceMetrics(resource=own, scope_metrics=[scope_metrics], schema_url=own.schema_url)])
    first, *others = data.resource_metrics
    scopes = list(first.scope_metrics)
    for index, scope_metrics in enumerate(scopes):
        if scope_metrics.scope.name == scope.name:
            scopes[index] = ScopeMetrics(
                scope_metrics.scope, [*scope_metrics.metrics, *metrics], scope_metrics.schema_url
            )
            break
    else:
        scopes.append(ScopeMetrics(scope=scope, metrics=list(metrics), schema_url=scope.schema_url or ""))
    return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *others])
