"""Values that rules read, from the pipeline's cumulative data: latest values and windowed statistics.

Each evaluation hands the collected :class:`MetricsData` to :class:`SeriesStore`, which keeps a short history
of cumulative points for the metrics that rules name, bounded in time (the longest window) and in count.
Windowed statistics are computed the way Prometheus computes ``rate``/``increase`` (extrapolated, counter
resets handled; Prometheus 2.x range semantics, both ends inclusive) and ``histogram_quantile``, so a rule
exported to PromQL reads the same number from the same samples.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._collection.exponential import explicit_buckets
from chat_turbo_metrics._collection.records import data_kind
from chat_turbo_metrics._collection.walk import walk
from chat_turbo_metrics._core.naming import Kind, counter_name, prometheus_label, prometheus_name

STALENESS_S = 300.0
"""How long the last sample of a series counts (Prometheus's lookback delta)."""


@dataclass(frozen=True)
class HistogramPoint:
    """A cumulative histogram (or span aggregate) at one moment."""

    count: float
    sum: float
    bounds: tuple[float, ...]
    counts: tuple[float, ...]  # per bucket, len(bounds) + 1; the last is (last bound, +Inf]
    max: float | None = None
    errors: float = 0.0
    slow: float = 0.0

    @functools.cached_property
    def cumulative(self) -> tuple[float, ...]:
        """Counts at or below each bound, +Inf last (Prometheus's ``le`` buckets)."""
        return tuple(itertools.accumulate(self.counts))


Point = float | HistogramPoint
SeriesKey = frozenset[tuple[str, str]]


@dataclass
class Series:
    """One label set of one metric: its labels and recent cumulative points."""

    labels: Mapping[str, str]
    points: deque[tuple[float, Point]]
    last_seen: float
    cache: dict[str, Any] = field(default_factory=dict)  # per rule: its alert labels for this series


@dataclass
class MetricHistory:
    """All series of one metric."""

    kind: str
    series: dict[SeriesKey, Series] = field(default_factory=dict)


def label_value(value: object) -> str:
    """An attribute value as a Prometheus label value (``True`` -> ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def aliases(name: str, unit: str, kind: str) -> set[str]:
    """Every name a rule may use for a metric: instrument name, Prometheus name, a timer's recording name."""
    names = {name}
    if kind in ("counter", "gauge", "histogram", "updowncounter"):
        prom_kind: Kind = kind  # type: ignore[assignment]
        names.add(prometheus_name(name, unit, prom_kind))
    if kind == "counter":
        names.add(f"{counter_name(name)}_total")
    if kind == "histogram" and unit == "s" and name.endswith("_duration"):
        names.add(name[: -len("_duration")])  # the timer `api_request` records `api_request_duration`
    return names


# Collected kind -> the kind rules read it as: an exponential histogram is read as the classic one it converts to.
_READ_KINDS = {
    "counter": "counter",
    "updowncounter": "updowncounter",
    "gauge": "gauge",
    "histogram": "histogram",
    "exponential_histogram": "histogram",
}


def _point(kind: str, data_point: Any) -> Point:
    if kind == "histogram":
        # An exponential point: its buckets as the classic ones they convert to; count, sum and max are its own.
        buckets = data_point if hasattr(data_point, "explicit_bounds") else explicit_buckets(data_point)
        return HistogramPoint(
            count=float(data_point.count),
            sum=float(data_point.sum),
            bounds=tuple(buckets.explicit_bounds),
            counts=tuple(float(c) for c in buckets.bucket_counts),
            max=float(data_point.max) if data_point.count else None,
        )
    return float(data_point.value)


class SeriesStore:
    """Recent cumulative points per series of the metrics that rules read; bounded in time and count.

    Example:
        >>> store = SeriesStore()
        >>> store.watch({"messages_sent_total"}, window_s=300, interval_s=60)
    """

    def __init__(self, *, staleness_s: float = STALENESS_S, forget_after_s: float = 3600.0) -> None:
        self.staleness_s = staleness_s
        self.forget_after_s = forget_after_s
        self.metrics: dict[str, MetricHistory] = {}  # by instrument (or span selector) name
        self._by_alias: dict[str, set[str]] = {}
        self._watched: frozenset[str] = frozenset()
        self._aliases: dict[tuple[str, str, str], set[str]] = {}
        self._window_s = 0.0
        self._max_points = 2

    def watch(self, names: Iterable[str], *, window_s: float, interval_s: float) -> None:
        """Keep history only for these names, long enough for ``window_s`` at one point per ``interval_s``."""
        self._watched = frozenset(names)
        self._window_s = window_s
        # +3: both window ends inclusive, plus slack for an irregular cycle; 10,000 caps a tiny interval.
        self._max_points = min(10_000, math.ceil(window_s / max(interval_s, 1e-3)) + 3)

    def ingest(self, data: MetricsData | None, now: float) -> None:
        """Add the points of one collection at ``now``; forget what is older than the longest window."""
        for found in walk(data):
            self._ingest_metric(found.metric, now)
        self._prune(now)

    def ingest_points(self, name: str, kind: str, points: Mapping[SeriesKey, Point], now: float) -> None:
        """Add points that do not come from MetricsData (the span processor's aggregates)."""
        history = self._history(name, kind)
        for key, point in points.items():
            self._append(history, key, point, now)

    def _ingest_metric(self, metric: Any, now: float) -> None:
        kind = _READ_KINDS.get(data_kind(metric.data) or "")
        if kind is None:
            return
        names = self._aliases.get((metric.name, metric.unit or "", kind))
        if names is None:
            names = aliases(metric.name, metric.unit or "", kind)
            self._aliases[(metric.name, metric.unit or "", kind)] = names
        if self._watched.isdisjoint(names):
            return
        history = self._history(metric.name, kind, names)
        for data_point in metric.data.data_points:
            attributes = data_point.attributes or {}
            key = frozenset((prometheus_label(k), label_value(v)) for k, v in attributes.items())
            self._append(history, key, _point(kind, data_point), now)

    def _history(self, name: str, kind: str, names: set[str] | None = None) -> MetricHistory:
        history = self.metrics.get(name)
        if history is None or history.kind != kind:
            history = self.metrics[name] = MetricHistory(kind)
            for alias in names or {name}:
                self._by_alias.setdefault(alias, set()).add(name)
        return history

    def _append(self, history: MetricHistory, key: SeriesKey, point: Point, now: float) -> None:
        series = history.series.get(key)
        if series is None:
            series = history.series[key] = Series(dict(key), deque(maxlen=self._max_points), now)
        elif series.points.maxlen != self._max_points:
            series.points = deque(series.points, maxlen=self._max_points)
        while series.points and series.points[-1][0] >= now:
            series.points.pop()  # the same instant again (the later wins), or the clock went back
        series.points.append((now, point))
        series.last_seen = now

    def _prune(self, now: float) -> None:
        oldest = now - self._window_s
        for history in self.metrics.values():
            for key in [k for k, s in history.series.items() if now - s.last_seen > self.forget_after_s]:
                del history.series[key]
            for series in history.series.values():
                points = series.points
                while points and points[0][0] < oldest:
                    points.popleft()

    def known_names(self) -> set[str]:
        """Every name (and alias) of every metric collected so far, watched by a rule or not."""
        return set().union(*self._aliases.values())

    def histories(self, metric: str) -> Iterator[MetricHistory]:
        """The histories a rule's metric name refers to (by any of its aliases)."""
        for name in self._by_alias.get(metric, ()):
            history = self.metrics.get(name)
            if history is not None:
                yield history


def window(series: Series, now: float, window_s: float) -> list[tuple[float, Point]]:
    """The points in ``[now - window_s, now]`` (both ends inclusive, like Prometheus 2.x)."""
    start = now - window_s
    return [(t, p) for t, p in series.points if start <= t <= now]


@dataclass(frozen=True)
class _Timing:
    """Where a window's samples sit in it: shared by every bucket of one histogram series."""

    to_start: float
    to_end: float
    sampled: float
    average: float
    factor_scale: float  # 1 for increase, 1 / range for rate


def _timing(times: Sequence[float], start: float, end: float, is_rate: bool) -> _Timing:
    sampled = times[-1] - times[0]
    return _Timing(
        times[0] - start, end - times[-1], sampled, sampled / (len(times) - 1), end - start if is_rate else 1
    )


def _extrapolate(values: Sequence[float], timing: _Timing) -> float:
    """Prometheus 2.x ``extrapolatedRate`` of one counter's values at ``timing``'s sample times."""
    first_v = values[0]
    result = values[-1] - first_v
    previous = 0.0
    for value in values:  # a drop is a counter reset: add what was counted before it
        if value < previous:
            result += previous
        previous = value
    to_start, sampled, average = timing.to_start, timing.sampled, timing.average
    if result > 0 and first_v >= 0:
        to_start = min(to_start, sampled * (first_v / result))  # a counter does not extrapolate below zero
    threshold = average * 1.1
    interval = sampled + (to_start if to_start < threshold else average / 2)
    interval += timing.to_end if timing.to_end < threshold else average / 2
    factor = interval / sampled
    if timing.factor_scale != 1:
        factor /= timing.factor_scale  # scaled before multiplying, as Prometheus does: the last bit agrees
    return result * factor


def extrapolated(samples: Sequence[tuple[float, float]], start: float, end: float, *, is_rate: bool) -> float | None:
    """Prometheus's ``increase``/``rate`` of a counter over ``[start, end]``: None with fewer than two samples."""
    if len(samples) < 2:
        return None
    timing = _timing([t for t, _v in samples], start, end, is_rate)
    return _extrapolate([v for _t, v in samples], timing)


def histogram_quantile(q: float, upper_bounds: Sequence[float], cumulative: Sequence[float]) -> float:
    """Prometheus's ``histogram_quantile`` over cumulative bucket counts (the last bound is +Inf)."""
    counts = list(cumulative)
    highest = -math.inf
    for i, count in enumerate(counts):  # rate() noise can break monotonicity; Prometheus evens it out
        if count > highest:
            highest = count
        elif count < highest:
            counts[i] = highest
    if len(counts) < 2 or counts[-1] == 0:
        return math.nan
    rank = q * counts[-1]
    b = next((i for i in range(len(counts) - 1) if counts[i] >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return upper_bounds[-2]
    if b == 0 and upper_bounds[0] <= 0:
        return upper_bounds[0]
    start, count = 0.0, counts[b]
    if b > 0:
        start = upper_bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (upper_bounds[b] - start) * (rank / count)


def _series_of(
    points: Sequence[tuple[float, Point]], pick: Callable[[HistogramPoint], float]
) -> list[tuple[float, float]]:
    return [(t, pick(p)) for t, p in points if isinstance(p, HistogramPoint)]


def bucket_rates(points: Sequence[tuple[float, Point]], start: float, end: float) -> Any:
    """Per ``le`` bucket, ``rate()`` over the window: ``(upper bounds, rates)``, or None without two samples."""
    last = points[-1][1]
    if not isinstance(last, HistogramPoint):
        return None
    same = [p for _t, p in points if isinstance(p, HistogramPoint) and p.bounds == last.bounds]
    if len(same) < 2:
        return None
    times = [t for t, p in points if isinstance(p, HistogramPoint) and p.bounds == last.bounds]
    timing = _timing(times, start, end, is_rate=True)
    bounds = (*last.bounds, math.inf)
    rates = [_extrapolate([p.cumulative[i] for p in same], timing) for i in range(len(bounds))]
    return bounds, rates


def _mean(points: list[tuple[float, Point]], start: float, end: float) -> float | None:
    total = extrapolated(_series_of(points, lambda p: p.sum), start, end, is_rate=True)
    count = extrapolated(_series_of(points, lambda p: p.count), start, end, is_rate=True)
    if total is None or count is None:
        return None
    return total / count if count else (math.nan if total == 0 else math.copysign(math.inf, total))


def _max(points: list[tuple[float, Point]], start: float, end: float) -> float | None:
    """The largest observation in the window: exact when it raised the running maximum, else a bound."""
    hist = [p for _t, p in points if isinstance(p, HistogramPoint)]
    if len(hist) < 2 or hist[-1].count == hist[0].count:
        return None
    first, last = hist[0], hist[-1]
    if last.max is not None and (first.max is None or last.max > first.max):
        return last.max
    bounds = (*last.bounds, math.inf)
    grown = [i for i in range(len(last.counts)) if i >= len(first.counts) or last.counts[i] > first.counts[i]]
    upper = bounds[grown[-1]] if grown else math.inf
    return min(upper, last.max) if last.max is not None else upper


def _difference(pick: Callable[[HistogramPoint], float]) -> Callable[[list[tuple[float, Point]], float, float], Any]:
    def compute(points: list[tuple[float, Point]], start: float, end: float) -> float | None:
        hist = [p for _t, p in points if isinstance(p, HistogramPoint)]
        return pick(hist[-1]) - pick(hist[0]) if len(hist) >= 2 else None

    return compute


def _error_rate(points: list[tuple[float, Point]], start: float, end: float) -> float | None:
    hist = [p for _t, p in points if isinstance(p, HistogramPoint)]
    if len(hist) < 2 or hist[-1].count == hist[0].count:
        return None
    return (hist[-1].errors - hist[0].errors) / (hist[-1].count - hist[0].count)


def _counter(is_rate: bool) -> Callable[[list[tuple[float, Point]], float, float], float | None]:
    def compute(points: list[tuple[float, Point]], start: float, end: float) -> float | None:
        samples = [(t, p if isinstance(p, float) else p.count) for t, p in points]
        return extrapolated(samples, start, end, is_rate=is_rate)

    return compute


# statistic -> function of the window's points, the window's start and end
WINDOWED: dict[str, Callable[[list[tuple[float, Point]], float, float], float | None]] = {
    "rate": _counter(is_rate=True),
    "increase": _counter(is_rate=False),
    "mean": _mean,
    "max": _max,
    "error_rate": _error_rate,
    "slow_count": _difference(lambda p: p.slow),
}


QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
_UNSET = object()


def statistic_value(
    series: Series,
    statistic: str,
    now: float,
    window_s: float,
    staleness_s: float,
    *,
    memo: dict[Any, Any] | None = None,
) -> float | None:
    """What a rule reads from one series at ``now``; None when there is nothing to read (no result in PromQL).

    ``memo`` shares the bucket rates of one series between its quantiles within one evaluation.
    """
    if statistic == "value":
        if not series.points or now - series.points[-1][0] > staleness_s:
            return None
        point = series.points[-1][1]
        return point if isinstance(point, float) else None
    points = window(series, now, window_s)
    if not points:
        return None
    if statistic in QUANTILES:
        key = (id(series), window_s)
        rates: Any = memo.get(key, _UNSET) if memo is not None else _UNSET
        if rates is _UNSET:
            rates = bucket_rates(points, now - window_s, now)
            if memo is not None:
                memo[key] = rates
        return None if rates is None else histogram_quantile(QUANTILES[statistic], *rates)
    return WINDOWED[statistic](points, now - window_s, now)
