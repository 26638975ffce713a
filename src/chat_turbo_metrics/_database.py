"""The seed's ``monitorDatabaseQuery``: run one statement and record ``database_query_duration_seconds``.

The statement runs on the connection given, or on the default one set once with
:func:`set_database_connection`: a SQLAlchemy ``Connection`` or ``Engine`` (``AsyncConnection`` or
``AsyncEngine`` for :func:`monitor_database_query_async`), or a DB-API connection. Parameters given as a
sequence go to the driver as they are (its own placeholders: ``?`` for SQLite, ``%s`` for psycopg);
a mapping binds SQLAlchemy's ``:name`` placeholders. Parameter values are never recorded.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from typing import Any

from chat_turbo_metrics._cache import process_monitor
from chat_turbo_metrics._core.sql import StatementClassifier
from chat_turbo_metrics._monitor import PerformanceMonitor

QUERY_DURATION = "database_query_duration_seconds"
_classifier = StatementClassifier()
_default: dict[str, Any] = {}
_perf_counter = time.perf_counter


def set_database_connection(connection: Any) -> None:
    """Set the connection :func:`monitor_database_query` uses when it is given none (None unsets it).

    Args:
        connection: a SQLAlchemy Engine/Connection (or their async twins), or a DB-API connection.
    """
    if connection is None:
        _default.clear()
    else:
        _default["connection"] = connection


def _labels(sql: Any, table: str | None, operation: str | None) -> dict[str, Any]:
    if table is None or operation is None:
        found_operation, found_table = _classifier.classify(str(sql))
        table = table if table is not None else found_table
        operation = operation if operation is not None else found_operation
    return {"table": table, "operation": operation, "status": "success"}


def _connection(connection: Any) -> Any:
    found = connection if connection is not None else _default.get("connection")
    if found is None:
        raise ValueError("monitor_database_query: no connection= given and no default set (set_database_connection)")
    return found


def _run_sqlalchemy(connection: Any, sql: Any, params: Any) -> Any:
    from sqlalchemy import text

    if isinstance(sql, str) and (params is None or not isinstance(params, Mapping)):
        return connection.exec_driver_sql(sql, tuple(params) if params is not None else ())
    return connection.execute(text(sql) if isinstance(sql, str) else sql, params)


def _buffered(result: Any) -> Any:
    """A result that outlives its connection: rows are read now (an Engine gives its connection back)."""
    return result.freeze()() if result.returns_rows else result


def _execute(connection: Any, sql: Any, params: Any) -> Any:
    from sqlalchemy.engine import Connection, Engine

    if isinstance(connection, Engine):
        with connection.begin() as bound:
            return _buffered(_run_sqlalchemy(bound, sql, params))
    if isinstance(connection, Connection):
        return _run_sqlalchemy(connection, sql, params)
    cursor = connection.cursor()
    cursor.execute(sql, params if params is not None else ())
    return cursor


async def _execute_async(connection: Any, sql: Any, params: Any) -> Any:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    if isinstance(connection, AsyncEngine):
        async with connection.begin() as bound:
            return _buffered(await _run_async_sqlalchemy(bound, sql, params))
    if isinstance(connection, AsyncConnection):
        return await _run_async_sqlalchemy(connection, sql, params)
    cursor = connection.cursor()
    if inspect.isawaitable(cursor):  # aiosqlite
        cursor = await cursor
    await cursor.execute(sql, params if params is not None else ())
    return cursor


async def _run_async_sqlalchemy(connection: Any, sql: Any, params: Any) -> Any:
    from sqlalchemy import text

    if isinstance(sql, str) and (params is None or not isinstance(params, Mapping)):
        return await connection.exec_driver_sql(sql, tuple(params) if params is not None else ())
    return await connection.execute(text(sql) if isinstance(sql, str) else sql, params)


def monitor_database_query(
    sql: Any,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    table: str | None = None,
    operation: str | None = None,
    connection: Any = None,
    monitor: PerformanceMonitor | None = None,
) -> Any:
    """Run ``sql`` and record its duration in ``database_query_duration_seconds`` {table, operation, status}.

    Example:
        >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
        >>> monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))
        >>> from sqlalchemy import create_engine
        >>> engine = create_engine("sqlite://")
        >>> rows = monitor_database_query(
        ...     "SELECT ? + 1", [41], table="none", operation="select", connection=engine, monitor=monitor
        ... )
        >>> rows.all()
        [(42,)]

    Args:
        sql: the statement (text, or a SQLAlchemy construct on SQLAlchemy connections).
        params: a sequence for the driver's own placeholders, or a mapping for ``:name`` placeholders.
        table: the ``table`` label; derived from the statement when omitted (bounded: ``other`` past 100).
        operation: the ``operation`` label (``select``, ...); derived from the statement when omitted.
        connection: where to run it; default: the one given to :func:`set_database_connection`.
        monitor: record into this monitor instead of the process-wide one.

    Returns:
        The driver's result: a SQLAlchemy ``Result`` (read in full when run on an ``Engine``, which runs
        the statement in its own committed transaction) or the DB-API cursor.

    Raises:
        ValueError: no connection given and no default set.
        Exception: whatever the database raised, unchanged (recorded with ``status="error"`` first).
    """
    bound = _connection(connection)
    tags = _labels(sql, table, operation)
    start = _perf_counter()
    try:
        result = _execute(bound, sql, params)
    except Exception:
        tags["status"] = "error"
        raise
    finally:
        (monitor or process_monitor()).record_histogram(QUERY_DURATION, _perf_counter() - start, tags)
    return result


async def monitor_database_query_async(
    sql: Any,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    table: str | None = None,
    operation: str | None = None,
    connection: Any = None,
    monitor: PerformanceMonitor | None = None,
) -> Any:
    """The async twin of :func:`monitor_database_query`: ``await`` it with an ``AsyncEngine``/``AsyncConnection``.

    Also takes an async DB-API-style connection (psycopg ``AsyncConnection``, aiosqlite) whose cursors
    have an awaitable ``execute``.

    Example:
        >>> import asyncio
        >>> from sqlalchemy.ext.asyncio import create_async_engine
        >>> async def main():
        ...     engine = create_async_engine("sqlite+aiosqlite://")
        ...     rows = await monitor_database_query_async(
        ...         "SELECT ? * 2", [21], table="none", operation="select", connection=engine, monitor=monitor
        ...     )
        ...     await engine.dispose()
        ...     return rows.all()
        >>> asyncio.run(main())
        [(42,)]

    Args:
        sql: the statement (text, or a SQLAlchemy construct on SQLAlchemy connections).
        params: a sequence for the driver's own placeholders, or a mapping for ``:name`` placeholders.
        table: the ``table`` label; derived from the statement when omitted.
        operation: the ``operation`` label; derived from the statement when omitted.
        connection: where to run it; default: the one given to :func:`set_database_connection`.
        monitor: record into this monitor instead of the process-wide one.

    Returns:
        The driver's result, as for :func:`monitor_database_query`.

    Raises:
        ValueError: no connection given and no default set.
        Exception: whatever the database raised, unchanged (recorded with ``status="error"`` first).
    """
    bound = _connection(connection)
    tags = _labels(sql, table, operation)
    start = _perf_counter()
    try:
        result = await _execute_async(bound, sql, params)
    except Exception:
        tags["status"] = "error"
        raise
    finally:
        (monitor or process_monitor()).record_histogram(QUERY_DURATION, _perf_counter() - start, tags)
    return result
