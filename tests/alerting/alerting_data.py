"""Building collected data by hand: what the pipeline's collect() returns, one step of a scenario at a time."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
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

from chat_turbo_metrics.alerting import AlertManager

CUMULATIVE = AggregationTemporality.CUMULATIVE
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class HistogramValue:
    """A cumulative histogram: count per bucket (not cumulative over buckets) and the sum."""

    counts: tuple[float, ...]
    sum: float


@dataclass
class MetricSpec:
    """One metric of a scenario: per label set, its value at each step (None: not reported at that step)."""

    name: str
    kind: str  # gauge, counter, histogram
    unit: str = ""
    bounds: tuple[float, ...] = ()
    series: dict[Labels, Sequence[Any]] = field(default_factory=dict)


def _number_point(labels: Labels, value: float, now_ns: int) -> NumberDataPoint:
    return NumberDataPoint(attributes=dict(labels), start_time_unix_nano=0, time_unix_nano=now_ns, value=value)


def _histogram_point(labels: Labels, value: HistogramValue, bounds: Sequence[float], now_ns: int) -> Any:
    count = int(sum(value.counts))
    return HistogramDataPoint(
        attributes=dict(labels),
        start_time_unix_nano=0,
        time_unix_nano=now_ns,
        count=count,
        sum=value.sum,
        bucket_counts=[int(c) for c in value.counts],
        explicit_bounds=list(bounds),
        min=0.0,
        max=0.0,
    )


def metric_at(spec: MetricSpec, step: int, now_ns: int) -> Metric | None:
    """The metric as collected at ``step`` (None when no series reports then)."""
    present = [(labels, values[step]) for labels, values in spec.series.items() if values[step] is not None]
    if not present:
        return None
    if spec.kind == "histogram":
        points: list[Any] = [_histogram_point(lb, v, spec.bounds, now_ns) for lb, v in present]
        data: Any = Histogram(data_points=points, aggregation_temporality=CUMULATIVE)
    else:
        points = [_number_point(lb, float(v), now_ns) for lb, v in present]
        data = (
            Gauge(data_points=points)
            if spec.kind == "gauge"
            else Sum(data_points=points, aggregation_temporality=CUMULATIVE, is_monotonic=True)
        )
    return Metric(name=spec.name, description="", unit=spec.unit, data=data)


def metrics_data(metrics: Sequence[Metric]) -> MetricsData:
    """Wrap metrics the way the SDK reader returns them."""
    scope = ScopeMetrics(scope=InstrumentationScope("test"), metrics=list(metrics), schema_url="")
    return MetricsData(resource_metrics=[ResourceMetrics(resource=Resource({}), scope_metrics=[scope], schema_url="")])


def data_at(specs: Sequence[MetricSpec], step: int, now: float) -> MetricsData:
    """Every metric of a scenario at one step."""
    metrics = [m for spec in specs if (m := metric_at(spec, step, int(now * 1e9))) is not None]
    return metrics_data(metrics)


def run_steps(
    manager: AlertManager, specs: Sequence[MetricSpec], steps: int, interval_s: float = 60.0
) -> list[dict[str, tuple[str, Mapping[str, str], Mapping[str, str]]]]:
    """Evaluate once per step; per step, fingerprint -> (state, labels, annotations) of each pending/firing alert."""
    states = []
    for step in range(steps):
        now = step * interval_s
        alerts = manager.evaluate_data(data_at(specs, step, now), now)
        states.append({a.fingerprint: (a.state, dict(a.labels), dict(a.annotations)) for a in alerts})
    return states


def states_by_name(states: Sequence[Mapping[str, tuple[str, Mapping[str, str], Any]]], key: Callable[..., str]) -> list:
    """Per step, a sorted list of (key(labels), state) for readable expectations."""
    return [sorted((key(labels), state) for state, labels, _ann in step.values()) for step in states]
