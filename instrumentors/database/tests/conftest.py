"""Fixtures of the database instrumentor's tests: private monitors, PostgreSQL, an instrumented SQLAlchemy."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_database import SQLAlchemyInstrumentor

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


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
