"""Datastore instrumentors: per-statement and per-command overhead against contrib's instrumentations.

Run: ``python bench/bench_datastores.py`` (``--quick`` for a rough run). Each case is measured in this run:
timeit on this process's CPU time, minimum over repeats and over rounds that alternate the cases, so load
on a shared machine hits every case alike. The overhead of an instrumentation is its time minus the bare
time, and the ratios compare overheads:

- SQLAlchemy, SQLite in memory, ``SELECT 1`` on an open connection: bare, two no-op cursor listeners (what
  SQLAlchemy's event dispatch costs before any listener does work), ``chat_turbo_sqlalchemy``
  (duration histogram on the fast path), ``opentelemetry-instrumentation-sqlalchemy`` (spans on an SDK
  TracerProvider without exporters, plus its pool metrics on an SDK MeterProvider).
- redis-py ``GET``: the client's ``execute_command`` is replaced by a stub before instrumenting, so the
  network is out of the measurement and only the instrumentation is timed; ours (latency histogram and a
  hit/miss counter) against ``opentelemetry-instrumentation-redis`` (spans, as above). A real round trip
  to the Redis at 127.0.0.1:6379 is printed for scale when it is running.
"""

from __future__ import annotations

import socket
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_cache import RedisInstrumentor
from chat_turbo_metrics_database import SQLAlchemyInstrumentor

QUICK = "--quick" in sys.argv
REPEAT = 3
TARGET_S = 0.03 if QUICK else 0.05
ROUNDS = 2 if QUICK else 12


def us_per_op(fn: Callable[[], Any]) -> float:
    """Minimum over REPEAT runs of a loop sized to take about TARGET_S, in µs per call."""
    # CPU time of this process, not wall time: on a shared machine other processes' load would otherwise
    # land in whichever case happened to run while they were busy.
    timer = timeit.Timer(fn, timer=time.process_time)
    number = max(1, int(TARGET_S / max(timer.timeit(200) / 200, 1e-9)))
    return min(timer.repeat(repeat=REPEAT, number=number)) / number * 1e6


def sdk_providers() -> tuple[TracerProvider, MeterProvider]:
    return TracerProvider(), MeterProvider(metric_readers=[InMemoryMetricReader()])


def interleaved(cases: dict[str, tuple[Callable[[], None], Callable[[], Any], Callable[[], None]]]) -> dict[str, float]:
    """Each case is (set up, operation, tear down); rounds alternate the cases so load drifts hit all alike."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(ROUNDS):
        for name, (set_up, operation, tear_down) in cases.items():
            set_up()
            try:
                best[name] = min(best[name], us_per_op(operation))
            finally:
                tear_down()
    return best


def _nothing() -> None:
    """No set-up or tear-down."""


def bench_sqlalchemy(monitor: PerformanceMonitor) -> dict[str, float]:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor as Contrib

    statement = text("SELECT 1")
    connection = create_engine("sqlite://").connect()
    tracer_provider, meter_provider = sdk_providers()
    contrib_engine = create_engine("sqlite://")
    contrib_connection = contrib_engine.connect()

    def contrib_on() -> None:
        Contrib().instrument(engine=contrib_engine, tracer_provider=tracer_provider, meter_provider=meter_provider)

    def noop(*args: Any) -> None:
        """Does nothing: what SQLAlchemy's event dispatch alone costs."""

    def listen_noop() -> None:
        for name in ("before_cursor_execute", "after_cursor_execute"):
            event.listen(Engine, name, noop)

    def remove_noop() -> None:
        for name in ("before_cursor_execute", "after_cursor_execute"):
            event.remove(Engine, name, noop)

    return interleaved(
        {
            "bare": (_nothing, lambda: connection.execute(statement), _nothing),
            "two no-op listeners (SQLAlchemy's own cost)": (
                listen_noop,
                lambda: connection.execute(statement),
                remove_noop,
            ),
            "chat_turbo_sqlalchemy": (
                lambda: SQLAlchemyInstrumentor().instrument(monitor=monitor),
                lambda: connection.execute(statement),
                lambda: SQLAlchemyInstrumentor().uninstrument(),
            ),
            "opentelemetry-instrumentation-sqlalchemy": (
                contrib_on,
                lambda: contrib_connection.execute(statement),
                lambda: Contrib().uninstrument(),
            ),
        }
    )


def bench_redis(monitor: PerformanceMonitor) -> dict[str, float]:
    from opentelemetry.instrumentation.redis import RedisInstrumentor as Contrib

    original = redis.Redis.execute_command

    def stub(self: Any, *args: Any, **options: Any) -> Any:
        return None  # a miss, answered without the network

    tracer_provider, meter_provider = sdk_providers()
    redis.Redis.execute_command = stub  # type: ignore[method-assign]
    try:
        client = redis.Redis(host="127.0.0.1", port=6379)  # never connects: execute_command is the stub
        results = interleaved(
            {
                "bare": (_nothing, lambda: client.get("session:1"), _nothing),
                "chat_turbo_redis": (
                    lambda: RedisInstrumentor().instrument(monitor=monitor),
                    lambda: client.get("session:1"),
                    lambda: RedisInstrumentor().uninstrument(),
                ),
                "opentelemetry-instrumentation-redis": (
                    lambda: Contrib().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider),
                    lambda: client.get("session:1"),
                    lambda: Contrib().uninstrument(),
                ),
            }
        )
    finally:
        redis.Redis.execute_command = original  # type: ignore[method-assign]
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return results
    real = redis.Redis(host="127.0.0.1", port=6379)
    results["real GET round trip, uninstrumented (for scale)"] = us_per_op(lambda: real.get("chat-turbo-bench:absent"))
    real.close()
    return results


def report(title: str, results: dict[str, float], ours: str, theirs: str) -> None:
    print(f"\n{title}")
    for name, value in results.items():
        print(f"  {name:<45} {value:8.2f} µs")
    bare = results["bare"]
    our_cost, their_cost = results[ours] - bare, results[theirs] - bare
    print(f"  overhead: {ours} +{our_cost:.2f} µs, {theirs} +{their_cost:.2f} µs")
    print(f"  ratio (ours / contrib overhead): {our_cost / their_cost:.3f}")
    floor = results.get("two no-op listeners (SQLAlchemy's own cost)")
    if floor is not None:
        print(f"  of ours, SQLAlchemy's event dispatch alone: +{floor - bare:.2f} µs")


def main() -> None:
    monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), environment="test"))
    sql = bench_sqlalchemy(monitor)
    report("SQLAlchemy, SQLite in memory, SELECT 1 (µs per statement)", sql, "chat_turbo_sqlalchemy",
           "opentelemetry-instrumentation-sqlalchemy")  # fmt: skip
    cache = bench_redis(monitor)
    report("redis-py GET, network stubbed out (µs per command)", cache, "chat_turbo_redis",
           "opentelemetry-instrumentation-redis")  # fmt: skip
    monitor.shutdown()


if __name__ == "__main__":
    main()
