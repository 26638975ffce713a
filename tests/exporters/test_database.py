"""DatabaseExporter and MetricHistory against real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, Secret, get_monitoring_config
from chat_turbo_metrics.exporters.database import DatabaseExporter, GaugePoint, MetricHistory

T0 = 1_700_000_000.0
DAY = 86400.0
POSTGRES = ("127.0.0.1", 5432)
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UNREACHABLE_URL = "postgresql+psycopg://user:s3cr3tpw@127.0.0.1:1/x"
LATENCY_BOUNDS = (10.0, 20.0, 50.0, 100.0)


# --- databases ---------------------------------------------------------------------------------


def _postgres_unavailable() -> str | None:
    try:
        socket.create_connection(POSTGRES, timeout=1).close()
    except OSError as error:
        return f"PostgreSQL not reachable at {POSTGRES[0]}:{POSTGRES[1]}: {error}"
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own for one test: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metrics.db'}"
        return
    reason = _postgres_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    schema = f"ctm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    """A separate connection to the test database, for looking behind the exporter's back."""
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_exporter(database_url: str, clock: Clock) -> Iterator[Callable[..., DatabaseExporter]]:
    """Build exporters on the test database (30 days retention, the test clock); shut them all down after."""
    made: list[DatabaseExporter] = []

    def make(**options: Any) -> DatabaseExporter:
        options = {"retention_days": 30.0, "clock": clock, **options}
        exporter = DatabaseExporter(options.pop("url", database_url), **options)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.shutdown()


# --- metrics -----------------------------------------------------------------------------------


class Recorder:
    """A real SDK pipeline whose collected points are re-stamped with the times a test chooses."""

    def __init__(self, resource: Resource | None = None) -> None:
        self.reader = InMemoryMetricReader(
            preferred_temporality={
                Counter: AggregationTemporality.DELTA,
                Histogram: AggregationTemporality.DELTA,
            }
        )
        view = View(instrument_name="latency", aggregation=ExplicitBucketHistogramAggregation(LATENCY_BOUNDS))
        self.provider = MeterProvider(
            metric_readers=[self.reader], views=[view], resource=resource or Resource.create()
        )
        self.meter = self.provider.get_meter("tests.exporters.test_database")

    def collect(self, start: float, end: float) -> MetricsData:
        data = self.reader.get_metrics_data()
        assert data is not None
        start_ns, end_ns = round(start * 1e9), round(end * 1e9)

        def restamp(metric: Any) -> Any:
            stamped = [
                replace(point, start_time_unix_nano=start_ns, time_unix_nano=end_ns)
                for point in metric.data.data_points
            ]
            return replace(metric, data=replace(metric.data, data_points=stamped))

        return replace(
            data,
            resource_metrics=[
                replace(
                    resource,
                    scope_metrics=[
                        replace(scope, metrics=[restamp(metric) for metric in scope.metrics])
                        for scope in resource.scope_metrics
                    ],
                )
                for resource in data.resource_metrics
            ],
        )


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.provider.shutdown()


def first_export(exporter: DatabaseExporter) -> None:
    """An export with no points: the exporter's first contact with its database (schema, retention)."""
    assert exporter.export(MetricsData(resource_metrics=[])) is MetricExportResult.SUCCESS


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(text(table))) or 0)


# --- schema ------------------------------------------------------------------------------------


def test_first_export_creates_tables_and_records_every_schema_version(
    make_exporter: Callable[..., Any], db: Engine
) -> None:
    exporter = make_exporter()
    assert not set(inspect(db).get_table_names()) & {"ctm_schema_version", "ctm_points"}  # nothing at construction
    first_export(exporter)

    assert {"ctm_schema_version", "ctm_streams", "ctm_points"} <= set(inspect(db).get_table_names())
    with db.connect() as conn:
        assert sorted(conn.scalars(text("SELECT version FROM ctm_schema_version")).all()) == [1, 2]


def test_points_are_indexed_by_stream_and_end_time_and_by_end_time(
    make_exporter: Callable[..., Any], db: Engine
) -> None:
    first_export(make_exporter())

    indexed = {tuple(index["column_names"]) for index in inspect(db).get_indexes("ctm_points")}
    assert {("stream_id", "end_ns"), ("end_ns",)} <= indexed


def test_second_start_keeps_one_row_per_schema_version(make_exporter: Callable[..., Any], db: Engine) -> None:
    first_export(make_exporter())
    first_export(make_exporter())

    assert _count(db, "ctm_schema_version") == 2


def test_newer_schema_version_refuses_to_export_with_a_clear_error(
    make_exporter: Callable[..., Any], db: Engine, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    first_export(make_exporter())
    with db.begin() as conn:
        conn.execute(text("INSERT INTO ctm_schema_version (version, applied_at) VALUES (3, 0)"))
    recorder.meter.create_counter("chat_requests").add(1)

    result = make_exporter().export(recorder.collect(T0, T0 + 10))

    assert result is MetricExportResult.FAILURE
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert re.search(r"schema version 3 .* newer than the version 2", error.getMessage())
    assert _count(db, "ctm_points") == 0


# --- export and queries ------------------------------------------------------------------------


def test_counter_rate_is_sum_of_deltas_per_attribute_set_per_bucket(
    make_exporter: Callable[..., Any], recorder: Recorder
) -> None:
    exporter = make_exporter()
    requests = recorder.meter.create_counter("chat_requests")
    requests.add(3, {"route": "/a"})
    requests.add(6, {"route": "/b"})
    assert exporter.export(recorder.collect(T0, T0 + 10)) is MetricExportResult.SUCCESS
    requests.add(9, {"route": "/a"})
    assert exporter.export(recorder.collect(T0 + 10, T0 + 30)) is MetricExportResult.SUCCESS
    requests.add(12, {"route": "/a"})
    requests.add(1, {"route": "/b"})
    assert exporter.export(recorder.collect(T0 + 30, T0 + 70)) is MetricExportResult.SUCCESS

    rows = exporter.history().counter_rate("chat_requests", T0, T0 + 120, bucket_s=60)

    assert [(row.start, row.end, dict(row.attributes), row.total) for row in rows] == [
        (T0, T0 + 60, {"route": "/a"}, 12.0),
        (T0, T0 + 60, {"route": "/b"}, 6.0),
        (T0 + 60, T0 + 120, {"route": "/a"}, 12.0),
        (T0 + 60, T0 + 120, {"route": "/b"}, 1.0),
    ]
    assert [row.rate for row in rows] == pytest.approx([0.2, 0.1, 0.2, 1 / 60])


def test_counter_rate_accepts_datetimes(make_exporter: Callable[..., Any], recorder: Recorder) -> None:
    exporter = make_exporter()
    recorder.meter.create_counter("chat_requests").add(30)
    exporter.export(recorder.collect(T0, T0 + 10))
    start = datetime.fromtimestamp(T0, tz=timezone.utc)
    end = datetime.fromtimestamp(T0 + 60, tz=timezone.utc)

    rows = exporter.history().counter_rate("chat_requests", start, end, bucket_s=60)

    assert [(row.start, row.rate) for row in rows] == [(T0, 0.5)]


def test_histogram_stats_match_hand_computed_percentiles_mean_and_max(
    make_exporter: Callable[..., Any], recorder: Recorder
) -> None:
    # Buckets (<=10, <=20, <=50, <=100, +Inf) get 40, 40, 16, 2, 2 observations over two exports,
    # so the cumulative counts are 40, 80, 96, 98, 100 and:
    #   p50: rank 50 in (10, 20]:  10 + 10 * (50 - 40) / 40 = 12.5
    #   p90: rank 90 in (20, 50]:  20 + 30 * (90 - 80) / 16 = 38.75
    #   p95: rank 95 in (20, 50]:  20 + 30 * (95 - 80) / 16 = 48.125
    #   p99: rank 99 in +Inf:      the highest finite bound, 100
    #   sum: 40*5 + 40*15 + 16*30 + 2*60 + 2*500 = 2400, mean 24, max 500
    exporter = make_exporter()
    latency = recorder.meter.create_histogram("latency", unit="ms")
    for value, times in ((5, 20), (15, 40)):
        for _ in range(times):
            latency.record(value, {"model": "turbo"})
    exporter.export(recorder.collect(T0, T0 + 10))
    for value, times in ((5, 20), (30, 16), (60, 2), (500, 2)):
        for _ in range(times):
            latency.record(value, {"model": "turbo"})
    exporter.export(recorder.collect(T0 + 10, T0 + 40))

    [row] = exporter.history().histogram_stats("latency", T0, T0 + 60, bucket_s=60)

    assert dict(row.attributes) == {"model": "turbo"}
    assert (row.count, row.sum, row.mean, row.min, row.max) == (100, 2400.0, 24.0, 5.0, 500.0)
    assert (row.p50, row.p90, row.p95, row.p99) == pytest.approx((12.5, 38.75, 48.125, 100.0))


def test_histogram_stats_are_separate_per_time_bucket(make_exporter: Callable[..., Any], recorder: Recorder) -> None:
    exporter = make_exporter()
    latency = recorder.meter.create_histogram("latency")
    latency.record(4)
    exporter.export(recorder.collect(T0, T0 + 10))
    latency.record(40)
    latency.record(40)
    exporter.export(recorder.collect(T0 + 10, T0 + 70))

    rows = exporter.history().histogram_stats("latency", T0, T0 + 120, bucket_s=60)

    # Interpolation alone gives 5.0 (above the only value, 4) and 35.0 (below both 40s): clamped to min/max.
    assert [(row.start, row.count, row.max, row.p50) for row in rows] == [
        (T0, 1, 4.0, 4.0),
        (T0 + 60, 2, 40.0, 40.0),
    ]


def test_gauge_series_returns_every_value_in_time_order(make_exporter: Callable[..., Any], recorder: Recorder) -> None:
    exporter = make_exporter()
    connections = recorder.meter.create_gauge("db_connections")
    connections.set(3, {"pool": "main"})
    exporter.export(recorder.collect(T0, T0 + 10))
    connections.set(5, {"pool": "main"})
    exporter.export(recorder.collect(T0 + 10, T0 + 20))

    series = exporter.history().gauge_series("db_connections", T0, T0 + 60)

    assert series == [GaugePoint(T0 + 10, {"pool": "main"}, 3.0), GaugePoint(T0 + 20, {"pool": "main"}, 5.0)]


def test_up_down_counter_is_stored_as_running_totals(make_exporter: Callable[..., Any], recorder: Recorder) -> None:
    exporter = make_exporter()
    active = recorder.meter.create_up_down_counter("active_sessions")
    active.add(4)
    exporter.export(recorder.collect(T0, T0 + 10))
    active.add(-1)
    exporter.export(recorder.collect(T0 + 10, T0 + 20))

    values = [point.value for point in exporter.history().gauge_series("active_sessions", T0, T0 + 60)]

    assert values == [4.0, 3.0]


def test_metric_names_lists_every_exported_metric_sorted(make_exporter: Callable[..., Any], recorder: Recorder) -> None:
    exporter = make_exporter()
    recorder.meter.create_histogram("latency").record(1)
    recorder.meter.create_counter("chat_requests").add(1)
    exporter.export(recorder.collect(T0, T0 + 10))

    assert exporter.history().metric_names() == ["chat_requests", "latency"]


def test_repeated_exports_store_each_stream_once(
    make_exporter: Callable[..., Any], recorder: Recorder, db: Engine
) -> None:
    requests = recorder.meter.create_counter("chat_requests")
    for end in (T0 + 10, T0 + 20):
        requests.add(1, {"route": "/a", "method": "GET"})
        make_exporter().export(recorder.collect(end - 10, end))

    assert (_count(db, "ctm_streams"), _count(db, "ctm_points")) == (1, 2)


def test_export_inserts_in_statements_of_at_most_batch_size(
    make_exporter: Callable[..., Any], recorder: Recorder, db: Engine
) -> None:
    exporter = make_exporter(batch_size=10)
    requests = recorder.meter.create_counter("chat_requests")
    for user in range(25):
        requests.add(1, {"user": user})
    statements: list[int] = []

    def count_rows(**cursor_event: Any) -> None:
        if cursor_event["statement"].startswith("INSERT INTO ctm_points"):
            many = cursor_event["executemany"]
            statements.append(len(cursor_event["parameters"]) if many else 1)

    event.listen(Engine, "before_cursor_execute", count_rows, named=True)
    try:
        assert exporter.export(recorder.collect(T0, T0 + 10)) is MetricExportResult.SUCCESS
    finally:
        event.remove(Engine, "before_cursor_execute", count_rows)

    assert statements == [10, 10, 5]
    assert _count(db, "ctm_points") == 25


# --- retention ---------------------------------------------------------------------------------


def test_retention_at_first_export_deletes_points_older_than_retention_days_and_keeps_newer(
    make_exporter: Callable[..., Any], recorder: Recorder, clock: Clock
) -> None:
    requests = recorder.meter.create_counter("chat_requests")
    first = make_exporter(retention_days=30)
    requests.add(1)
    first.export(recorder.collect(T0 - 21 * DAY, T0 - 20 * DAY))
    requests.add(2)
    first.export(recorder.collect(T0 - 6 * DAY, T0 - 5 * DAY))

    clock.now = T0 + 20 * DAY  # the cutoff is now T0 - 10 days
    later = make_exporter(retention_days=30)  # the same service, started again
    requests.add(3)
    later.export(recorder.collect(T0 + 20 * DAY, T0 + 20 * DAY + 60))

    rows = later.history().counter_rate("chat_requests", T0 - 30 * DAY, T0, bucket_s=DAY)
    assert [row.total for row in rows] == [2.0]


def test_retention_during_export_runs_at_most_once_an_hour(
    make_exporter: Callable[..., Any], recorder: Recorder, clock: Clock, db: Engine
) -> None:
    exporter = make_exporter(retention_days=1)
    requests = recorder.meter.create_counter("chat_requests")
    requests.add(1)
    exporter.export(recorder.collect(T0 - DAY, T0 - DAY + 1800))  # retention runs at T0; this expires at T0 + 30 min

    clock.now = T0 + 45 * 60
    requests.add(1)
    exporter.export(recorder.collect(T0, T0 + 45 * 60))
    kept_within_the_hour = _count(db, "ctm_points")

    clock.now = T0 + 61 * 60
    requests.add(1)
    exporter.export(recorder.collect(T0 + 45 * 60, T0 + 61 * 60))

    assert (kept_within_the_hour, _count(db, "ctm_points")) == (2, 2)


# --- retention on a shared database ----------------------------------------------------------------


def _service(name: str, environment: str = "production", **extra: str) -> Recorder:
    return Recorder(Resource.create({"service.name": name, "deployment.environment.name": environment, **extra}))


def _stored_services(engine: Engine) -> list[tuple[str, int]]:
    """(service.name, points) per service stored, from the streams' resources."""
    query = text(
        "SELECT s.resource, COUNT(p.id) FROM ctm_streams s JOIN ctm_points p ON p.stream_id = s.id GROUP BY s.resource"
    )
    counted: dict[str, int] = {}
    with engine.connect() as conn:
        for resource, count in conn.execute(query):
            name = json.loads(resource)["service.name"]
            counted[name] = counted.get(name, 0) + int(count)
    return sorted(counted.items())


def _write_old_points(make_exporter: Callable[..., Any], recorder: Recorder, days_ago: list[float]) -> None:
    exporter = make_exporter(retention_days=30)
    requests = recorder.meter.create_counter("requests")
    for days in days_ago:
        requests.add(1)
        assert exporter.export(recorder.collect(T0 - days * DAY, T0 - days * DAY + 60)) is MetricExportResult.SUCCESS


def test_retention_deletes_only_the_points_of_the_service_that_runs_it(
    make_exporter: Callable[..., Any], db: Engine
) -> None:
    _write_old_points(make_exporter, _service("billing"), [20, 10, 5])
    _write_old_points(make_exporter, _service("chat"), [20, 10, 0.5])
    chat_again = _service("chat")  # restarted with 1 day of retention (a dev shell's test.toml)
    exporter = make_exporter(retention_days=1)
    chat_again.meter.create_counter("requests").add(1)

    assert exporter.export(chat_again.collect(T0, T0 + 60)) is MetricExportResult.SUCCESS

    assert _stored_services(db) == [("billing", 3), ("chat", 2)]  # chat: its last day and the new point


def test_retention_keeps_the_same_service_of_another_environment(make_exporter: Callable[..., Any], db: Engine) -> None:
    _write_old_points(make_exporter, _service("billing", "production"), [20, 10])
    development = _service("billing", "development")  # a dev run pointed at the same database, 1 day kept
    exporter = make_exporter(retention_days=1)
    development.meter.create_counter("requests").add(1)
    exporter.export(development.collect(T0, T0 + 60))

    assert _stored_services(db) == [("billing", 3)]


def test_retention_covers_every_instance_of_its_service(make_exporter: Callable[..., Any], db: Engine) -> None:
    _write_old_points(make_exporter, _service("chat", **{"service.instance.id": "worker-1"}), [20, 10])
    worker_2 = _service("chat", **{"service.instance.id": "worker-2"})
    exporter = make_exporter(retention_days=1)
    worker_2.meter.create_counter("requests").add(1)
    exporter.export(worker_2.collect(T0, T0 + 60))

    assert _stored_services(db) == [("chat", 1)]


def test_retention_deletes_nothing_before_the_exporter_wrote_any_data(
    make_exporter: Callable[..., Any], db: Engine
) -> None:
    _write_old_points(make_exporter, _service("billing"), [20, 10])

    first_export(make_exporter(retention_days=1))  # whose points are its own is not known yet

    assert _stored_services(db) == [("billing", 2)]


# The tables as schema version 1 created them (chat_turbo_metrics before the owner column), for the migration.
_V1 = MetaData()
Table(
    "ctm_schema_version",
    _V1,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", Float, nullable=False),
)
_V1_STREAMS = Table(
    "ctm_streams",
    _V1,
    Column("id", Integer, primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("name", String(255), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("unit", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("attributes", Text, nullable=False),
    Column("resource", Text, nullable=False),
)
_V1_POINTS = Table(
    "ctm_points",
    _V1,
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


def _version_1_database(engine: Engine, services: dict[str, list[float]]) -> None:
    """A database as version 1 wrote it: per service, one counter stream with a point ``days`` ago each."""
    _V1.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO ctm_schema_version (version, applied_at) VALUES (1, 0)"))
        for number, (service, days_ago) in enumerate(services.items()):
            resource = json.dumps({"service.name": service, "deployment.environment.name": "production"})
            stream = {"name": "requests", "kind": "counter", "unit": "", "description": "", "attributes": "{}"}
            inserted = conn.execute(_V1_STREAMS.insert().values(hash=f"{number:064d}", resource=resource, **stream))
            stream_id = inserted.inserted_primary_key[0]
            for days in days_ago:
                end_ns = round((T0 - days * DAY) * 1e9)
                point = {"stream_id": stream_id, "start_ns": end_ns - 60 * 10**9, "end_ns": end_ns, "value": 1.0}
                conn.execute(_V1_POINTS.insert().values(**point))


def test_a_version_1_database_is_migrated_and_retention_keeps_other_services_rows(
    make_exporter: Callable[..., Any], db: Engine
) -> None:
    _version_1_database(db, {"billing": [20, 10, 5], "chat": [20, 10, 0.5]})
    chat = _service("chat")
    exporter = make_exporter(retention_days=1)
    chat.meter.create_counter("requests").add(1)

    assert exporter.export(chat.collect(T0, T0 + 60)) is MetricExportResult.SUCCESS

    assert _stored_services(db) == [("billing", 3), ("chat", 2)]  # chat: its last day before, and the new point
    with db.connect() as conn:
        assert sorted(conn.scalars(text("SELECT version FROM ctm_schema_version")).all()) == [1, 2]
        assert conn.scalar(text("SELECT COUNT(*) FROM ctm_streams WHERE owner = ''")) == 0
    assert "ix_ctm_streams_owner" in {index["name"] for index in inspect(db).get_indexes("ctm_streams")}
    rows = exporter.history().counter_rate("requests", T0 - 30 * DAY, T0 + DAY, bucket_s=DAY)
    assert sum(row.total for row in rows) == 3 + 2  # one stream per service, old and new rows alike


# --- failures and secrets ----------------------------------------------------------------------


def test_export_to_unreachable_database_returns_failure(recorder: Recorder) -> None:
    exporter = DatabaseExporter(UNREACHABLE_URL, retention_days=1)
    recorder.meter.create_counter("chat_requests").add(1)

    assert exporter.export(recorder.collect(T0, T0 + 10)) is MetricExportResult.FAILURE
    exporter.shutdown()


@pytest.mark.parametrize("url", [UNREACHABLE_URL, Secret(UNREACHABLE_URL)], ids=["str", "Secret"])
def test_unreachable_database_password_never_appears_in_logs_or_reprs(
    url: str | Secret, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    exporter = DatabaseExporter(url, retention_days=1)
    recorder.meter.create_counter("chat_requests").add(1)
    data = recorder.collect(T0, T0 + 10)
    exporter.export(data)
    exporter.export(data)  # the retry: logged at debug level this time
    shown = [repr(exporter), repr(exporter.history()), caplog.text]
    exporter.shutdown()

    assert any(
        record.name == "chat_turbo_metrics.exporters.database" and record.levelno == logging.WARNING
        for record in caplog.records
    )
    assert "127.0.0.1" in shown[0]
    assert not [text for text in shown if "s3cr3tpw" in text]


def test_unparseable_url_raises_configuration_error_without_the_url() -> None:
    with pytest.raises(ConfigurationError, match="database_url") as raised:
        DatabaseExporter("not a url://s3cr3tpw", retention_days=1)

    assert "s3cr3tpw" not in str(raised.value)


def test_first_export_creates_schema_when_database_was_unreachable_at_start(tmp_path: Path, recorder: Recorder) -> None:
    directory = tmp_path / "not-yet"
    exporter = DatabaseExporter(f"sqlite:///{directory / 'metrics.db'}", retention_days=1)
    recorder.meter.create_counter("chat_requests").add(1)
    data = recorder.collect(T0, T0 + 10)
    failed = exporter.export(data)

    directory.mkdir()
    recovered = exporter.export(data)  # the pipeline retries the interval it kept

    assert (failed, recovered) == (MetricExportResult.FAILURE, MetricExportResult.SUCCESS)
    assert exporter.history().metric_names() == ["chat_requests"]
    exporter.shutdown()


def test_export_after_shutdown_returns_failure(tmp_path: Path, recorder: Recorder) -> None:
    exporter = DatabaseExporter(f"sqlite:///{tmp_path / 'metrics.db'}", retention_days=1)
    exporter.shutdown()
    recorder.meter.create_counter("chat_requests").add(1)

    assert exporter.export(recorder.collect(T0, T0 + 10)) is MetricExportResult.FAILURE


def test_cumulative_counter_is_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reader = InMemoryMetricReader()  # cumulative: rows would be running totals, not increments
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_counter("chat_requests").add(1)
    exporter = DatabaseExporter(f"sqlite:///{tmp_path / 'metrics.db'}", retention_days=1)
    for _ in range(2):
        data = reader.get_metrics_data()
        assert data is not None
        exporter.export(data)

    assert exporter.history().metric_names() == []
    assert [r.getMessage() for r in caplog.records if "chat_requests" in r.getMessage()] == [
        "metric 'chat_requests' skipped: its kind or temporality cannot be stored as deltas or values"
    ]
    exporter.shutdown()
    provider.shutdown()


def test_bad_batch_size_raises_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="batch_size=0"):
        DatabaseExporter(f"sqlite:///{tmp_path / 'metrics.db'}", retention_days=1, batch_size=0)


# --- with the SDK's periodic reader and the configuration ---------------------------------------


def test_periodic_reader_stores_counter_increments_not_running_totals(tmp_path: Path) -> None:
    exporter = DatabaseExporter(f"sqlite:///{tmp_path / 'metrics.db'}", retention_days=1)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader])
    requests = provider.get_meter("t").create_counter("chat_requests")
    requests.add(2)
    reader.force_flush()
    requests.add(3)
    reader.force_flush()
    history = MetricHistory(f"sqlite:///{tmp_path / 'metrics.db'}")
    now = datetime.now(timezone.utc).timestamp()

    [row] = history.counter_rate("chat_requests", now - 3600, now + 3600, bucket_s=7200)

    assert row.total == 5.0
    history.close()
    provider.shutdown()


def test_from_config_uses_database_url_and_retention_days(tmp_path: Path, recorder: Recorder) -> None:
    url = f"sqlite:///{tmp_path / 'configured.db'}"
    config = MonitoringConfig(database_url=Secret(url), retention_days=2)

    exporter = DatabaseExporter.from_config(config)
    recorder.meter.create_counter("chat_requests").add(1)
    exporter.export(recorder.collect(T0, T0 + 10))

    assert "retention_days=2" in repr(exporter)
    with MetricHistory(url) as history:
        assert history.metric_names() == ["chat_requests"]
    exporter.shutdown()


def test_from_config_takes_database_url_from_the_environment_it_was_given(tmp_path: Path) -> None:
    config = get_monitoring_config("test", env={"METRICS_DATABASE_URL": f"sqlite:///{tmp_path / 'from-env.db'}"})
    exporter = DatabaseExporter.from_config(config)
    first_export(exporter)
    exporter.shutdown()

    assert (tmp_path / "from-env.db").is_file()


def test_no_url_uses_the_sqlite_default_and_never_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_DATABASE_URL", f"sqlite:///{tmp_path / 'from-env.db'}")
    monkeypatch.setenv("METRICS_RETENTION_DAYS", "2")
    monkeypatch.chdir(tmp_path)

    exporter = DatabaseExporter()
    first_export(exporter)
    exporter.shutdown()

    assert (tmp_path / "chat_turbo_metrics.db").is_file()
    assert not (tmp_path / "from-env.db").exists()
    assert "retention_days=30.0" in repr(exporter)


# --- start-up never blocks; names users see; secrets ------------------------------------------


def test_constructor_returns_without_touching_a_database_that_never_answers() -> None:
    # A host that accepts TCP (the kernel completes the handshake from the backlog) and never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        built: list[DatabaseExporter] = []
        worker = threading.Thread(
            target=lambda: built.append(DatabaseExporter(f"postgresql+psycopg://u:pw@127.0.0.1:{port}/x")), daemon=True
        )
        worker.start()
        worker.join(timeout=5)
        assert not worker.is_alive(), "the constructor blocked on the database"
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.accept()  # nobody connected: the constructor did not even try
    built[0].shutdown()


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("nosuchdialect://chat:s3cr3tpw@db/metrics", "NoSuchModuleError"),
        ("mysql+nosuchdriver://chat:s3cr3tpw@db/metrics", "NoSuchModuleError"),
        ("sqlite+pysqlcipher://chat:s3cr3tpw@db/metrics", "No module named 'pysqlcipher3'"),  # driver missing
        ("postgresql+psycopg://chat:s3cr3tpw@db:notaport/metrics", "notaport"),
    ],
)
def test_bad_url_error_gives_the_cause_and_masks_only_the_password(url: str, cause: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        DatabaseExporter(url)

    message = str(raised.value)
    assert "s3cr3tpw" not in message
    assert cause in message
    assert "chat:***@db" in message  # user and host stay visible


def test_database_url_variable_error_names_the_variable_and_masks_the_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        get_monitoring_config("test", env={"METRICS_DATABASE_URL": "postgresql+psycopg://chat:s3cr3tpw@db:x/m"})

    message = str(raised.value)
    assert message.startswith("METRICS_DATABASE_URL='postgresql+psycopg://chat:***@db:x/m': ")
    assert "s3cr3tpw" not in message


def test_no_object_holding_the_url_shows_the_password(tmp_path: Path) -> None:
    exporter = DatabaseExporter(Secret(UNREACHABLE_URL), retention_days=1)
    config = MonitoringConfig(database_url=UNREACHABLE_URL)  # a plain string is wrapped too

    shown = [repr(exporter), repr(exporter._database), repr(exporter.history()), repr(config), str(config)]
    exporter.shutdown()

    assert isinstance(config.database_url, Secret)
    assert config.database_url.reveal() == UNREACHABLE_URL
    assert [text for text in shown if "s3cr3tpw" in text] == []


def test_history_accepts_the_prometheus_names(make_exporter: Callable[..., Any], recorder: Recorder) -> None:
    exporter = make_exporter()
    recorder.meter.create_counter("messages_sent").add(4)
    recorder.meter.create_histogram("api_request_duration", unit="s").record(0.25)
    exporter.export(recorder.collect(T0, T0 + 10))
    history = exporter.history()

    [rate] = history.counter_rate("messages_sent_total", T0, T0 + 60, bucket_s=60)
    [stats] = history.histogram_stats("api_request_duration_seconds", T0, T0 + 60, bucket_s=60)

    assert rate.total == 4.0
    assert (stats.count, stats.sum) == (1, 0.25)
    assert history.counter_rate("messages_sent", T0, T0 + 60, bucket_s=60) == [rate]


def test_history_kind_mismatch_fails_naming_the_stored_kind(
    make_exporter: Callable[..., Any], recorder: Recorder
) -> None:
    exporter = make_exporter()
    recorder.meter.create_gauge("active_connections").set(3)
    exporter.export(recorder.collect(T0, T0 + 10))

    with pytest.raises(ValueError, match=r"'active_connections' is stored as a gauge.*gauge_series") as raised:
        exporter.history().counter_rate("active_connections", T0, T0 + 60, bucket_s=60)

    assert str(raised.value).endswith("not a counter; use gauge_series(). Stored: active_connections (gauge)")


def test_history_unknown_name_fails_listing_the_stored_names(
    make_exporter: Callable[..., Any], recorder: Recorder
) -> None:
    exporter = make_exporter()
    recorder.meter.create_counter("messages_sent").add(1)
    recorder.meter.create_gauge("active_connections").set(3)
    exporter.export(recorder.collect(T0, T0 + 10))

    with pytest.raises(ValueError, match="no counter named 'mesages_sent'") as raised:
        exporter.history().counter_rate("mesages_sent", T0, T0 + 60, bucket_s=60)

    assert str(raised.value).endswith("Stored: active_connections (gauge), messages_sent (counter)")


def test_percentiles_stay_within_the_recorded_min_and_max(
    make_exporter: Callable[..., Any], recorder: Recorder
) -> None:
    # Two-microsecond timings in buckets whose first bound is 10: interpolation alone says p50 = 5.
    exporter = make_exporter()
    latency = recorder.meter.create_histogram("latency")
    latency.record(0.000001)
    latency.record(0.000002)
    exporter.export(recorder.collect(T0, T0 + 10))

    [row] = exporter.history().histogram_stats("latency", T0, T0 + 60, bucket_s=60)

    assert (row.min, row.max) == (0.000001, 0.000002)
    assert all(row.min <= p <= row.max for p in (row.p50, row.p90, row.p95, row.p99))
    assert row.p99 == 0.000002
