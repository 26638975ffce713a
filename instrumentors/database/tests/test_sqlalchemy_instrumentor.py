"""The SQLAlchemy instrumentor on real SQLite and PostgreSQL, sync and async, beside contrib's spans."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_database import SQLAlchemyInstrumentor

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NAME = "database_query_duration_seconds"


def _require(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(params=["fast", "sdk"])
def monitor(request: pytest.FixtureRequest) -> Iterator[PerformanceMonitor]:
    """A monitor on a private pipeline, for each recording path."""
    made = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), environment="test", recording=request.param))
    yield made
    made.shutdown()


@pytest.fixture
def instrument(monitor: PerformanceMonitor) -> Iterator[Callable[..., None]]:
    """Instruments SQLAlchemy into ``monitor`` (with the options given) and uninstruments after the test."""

    def start(**options: object) -> None:
        SQLAlchemyInstrumentor().instrument(monitor=monitor, **options)

    yield start
    SQLAlchemyInstrumentor().uninstrument()


@pytest.fixture
def pg_table() -> Iterator[str]:
    """A fresh PostgreSQL table ``(id int, name text)``, dropped after the test."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        running = True
    except OSError:
        running = False
    _require(running, "PostgreSQL is not running at 127.0.0.1:5432")
    table = f"ctm_db_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_URL)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {table} (id int primary key, name text)"))
    yield table
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def count(monitor: PerformanceMonitor, table: str, operation: str, status: str = "success", **extra: str) -> int:
    tags = {"table": table, "operation": operation, "status": status, **extra}
    value = monitor.snapshot().value(NAME, tags)
    return 0 if value is None else int(value["count"])


def test_every_statement_of_engines_old_and_new_is_recorded(
    monitor: PerformanceMonitor, instrument: Callable[..., None]
) -> None:
    before = create_engine("sqlite://")
    instrument()
    after = create_engine("sqlite://")
    for engine in (before, after):
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE users (id int, name text)"))
            for i in range(3):
                connection.execute(text("INSERT INTO users VALUES (:id, :name)"), {"id": i, "name": "secret-name"})
            assert connection.execute(text("SELECT count(*) FROM users")).scalar() == 3
    assert count(monitor, "users", "create") == 2
    assert count(monitor, "users", "insert") == 6
    assert count(monitor, "users", "select") == 2
    assert "secret-name" not in monitor.snapshot().to_prometheus()  # parameter values are never recorded


def test_executemany_is_one_statement(monitor: PerformanceMonitor, instrument: Callable[..., None]) -> None:
    instrument()
    with create_engine("sqlite://").begin() as connection:
        connection.execute(text("CREATE TABLE many (v int)"))
        connection.execute(text("INSERT INTO many VALUES (:v)"), [{"v": i} for i in range(10)])
        assert connection.execute(text("SELECT count(*) FROM many")).scalar() == 10
    assert count(monitor, "many", "insert") == 1


def test_disabled_monitoring_records_nothing_and_breaks_nothing() -> None:
    from chat_turbo_metrics import MonitoringConfig
    from chat_turbo_metrics_database import SQLAlchemyInstrumentor

    disabled = PerformanceMonitor(MonitoringConfig(enabled=False))
    SQLAlchemyInstrumentor().instrument(monitor=disabled)
    try:
        with create_engine("sqlite://").connect() as connection:
            assert connection.execute(text("SELECT 3")).scalar() == 3
    finally:
        SQLAlchemyInstrumentor().uninstrument()
    assert disabled.snapshot().records() == []


def test_errors_are_recorded_and_propagate_unchanged(
    monitor: PerformanceMonitor, instrument: Callable[..., None]
) -> None:
    instrument()
    with create_engine("sqlite://").connect() as connection, pytest.raises(OperationalError, match="no such table"):
        connection.execute(text("SELECT * FROM missing_table"))
    assert count(monitor, "missing_table", "select", "error") == 1
    assert count(monitor, "missing_table", "select") == 0


def test_statement_text_only_when_opted_in_and_without_literals(
    monitor: PerformanceMonitor, instrument: Callable[..., None]
) -> None:
    instrument(record_statement=True)
    with create_engine("sqlite://").connect() as connection:
        connection.execute(text("SELECT 'pa55word' AS p, 42 AS n"))
    series = [r for r in monitor.snapshot().records() if r["name"] == NAME]
    assert [r["attributes"]["statement"] for r in series] == ["SELECT ? AS p, ? AS n"]


def test_tables_past_the_bound_collapse_into_other(
    monitor: PerformanceMonitor, instrument: Callable[..., None]
) -> None:
    instrument(max_tables=2)
    with create_engine("sqlite://").begin() as connection:
        for i in range(4):
            connection.execute(text(f"CREATE TABLE t{i} (v int)"))
    assert [count(monitor, f"t{i}", "create") for i in range(4)] == [1, 1, 0, 0]
    assert count(monitor, "other", "create") == 2


def test_pool_usage_counts_connections_in_use_and_idle(
    monitor: PerformanceMonitor, instrument: Callable[..., None], tmp_path: Path
) -> None:
    instrument()
    engine = create_engine(f"sqlite:///{tmp_path / 'pool.db'}", pool_size=3, logging_name="chat")
    first, second = engine.connect(), engine.connect()
    first.execute(text("SELECT 1"))
    snapshot = monitor.snapshot()
    assert snapshot.value("database_connections", {"pool": "chat", "state": "used"}) == 2
    assert snapshot.value("database_connections", {"pool": "chat", "state": "idle"}) == 0
    first.close()
    second.close()
    snapshot = monitor.snapshot()
    assert snapshot.value("database_connections", {"pool": "chat", "state": "used"}) == 0
    assert snapshot.value("database_connections", {"pool": "chat", "state": "idle"}) == 2
    engine.dispose()


def test_async_sqlite(monitor: PerformanceMonitor, instrument: Callable[..., None]) -> None:
    instrument()

    async def main() -> None:
        engine = create_async_engine("sqlite+aiosqlite://")
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE events (v int)"))
            await connection.execute(text("INSERT INTO events VALUES (1)"))
            await connection.execute(text("SELECT v FROM events"))
        await engine.dispose()

    asyncio.run(main())
    assert [count(monitor, "events", op) for op in ("create", "insert", "select")] == [1, 1, 1]


def test_postgresql_sync_and_async_with_pool_usage(
    monitor: PerformanceMonitor, instrument: Callable[..., None], pg_table: str
) -> None:
    instrument()
    engine = create_engine(PG_URL, logging_name="pg-sync")
    with engine.begin() as connection:
        connection.execute(text(f"INSERT INTO {pg_table} VALUES (1, 'a')"))
    with engine.begin() as connection, pytest.raises(Exception, match="nope"):
        connection.execute(text(f"SELECT nope FROM {pg_table}"))
    assert monitor.snapshot().value("database_connections", {"pool": "pg-sync", "state": "idle"}) == 1
    engine.dispose()

    async def main() -> list[Any]:
        async_engine = create_async_engine(PG_URL)
        async with async_engine.connect() as connection:
            rows = (await connection.execute(text(f"SELECT name FROM {pg_table}"))).all()
        await async_engine.dispose()
        return list(rows)

    assert asyncio.run(main()) == [("a",)]
    assert count(monitor, pg_table, "insert") == 1
    assert count(monitor, pg_table, "select", "error") == 1
    assert count(monitor, pg_table, "select") == 1


def test_coexists_with_contrib_spans_and_nothing_is_counted_twice(
    monitor: PerformanceMonitor, instrument: Callable[..., None]
) -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor as ContribInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    engine = create_engine("sqlite://")
    ContribInstrumentor().instrument(engine=engine, tracer_provider=provider, enable_commenter=False)
    try:
        instrument()
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE items (v int)"))
            for _ in range(4):
                connection.execute(text("INSERT INTO items VALUES (1)"))
    finally:
        ContribInstrumentor().uninstrument()
    assert count(monitor, "items", "insert") == 4
    assert count(monitor, "items", "create") == 1
    statements = [span for span in spans.get_finished_spans() if span.name != "connect"]
    assert len(statements) == 5


def test_uninstrument_stops_recording(monitor: PerformanceMonitor, instrument: Callable[..., None]) -> None:
    from chat_turbo_metrics_database import SQLAlchemyInstrumentor

    instrument()
    engine = create_engine("sqlite://")
    with engine.connect() as connection:
        connection.execute(text("SELECT 1 FROM (SELECT 1) AS one"))
        SQLAlchemyInstrumentor().uninstrument()
        connection.execute(text("SELECT 1 FROM (SELECT 1) AS one"))
    assert count(monitor, "other", "select") == 1
    SQLAlchemyInstrumentor().instrument(monitor=monitor)  # the fixture uninstruments again


def test_process_wide_monitor_is_followed_across_configure() -> None:
    code = textwrap.dedent(
        """
        import chat_turbo_metrics
        from sqlalchemy import create_engine, text
        from chat_turbo_metrics_database import SQLAlchemyInstrumentor
        first = chat_turbo_metrics.configure(environment="test", metrics_exporters=())
        SQLAlchemyInstrumentor().instrument()
        engine = create_engine("sqlite:///" + __import__("sys").argv[1], logging_name="p")
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            old_pipeline = first.pipeline
            monitor = chat_turbo_metrics.configure(environment="test", metrics_exporters=())
            assert monitor.pipeline is not old_pipeline
            connection.execute(text("SELECT 1"))
            connection.execute(text("SELECT 1"))
            snapshot = monitor.snapshot()
        tags = {"table": "other", "operation": "select", "status": "success"}
        print("count", snapshot.value("database_query_duration_seconds", tags)["count"])
        print("used", snapshot.value("database_connections", {"pool": "p", "state": "used"}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    db = Path(os.environ.get("TMPDIR", "/tmp")) / f"ctm-reconfigure-{os.getpid()}.db"
    try:
        result = subprocess.run(
            [sys.executable, "-c", code, str(db)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        db.unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr
    assert "count 2" in result.stdout  # the new pipeline has the two statements run after configure()
    assert "used 1" in result.stdout  # pool readings followed the monitor into the new pipeline


@pytest.mark.parametrize("bad", [0, -3, True, "10", 2.5])
def test_a_bad_max_tables_fails_at_instrument_time_naming_it(monitor: PerformanceMonitor, bad: object) -> None:
    from chat_turbo_metrics import ConfigurationError
    from chat_turbo_metrics_database import SQLAlchemyInstrumentor

    with pytest.raises(ConfigurationError, match="max_tables=") as error:
        SQLAlchemyInstrumentor().instrument(monitor=monitor, max_tables=bad)
    assert repr(bad) in str(error.value)
    assert not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry


SECRET = "4111111111111111"


@pytest.mark.parametrize(
    "select",
    [
        rf"SELECT E'\' FROM acct_{SECRET} ' AS note, id FROM {{table}}",  # escape string: \' is a quote
        rf"SELECT E'it\'s', 'C:\' AS dir, id FROM {{table}} WHERE name <> 'acct_{SECRET}'",  # standard: \ is \
        f"SELECT $$ FROM acct_{SECRET} $$ AS note, id FROM {{table}}",
        f"SELECT $q$it's FROM acct_{SECRET}$q$ AS note, id FROM {{table}}",
        f"SELECT id FROM {{table}} WHERE name <> 'acct_{SECRET}' /* FROM acct_{SECRET} */",
    ],
    ids=["escape-string", "standard-backslash", "dollar", "tagged-dollar", "comment"],
)
def test_postgresql_literals_never_reach_a_label(
    monitor: PerformanceMonitor, instrument: Callable[..., None], pg_table: str, select: str
) -> None:
    instrument(record_statement=True)
    engine = create_engine(PG_URL)
    with engine.begin() as connection:
        connection.execute(text(f"INSERT INTO {pg_table} VALUES (1, 'ann')"))
        rows = connection.exec_driver_sql(select.format(table=pg_table)).all()  # PostgreSQL reads it as meant
    engine.dispose()

    assert [row[-1] for row in rows] == [1]
    series = [record for record in monitor.snapshot().records() if record["name"] == NAME]
    labels = [record["attributes"] for record in series]
    assert labels  # the INSERT and the SELECT were recorded
    assert SECRET not in repr(labels)
    assert {label["table"] for label in labels} <= {pg_table, "other"}
