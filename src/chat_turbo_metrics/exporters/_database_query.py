"""Historical queries over the database exporter's tables, and the rows they return.

Per-bucket sums, counts, minima and maxima are computed by the database; histogram percentiles are
estimated in Python from the merged bucket counts, as Prometheus ``histogram_quantile`` does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import URL, Engine, Subquery, func, select

from chat_turbo_metrics._core.naming import prometheus_name
from chat_turbo_metrics.exporters._database_schema import points, streams

Instant = float | datetime
_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class RateRow:
    """The rate of one counter's attribute set over one time bucket.

    Example:
        >>> row = RateRow(start=0.0, end=60.0, attributes={"route": "/chat"}, total=120.0, rate=2.0)
        >>> row.rate
        2.0

    Attributes:
        start: bucket start, unix seconds (inclusive).
        end: bucket end, unix seconds (exclusive).
        attributes: the attribute set.
        total: sum of the increments exported in the bucket.
        rate: ``total`` per second of bucket.
    """

    start: float
    end: float
    attributes: Mapping[str, Any]
    total: float
    rate: float


@dataclass(frozen=True)
class HistogramRow:
    """Statistics of one histogram's attribute set over one time bucket.

    Example:
        >>> row = HistogramRow(0.0, 60.0, {}, 2, 3.0, 1.5, 1.0, 2.0, 1.0, 1.8, 1.9, 1.98)
        >>> row.mean
        1.5

    Attributes:
        start: bucket start, unix seconds (inclusive).
        end: bucket end, unix seconds (exclusive).
        attributes: the attribute set.
        count: number of observations.
        sum: sum of the observations.
        mean: ``sum / count``, or None without observations.
        min: smallest observation, or None when unknown.
        max: largest observation, or None when unknown.
        p50: median estimated from the bucket counts (None without observations or bounds).
        p90: 90th percentile, estimated likewise.
        p95: 95th percentile, estimated likewise.
        p99: 99th percentile, estimated likewise.
    """

    start: float
    end: float
    attributes: Mapping[str, Any]
    count: int
    sum: float
    mean: float | None
    min: float | None
    max: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True)
class GaugePoint:
    """One exported value of a gauge or up-down counter.

    Example:
        >>> GaugePoint(time=60.0, attributes={"pool": "db"}, value=7.0).value
        7.0

    Attributes:
        time: when the value was collected, unix seconds.
        attributes: the attribute set.
        value: the value.
    """

    time: float
    attributes: Mapping[str, Any]
    value: float


def to_ns(instant: Instant) -> int:
    """Unix nanoseconds of float seconds or a datetime (a naive one is local time, as in ``timestamp()``)."""
    if isinstance(instant, datetime):
        # Integer arithmetic on the timedelta keeps microseconds exact where float seconds would not.
        return (instant.astimezone(timezone.utc) - _EPOCH) // timedelta(microseconds=1) * 1000
    whole = math.floor(instant)
    return whole * _NS + round((instant - whole) * _NS)


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Estimate the ``q`` quantile of one explicit-bucket histogram like Prometheus ``histogram_quantile``.

    ``counts[i]`` observations fell in ``(bounds[i - 1], bounds[i]]``; the last count is the +Inf bucket.
    The value is interpolated linearly inside its bucket, the first bucket starting at 0 (when its upper
    bound is positive); a rank in the +Inf bucket returns the highest finite bound.
    """
    total = sum(counts)
    if total == 0 or not bounds:
        return None
    rank = q * total
    cumulative = 0
    for index, upper in enumerate(bounds):
        below = cumulative
        cumulative += counts[index]
        if cumulative >= rank:
            if index == 0 and upper <= 0:
                return upper
            lower = bounds[index - 1] if index else 0.0
            return lower + (upper - lower) * (rank - below) / counts[index]
    return bounds[-1]


# What each query reads, by the kinds it accepts: the wording of an error, and the query to use instead.
_QUERY_FOR_KIND = {
    "counter": "counter_rate",
    "histogram": "histogram_stats",
    "gauge": "gauge_series",
    "updowncounter": "gauge_series",
}


def resolve_name(engine: Engine, name: str, kinds: tuple[str, ...]) -> str:
    """The stored name for ``name``: itself, or the stream whose Prometheus name it is (``x_total``, ``x_seconds``).

    Raises:
        ValueError: nothing of one of ``kinds`` is stored under either name; the message lists what is stored.
    """
    with engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(select(streams.c.name, streams.c.kind, streams.c.unit).distinct())]
    for stored_name, kind, unit in stored:
        if kind in kinds and name in (stored_name, prometheus_name(stored_name, unit, kind)):
            return str(stored_name)
    listing = ", ".join(sorted({f"{n} ({k})" for n, k, _ in stored})) or "nothing yet"
    other = sorted({k for n, k, u in stored if name in (n, prometheus_name(n, u, k))})
    if other:
        instead = " or ".join(sorted({_QUERY_FOR_KIND[k] for k in other}))
        raise ValueError(
            f"{name!r} is stored as a {' and a '.join(other)}, not a {kinds[0]}; use {instead}(). Stored: {listing}"
        )
    raise ValueError(f"no {kinds[0]} named {name!r} is stored. Stored: {listing}")


def _clamped(value: float | None, low: float | None, high: float | None) -> float | None:
    """A bucket estimate kept inside the observed min and max (interpolation can land outside both)."""
    if value is None:
        return None
    if high is not None and value > high:
        value = high
    if low is not None and value < low:
        value = low
    return value


def _bucketed(name: str, kind: str, start_ns: int, end_ns: int, bucket_ns: int, *columns: Any) -> Subquery:
    # Grouping happens in an outer query over this one, because PostgreSQL does not treat two
    # separately bound copies of the bucket expression as the same GROUP BY expression.
    bucket = ((points.c.end_ns - start_ns) // bucket_ns).label("bucket")
    return (
        select(streams.c.attributes, bucket, *columns)
        .join_from(points, streams, points.c.stream_id == streams.c.id)
        .where(
            streams.c.name == name,
            streams.c.kind == kind,
            points.c.end_ns >= start_ns,
            points.c.end_ns < end_ns,
        )
        .subquery()
    )


def _span(start_ns: int, bucket_ns: int, bucket: int) -> tuple[float, float]:
    first = start_ns + bucket * bucket_ns
    return first / _NS, (first + bucket_ns) / _NS


def counter_rate(engine: Engine, name: str, start_ns: int, end_ns: int, bucket_s: float) -> list[RateRow]:
    """Rows of :meth:`MetricHistory.counter_rate`, ordered by bucket then attributes."""
    bucket_ns = round(bucket_s * _NS)
    sub = _bucketed(name, "counter", start_ns, end_ns, bucket_ns, points.c.value)
    query = (
        select(sub.c.attributes, sub.c.bucket, func.sum(sub.c.value))
        .group_by(sub.c.attributes, sub.c.bucket)
        .order_by(sub.c.bucket, sub.c.attributes)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        RateRow(
            *_span(start_ns, bucket_ns, int(bucket)),
            json.loads(attributes),
            float(total),
            float(total) / bucket_s,
        )
        for attributes, bucket, total in rows
    ]


def _merged_buckets(rows: Sequence[Any]) -> dict[tuple[str, int], tuple[list[float], list[int]]]:
    """Per (attributes, bucket): the bounds and summed counts of the bounds seen most often.

    Points with other bounds (a View changed mid-bucket) cannot be added bucket by bucket, so they
    are left out of the percentile estimate; they still count in ``count`` and ``sum``.
    """
    by_bounds: dict[tuple[str, int], dict[str, list[int]]] = {}
    for attributes, bucket, bounds, bucket_counts in rows:
        merged = by_bounds.setdefault((attributes, int(bucket)), {})
        counts = json.loads(bucket_counts)
        total = merged.setdefault(bounds, [0] * len(counts))
        merged[bounds] = [a + b for a, b in zip(total, counts, strict=True)]
    chosen: dict[tuple[str, int], tuple[list[float], list[int]]] = {}
    for key, merged in by_bounds.items():
        bounds, counts = max(merged.items(), key=lambda item: sum(item[1]))
        chosen[key] = (json.loads(bounds), counts)
    return chosen


def histogram_stats(engine: Engine, name: str, start_ns: int, end_ns: int, bucket_s: float) -> list[HistogramRow]:
    """Rows of :meth:`MetricHistory.histogram_stats`, ordered by bucket then attributes."""
    bucket_ns = round(bucket_s * _NS)
    columns = (
        points.c.count,
        points.c.sum,
        points.c.min,
        points.c.max,
        points.c.bounds,
        points.c.bucket_counts,
    )
    sub = _bucketed(name, "histogram", start_ns, end_ns, bucket_ns, *columns)
    totals = (
        select(
            sub.c.attributes,
            sub.c.bucket,
            func.sum(sub.c.count),
            func.sum(sub.c.sum),
            func.min(sub.c.min),
            func.max(sub.c.max),
        )
        .group_by(sub.c.attributes, sub.c.bucket)
        .order_by(sub.c.bucket, sub.c.attributes)
    )
    with engine.connect() as conn:
        total_rows = conn.execute(totals).all()
        merged = _merged_buckets(
            conn.execute(select(sub.c.attributes, sub.c.bucket, sub.c.bounds, sub.c.bucket_counts)).all()
        )
    return [_histogram_row(row, merged, start_ns, bucket_ns) for row in total_rows]


def _histogram_row(
    row: Any, merged: Mapping[tuple[str, int], tuple[list[float], list[int]]], start_ns: int, bucket_ns: int
) -> HistogramRow:
    attributes, bucket, summed_count, summed, low, high = row
    bounds, counts = merged[(attributes, int(bucket))]
    low, high = (None if low is None else float(low)), (None if high is None else float(high))
    p50, p90, p95, p99 = (_clamped(quantile(q, bounds, counts), low, high) for q in _QUANTILES)
    # PostgreSQL sums BIGINT into NUMERIC, which psycopg returns as Decimal.
    count, total = int(summed_count), float(summed)
    start, end = _span(start_ns, bucket_ns, int(bucket))
    return HistogramRow(
        start=start,
        end=end,
        attributes=json.loads(attributes),
        count=count,
        sum=total,
        mean=total / count if count else None,
        min=low,
        max=high,
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
    )


def gauge_series(engine: Engine, name: str, start_ns: int, end_ns: int) -> list[GaugePoint]:
    """Rows of :meth:`MetricHistory.gauge_series`, ordered by time then attributes."""
    query = (
        select(points.c.end_ns, streams.c.attributes, points.c.value)
        .join_from(points, streams, points.c.stream_id == streams.c.id)
        .where(
            streams.c.name == name,
            streams.c.kind.in_(("gauge", "updowncounter")),
            points.c.end_ns >= start_ns,
            points.c.end_ns < end_ns,
        )
        .order_by(points.c.end_ns, streams.c.attributes)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [GaugePoint(end / _NS, json.loads(attributes), float(value)) for end, attributes, value in rows]


def metric_names(engine: Engine) -> list[str]:
    """Every metric name stored, sorted."""
    with engine.connect() as conn:
        return list(conn.scalars(select(streams.c.name).distinct().order_by(streams.c.name)))


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite file URL; None for another backend or an in-memory database."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query.get("uri"):
        return None
    return Path(str(url.database))


def read_only_url(url: URL) -> URL:
    """``url``, with a SQLite file opened read-only, so that reading it (``doctor``) never creates or changes it."""
    path = sqlite_file(url)
    if path is None:
        return url
    return url.set(database=f"file:{quote(str(path))}", query={**url.query, "mode": "ro", "uri": "true"})
