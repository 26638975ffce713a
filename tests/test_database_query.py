"""monitor_database_query and its async twin on SQLite and PostgreSQL, SQLAlchemy and DB-API connections."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine

from chat_turbo_metrics import (
    PerformanceMonitor,
    monitor_database_query,
    monitor_database_query_async,
    set_database_connection,
)
from conftest import port_open, require

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NAME = "database_query_duration_seconds"


def count(monitor: PerformanceMonitor, table: str, operation: str, status: str = "success") -> int:
    value = monitor.snapshot().value(NAME, {"table": table, "operation": operation, "status": status})
    return 0 if value is None else int(value["count"])


@pytest.fixture
def pg_table() -> Iterator[str]:
    require(port_open("127.0.0.1", 5432), "PostgreSQL is not running at 127.0.0.1:5432")
    table = f"users_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_URL)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {table} (id int primary key, name text)"))
    yield table
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def test_engine_runs_the_statement_returns_rows_and_records_labels(monitor: PerformanceMonitor) -> None:
    engine = create_engine("sqlite://")
    monitor_database_query("CREATE TABLE users (id int, name text)", connection=engine, monitor=monitor)
    monitor_database_query("INSERT INTO users VALUES (?, ?)", [1, "ada"], connection=engine, monitor=monitor)
    rows = monitor_database_query(
        "SELECT * FROM users WHERE id = ?", [1], table="users", operation="select", connection=engine, monitor=monitor
    )
    assert rows.all() == [(1, "ada")]
    assert count(monitor, "users", "select") == 1
    assert count(monitor, "users", "insert") == 1  # labels derived from the statement when not given
    assert count(monitor, "users", "create") == 1


def test_connection_with_named_parameters_stays_in_the_callers_transaction(monitor: PerformanceMonitor) -> None:
    engine = create_engine("sqlite://")
    with engine.connect() as connection:
        monitor_database_query("CREATE TABLE t (v int)", connection=connection, monitor=monitor)
        connection.commit()
        result = monitor_database_query("INSERT INTO t VALUES (:v)", {"v": 5}, connection=connection, monitor=monitor)
        assert result.rowcount == 1
        connection.rollback()
        assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 0


def test_error_is_recorded_and_reraised_unchanged(monitor: PerformanceMonitor) -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(OperationalError, match="no such table: missing"):
        monitor_database_query("SELECT * FROM missing", connection=engine, monitor=monitor)
    assert count(monitor, "missing", "select", "error") == 1
    assert count(monitor, "missing", "select") == 0


def test_dbapi_connection_returns_the_cursor(monitor: PerformanceMonitor) -> None:
    connection = sqlite3.connect(":memory:")
    cursor = monitor_database_query("SELECT ? * 2", (21,), table="none", operation="select", connection=connection,
                                    monitor=monitor)  # fmt: skip
    assert cursor.fetchone() == (42,)
    assert count(monitor, "none", "select") == 1
    connection.close()


def test_default_connection_is_used_when_none_is_given(monitor: PerformanceMonitor) -> None:
    with pytest.raises(ValueError, match="no connection"):
        monitor_database_query("SELECT 1", monitor=monitor)
    set_database_connection(create_engine("sqlite://"))
    try:
        assert monitor_database_query("SELECT 7", monitor=monitor).scalar() == 7
    finally:
        set_database_connection(None)
    assert count(monitor, "other", "select") == 1


def test_async_engine_sqlite(monitor: PerformanceMonitor) -> None:
    async def main() -> list[Any]:
        engine = create_async_engine("sqlite+aiosqlite://")
        try:
            async with engine.connect() as connection:
                await monitor_database_query_async("CREATE TABLE a (v int)", connection=connection, monitor=monitor)
                await monitor_database_query_async("INSERT INTO a VALUES (?)", [3], connection=connection,
                                                   monitor=monitor)  # fmt: skip
                result = await monitor_database_query_async("SELECT v FROM a", connection=connection, monitor=monitor)
                rows = list(result.all())
            with pytest.raises(OperationalError):
                await monitor_database_query_async("SELECT * FROM nowhere", connection=engine, monitor=monitor)
            return rows
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == [(3,)]
    assert count(monitor, "a", "select") == 1
    assert count(monitor, "nowhere", "select", "error") == 1


def test_postgresql_sync_engine_and_error(monitor: PerformanceMonitor, pg_table: str) -> None:
    engine = create_engine(PG_URL)
    monitor_database_query(f"INSERT INTO {pg_table} VALUES (%s, %s)", [1, "ada"], connection=engine, monitor=monitor)
    rows = monitor_database_query(f"SELECT name FROM {pg_table} WHERE id = :id", {"id": 1}, connection=engine,
                                  monitor=monitor)  # fmt: skip
    assert rows.all() == [("ada",)]
    with pytest.raises(ProgrammingError):
        monitor_database_query(f"SELECT nope FROM {pg_table}", connection=engine, monitor=monitor)
    engine.dispose()
    assert count(monitor, pg_table, "insert") == 1
    assert count(monitor, pg_table, "select") == 1
    assert count(monitor, pg_table, "select", "error") == 1


def test_postgresql_async_engine_and_dbapi(monitor: PerformanceMonitor, pg_table: str) -> None:
    import psycopg

    async def main() -> Any:
        engine = create_async_engine(PG_URL)
        try:
            await monitor_database_query_async(f"INSERT INTO {pg_table} VALUES (%s, %s)", [2, "bob"],
                                               connection=engine, monitor=monitor)  # fmt: skip
        finally:
            await engine.dispose()
        async with await psycopg.AsyncConnection.connect("postgresql://postgres@127.0.0.1:5432/test") as raw:
            cursor = await monitor_database_query_async(f"SELECT name FROM {pg_table}", connection=raw,
                                                        monitor=monitor)  # fmt: skip
            return await cursor.fetchall()

    assert asyncio.run(main()) == [("bob",)]
    assert count(monitor, pg_table, "insert") == 1
    assert count(monitor, pg_table, "select") == 1
