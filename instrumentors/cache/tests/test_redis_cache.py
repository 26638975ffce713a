"""The redis-py instrumentor against a real Redis: hits, misses, ratio and latency, sync and async."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_cache import RedisInstrumentor, key_prefix

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["fast", "sdk"])
def monitor(request: pytest.FixtureRequest) -> Iterator[PerformanceMonitor]:
    """A monitor on a private pipeline, for each recording path."""
    made = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), environment="test", recording=request.param))
    yield made
    made.shutdown()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted after the test."""
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("required in CI: Redis at 127.0.0.1:6379")
        pytest.skip("Redis is not running at 127.0.0.1:6379")
    name = f"ctm{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def instrument(monitor: PerformanceMonitor) -> Iterator[Callable[..., None]]:
    """Instruments redis-py into ``monitor`` and uninstruments after the test."""

    def start(**options: object) -> None:
        RedisInstrumentor().instrument(monitor=monitor, **options)

    yield start
    RedisInstrumentor().uninstrument()


def commands(monitor: PerformanceMonitor, command: str, status: str = "success") -> int:
    value = monitor.snapshot().value("redis_command_duration_seconds", {"command": command, "status": status})
    return 0 if value is None else int(value["count"])


def test_get_mget_hget_hits_and_misses_and_the_ratio(
    monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str
) -> None:
    client = redis.Redis.from_url(REDIS_URL)  # created before instrument(): still measured
    instrument()
    client.set(f"{prefix}:a", "1")
    client.hset(f"{prefix}:h", "field", "v")
    assert client.get(f"{prefix}:a") == b"1"
    assert client.get(f"{prefix}:missing") is None
    assert client.mget([f"{prefix}:a", f"{prefix}:b", f"{prefix}:c"]) == [b"1", None, None]
    assert client.hget(f"{prefix}:h", "field") == b"v"
    assert client.hget(f"{prefix}:h", "other") is None
    client.close()
    snapshot = monitor.snapshot()
    assert snapshot.value("cache_hits", {"cache": prefix}) == 3
    assert snapshot.value("cache_misses", {"cache": prefix}) == 4
    assert snapshot.value("cache_hit_ratio", {"cache": prefix}) == pytest.approx(3 / 7)
    assert [commands(monitor, c) for c in ("SET", "HSET", "GET", "MGET", "HGET")] == [1, 1, 2, 1, 2]
    timing = snapshot.value("redis_command_duration_seconds", {"command": "GET", "status": "success"})
    assert timing["bucket_bounds"][:3] == [0.0001, 0.00025, 0.0005]  # sub-millisecond resolution


def test_pipelines_count_their_lookups_and_time_the_round_trip(
    monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str
) -> None:
    instrument()
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{prefix}:a", "1")
    for transaction in (True, False):
        pipe = client.pipeline(transaction=transaction)
        pipe.get(f"{prefix}:a").get(f"{prefix}:none").mget(f"{prefix}:a", f"{prefix}:b").incr(f"{prefix}:n")
        assert pipe.execute()[:3] == [b"1", None, [b"1", None]]
    client.close()
    snapshot = monitor.snapshot()
    assert snapshot.value("cache_hits", {"cache": prefix}) == 4
    assert snapshot.value("cache_misses", {"cache": prefix}) == 4
    assert commands(monitor, "PIPELINE") == 2
    assert commands(monitor, "GET") == 0  # queued commands are not sent one by one


def test_commands_a_watching_pipeline_sends_at_once_are_counted(
    monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str
) -> None:
    instrument()
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{prefix}:balance", "10")
    with client.pipeline() as pipe:  # optimistic locking, as redis-py documents it
        pipe.watch(f"{prefix}:balance")
        for n in range(100):
            assert pipe.get(f"{prefix}:balance" if n % 2 else f"{prefix}:none") == (b"10" if n % 2 else None)
        pipe.multi()
        pipe.set(f"{prefix}:balance", "9")
        assert pipe.execute() == [True]
    client.close()
    snapshot = monitor.snapshot()
    assert snapshot.value("cache_hits", {"cache": prefix}) == 50
    assert snapshot.value("cache_misses", {"cache": prefix}) == 50
    assert commands(monitor, "GET") == 100
    assert commands(monitor, "WATCH") == 1
    assert commands(monitor, "PIPELINE") == 1  # MULTI ... EXEC: one round trip


def test_commands_a_watching_async_pipeline_sends_at_once_are_counted(
    monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str
) -> None:
    instrument()

    async def main() -> list[object]:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            async with client.pipeline() as pipe:
                await pipe.watch(f"{prefix}:k")
                found = [await pipe.get(f"{prefix}:k"), await pipe.hget(f"{prefix}:h", "f")]
                pipe.multi()
                pipe.set(f"{prefix}:k", "v")
                return [*found, *await pipe.execute()]
        finally:
            await client.aclose()

    assert asyncio.run(main()) == [None, None, True]
    assert monitor.snapshot().value("cache_misses", {"cache": prefix}) == 2
    assert commands(monitor, "GET") == 1
    assert commands(monitor, "HGET") == 1


def test_async_pipeline(monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str) -> None:
    instrument()

    async def main() -> list[object]:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            async with client.pipeline() as pipe:
                return list(await pipe.set(f"{prefix}:k", "v").get(f"{prefix}:k").hget(f"{prefix}:h", "f").execute())
        finally:
            await client.aclose()

    assert asyncio.run(main()) == [True, b"v", None]
    snapshot = monitor.snapshot()
    assert snapshot.value("cache_hits", {"cache": prefix}) == 1
    assert snapshot.value("cache_misses", {"cache": prefix}) == 1
    assert commands(monitor, "PIPELINE") == 1


def test_failed_command_is_timed_as_error_and_raised_unchanged(
    monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str
) -> None:
    instrument()
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{prefix}:s", "text")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        client.incr(f"{prefix}:s")
    client.close()
    assert commands(monitor, "INCRBY", "error") + commands(monitor, "INCR", "error") == 1
    assert "cache_misses" not in monitor.snapshot().names()


def test_async_client(monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str) -> None:
    instrument()

    async def main() -> list[object]:
        client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            await client.set(f"{prefix}:k", "v")
            return [await client.get(f"{prefix}:k"), await client.get(f"{prefix}:nothing")]
        finally:
            await client.aclose()

    assert asyncio.run(main()) == ["v", None]
    snapshot = monitor.snapshot()
    assert snapshot.value("cache_hits", {"cache": prefix}) == 1
    assert snapshot.value("cache_misses", {"cache": prefix}) == 1
    assert commands(monitor, "GET") == 2


def test_cache_names_are_chosen_and_bounded(
    monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str
) -> None:
    instrument(cache_name=lambda key: str(key).split(":")[1], max_caches=2)
    client = redis.Redis.from_url(REDIS_URL)
    for name in ("users", "sessions", "carts", "orders"):
        client.get(f"{prefix}:{name}:1")
    client.close()
    snapshot = monitor.snapshot()
    assert [snapshot.value("cache_misses", {"cache": n}) for n in ("users", "sessions", "other")] == [1, 1, 2]


def test_a_failing_cache_name_function_never_breaks_the_command(
    monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    instrument(cache_name=lambda key: 1 / 0)
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{prefix}:k", "v")
    assert [client.get(f"{prefix}:k") for _ in range(3)] == [b"v"] * 3
    client.close()
    assert commands(monitor, "GET") == 3  # latency was recorded before the name was needed
    assert len([r for r in caplog.records if "ZeroDivisionError" in r.getMessage()]) == 1


def test_key_prefix_convention() -> None:
    assert [key_prefix(k) for k in ("session:1", b"user:9:name", "plain", ":odd")] == [
        "session",
        "user",
        "redis",
        "redis",
    ]


def test_coexists_with_contrib_redis_instrumentation(
    monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str
) -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor as ContribInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    instrument()
    ContribInstrumentor().instrument(tracer_provider=provider)
    try:
        client = redis.Redis.from_url(REDIS_URL)
        client.get(f"{prefix}:x")
        client.get(f"{prefix}:y")
        client.close()
    finally:
        ContribInstrumentor().uninstrument()
    assert monitor.snapshot().value("cache_misses", {"cache": prefix}) == 2
    assert len([s for s in spans.get_finished_spans() if s.name == "GET"]) == 2


def test_uninstrument_restores_the_client(
    monitor: PerformanceMonitor, instrument: Callable[..., None], prefix: str
) -> None:
    original = redis.Redis.execute_command
    instrument()
    assert redis.Redis.execute_command is not original
    RedisInstrumentor().uninstrument()
    assert redis.Redis.execute_command is original
    client = redis.Redis.from_url(REDIS_URL)
    client.get(f"{prefix}:after")
    client.close()
    assert "cache_misses" not in monitor.snapshot().names()
    instrument()  # the fixture uninstruments again


def test_process_wide_monitor_is_followed_across_configure(prefix: str) -> None:
    code = textwrap.dedent(
        f"""
        import chat_turbo_metrics, redis
        from chat_turbo_metrics_cache import RedisInstrumentor
        chat_turbo_metrics.configure(environment="test", metrics_exporters=())
        RedisInstrumentor().instrument()
        client = redis.Redis.from_url("{REDIS_URL}")
        client.get("{prefix}:a")
        monitor = chat_turbo_metrics.configure(environment="test", metrics_exporters=())
        client.get("{prefix}:a")
        client.get("{prefix}:b")
        print("misses", monitor.snapshot().value("cache_misses", {{"cache": "{prefix}"}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "misses 2" in result.stdout


@pytest.mark.parametrize(("option", "bad"), [("max_caches", 0), ("max_caches", "5"), ("cache_name", "prefix")])
def test_bad_options_fail_at_instrument_time_naming_them(monitor: PerformanceMonitor, option: str, bad: object) -> None:
    from chat_turbo_metrics import ConfigurationError

    original = redis.Redis.execute_command
    with pytest.raises(ConfigurationError, match=f"{option}=") as error:
        RedisInstrumentor().instrument(monitor=monitor, **{option: bad})
    assert repr(bad) in str(error.value)
    assert redis.Redis.execute_command is original
