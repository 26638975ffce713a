"""Merge the cumulative collections of several processes of one service into one ``MetricsData``.

A pre-fork server (gunicorn, ``uvicorn --workers``) runs one pipeline per worker; a scrape must show the service.
Each process's collection travels as a *state*: plain JSON-able data (see :func:`encode`), small enough to send over
a socket and to keep on disk for a worker that has exited. :func:`merge` adds the states up: sums (counters, up-down
counters) and histogram buckets, counts and sums are added, histogram min and max combined; the start time is the
earliest. Exponential histograms are added at the finer scale both can take (the coarser of the two, lowered further
while the buckets would span more than 160), as the SDK merges them. Gauges have no meaningful sum in general, so
each gauge follows a *mode* chosen per metric (:data:`GAUGE_MODES`). A *retired* state (:func:`retire`) accumulates
the sums and histograms of processes that have exited, so that the service's counters never go backwards when a
worker is recycled; their gauges are dropped, because a gauge of a process that is gone no longer describes
anything.

Example:
    >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
    >>> workers = [PerformanceMonitor(MonitoringConfig(metrics_exporters=())) for _ in range(2)]
    >>> for count, worker in enumerate(workers, start=2):
    ...     worker.increment_counter("jobs", value=count)
    >>> states = [(str(pid), encode(worker.pipeline.collect())) for pid, worker in enumerate(workers)]
    >>> merged = merge(states, retired=None, gauge_mode=lambda name: "sum")
    >>> merged.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0].value
    5
    >>> for worker in workers:
    ...     worker.shutdown()
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Buckets,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics._collection.walk import resources, walk
from chat_turbo_metrics._core.config import GAUGE_MODES
from chat_turbo_metrics._pipeline.health import PREFIX as HEALTH_PREFIX

_logger = logging.getLogger("chat_turbo_metrics.multiprocess")

State = dict[str, Any]
GaugeMode = Callable[[str], str]
# GAUGE_MODES: how a gauge of several processes becomes one value: added up, the largest, the smallest, the
# most recently set, or one series per process labelled ``process.pid`` (Prometheus ``process_pid``).
WORKER_LABEL = "process.pid"
# Per-process resource attributes: in a merged scrape they would describe one process as the service.
_PER_PROCESS_RESOURCE = ("service.instance.id", "process.pid")
_CUMULATIVE = AggregationTemporality.CUMULATIVE


DEFAULT_GAUGE_MODE = "sum"


def gauge_modes(modes: Mapping[str, str]) -> GaugeMode:
    """The gauge mode of a metric: its exact entry in ``modes``, else the first matching pattern, else ``"*"``.

    Example:
        >>> mode = gauge_modes({"cpu_*": "max", "*": "latest"})
        >>> mode("cpu_percent"), mode("depth"), mode("chat_turbo_metrics_queue_depth")
        ('max', 'latest', 'sum')
    """
    table = dict(modes)

    def mode_of(name: str) -> str:
        mode = table.get(name)
        if mode is not None:
            return mode
        for pattern, found in table.items():
            if pattern != "*" and fnmatchcase(name, pattern):
                return found
        if name.startswith(HEALTH_PREFIX):
            return "sum"  # the service's queue depths and series are its workers' together, whatever "*" says
        return table.get("*", DEFAULT_GAUGE_MODE)

    return mode_of


# --- MetricsData <-> state ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _attrs_out(attributes: Any) -> dict[str, Any]:
    return {str(key): _plain(value) for key, value in (attributes or {}).items()}


def _attrs_in(attributes: dict[str, Any]) -> dict[str, Any]:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in attributes.items()}


def _distribution_head(point: Any) -> list[Any]:
    """What an encoded histogram point of either kind starts with: attributes, start, time, count, sum."""
    return [_attrs_out(point.attributes), point.start_time_unix_nano, point.time_unix_nano, point.count, point.sum]


def _encode_metric(scope: InstrumentationScope, metric: Metric) -> dict[str, Any] | None:
    data = metric.data
    entry: dict[str, Any] = {
        "scope": [scope.name, scope.version or ""],
        "name": metric.name,
        "description": metric.description or "",
        "unit": metric.unit or "",
    }
    if isinstance(data, Sum):
        if data.aggregation_temporality != _CUMULATIVE:
            return None  # only cumulative sums can be added across processes
        entry["type"], entry["monotonic"] = "sum", bool(data.is_monotonic)
        entry["points"] = [
            [_attrs_out(p.attributes), p.start_time_unix_nano, p.time_unix_nano, p.value] for p in data.data_points
        ]
    elif isinstance(data, Histogram):
        if data.aggregation_temporality != _CUMULATIVE:
            return None
        entry["type"] = "histogram"
        entry["points"] = [
            [
                *_distribution_head(p),
                list(p.bucket_counts),
                list(p.explicit_bounds),
                p.min,
                p.max,
                *_exemplars_out(p),
            ]
            for p in data.data_points
        ]
    elif isinstance(data, Gauge):
        entry["type"] = "gauge"
        entry["points"] = [[_attrs_out(p.attributes), p.time_unix_nano, p.value] for p in data.data_points]
    elif isinstance(data, ExponentialHistogram):
        if data.aggregation_temporality != _CUMULATIVE:
            return None
        entry["type"] = "exponential"
        entry["points"] = [
            [
                *_distribution_head(p),
                p.scale,
                p.zero_count,
                *_trimmed(p.positive.offset, p.positive.bucket_counts),
                *_trimmed(p.negative.offset, p.negative.bucket_counts),
                p.min,
                p.max,
            ]
            for p in data.data_points
        ]
    else:
        return None
    return entry


# Most buckets a merged exponential histogram keeps per sign: the SDK's default max_size.
EXPONENTIAL_MAX_SIZE = 160


def _trimmed(offset: int, counts: Sequence[int]) -> tuple[int, list[int]]:
    """Buckets without their empty ends (the SDK hands out its whole backing array)."""
    used = [index for index, count in enumerate(counts) if count]
    if not used:
        return 0, []
    return offset + used[0], list(counts[used[0] : used[-1] + 1])


def _sparse(offset: int, counts: Sequence[int], lower_by: int) -> dict[int, int]:
    """Bucket index -> count, at a scale ``lower_by`` below the buckets' own (each step merges pairs)."""
    buckets: dict[int, int] = {}
    for position, count in enumerate(counts):
        if count:
            index = (offset + position) >> lower_by
            buckets[index] = buckets.get(index, 0) + count
    return buckets


def _span(buckets: dict[int, int]) -> int:
    return max(buckets) - min(buckets) + 1 if buckets else 0


def _dense(buckets: dict[int, int]) -> tuple[int, list[int]]:
    if not buckets:
        return 0, []
    low = min(buckets)
    return low, [buckets.get(index, 0) for index in range(low, max(buckets) + 1)]


def _add_exponential(family: _Family, point: list[Any], member: str) -> None:
    attrs, start, time, count, total, scale, zero, p_offset, p_counts, n_offset, n_counts, low, high = point
    key = _series_key(attrs)
    found = family.series.get(key)
    if found is None:
        family.series[key] = [attrs, start, time, count, total, scale, zero, p_offset, list(p_counts)]
        family.series[key] += [n_offset, list(n_counts), low, high]
        return
    merged_scale = min(scale, found[5])
    sides = []
    for (our_offset, our_counts), theirs in (
        ((found[7], found[8]), (p_offset, p_counts)),
        ((found[9], found[10]), (n_offset, n_counts)),
    ):
        buckets = _sparse(our_offset, our_counts, found[5] - merged_scale)
        for index, n in _sparse(*theirs, scale - merged_scale).items():
            buckets[index] = buckets.get(index, 0) + n
        sides.append(buckets)
    while max(map(_span, sides)) > EXPONENTIAL_MAX_SIZE:  # too wide: one scale coarser halves the span
        merged_scale -= 1
        sides = [_sparse(*_dense(buckets), 1) for buckets in sides]
    found[1], found[2] = min(found[1], start), max(found[2], time)
    found[3] += count
    found[4] += total
    found[5] = merged_scale
    found[6] += zero
    found[7:11] = [*_dense(sides[0]), *_dense(sides[1])]
    found[11], found[12] = min(found[11], low), max(found[12], high)


def encode(data: MetricsData | None) -> State:
    """The plain, JSON-able state of a cumulative collection (``{"resource": ..., "metrics": [...]}``)."""
    state: State = {"resource": {}, "metrics": []}
    for resource in resources(data):
        if not state["resource"]:
            state["resource"] = _attrs_out(resource.attributes)
    for found in walk(data):
        entry = _encode_metric(found.scope, found.metric)
        if entry is not None:
            state["metrics"].append(entry)
    return state


# --- merging --------------------------------------------------------------------------------------


def _series_key(attributes: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((key, type(value).__name__, _hashable(value)) for key, value in attributes.items()))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class _Family:
    """One metric of the merged output: its description and its series by attribute set."""

    __slots__ = ("entry", "series")

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry
        self.series: dict[tuple[Any, ...], list[Any]] = {}


def _add_sum(family: _Family, point: list[Any], member: str) -> None:
    attrs, start, time, value = point
    key = _series_key(attrs)
    found = family.series.get(key)
    if found is None:
        family.series[key] = [attrs, start, time, value]
    else:
        found[1], found[2], found[3] = min(found[1], start), max(found[2], time), found[3] + value


def _exemplars_out(point: HistogramDataPoint) -> list[list[list[Any]]]:
    """A point's exemplars as the optional 10th field of an encoded histogram point (none: no field)."""
    exemplars = getattr(point, "exemplars", None)
    if not exemplars:
        return []
    return [[[e.value, e.time_unix_nano, e.trace_id or 0, e.span_id or 0] for e in exemplars]]


def _exemplars_in(encoded: list[list[Any]], bounds: Sequence[float]) -> list[Exemplar]:
    """The latest exemplar of each bucket among every process's (what a scrape shows per bucket)."""
    latest: dict[int, list[Any]] = {}
    for exemplar in encoded:
        index = bisect_left(bounds, exemplar[0])
        if index not in latest or exemplar[1] >= latest[index][1]:
            latest[index] = exemplar
    return [Exemplar({}, v, t, span or None, trace or None) for _, (v, t, trace, span) in sorted(latest.items())]


def _add_histogram(family: _Family, point: list[Any], member: str) -> None:
    attrs, start, time, count, total, counts, bounds, low, high = point[:9]
    exemplars = point[9] if len(point) > 9 else None  # a 10th field: exemplars (states of older versions: none)
    key = _series_key(attrs)
    found = family.series.get(key)
    if found is None:
        family.series[key] = [attrs, start, time, count, total, list(counts), list(bounds), low, high]
        if exemplars:
            family.series[key].append(list(exemplars))
        return
    if list(bounds) != found[6]:
        _warn_once(family.entry["name"], "histogram bucket boundaries differ between processes; one was left out")
        return
    found[1], found[2] = min(found[1], start), max(found[2], time)
    found[3] += count
    found[4] += total
    found[5] = [a + b for a, b in zip(found[5], counts, strict=False)]
    found[7], found[8] = min(found[7], low), max(found[8], high)
    if exemplars:
        if len(found) > 9:
            found[9] = found[9] + list(exemplars)
        else:
            found.append(list(exemplars))


def _add_gauge(family: _Family, point: list[Any], member: str) -> None:
    attrs, time, value = point
    family.series.setdefault(_series_key(attrs), [attrs, []])[1].append((member, time, value))


_ADD = {"sum": _add_sum, "histogram": _add_histogram, "exponential": _add_exponential, "gauge": _add_gauge}
_warned: set[tuple[str, str]] = set()


def _warn_once(name: str, why: str) -> None:
    if (name, why) not in _warned and len(_warned) < 1000:
        _warned.add((name, why))
        _logger.warning("%s: %s", name, why)


def _families(states: Iterable[tuple[str, State]], *, gauges: bool = True) -> dict[tuple[str, str], _Family]:
    families: dict[tuple[str, str], _Family] = {}
    for member, state in states:
        for entry in state.get("metrics", ()):
            kind = entry["type"]
            if kind == "gauge" and not gauges:
                continue
            key = (entry["scope"][0], entry["name"])
            family = families.get(key)
            if family is None:
                family = families[key] = _Family({k: v for k, v in entry.items() if k != "points"})
            elif family.entry["type"] != kind:
                _warn_once(entry["name"], f"recorded as {family.entry['type']} and as {kind} by different processes")
                continue
            add = _ADD[kind]
            for point in entry["points"]:
                add(family, point, member)
    return families


def _gauge_points(values: list[Any], mode: str) -> list[tuple[dict[str, Any], int, Any]]:
    attrs, seen = values
    mode = mode if mode in GAUGE_MODES else "sum"
    if mode == "worker":
        return [({**attrs, WORKER_LABEL: _member_pid(member)}, time, value) for member, time, value in seen]
    time = max(t for _, t, _ in seen)
    if mode == "latest":
        return [(attrs, time, max(seen, key=lambda item: item[1])[2])]
    numbers = [value for _, _, value in seen]
    reduced = sum(numbers) if mode == "sum" else max(numbers) if mode == "max" else min(numbers)
    return [(attrs, time, reduced)]


def _member_pid(member: str) -> int | str:
    head = member.split("-", 1)[0]
    return int(head) if head.isdigit() else member


def _families_state(families: dict[tuple[str, str], _Family]) -> list[dict[str, Any]]:
    return [{**family.entry, "points": list(family.series.values())} for family in families.values()]


def retire(retired: State | None, final: State) -> State:
    """Fold the final state of an exited process into the retired accumulation (gauges are dropped)."""
    states = [("retired", retired)] if retired else []
    states.append(("final", final))
    metrics = _families_state(_families(states, gauges=False))
    for entry in metrics:  # exemplars point at a gone process's traces: the live processes' are kept, not these
        if entry["type"] == "histogram":
            entry["points"] = [point[:9] for point in entry["points"]]
    return {"resource": {}, "metrics": metrics}


# The scope whose series leave a process's collection only when evicted as idle (METRICS_SERIES_IDLE_TIMEOUT);
# elsewhere a missing series may be an observable callback that skipped a cycle and comes back unchanged.
EVICTING_SCOPE = "chat_turbo_metrics"


def _present(state: State) -> dict[tuple[str, str], dict[tuple[Any, ...], Any]]:
    """(scope, metric) -> series key -> start time (None for gauges) of every series in ``state``."""
    present: dict[tuple[str, str], dict[tuple[Any, ...], Any]] = {}
    for entry in state.get("metrics", ()):
        starts = present.setdefault((entry["scope"][0], entry["name"]), {})
        gauge = entry["type"] == "gauge"
        starts.update((_series_key(point[0]), None if gauge else point[1]) for point in entry["points"])
    return present


def vanished(before: State, after: State) -> State | None:
    """The sums and histograms of our scope that a live process reported ``before`` and no longer does, or
    reports with another start time (evicted, then recorded again: a new stream starting from zero).

    That process evicted them as idle; folded into the retired state (:func:`retire`) they keep the
    service's counters from going backwards while other processes still report the same series.

    Example:
        >>> point = [{"queue": "a"}, 1, 2, 5]
        >>> entry = {"scope": [EVICTING_SCOPE, ""], "name": "jobs", "type": "sum", "points": [point]}
        >>> vanished({"metrics": [entry]}, {"metrics": []})["metrics"][0]["points"]
        [[{'queue': 'a'}, 1, 2, 5]]
    """
    present = _present(after)
    metrics = []
    for entry in before.get("metrics", ()):
        if entry["type"] == "gauge" or entry["scope"][0] != EVICTING_SCOPE:
            continue
        starts = present.get((entry["scope"][0], entry["name"]), {})
        points = [point for point in entry["points"] if starts.get(_series_key(point[0]), -1) != point[1]]
        if points:
            metrics.append({**entry, "points": points})
    return {"resource": {}, "metrics": metrics} if metrics else None


def fold_vanished(retired: State | None, before: State | None, after: State) -> tuple[State | None, bool]:
    """``retired`` with what a live process stopped reporting between two answers; whether anything was."""
    gone = vanished(before, after) if before is not None else None
    return (retire(retired, gone), True) if gone else (retired, False)


def prune(
    retired: State | None, live: Sequence[tuple[str, State]], now_ns: int, idle_ns: int
) -> tuple[State | None, bool]:
    """``retired`` without the series of our scope that no live process reports and that were last reported
    ``idle_ns`` or longer ago (idle across the whole service, they leave the scrape and memory); whether any."""
    if not retired:
        return retired, False
    present: dict[tuple[str, str], set[tuple[Any, ...]]] = {}
    for _, state in live:
        for name, starts in _present(state).items():
            present.setdefault(name, set()).update(starts)
    metrics = []
    for entry in retired["metrics"]:
        keys = present.get((entry["scope"][0], entry["name"]), set())
        points = [
            point
            for point in entry["points"]
            if entry["scope"][0] != EVICTING_SCOPE or now_ns - point[2] < idle_ns or _series_key(point[0]) in keys
        ]
        if points:
            metrics.append({**entry, "points": points})
    removed = sum(len(e["points"]) for e in retired["metrics"]) - sum(len(e["points"]) for e in metrics)
    return ({**retired, "metrics": metrics}, True) if removed else (retired, False)


def _metric(family: _Family, gauge_mode: GaugeMode) -> Metric:
    entry = family.entry
    data: Any
    if entry["type"] == "sum":
        points = [NumberDataPoint(_attrs_in(a), s, t, v) for a, s, t, v in family.series.values()]
        data = Sum(data_points=points, aggregation_temporality=_CUMULATIVE, is_monotonic=entry["monotonic"])
    elif entry["type"] == "histogram":
        data = Histogram(
            data_points=[
                HistogramDataPoint(
                    _attrs_in(a), s, t, n, total, tuple(c), tuple(b), lo, hi, _exemplars_in(ex[0], b) if ex else []
                )
                for a, s, t, n, total, c, b, lo, hi, *ex in family.series.values()
            ],
            aggregation_temporality=_CUMULATIVE,
        )
    elif entry["type"] == "exponential":
        data = ExponentialHistogram(
            data_points=[
                ExponentialHistogramDataPoint(
                    attributes=_attrs_in(a),
                    start_time_unix_nano=s,
                    time_unix_nano=t,
                    count=n,
                    sum=total,
                    scale=scale,
                    zero_count=zero,
                    positive=Buckets(offset=p_offset, bucket_counts=list(p_counts)),
                    negative=Buckets(offset=n_offset, bucket_counts=list(n_counts)),
                    flags=0,
                    min=lo,
                    max=hi,
                )
                for a, s, t, n, total, scale, zero, p_offset, p_counts, n_offset, n_counts, lo, hi in (
                    family.series.values()
                )
            ],
            aggregation_temporality=_CUMULATIVE,
        )
    else:
        mode = gauge_mode(entry["name"])
        data = Gauge(
            data_points=[
                NumberDataPoint(_attrs_in(attrs), None, time, value)  # type: ignore[arg-type]
                for values in family.series.values()
                for attrs, time, value in _gauge_points(values, mode)
            ]
        )
    return Metric(name=entry["name"], description=entry["description"], unit=entry["unit"], data=data)


def merge(
    states: Sequence[tuple[str, State]],
    retired: State | None,
    gauge_mode: GaugeMode,
    resource: Resource | None = None,
) -> MetricsData:
    """One ``MetricsData`` for the whole service.

    Args:
        states: ``(member id, state)`` of every live process; a member id starts with its pid.
        retired: the accumulated sums and histograms of processes that have exited, or None.
        gauge_mode: the mode (one of :data:`GAUGE_MODES`) for a gauge, by metric name.
        resource: the service's resource; defaults to the first state's, without per-process attributes.

    Returns:
        The merged collection, one resource, metrics grouped by instrumentation scope.
    """
    everything = [*([("retired", retired)] if retired else []), *states]
    families = _families(everything)
    if resource is None:
        attributes: dict[str, Any] = next((s["resource"] for _, s in states if s.get("resource")), {})
        resource = Resource(_attrs_in(attributes))
    if len(states) + (1 if retired else 0) > 1:
        kept = {k: v for k, v in resource.attributes.items() if k not in _PER_PROCESS_RESOURCE}
        resource = Resource(kept, resource.schema_url)
    scopes: dict[tuple[str, str], list[Metric]] = {}
    for family in families.values():
        scopes.setdefault(tuple(family.entry["scope"]), []).append(_metric(family, gauge_mode))
    scope_metrics = [
        ScopeMetrics(InstrumentationScope(name, version or None), metrics, "")
        for (name, version), metrics in scopes.items()
    ]
    resource_metrics = ResourceMetrics(resource=resource, scope_metrics=scope_metrics, schema_url="")
    return MetricsData(resource_metrics=[resource_metrics])
