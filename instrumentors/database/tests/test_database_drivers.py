"""psycopg, psycopg2 and asyncpg used directly, against the real PostgreSQL (db ``test``): the SQLAlchemy path's
labels, errors, cancellation, and no statement counted twice when SQLAlchemy runs on top."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_database import (
    AsyncpgInstrumentor,
    Psycopg2Instrumentor,
    PsycopgInstrumentor,
    SQLAlchemyInstrumentor,
)

DSN = "host=127.0.0.1 port=5432 dbname=test"
URL = "postgresql://127.0.0.1:5432/test"
NAME = "database_query_duration_seconds"


def _postgres_up() -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", 5432)) == 0


pytestmark = pytest.mark.skipif(not _postgres_up(), reason="PostgreSQL is not running at 127.0.0.1:5432")


@pytest.fixture
def db_monitor() -> Iterator[PerformanceMonitor]:
    monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=()))
    yield monitor
    monitor.shutdown()


@pytest.fixture
def table() -> Iterator[str]:
    """A table of this test's own (``items_<hex>``), dropped after it."""
    import psycopg

    name = f"items_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(DSN, autocommit=True) as connection:
        connection.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, email text)")
    yield name
    with psycopg.connect(DSN, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def instrumented(db_monitor: PerformanceMonitor) -> Iterator[Callable[..., None]]:
    done: list[Any] = []

    def use(cls: Any, **kwargs: Any) -> None:
        kwargs.setdefault("monitor", db_monitor)
        cls().instrument(**kwargs)
        done.append(cls())

    yield use
    for instrumentor in done:
        instrumentor.uninstrument()


def counts(monitor: PerformanceMonitor) -> dict[tuple[str, str, str], int]:
    """{(operation, table, status): count} of every statement series."""
    return {
        (r["attributes"]["operation"], r["attributes"]["table"], r["attributes"]["status"]): r["count"]
        for r in monitor.snapshot().records()
        if r["name"] == NAME
    }


# --- psycopg 3 ------------------------------------------------------------------------------------------------


def test_psycopg_sync_statements_errors_and_literals(
    instrumented: Callable[..., None], db_monitor: PerformanceMonitor, table: str
) -> None:
    import psycopg
    from psycopg import sql

    instrumented(PsycopgInstrumentor)
    with psycopg.connect(DSN) as connection:
        connection.execute(f"INSERT INTO {table} VALUES (1, 'secret@example.com')")
        with connection.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(2, "b"), (3, "c")])
            cursor.execute(sql.SQL("SELECT email FROM {} WHERE id = %s").format(sql.Identifier(table)), (1,))
            assert cursor.fetchone() == ("secret@example.com",)
        connection.commit()
        with pytest.raises(psycopg.errors.UndefinedTable):
            connection.execute("SELECT * FROM no_such_table_i24")
        connection.rollback()
        with connection.cursor(name="server_side") as server_side:  # a ServerCursor
            server_side.execute(f"SELECT id FROM {table} ORDER BY id")
            assert [row[0] for row in server_side] == [1, 2, 3]
    assert counts(db_monitor) == {
        ("insert", table, "success"): 2,
        ("select", table, "success"): 2,
        ("select", "no_such_table_i24", "error"): 1,
    }
    assert "secret" not in db_monitor.snapshot().to_prometheus()


def test_psycopg_async_and_cancellation(
    instrumented: Callable[..., None], db_monitor: PerformanceMonitor, table: str
) -> None:
    import psycopg

    instrumented(PsycopgInstrumentor)

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as connection:
            await connection.execute(f"INSERT INTO {table} VALUES (1, 'a')")
            cursor = await connection.execute(f"SELECT count(*) FROM {table}")
            assert await cursor.fetchone() == (1,)
            task = asyncio.ensure_future(connection.execute("SELECT pg_sleep(5)"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert counts(db_monitor) == {
        ("insert", table, "success"): 1,
        ("select", table, "success"): 1,
        ("select", "other", "error"): 1,  # the cancelled pg_sleep: no FROM, an error
    }


def test_record_statement_strips_literals_and_bad_keywords_raise(
    instrumented: Callable[..., None], db_monitor: PerformanceMonitor, table: str
) -> None:
    import psycopg

    with pytest.raises(ConfigurationError, match="max_tables"):
        PsycopgInstrumentor().instrument(monitor=db_monitor, max_tables=0)
    PsycopgInstrumentor().uninstrument()
    instrumented(PsycopgInstrumentor, record_statement=True)
    with psycopg.connect(DSN) as connection:
        connection.execute(f"SELECT id FROM {table} WHERE email = 'secret@example.com'")
    (record,) = [r for r in db_monitor.snapshot().records() if r["name"] == NAME]
    assert record["attributes"]["statement"] == f"SELECT id FROM {table} WHERE email = ?"


def test_uninstrument_restores_psycopg_and_asyncpg() -> None:
    import asyncpg.connection
    import psycopg
    import psycopg2

    before = (
        psycopg.Cursor.execute,
        psycopg.AsyncCursor.executemany,
        asyncpg.connection.Connection.fetch,
        psycopg2.connect,
    )
    for cls in (PsycopgInstrumentor, AsyncpgInstrumentor, Psycopg2Instrumentor):
        cls().instrument()
    assert psycopg.Cursor.execute is not before[0]
    for cls in (PsycopgInstrumentor, AsyncpgInstrumentor, Psycopg2Instrumentor):
        cls().uninstrument()
    assert (
        psycopg.Cursor.execute,
        psycopg.AsyncCursor.executemany,
        asyncpg.connection.Connection.fetch,
        psycopg2.connect,
    ) == before


# --- psycopg2 -------------------------------------------------------------------------------------------------


def test_psycopg2_cursor_factories_errors_and_uninstrument(
    instrumented: Callable[..., None], db_monitor: PerformanceMonitor, table: str
) -> None:
    import psycopg2
    import psycopg2.extras

    instrumented(Psycopg2Instrumentor)
    connection = psycopg2.connect(DSN)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "secret@example.com"))
            cursor.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(2, "b"), (3, "c")])
        with connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
            cursor.execute(f"SELECT email FROM {table} WHERE id = %s", (1,))
            assert cursor.fetchone() == {"email": "secret@example.com"}
        with connection.cursor("reader") as cursor:  # a named (server-side) cursor, its name given positionally
            cursor.execute(f"SELECT id FROM {table} ORDER BY id")
            assert [row[0] for row in cursor.fetchall()] == [1, 2, 3]
        with connection.cursor() as cursor:
            cursor.execute(query=f"SELECT email FROM {table} WHERE id = %s", vars=(2,))
            assert cursor.fetchone() == ("b",)
        with connection.cursor() as cursor, pytest.raises(psycopg2.errors.SyntaxError):
            cursor.execute("SELEKT 1")
        connection.rollback()
        Psycopg2Instrumentor().uninstrument()  # the open connection stops measuring too
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {table}")
        Psycopg2Instrumentor().instrument(monitor=db_monitor)
    finally:
        connection.close()
    assert counts(db_monitor) == {
        ("insert", table, "success"): 2,
        ("select", table, "success"): 3,
        ("other", "other", "error"): 1,
    }
    assert "secret" not in db_monitor.snapshot().to_prometheus()


def test_psycopg2_cursor_options_pass_through_and_repeats_follow_configure(
    instrumented: Callable[..., None], db_monitor: PerformanceMonitor, table: str
) -> None:
    """``cursor()``'s own parameters reach psycopg2 as given (by name or position), with psycopg2's own errors, and
    a statement repeated on one cursor and across cursors is counted every time."""
    import psycopg2

    instrumented(Psycopg2Instrumentor)
    connection = psycopg2.connect(DSN)
    try:
        with connection.cursor("held", None, True, True) as cursor:  # name, cursor_factory, withhold, scrollable
            assert (cursor.name, cursor.withhold, cursor.scrollable) == ("held", True, True)
            cursor.execute(f"SELECT id FROM {table}")
        connection.commit()
        with connection.cursor(withhold=False) as cursor:
            for _ in range(3):
                cursor.execute(f"SELECT id FROM {table}")
        with pytest.raises(psycopg2.ProgrammingError):  # as without us: not on an unnamed cursor
            connection.cursor(scrollable=False)
        with pytest.raises(TypeError):
            connection.cursor(nonsense=1)
        for _ in range(2):
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT id FROM {table}")
    finally:
        connection.close()
    assert counts(db_monitor) == {("select", table, "success"): 6}


# --- asyncpg --------------------------------------------------------------------------------------------------


def test_asyncpg_connection_pool_errors_and_cancellation(
    instrumented: Callable[..., None], db_monitor: PerformanceMonitor, table: str
) -> None:
    import asyncpg

    instrumented(AsyncpgInstrumentor)

    async def run() -> None:
        connection = await asyncpg.connect(URL)
        try:
            await connection.execute(f"INSERT INTO {table} VALUES (1, 'secret@example.com')")
            await connection.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(2, "b"), (3, "c")])
            assert await connection.fetchval(f"SELECT count(*) FROM {table}") == 3
            assert (await connection.fetchrow(f"SELECT email FROM {table} WHERE id = $1", 1))["email"] == (
                "secret@example.com"
            )
            with pytest.raises(asyncpg.UndefinedTableError):
                await connection.fetch("SELECT * FROM no_such_table_i24")
            task = asyncio.ensure_future(connection.execute("SELECT pg_sleep(5)"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await connection.close()
        pool = await asyncpg.create_pool(URL, min_size=1, max_size=2)
        try:
            assert len(await pool.fetch(f"SELECT id FROM {table}")) == 3
        finally:
            await pool.close()

    asyncio.run(run())
    assert counts(db_monitor) == {
        ("insert", table, "success"): 2,
        ("select", table, "success"): 3,
        ("select", "no_such_table_i24", "error"): 1,
        ("select", "other", "error"): 1,
        ("select", "other", "success"): 1,  # the pool's own reset of the connection it took back
    }
    assert "secret" not in db_monitor.snapshot().to_prometheus()


# --- SQLAlchemy on top ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_sqlalchemy_instrumentor", [True, False])
def test_sqlalchemy_on_psycopg_and_psycopg2_counts_each_statement_once(
    instrumented: Callable[..., None], db_monitor: PerformanceMonitor, table: str, with_sqlalchemy_instrumentor: bool
) -> None:
    from sqlalchemy import create_engine, text

    if with_sqlalchemy_instrumentor:
        instrumented(SQLAlchemyInstrumentor)
    instrumented(PsycopgInstrumentor)
    instrumented(Psycopg2Instrumentor)
    for driver in ("psycopg", "psycopg2"):
        engine = create_engine(f"postgresql+{driver}://127.0.0.1:5432/test")
        with engine.connect() as connection:
            connection.execute(text(f"SELECT id FROM {table}"))
        engine.dispose()
    found = counts(db_monitor)
    assert found[("select", table, "success")] == 2  # one per engine, whoever recorded it


@pytest.mark.parametrize("with_sqlalchemy_instrumentor", [True, False])
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_sqlalchemy_async_on_asyncpg_and_psycopg_counts_each_statement_once(
    instrumented: Callable[..., None],
    db_monitor: PerformanceMonitor,
    table: str,
    driver: str,
    with_sqlalchemy_instrumentor: bool,
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    if with_sqlalchemy_instrumentor:
        instrumented(SQLAlchemyInstrumentor)
    instrumented(AsyncpgInstrumentor)
    instrumented(PsycopgInstrumentor)

    async def run() -> None:
        engine = create_async_engine(f"postgresql+{driver}://127.0.0.1:5432/test")
        async with engine.connect() as connection:
            await connection.execute(text(f"SELECT id FROM {table}"))
            await connection.execute(text(f"SELECT email FROM {table} WHERE id = :id"), {"id": 1})
        await engine.dispose()

    asyncio.run(run())
    # SQLAlchemy's asyncpg dialect runs each statement through a PreparedStatement: without the SQLAlchemy
    # instrumentor, the driver instrumentor measures it there.
    assert counts(db_monitor)[("select", table, "success")] == 2


def test_asyncpg_prepared_statements_and_keyword_arguments(
    instrumented: Callable[..., None], db_monitor: PerformanceMonitor, table: str
) -> None:
    import asyncpg

    instrumented(AsyncpgInstrumentor)

    async def work(connection: Any) -> None:
        await connection.executemany(command=f"INSERT INTO {table} VALUES ($1, $2)", args=[(1, "a"), (2, "b")])
        assert await connection.fetchval(query=f"SELECT count(*) FROM {table}") == 2
        statement = await connection.prepare(f"SELECT email FROM {table} WHERE id = $1")
        assert await statement.fetchval(1) == "a"
        assert [row["email"] for row in await statement.fetch(2)] == ["b"]
        assert (await statement.fetchrow(1))["email"] == "a"
        update = await connection.prepare(f"UPDATE {table} SET email = $2 WHERE id = $1")
        await update.executemany([(1, "c"), (2, "d")])
        failing = await connection.prepare("SELECT 1 / $1::int")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await failing.fetchval(0)

    async def on_a_connection() -> None:
        connection = await asyncpg.connect(URL)
        await work(connection)
        await connection.close()

    asyncio.run(on_a_connection())
    assert counts(db_monitor) == {
        ("insert", table, "success"): 1,
        ("select", table, "success"): 4,  # the count, then three reads through the prepared statement
        ("update", table, "success"): 1,
        ("select", "other", "error"): 1,
    }


# --- opentelemetry-instrument ---------------------------------------------------------------------------------

SCRIPT = """
import asyncio, json

import asyncpg, psycopg, psycopg2

from chat_turbo_metrics import PerformanceMonitor

with psycopg.connect("host=127.0.0.1 dbname=test") as connection:
    connection.execute("SELECT 1 FROM pg_class LIMIT 1")
connection = psycopg2.connect("host=127.0.0.1 dbname=test")
connection.cursor().execute("SELECT 2 FROM pg_class LIMIT 1")
connection.close()

async def main():
    connection = await asyncpg.connect("postgresql://127.0.0.1/test")
    await connection.fetch("SELECT 3 FROM pg_class LIMIT 1")
    await connection.close()

asyncio.run(main())
records = PerformanceMonitor.get_instance().snapshot().records()
print(json.dumps([[r["attributes"], r["count"]] for r in records if r["name"] == "database_query_duration_seconds"]))
"""


@pytest.mark.parametrize("disabled", ["", "chat_turbo_psycopg2"])
def test_opentelemetry_instrument_measures_the_drivers_with_no_code_change(tmp_path: Any, disabled: str) -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "db_script.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    # contrib's (benchmarks, coexistence tests): its Redis and SQLAlchemy ones would import their libraries at start-up
    contrib = "psycopg,psycopg2,asyncpg,redis,sqlalchemy"
    env.update(CHAT_TURBO_ENV="test", OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=f"{contrib},{disabled}")
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    done = subprocess.run(
        [instrument, sys.executable, "db_script.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    expected = 2 if disabled else 3  # psycopg, (psycopg2), asyncpg
    assert found == [[{"table": "pg_class", "operation": "select", "status": "success"}, expected]]


def test_drivers_bind_their_series_once_per_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Statements reuse the first one's handles; a configure() (a new recorder) makes them bind once more."""
    import psycopg
    import psycopg2

    import chat_turbo_metrics
    from chat_turbo_metrics_database._drivers import Statements

    binds: list[object] = []
    real = Statements._rebind

    def counting(self: Statements, monitor: PerformanceMonitor) -> None:
        binds.append(monitor)
        real(self, monitor)

    monkeypatch.setattr(Statements, "_rebind", counting)
    chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)
    PsycopgInstrumentor().instrument()
    Psycopg2Instrumentor().instrument()
    try:
        with psycopg.connect(DSN) as connection:
            for _ in range(5):
                connection.execute("SELECT 1 FROM pg_class LIMIT 1")
        classic = psycopg2.connect(DSN)
        for _ in range(5):
            classic.cursor().execute("SELECT 2 FROM pg_class LIMIT 1")
        assert len(binds) == 2  # one per instrumentor
        chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)
        for _ in range(3):
            classic.cursor().execute("SELECT 2 FROM pg_class LIMIT 1")
        classic.close()
        assert len(binds) == 3
        tags = {"table": "pg_class", "operation": "select", "status": "success"}
        assert PerformanceMonitor.get_instance().snapshot().value(NAME, tags)["count"] == 3
    finally:
        PsycopgInstrumentor().uninstrument()
        Psycopg2Instrumentor().uninstrument()
        chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)


def test_semconv_names_under_the_database_switch(table: str) -> None:
    """``database/dup``: the conventions' db.client.operation.duration beside the seed's histogram, as SQLAlchemy's."""
    import asyncpg
    import psycopg

    monitor = PerformanceMonitor(
        MonitoringConfig(environment="test", metrics_exporters=(), semconv_stability_opt_in=("database/dup",))
    )
    PsycopgInstrumentor().instrument(monitor=monitor)
    AsyncpgInstrumentor().instrument(monitor=monitor)
    try:
        with psycopg.connect(DSN) as connection:
            connection.execute(f"SELECT id FROM {table}")
            with pytest.raises(psycopg.errors.UndefinedTable):
                connection.execute("SELECT id FROM no_such_table_i24")

        async def run() -> None:
            connection = await asyncpg.connect(URL)
            await connection.fetch(f"SELECT id FROM {table}")
            task = asyncio.ensure_future(connection.execute("SELECT pg_sleep(5)"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await connection.close()

        asyncio.run(run())
        semconv = {
            frozenset(record["attributes"].items()): record["count"]
            for record in monitor.snapshot().records()
            if record["name"] == "db.client.operation.duration"
        }
        system = ("db.system.name", "postgresql")
        assert semconv == {
            frozenset({system, ("db.operation.name", "SELECT"), ("db.collection.name", table)}): 2,
            frozenset(
                {
                    system,
                    ("db.operation.name", "SELECT"),
                    ("db.collection.name", "no_such_table_i24"),
                    ("error.type", "UndefinedTable"),
                }
            ): 1,
            frozenset({system, ("db.operation.name", "SELECT"), ("error.type", "CancelledError")}): 1,
        }
        assert counts(monitor) == {
            ("select", table, "success"): 2,
            ("select", "no_such_table_i24", "error"): 1,
            ("select", "other", "error"): 1,
        }
        text = monitor.snapshot().to_prometheus()
        assert 'db_client_operation_duration_seconds_count{db_collection_name="' + table in text
    finally:
        PsycopgInstrumentor().uninstrument()
        AsyncpgInstrumentor().uninstrument()
        monitor.shutdown()
