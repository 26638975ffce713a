"""Instrumentors bind their handles once per recorder: a ``configure()`` makes them re-bind, a call does not.

The HTTP, database and cache instrumentors notice a new recorder by ``monitor._recorder``'s identity. They once
compared ``monitor.increment_counter``, which stopped working when the facade's recording methods became real
methods (each access makes a new bound method): every request and statement re-bound its handles and re-declared
its instruments, ten to twenty times the documented overhead. Each rebind asks ``semconv_mode`` which names to
emit, so counting those calls counts the rebinds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import chat_turbo_metrics
from chat_turbo_metrics import PerformanceMonitor


@pytest.fixture
def rebinds(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[str]]:
    """``rebinds("module")``: a list that grows by one each time that module asks semconv_mode."""

    def watch(module: str) -> list[str]:
        calls: list[str] = []
        target = __import__(module, fromlist=["semconv_mode"])
        real = target.semconv_mode

        def counting(signal: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(signal)
            return real(signal, *args, **kwargs)

        monkeypatch.setattr(target, "semconv_mode", counting)
        return calls

    return watch


@pytest.fixture
def monitor() -> Iterator[PerformanceMonitor]:
    made = chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)
    yield made
    chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)


def test_sqlalchemy_statements_bind_once_per_configure(
    monitor: PerformanceMonitor, rebinds: Callable[[str], list[str]]
) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from chat_turbo_metrics_database import SQLAlchemyInstrumentor

    calls = rebinds("chat_turbo_metrics_database._instrumentor")
    SQLAlchemyInstrumentor().instrument()
    try:
        engine = sqlalchemy.create_engine("sqlite://")
        with engine.connect() as connection:
            for _ in range(5):
                connection.execute(sqlalchemy.text("SELECT 1"))
            bound = len(calls)
            assert bound <= 1
            for _ in range(5):
                connection.execute(sqlalchemy.text("SELECT 1"))
            assert len(calls) == bound  # no statement re-binds
            chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)
            connection.execute(sqlalchemy.text("SELECT 1"))
            connection.execute(sqlalchemy.text("SELECT 1"))
            assert len(calls) == bound + 1  # configure() made a new recorder: bound again, once
        text = PerformanceMonitor.get_instance().snapshot().to_prometheus()
        assert re.search(r'^database_query_duration_seconds_count\{[^}]*operation="select"[^}]*\} 2(\.0)?$', text, re.M)
    finally:
        SQLAlchemyInstrumentor().uninstrument()


def test_redis_commands_bind_once_per_configure(
    monitor: PerformanceMonitor, rebinds: Callable[[str], list[str]]
) -> None:
    redis = pytest.importorskip("redis")
    from chat_turbo_metrics_cache import RedisInstrumentor

    client = redis.Redis(host="127.0.0.1", port=6379, db=13, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    calls = rebinds("chat_turbo_metrics_cache._redis")
    RedisInstrumentor().instrument()
    try:
        for _ in range(5):
            client.get("bind-once:missing")
        bound = len(calls)
        assert bound <= 1
        for _ in range(5):
            client.get("bind-once:missing")
        assert len(calls) == bound
        chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)
        client.get("bind-once:missing")
        client.get("bind-once:missing")
        assert len(calls) == bound + 1
        assert PerformanceMonitor.get_instance().snapshot().value("cache_misses", {"cache": "bind-once"}) == 2
    finally:
        RedisInstrumentor().uninstrument()
        client.close()
