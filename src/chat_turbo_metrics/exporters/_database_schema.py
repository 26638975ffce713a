"""Tables of the database exporter, their migrations, and the rows one export writes.

Only portable SQLAlchemy Core is used (JSON is stored as canonical text) so the same code runs on
SQLite and PostgreSQL. Times are unix nanoseconds in BIGINT columns: exact, and integer division
buckets them the same way on every backend.

Several services may share one database. Each stream row carries its ``owner``: the service that wrote it,
identified by the ``service.namespace``, ``service.name`` and ``deployment.environment.name`` (or the older
``deployment.environment``) of its resource, as a SHA-256 of their canonical JSON (:func:`owner_of`). Every
process and instance of a service shares it (``service.instance.id`` and ``process.pid`` are left out); a
development run of the same service under another environment does not. Retention deletes only the points
of its own owner's streams.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    MetricsData,
    NumberDataPoint,
)
from opentelemetry.sdk.resources import Resource
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Delete,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)

from chat_turbo_metrics._collection.exponential import explicit_buckets
from chat_turbo_metrics._collection.records import data_kind
from chat_turbo_metrics._collection.walk import resources, walk
from chat_turbo_metrics._core.config import ConfigurationError

SCHEMA_VERSION = 2
# What says whose a stream is (see the module docstring); a missing attribute counts as null.
OWNER_ATTRIBUTES = ("service.namespace", "service.name", "deployment.environment.name")
_LEGACY_ENVIRONMENT = "deployment.environment"

metadata = MetaData()

schema_versions = Table(
    "ctm_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", Float, nullable=False),
)

streams = Table(
    "ctm_streams",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("name", String(255), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("unit", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("attributes", Text, nullable=False),
    Column("resource", Text, nullable=False),
    # Added by version 2 (hence the default: rows written before are filled in by the migration).
    Column("owner", String(64), nullable=False, server_default=""),
    Index("ix_ctm_streams_owner", "owner"),
)

_OWNER_INDEX = next(index for index in streams.indexes if index.name == "ix_ctm_streams_owner")

points = Table(
    "ctm_points",
    metadata,
    # SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere a long-lived database needs 64 bits.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("stream_id", Integer, ForeignKey("ctm_streams.id"), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("value", Float),
    Column("count", BigInteger),
    Column("sum", Float),
    Column("min", Float),
    Column("max", Float),
    Column("bounds", Text),
    Column("bucket_counts", Text),
    Index("ix_ctm_points_stream_end", "stream_id", "end_ns"),
    Index("ix_ctm_points_end", "end_ns"),
)


def _create_version_1(conn: Connection) -> None:
    # Creates the tables as they are now; the later migrations find their changes made and skip them.
    metadata.create_all(conn, tables=[streams, points], checkfirst=True)


def _add_stream_owners(conn: Connection) -> None:
    """Version 2: ``ctm_streams.owner``, filled in from each row's stored resource, and its index."""
    if "owner" not in {column["name"] for column in inspect(conn).get_columns(streams.name)}:
        conn.execute(text(f"ALTER TABLE {streams.name} ADD COLUMN owner VARCHAR(64) DEFAULT '' NOT NULL"))
    rows = conn.execute(select(streams.c.id, streams.c.resource).where(streams.c.owner == "")).all()
    update_owner = update(streams).where(streams.c.id == bindparam("stream_id")).values(owner=bindparam("owner"))
    for part in chunks(rows, 500):
        conn.execute(update_owner, [{"stream_id": row.id, "owner": _stored_owner(row.resource)} for row in part])
    _OWNER_INDEX.create(conn, checkfirst=True)


def _stored_owner(resource: str) -> str:
    try:
        attributes = json.loads(resource)
    except ValueError:
        attributes = None
    return owner_of(attributes if isinstance(attributes, dict) else {})


def owner_of(resource: Mapping[str, Any]) -> str:
    """The owner of the streams of a resource with these attributes (see the module docstring)."""
    identity = {key: resource.get(key) for key in OWNER_ATTRIBUTES}
    if identity["deployment.environment.name"] is None:
        identity["deployment.environment.name"] = resource.get(_LEGACY_ENVIRONMENT)
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


# _MIGRATIONS[n - 1] takes a database from version n - 1 to version n.
_MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_create_version_1, _add_stream_owners)


def ensure_schema(conn: Connection, shown_url: str, now: float) -> None:
    """Create or migrate the tables to :data:`SCHEMA_VERSION`, inside the caller's transaction.

    Raises:
        ConfigurationError: the database was written by a newer version of this package.
    """
    schema_versions.create(conn, checkfirst=True)
    current = conn.scalar(select(func.max(schema_versions.c.version))) or 0
    if current > SCHEMA_VERSION:
        raise ConfigurationError(
            f"database_url={shown_url!r}: schema version {current} in ctm_schema_version is newer than "
            f"the version {SCHEMA_VERSION} this chat_turbo_metrics understands; upgrade chat_turbo_metrics "
            "or point database_url at another database"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        _MIGRATIONS[version - 1](conn)
        conn.execute(insert(schema_versions).values(version=version, applied_at=now))


# --- rows --------------------------------------------------------------------------------------

_DELTA = AggregationTemporality.DELTA
_CUMULATIVE = AggregationTemporality.CUMULATIVE

# Stored kind -> the temporality its rows must have: increments for counters and histograms, values for the
# rest. Anything else (cumulative counters, delta up-down counters, cumulative exponential histograms) would make
# the stored rows mean something the queries do not expect, so it is skipped. A delta exponential histogram is
# stored as the classic histogram its buckets convert to, exactly (kind ``histogram``: what the queries read).
_STORED_TEMPORALITY: dict[str, AggregationTemporality | None] = {
    "counter": _DELTA,
    "updowncounter": _CUMULATIVE,
    "gauge": None,
    "histogram": _DELTA,
    "exponential_histogram": _DELTA,
}


def canonical_json(value: Any) -> str:
    """The one text form of ``value``: sorted keys, no spaces, so equal attribute sets compare equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _number_row(point: NumberDataPoint) -> dict[str, Any]:
    return {
        # A gauge point may carry no start time; its interval then starts where it ends.
        "start_ns": point.start_time_unix_nano or point.time_unix_nano,
        "end_ns": point.time_unix_nano,
        "value": float(point.value),
        "count": None,
        "sum": None,
        "min": None,
        "max": None,
        "bounds": None,
        "bucket_counts": None,
    }


def _histogram_row(point: HistogramDataPoint | ExponentialHistogramDataPoint) -> dict[str, Any]:
    # An exponential point is stored as the classic histogram its buckets convert to, exactly.
    buckets = explicit_buckets(point) if isinstance(point, ExponentialHistogramDataPoint) else point
    return {
        "start_ns": point.start_time_unix_nano,
        "end_ns": point.time_unix_nano,
        "value": None,
        "count": point.count,
        "sum": float(point.sum),
        "min": _finite(point.min),
        "max": _finite(point.max),
        "bounds": json.dumps([float(bound) for bound in buckets.explicit_bounds]),
        "bucket_counts": json.dumps(list(buckets.bucket_counts)),
    }


_ROWS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "histogram": _histogram_row,
    "exponential_histogram": _histogram_row,
}


class ExportRows:
    """The stream rows (by hash) and point rows (with their stream's hash) of one :class:`MetricsData`,
    and the owners of its resources."""

    def __init__(self, data: MetricsData) -> None:
        self.streams: dict[str, dict[str, Any]] = {}
        self.points: list[tuple[str, dict[str, Any]]] = []
        self.skipped: set[str] = set()
        self.owners = {owner_of(dict(resource.attributes)) for resource in resources(data)}
        last: Resource | None = None
        source = ("", "")
        for found in walk(data):
            if found.resource is not last:  # computed once per resource
                attributes = dict(found.resource.attributes)
                last, source = found.resource, (canonical_json(attributes), owner_of(attributes))
            metric = found.metric
            self._add_metric(metric.name, metric.unit, metric.description, metric.data, source)

    def _add_metric(
        self, name: str, unit: str | None, description: str | None, data: Any, source: tuple[str, str]
    ) -> None:
        kind = data_kind(data)
        temporality = getattr(data, "aggregation_temporality", None)
        if kind not in _STORED_TEMPORALITY or _STORED_TEMPORALITY[kind] != temporality:
            self.skipped.add(name)
            return
        to_row: Callable[[Any], dict[str, Any]] = _ROWS.get(kind, _number_row)
        for point in data.data_points:
            stream = {
                "name": name,
                "kind": "histogram" if kind == "exponential_histogram" else kind,
                "unit": unit or "",
                "description": description or "",
                "attributes": canonical_json(dict(point.attributes or {})),
                "resource": source[0],
            }
            # The owner follows from the resource, so it stays out of the hash (which version 1 rows have too).
            digest = hashlib.sha256(canonical_json(stream).encode()).hexdigest()
            self.streams.setdefault(digest, {"hash": digest, **stream, "owner": source[1]})
            self.points.append((digest, to_row(point)))


def expired_points(owners: Iterable[str], cutoff_ns: int) -> Delete:
    """Delete the points that ended before ``cutoff_ns`` of the streams of ``owners``, and no one else's."""
    theirs = select(streams.c.id).where(streams.c.owner.in_(sorted(owners)))
    return delete(points).where(points.c.end_ns < cutoff_ns, points.c.stream_id.in_(theirs))


def chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``rows`` in slices of at most ``size``."""
    for first in range(0, len(rows), size):
        yield rows[first : first + size]


def _select_stream_ids(conn: Connection, hashes: Sequence[str], batch_size: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for part in chunks(hashes, batch_size):
        query = select(streams.c.hash, streams.c.id).where(streams.c.hash.in_(part))
        found.update({str(digest): int(stream_id) for digest, stream_id in conn.execute(query).all()})
    return found


def resolve_stream_ids(
    conn: Connection,
    wanted: Mapping[str, dict[str, Any]],
    known: Mapping[str, int],
    batch_size: int,
) -> dict[str, int]:
    """Return the id of every stream in ``wanted``, inserting the ones the database does not have.

    Two processes inserting the same new stream at once make one transaction fail on the unique hash;
    that export reports failure and its retry finds the other process's row.
    """
    ids = {digest: known[digest] for digest in wanted if digest in known}
    ids.update(_select_stream_ids(conn, [digest for digest in wanted if digest not in ids], batch_size))
    new = [wanted[digest] for digest in wanted if digest not in ids]
    for part in chunks(new, batch_size):
        conn.execute(insert(streams), list(part))
    ids.update(_select_stream_ids(conn, [row["hash"] for row in new], batch_size))
    return ids
