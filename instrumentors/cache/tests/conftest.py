"""Fixtures of the redis instrumentor's tests: private monitors, a real Redis, unique key prefixes."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_cache import RedisInstrumentor

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
