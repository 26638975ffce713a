"""The fast path's aggregation state: cells, the streams the Views make of an instrument, and their fold.

The fast path (:mod:`chat_turbo_metrics._recording.fast`) updates *cells* at the call and is read only when
something collects. This module holds what the SDK's ``_ViewInstrumentMatch`` and synchronous aggregations would
do with the same measurements: the streams the configured Views make of an instrument (matched the way the SDK
matches them), each stream's series under the View's attribute filter and the cardinality limit (with the SDK's
overflow series), and the fold of each cell's delta into its cumulative total exactly as the SDK folds it. The
resulting metrics join the SDK's collection in the ``chat_turbo_metrics`` scope (``Pipeline.add_producer``), so
every exporter receives one ``MetricsData`` whatever recorded it.

Cells are small slotted objects (:class:`SumCell`, :class:`GaugeCell`, :class:`HistogramCell`): a named
field costs the hot path what a list index did (CPython specialises both), and reads as what it is.
Bucket counts are integers, so they are kept cumulative; sum, min and max fold like the SDK's.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal, Protocol

from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import Attributes

from chat_turbo_metrics._core.config import ViewConfig
from chat_turbo_metrics._core.version import __version__
from chat_turbo_metrics._recording.instruments import InstrumentSpec

Aggregation = Literal["sum", "gauge", "histogram", "drop"]


class OverflowReport(Protocol):
    """Counts measurements that went to a metric's overflow series (the pipeline's ``Overflow``)."""

    def report(self, metric: str, count: int = 1) -> None: ...


class SumCell:
    """A sum series: ``delta`` is added to at the call and folded into ``total`` at each collection."""

    __slots__ = ("active_ns", "attributes", "delta", "keys", "mark", "start_ns", "total")

    active_ns: int
    mark: int
    keys: list[tuple[dict[Any, Any], Any]] | None

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.delta: Any = 0
        self.total: Any = 0
        self.start_ns = _time_ns()
        self.attributes = attributes
        _idle_state(self)


class GaugeCell:
    """A gauge series: the last value set, and the value the last collection read (``folded``)."""

    __slots__ = ("active_ns", "attributes", "folded", "keys", "mark", "value")

    active_ns: int
    mark: int
    keys: list[tuple[dict[Any, Any], Any]] | None

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.value: Any = 0
        self.folded: Any = _UNREAD
        self.attributes = attributes
        _idle_state(self)


class HistogramCell:
    """A histogram series: cumulative bucket ``counts``; ``sum``/``min``/``max`` since the last collection,
    folded into the ``total_*`` fields at each collection.

    ``pending`` holds observations a bound handle made outside a span, not yet in the buckets: appending is all such
    an observation costs the application (see :func:`fold_pending`); whatever reads the cell folds them first.
    """

    __slots__ = (
        "active_ns",
        "attributes",
        "bounds",
        "counts",
        "exemplars",
        "keys",
        "mark",
        "max",
        "min",
        "pending",
        "start_ns",
        "sum",
        "total_max",
        "total_min",
        "total_sum",
    )

    active_ns: int
    mark: int
    keys: list[tuple[dict[Any, Any], Any]] | None

    def __init__(self, bounds: tuple[float, ...], attributes: dict[str, Any]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum: Any = 0
        self.min: Any = _INF
        self.max: Any = -_INF
        self.total_sum: Any = 0
        self.total_min: Any = _INF
        self.total_max: Any = -_INF
        self.start_ns = _time_ns()
        self.attributes = attributes
        # Per bucket, the latest (value, time ns, trace id, span id) observed in a sampled span; None until one.
        self.exemplars: list[tuple[float, int, int, int] | None] | None = None
        self.pending: list[Any] = []  # one list for the cell's life: handles append to it without the lock
        _idle_state(self)


# Observations a cell holds unfolded at most: a handle that reaches this folds them itself (a few µs, once per
# this many calls), so a series nothing collects holds a bounded list (about 1 kB at the most).
FOLD_AT = 32


def fold_pending(cell: HistogramCell) -> None:
    """Put the cell's pending observations into its buckets, sum, min and max. Call with the recorder's lock held.

    The application's thread only appends (atomic), so the values are taken as a slice and deleted as one: an
    observation appended meanwhile stays for the next fold. Folding a batch in one loop costs a fraction of updating
    the cell at each call, which inside an application's request runs on cold caches (``bench/bench_instrumentors.py
    drivers``, "psycopg2 wrapper, one observation": the handle's update added about 2.3 µs to a statement's CPU).

    Example:
        >>> cell = HistogramCell((1.0, 10.0), {})
        >>> cell.pending.extend([0.5, 5, 50])
        >>> fold_pending(cell)
        >>> cell.counts, cell.sum, cell.min, cell.max, cell.pending
        ([1, 1, 1], 55.5, 0.5, 50, [])
    """
    pending = cell.pending
    taken = len(pending)
    if not taken:
        return
    values = pending[:taken]
    del pending[:taken]
    counts, bounds = cell.counts, cell.bounds
    total, low, high = cell.sum, cell.min, cell.max
    for value in values:
        counts[bisect_left(bounds, value)] += 1
        total += value
        if value < low:  # noqa: PLR1730 - cheaper than min() in the loop
            low = value
        if value > high:  # noqa: PLR1730
            high = value
    cell.sum, cell.min, cell.max = total, low, high


def exemplars_of(cell: HistogramCell) -> list[Exemplar]:
    """The cell's exemplars, as the SDK's data points carry them (bucket order)."""
    kept = cell.exemplars
    if not kept:
        return []
    return [Exemplar({}, value, at, span_id, trace_id) for value, at, trace_id, span_id in filter(None, list(kept))]


def _idle_state(cell: Any) -> None:
    """What idle-series eviction (:mod:`chat_turbo_metrics._recording.idle`) keeps on every cell: the
    collection time it was last seen in use (0: used since the last collection), its eviction state, and the
    hot-path cache keys that lead to it (kept only while eviction is on)."""
    cell.active_ns = 0
    cell.mark = 0
    cell.keys = None


Cell = SumCell | GaugeCell | HistogramCell
_INF = math.inf
_UNREAD: Any = object()  # a gauge cell no collection has read yet
_CUMULATIVE = AggregationTemporality.CUMULATIVE
_time_ns = time.time_ns

# The scope the SDK path's meter has (Pipeline.meter), so both paths export under the same one.
SCOPE = InstrumentationScope("chat_turbo_metrics", __version__)

# The SDK's default explicit bucket boundaries (used when neither a View nor the instrument advises any).
DEFAULT_BOUNDARIES: tuple[float, ...] = (
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0,
)  # fmt: skip
NATURAL: dict[str, Aggregation] = {
    "counter": "sum",
    "updowncounter": "sum",
    "gauge": "gauge",
    "histogram": "histogram",
}


@dataclass(frozen=True)
class StreamSpec:
    """One exported metric of one instrument: the instrument after one matching View (or none).

    Example:
        >>> spec = InstrumentSpec("jobs", "counter", "", "Jobs done.")
        >>> stream_specs(spec, ())[0].aggregation
        'sum'
    """

    name: str
    description: str
    unit: str
    aggregation: Aggregation
    monotonic: bool
    bounds: tuple[float, ...] = ()
    attribute_keys: frozenset[str] | None = None


def stream_specs(spec: InstrumentSpec, views: Sequence[ViewConfig]) -> tuple[StreamSpec, ...]:
    """The streams the SDK would make for ``spec``: one per matching View, else one default stream.

    Matching follows the SDK: the pattern is matched case-insensitively against the lower-cased
    instrument name; a View's name and description replace the instrument's when set (non-empty).
    """
    name = spec.name.lower()
    matched = [view for view in views if fnmatchcase(name, view.instrument.lower())]
    if not matched:
        return (_stream(spec, None),)
    return tuple(_stream(spec, view) for view in matched)


def _stream(spec: InstrumentSpec, view: ViewConfig | None) -> StreamSpec:
    aggregation = NATURAL[spec.kind]
    bounds: tuple[float, ...] = ()
    if view is not None and view.drop:
        aggregation = "drop"
    elif view is not None and view.buckets is not None:
        aggregation, bounds = "histogram", tuple(view.buckets)
    elif aggregation == "histogram":
        advice = spec.buckets
        # The SDK ignores bucket advice that is not all numbers (and uses its defaults).
        usable = advice is not None and all(isinstance(bound, (int, float)) for bound in advice)
        bounds = tuple(advice) if usable and advice is not None else DEFAULT_BOUNDARIES
    keys = view.attribute_keys if view is not None else None
    return StreamSpec(
        name=(view.name if view is not None and view.name else None) or spec.name.lower(),
        description=(view.description if view is not None and view.description else None) or spec.description,
        unit=spec.unit,
        aggregation=aggregation,
        monotonic=spec.kind == "counter",
        bounds=bounds,
        attribute_keys=frozenset(keys) if keys is not None else None,
    )


def bounds_problem(bounds: Sequence[float]) -> str | None:
    """Why the SDK would refuse these bucket boundaries (it raises on the first measurement), or None."""
    for index, bound in enumerate(bounds):
        if not isinstance(bound, (int, float)) or not math.isfinite(bound):
            return f"invalid bucket boundary {bound!r}"
        if index and bounds[index - 1] >= bound:
            return "bucket boundaries must be strictly increasing"
    return None


AttributesKey = tuple[tuple[str, type, object], ...]


def attributes_key(attributes: Attributes | Mapping[str, object]) -> AttributesKey:
    """The SDK's identity of an attribute set: key order ignored, ``1``, ``1.0`` and ``True`` kept apart.

    Example:
        >>> attributes_key({"b": 1, "a": "x"}) == attributes_key({"a": "x", "b": 1})
        True
        >>> attributes_key({"a": 1}) == attributes_key({"a": True})
        False
    """
    if not attributes:
        return ()
    # The SDK stores sequence values as tuples; a list from elsewhere would make the key unhashable.
    return tuple(sorted((k, type(v), tuple(v) if isinstance(v, list) else v) for k, v in attributes.items()))


_OVERFLOW_ATTRIBUTES = {"otel.metric.overflow": True}  # what the SDK labels the overflow series with


_OVERFLOW_KEY = attributes_key(_OVERFLOW_ATTRIBUTES)


def _add(cell: Any, value: Any) -> None:
    cell.delta += value


def _set(cell: Any, value: Any) -> None:
    cell.value = value


def _observe(cell: Any, value: Any) -> None:
    cell.counts[bisect_left(cell.bounds, value)] += 1
    cell.sum += value
    cell.min = min(cell.min, value)
    cell.max = max(cell.max, value)


AGGREGATE: dict[str, Callable[[Any, Any], None]] = {"sum": _add, "gauge": _set, "histogram": _observe}


def new_cell(aggregation: str, bounds: tuple[float, ...], attributes: dict[str, Any]) -> Cell:
    """An empty cell of an aggregation; sums and histograms start their cumulative time now."""
    if aggregation == "sum":
        return SumCell(attributes)
    if aggregation == "gauge":
        return GaugeCell(attributes)
    return HistogramCell(bounds, attributes)


class Stream:
    """One exported metric: its series (attribute set -> cell) under the View's filter and the cardinality limit."""

    __slots__ = ("limit", "overflow", "series", "spec")

    def __init__(self, spec: StreamSpec, limit: int, overflow: OverflowReport | None = None) -> None:
        self.spec = spec
        self.limit = limit
        self.overflow = overflow
        self.series: dict[tuple[Any, ...], Cell] = {}

    def cell(self, tags: Mapping[str, Any]) -> tuple[Cell, bool]:
        """The cell for ``tags`` (created if new) and whether it is the tag set's own (not the overflow). Locked."""
        keys = self.spec.attribute_keys
        attributes = dict(tags) if keys is None else {k: v for k, v in tags.items() if k in keys}
        key = attributes_key(attributes)
        cell = self.series.get(key)
        if cell is not None:
            cell.active_ns = 0  # in use: idle-series eviction keeps it (and a demoted cell comes back)
            return cell, key != _OVERFLOW_KEY
        if len(self.series) < self.limit:
            cell = self.series[key] = new_cell(self.spec.aggregation, self.spec.bounds, attributes)
            return cell, True
        # Like the SDK: past the limit, new attribute sets share one extra series. Counted here, on the slow
        # path: an overflowing tag set is never cached, so each of its measurements comes this way.
        if self.overflow is not None:
            self.overflow.report(self.spec.name)
        cell = self.series.get(_OVERFLOW_KEY)
        if cell is None:
            cell = new_cell(self.spec.aggregation, self.spec.bounds, dict(_OVERFLOW_ATTRIBUTES))
            self.series[_OVERFLOW_KEY] = cell
        return cell, False

    def metric(self, now: int, lock: AbstractContextManager[Any]) -> Metric | None:
        """The cumulative metric now, folding each cell's delta into its total like the SDK's aggregations."""
        spec = self.spec
        data: Any
        with lock:
            cells: list[Any] = list(self.series.values())
            if not cells:
                return None
            if spec.aggregation == "sum":
                folded = []
                for cell in cells:
                    total = cell.total = cell.delta + cell.total
                    cell.delta = 0
                    folded.append((cell.attributes, cell.start_ns, total))
            elif spec.aggregation == "gauge":
                gauges = []
                for cell in cells:
                    value = cell.folded = cell.value
                    gauges.append((cell.attributes, value))
            else:
                histograms = []
                for cell in cells:
                    fold_pending(cell)
                    sum_ = cell.total_sum = cell.sum + cell.total_sum
                    min_ = cell.total_min = min(cell.min, cell.total_min)
                    max_ = cell.total_max = max(cell.max, cell.total_max)
                    cell.sum, cell.min, cell.max = 0, _INF, -_INF
                    histograms.append(
                        (cell.attributes, cell.start_ns, tuple(cell.counts), sum_, min_, max_, exemplars_of(cell))
                    )
        if spec.aggregation == "sum":
            points = [NumberDataPoint(a, s, now, v) for a, s, v in folded]
            data = Sum(data_points=points, aggregation_temporality=_CUMULATIVE, is_monotonic=spec.monotonic)
        elif spec.aggregation == "gauge":
            data = Gauge(data_points=[NumberDataPoint(a, None, now, v) for a, v in gauges])  # type: ignore[arg-type]
        else:
            bounds = spec.bounds
            hist_points = [
                HistogramDataPoint(a, s, now, sum(counts), total, counts, bounds, lo, hi, exemplars)
                for a, s, counts, total, lo, hi, exemplars in histograms
            ]
            data = Histogram(data_points=hist_points, aggregation_temporality=_CUMULATIVE)
        return Metric(name=spec.name, description=spec.description, unit=spec.unit, data=data)

    def recorded(self) -> bool:
        """Whether a recording reached a cell since the last fold: a sum's delta, a histogram's min or a gauge's
        value moved (one look at each cell; the hot path pays nothing). Call with the recorder's lock held."""
        cells = self.series.values()
        aggregation = self.spec.aggregation
        if aggregation == "sum":
            return any(cell.delta != 0 for cell in cells)  # type: ignore[union-attr]
        if aggregation == "gauge":
            return any(cell.value != cell.folded for cell in cells)  # type: ignore[union-attr]
        return any(cell.min != _INF or cell.pending for cell in cells)  # type: ignore[union-attr]


def restart_after_fork(cell: Cell, now_ns: int) -> None:
    """Empty a sum or histogram cell in place, for a forked child: the parent keeps reporting what the child
    inherited, so the child's series start again at ``now_ns``. A gauge keeps its last value."""
    if isinstance(cell, SumCell):
        cell.delta = cell.total = 0
        cell.start_ns = now_ns
    elif isinstance(cell, HistogramCell):
        cell.counts = [0] * len(cell.counts)
        cell.sum = cell.total_sum = 0
        cell.min = cell.total_min = _INF
        cell.max = cell.total_max = -_INF
        cell.exemplars = None
        del cell.pending[:]  # the parent's to fold; in place, as handles hold the list
        cell.start_ns = now_ns
