"""The database and cache instrumentors under the semantic conventions' names, against real PostgreSQL and Redis:
the values the conventions' attributes carry, a reconfiguration that switches the names, and failures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat_turbo_metrics import PerformanceMonitor, configure
from conftest import make_config, port_open, require

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DURATION = "db.client.operation.duration"


@pytest.fixture
def database_monitor() -> Iterator[PerformanceMonitor]:
    monitor = PerformanceMonitor(make_config(semconv_stability_opt_in=("database",), self_telemetry=False))
    yield monitor
    monitor.shutdown()


@pytest.fixture
def postgres() -> Iterator[Any]:
    require(port_open("127.0.0.1", 5432), "PostgreSQL is not running at 127.0.0.1:5432")
    from sqlalchemy import create_engine

    engine = create_engine(PG_URL, pool_size=3, pool_pre_ping=False)
    yield engine
    engine.dispose()


def test_postgresql_statements_carry_the_conventions_attributes(
    database_monitor: PerformanceMonitor, postgres: Any
) -> None:
    from sqlalchemy import exc, text

    from chat_turbo_metrics_database import SQLAlchemyInstrumentor

    table = f"semconv_{uuid.uuid4().hex[:8]}"
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(monitor=database_monitor, record_statement=True)
    try:
        with postgres.begin() as connection:
            connection.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, email text)"))
            connection.execute(text(f"INSERT INTO {table} VALUES (1, 'a@example.com')"))
            connection.execute(text(f"SELECT email FROM {table} WHERE id = 1"))
            connection.execute(text(f"SELECT email FROM {table} WHERE id = 2"))
        with pytest.raises(exc.IntegrityError), postgres.begin() as connection:
            connection.execute(text(f"INSERT INTO {table} VALUES (1, 'b@example.com')"))
        held = postgres.connect()  # one connection checked out while the pool is read
        snapshot = database_monitor.snapshot()
        held.close()
        with postgres.begin() as connection:
            connection.execute(text(f"DROP TABLE {table}"))
    finally:
        instrumentor.uninstrument()

    base = {"db.system.name": "postgresql", "db.collection.name": table}
    assert snapshot.value(DURATION, {**base, "db.operation.name": "SELECT"})["count"] == 2
    assert snapshot.value(DURATION, {**base, "db.operation.name": "INSERT"})["count"] == 1
    failed = {**base, "db.operation.name": "INSERT", "error.type": "UniqueViolation"}
    assert snapshot.value(DURATION, failed)["count"] == 1
    durations = [r for r in snapshot.records() if r["name"] == DURATION]
    assert {r["unit"] for r in durations} == {"s"}
    # record_statement adds the seed's statement label, never an attribute of the conventions' metric
    assert all("statement" not in r["attributes"] and "db.query.text" not in r["attributes"] for r in durations)
    assert "database_query_duration_seconds" not in snapshot.names()  # "database": the conventions' names only
    pool = {r["attributes"]["db.client.connection.state"]: r["value"] for r in snapshot.records()
            if r["name"] == "db.client.connection.count"}  # fmt: skip
    assert pool == {"used": 1, "idle": 0}
    labels = {r["attributes"]["db.client.connection.pool.name"] for r in snapshot.records()
              if r["name"] == "db.client.connection.count"}  # fmt: skip
    assert labels == {"postgresql://127.0.0.1:5432/test"}


def test_configure_switches_the_names_of_an_instrumented_engine(tmp_path: Path) -> None:
    """The instrumentor records into the process-wide monitor; reconfigured with the opt-in, it changes names."""
    from sqlalchemy import create_engine, text

    from chat_turbo_metrics_database import SQLAlchemyInstrumentor

    monitor = configure(environment="test", metrics_exporters=(), self_telemetry=False)
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument()
    engine = create_engine(f"sqlite:///{tmp_path / 'switch.db'}")  # a file: a QueuePool, whose counts are read
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert "database_query_duration_seconds" in monitor.snapshot().names()
        assert DURATION not in monitor.snapshot().names()
        configure(
            environment="test", metrics_exporters=(), self_telemetry=False, semconv_stability_opt_in="database/dup"
        )
        # the pool is read under both names at the first collection, before any statement
        pool = monitor.snapshot()
        label = f"sqlite:///{tmp_path / 'switch.db'}"
        assert pool.value("db.client.connection.count", {"db.client.connection.pool.name": label,
                                                         "db.client.connection.state": "idle"}) == 1  # fmt: skip
        assert pool.value("database_connections", {"pool": label, "state": "idle"}) == 1
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        snapshot = monitor.snapshot()
        assert snapshot.value(DURATION, {"db.system.name": "sqlite", "db.operation.name": "SELECT"})["count"] == 1
        assert (
            snapshot.value(
                "database_query_duration_seconds", {"table": "other", "operation": "select", "status": "success"}
            )["count"]
            == 1
        )
        units = {r["name"]: r["unit"] for r in snapshot.records()}
        assert units[DURATION] == "s"  # declared again on the new recorder
    finally:
        engine.dispose()
        instrumentor.uninstrument()
        configure(environment="test", metrics_exporters=(), self_telemetry=False)


@pytest.fixture
def redis_client() -> Iterator[Any]:
    require(port_open("127.0.0.1", 6379), "Redis is not running at 127.0.0.1:6379")
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    yield client
    client.close()


def test_redis_commands_as_the_conventions_database_client(
    database_monitor: PerformanceMonitor, redis_client: Any
) -> None:
    import redis

    from chat_turbo_metrics_cache import RedisInstrumentor

    key = f"semconv:{uuid.uuid4().hex}"
    instrumentor = RedisInstrumentor()
    instrumentor.instrument(monitor=database_monitor)
    try:
        redis_client.set(key, "1")
        redis_client.get(key)
        redis_client.get(key + ":absent")
        redis_client.set(key + ":text", "not a number")
        with pytest.raises(redis.ResponseError):
            redis_client.incrby(key + ":text", 1)
        pipe = redis_client.pipeline()
        pipe.get(key)
        pipe.get(key + ":gone")
        pipe.execute()
        redis_client.delete(key, key + ":text")
    finally:
        instrumentor.uninstrument()
    snapshot = database_monitor.snapshot()
    redis_tags = {"db.system.name": "redis"}
    assert snapshot.value(DURATION, {**redis_tags, "db.operation.name": "GET"})["count"] == 2
    assert snapshot.value(DURATION, {**redis_tags, "db.operation.name": "SET"})["count"] == 2
    assert snapshot.value(DURATION, {**redis_tags, "db.operation.name": "PIPELINE"})["count"] == 1
    failed = {**redis_tags, "db.operation.name": "INCRBY", "error.type": "ResponseError"}
    assert snapshot.value(DURATION, failed)["count"] == 1
    assert "redis_command_duration_seconds" not in snapshot.names()
    # hits and misses have no convention: counted as always (the GET, MGET-free lookups and the pipeline's)
    assert snapshot.value("cache_hits", {"cache": "semconv"}) == 2
    assert snapshot.value("cache_misses", {"cache": "semconv"}) == 2
    buckets = snapshot.value(DURATION, {**redis_tags, "db.operation.name": "GET"})["bucket_bounds"]
    assert tuple(buckets) == (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
