"""``instrument()`` imports no database library: each is patched when (and if) the application imports it.

Each test runs in a fresh interpreter (this one has imported them all long ago), against the real PostgreSQL
(db ``test``): a statement through each driver, and one through SQLAlchemy on psycopg2, whose driver SQLAlchemy's
dialect imports itself at ``create_engine()``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from typing import Any

import pytest


def _postgres_up() -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", 5432)) == 0


pytestmark = pytest.mark.skipif(not _postgres_up(), reason="PostgreSQL is not running at 127.0.0.1:5432")

LIBRARIES = ("sqlalchemy", "psycopg", "psycopg2", "asyncpg")
OURS = {"pg_class", "pg_database", "pg_roles", "pg_proc"}  # the tables of the script's own statements
SCRIPT = """
import asyncio, json, sys

import chat_turbo_metrics_database as database
from chat_turbo_metrics import PerformanceMonitor

LIBRARIES = ("sqlalchemy", "psycopg", "psycopg2", "asyncpg")
INSTRUMENTORS = (
    database.SQLAlchemyInstrumentor, database.PsycopgInstrumentor,
    database.Psycopg2Instrumentor, database.AsyncpgInstrumentor,
)
loaded = {"at import": sorted(set(LIBRARIES) & set(sys.modules))}
for step in sys.argv[1].split(","):
    if step == "import":  # as an application that imports its libraries before instrument()
        for library in LIBRARIES:
            __import__(library)
    for cls in INSTRUMENTORS if step != "import" else ():
        getattr(cls(), step)()
loaded["at instrument"] = sorted(set(LIBRARIES) & set(sys.modules))

import psycopg
from psycopg2 import connect  # the name bound by the application after instrument()
from sqlalchemy import create_engine, text
import asyncpg.connection

with psycopg.connect("host=127.0.0.1 dbname=test") as connection:
    connection.execute("SELECT 1 FROM pg_class LIMIT 1")
classic = connect("host=127.0.0.1 dbname=test")
classic.cursor().execute("SELECT 1 FROM pg_database LIMIT 1")
classic.close()

async def main():
    connection = await asyncpg.connect("postgresql://127.0.0.1/test")
    await connection.fetch("SELECT 1 FROM pg_roles LIMIT 1")
    await connection.close()

asyncio.run(main())
engine = create_engine("postgresql+psycopg2://127.0.0.1/test")  # imports psycopg2's dialect here
with engine.connect() as connection:
    connection.execute(text("SELECT 1 FROM pg_proc LIMIT 1"))
engine.dispose()
counts = {
    r["attributes"]["table"]: r["count"]
    for r in PerformanceMonitor.get_instance().snapshot().records()
    if r["name"] == "database_query_duration_seconds" and r["attributes"]["status"] == "success"
}
wrapped = [
    name for name, function in (
        ("psycopg.Cursor.execute", psycopg.Cursor.execute),
        ("psycopg2.connect", connect),
        ("asyncpg.Connection.fetch", asyncpg.connection.Connection.fetch),
        ("asyncpg.PreparedStatement.fetch", asyncpg.prepared_stmt.PreparedStatement.fetch),
    )
    if function.__module__.startswith("chat_turbo_metrics")  # ours, not the driver's
]
print(json.dumps({"loaded": loaded, "counts": counts, "wrapped": wrapped}))
"""


def _run(steps: str) -> Any:
    """SCRIPT in a fresh interpreter, after ``instrument()``/``uninstrument()`` of every instrumentor per step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, steps], env={**env, "CHAT_TURBO_ENV": "test"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _of_interest(counts: dict[str, int]) -> dict[str, int]:
    """The test's own statements (SQLAlchemy's dialect runs some of its own at the first connection)."""
    return {table: count for table, count in counts.items() if table in OURS}


def test_instrument_imports_no_library_and_each_is_measured_when_the_application_imports_it() -> None:
    found = _run("instrument")
    assert found["loaded"] == {"at import": [], "at instrument": []}
    # psycopg, psycopg2, asyncpg directly; SQLAlchemy on psycopg2 once (by SQLAlchemy), not twice.
    assert _of_interest(found["counts"]) == {"pg_class": 1, "pg_database": 1, "pg_roles": 1, "pg_proc": 1}
    assert len(found["wrapped"]) == 4
    # Exactly what is measured when the application imported them first (patched at instrument()), down to the
    # statements of SQLAlchemy's dialect at its first connection, which only psycopg2's instrumentor sees.
    eager = _run("import,instrument")
    assert eager["loaded"]["at instrument"] == sorted(LIBRARIES)
    assert found["counts"] == eager["counts"]


def test_uninstrument_before_the_import_leaves_every_library_unpatched() -> None:
    found = _run("instrument,uninstrument")
    assert found["loaded"]["at instrument"] == []
    assert found["counts"] == {}
    assert found["wrapped"] == []


def test_instrument_uninstrument_instrument_then_import_measures_each_statement_once() -> None:
    found = _run("instrument,uninstrument,instrument")
    assert found["loaded"]["at instrument"] == []
    assert _of_interest(found["counts"]) == {"pg_class": 1, "pg_database": 1, "pg_roles": 1, "pg_proc": 1}
    assert len(found["wrapped"]) == 4


def test_a_version_that_cannot_be_patched_whole_is_logged_once_and_left_unpatched(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    from chat_turbo_metrics_database import PsycopgInstrumentor

    originals = (psycopg.Cursor.execute, psycopg.AsyncCursor.execute)
    monkeypatch.delattr(psycopg, "AsyncServerCursor")  # found missing after the sync cursors are patched
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.instrumentation"):
        PsycopgInstrumentor().instrument()  # already imported: patched at once, and the failure never raised
    try:
        assert (psycopg.Cursor.execute, psycopg.AsyncCursor.execute) == originals  # none of it half done
        logged = [r for r in caplog.records if r.name == "chat_turbo_metrics.instrumentation"]
        assert [(r.levelno, "psycopg" in r.getMessage()) for r in logged] == [(logging.WARNING, True)]
    finally:
        PsycopgInstrumentor().uninstrument()
    assert (psycopg.Cursor.execute, psycopg.AsyncCursor.execute) == originals


THREADED = """
import importlib.abc, json, sys, threading, time

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_database import PsycopgInstrumentor

stalled = threading.Event()

class Stall(importlib.abc.MetaPathFinder):
    # psycopg's __init__ imports psycopg.version after psycopg.cursor and before its server and async cursors.
    def find_spec(self, name, path=None, target=None):
        if name == "psycopg.version":
            stalled.set()
            time.sleep(1)
        return None

sys.meta_path.insert(0, Stall())
importer = threading.Thread(target=__import__, args=("psycopg",))
importer.start()
stalled.wait()
halfway = hasattr(sys.modules["psycopg"], "Cursor") and not hasattr(sys.modules["psycopg"], "AsyncCursor")
PsycopgInstrumentor().instrument()  # in sys.modules already, but not all there: patched once it is
importer.join()

import psycopg

with psycopg.connect("host=127.0.0.1 dbname=test") as connection:
    connection.execute("SELECT 1 FROM pg_class LIMIT 1")
tags = {"table": "pg_class", "operation": "select", "status": "success"}
value = PerformanceMonitor.get_instance().snapshot().value("database_query_duration_seconds", tags)
print(json.dumps({"halfway": halfway, "count": value and value["count"]}))
"""


def test_instrument_while_another_thread_is_importing_the_driver_waits_for_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    done = subprocess.run(
        [sys.executable, "-c", THREADED], env={**env, "CHAT_TURBO_ENV": "test"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"halfway": True, "count": 1}
