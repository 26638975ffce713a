"""Stored history for ``chat-turbo-metrics report``: the database exporter's tables or the file exporter's lines.

Both become the same :class:`Point` list: per stream (metric and attribute set), the increments of counters and
histograms (a cumulative JSON Lines stream is differenced) and the values of gauges, each at its collection time.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chat_turbo_metrics._core.naming import prometheus_name


class StoreError(Exception):
    """The store cannot be read, holds nothing, or lacks a metric; the message says which and what to do."""


@dataclass(frozen=True)
class Point:
    """One stored increment (counter, histogram) or value (gauge) of one stream, at ``time`` (unix seconds)."""

    name: str
    kind: str
    unit: str
    attributes: tuple[tuple[str, Any], ...]
    time: float
    value: float = 0.0
    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    bounds: tuple[float, ...] = ()
    bucket_counts: tuple[int, ...] = ()


def _key(attributes: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(attributes, str):
        attributes = json.loads(attributes)
    return tuple(sorted((str(k), v) for k, v in dict(attributes or {}).items()))


def open_store(where: str) -> tuple[str, list[Point]]:
    """(what to call the store in messages, every point in it) for a URL, a SQLite file or a JSON Lines file."""
    if "://" in where:
        return _database(where)
    path = Path(where)
    if not path.exists():
        raise StoreError(
            f"{where}: no such file. Give the demo's history (chat_turbo_demo.db), a database URL "
            "(sqlite:///history.db, postgresql+psycopg://...) or a file exporter's JSON Lines file (metrics.jsonl)"
        )
    if path.suffix in (".jsonl", ".json") or not _is_sqlite(path):
        return str(path), list(_jsonl(path))
    return _database(f"sqlite:///{path.resolve()}")


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(16) == b"SQLite format 3\x00"


def _database(url: str) -> tuple[str, list[Point]]:
    from sqlalchemy import create_engine, inspect, make_url, select
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from chat_turbo_metrics.exporters._database_schema import points, streams

    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise StoreError(f"not a database URL: {error}") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        raise StoreError(f"{shown}: no such file (nothing has been exported there yet)")
    engine = create_engine(parsed)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(points.name):
                raise StoreError(f"{shown} holds no metric history (no {points.name} table: nothing exported yet)")
            wanted = ("end_ns", "value", "count", "sum", "min", "max", "bounds", "bucket_counts")
            query = select(
                *(streams.c[column] for column in ("name", "kind", "unit", "attributes")),
                *(points.c[column] for column in wanted),
            ).join(streams, streams.c.id == points.c.stream_id)
            rows = connection.execute(query.order_by(points.c.end_ns)).all()
    except SQLAlchemyError as error:
        message = str(getattr(error, "orig", None) or error).splitlines()[0]
        if parsed.password:
            message = message.replace(str(parsed.password), "***")
        raise StoreError(f"{shown}: cannot read the history: {message}") from None
    finally:
        engine.dispose()
    result = [
        Point(
            name=row.name,
            kind=row.kind,
            unit=row.unit,
            attributes=_key(row.attributes),
            time=row.end_ns / 1e9,
            value=float(row.value or 0.0),
            count=int(row._mapping["count"] or 0),  # row.count is the tuple method
            sum=float(row.sum or 0.0),
            min=row.min,
            max=row.max,
            bounds=tuple(json.loads(row.bounds)) if row.bounds else (),
            bucket_counts=tuple(json.loads(row.bucket_counts)) if row.bucket_counts else (),
        )
        for row in rows
    ]
    return shown, result


def _jsonl(path: Path) -> Iterator[Point]:
    """The file exporter's records (rotated files too) as increments: cumulative streams are differenced."""
    from chat_turbo_metrics.exporters.file import read_metric_records

    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in read_metric_records(path, include_rotated=True):
        kind = record.get("kind")
        if kind not in ("counter", "updowncounter", "gauge", "histogram"):
            continue
        attributes = _key(record.get("attributes"))
        base = {"name": record["name"], "kind": kind, "unit": record.get("unit", ""), "attributes": attributes}
        time = float(record["time_unix_nano"]) / 1e9
        stream = (record["name"], attributes, record.get("start_time_unix_nano"))
        previous = last.get(stream) if record.get("temporality") == "cumulative" else None
        if record.get("temporality") == "cumulative":
            last[stream] = record
        if kind != "histogram":
            value = float(record["value"])
            if kind == "counter" and previous is not None:
                value -= float(previous["value"])
            yield Point(**base, time=time, value=value)
            continue
        counts = list(record["bucket_counts"])
        count, total = int(record["count"]), float(record["sum"])
        if previous is not None:
            counts = [now - before for now, before in zip(counts, previous["bucket_counts"], strict=False)]
            count, total = count - int(previous["count"]), total - float(previous["sum"])
        yield Point(
            **base,
            time=time,
            count=count,
            sum=total,
            min=record.get("min"),
            max=record.get("max"),
            bounds=tuple(record["bucket_bounds"]),
            bucket_counts=tuple(counts),
        )


def resolve(points: Iterable[Point], wanted: str, store: str) -> str:
    """The stored name of ``wanted`` (as recorded or as Prometheus shows it); else the closest names, in an error."""
    kinds = {(p.name, p.kind, p.unit) for p in points}
    aliases = {alias: name for name, kind, unit in kinds for alias in (name, prometheus_name(name, unit, kind))}  # type: ignore[arg-type]
    if wanted in aliases:
        return aliases[wanted]
    close = difflib.get_close_matches(wanted, sorted(aliases), n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else f"; stored: {', '.join(sorted({n for n, _, _ in kinds}))}"
    raise StoreError(f"no metric {wanted!r} is stored in {store}{hint}")
