"""``instrument()`` imports no redis-py: its clients are patched when (and if) the application imports it.

Each test runs in a fresh interpreter (this one imported redis long ago), against the real Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest

SCRIPT = """
import asyncio, json, sys

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_cache import RedisInstrumentor

def redis_modules():
    return sorted(name for name in sys.modules if name == "redis" or name.startswith("redis."))

steps, prefix = sys.argv[1].split(","), sys.argv[2]
loaded = {"at import": redis_modules()}
for step in steps:
    if step == "import":  # as an application that imports redis-py before instrument()
        import redis.asyncio
    else:
        getattr(RedisInstrumentor(), step)()
loaded["at instrument"] = redis_modules()

from redis import Redis  # the name bound by the application after instrument()
import redis.asyncio

client = Redis.from_url("redis://127.0.0.1:6379/0")
client.set(f"{prefix}:here", "1", ex=60)
client.get(f"{prefix}:here")
client.get(f"{prefix}:gone")
pipeline = client.pipeline()
pipeline.mget(f"{prefix}:here", f"{prefix}:gone")
pipeline.execute()

async def main():
    remote = redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0")
    await remote.get(f"{prefix}:gone")
    await remote.aclose()

asyncio.run(main())
client.delete(f"{prefix}:here")
client.close()
counts = {
    f"{r['name']} {r['attributes'].get('command', r['attributes'].get('cache'))}": r.get("count", r.get("value"))
    for r in PerformanceMonitor.get_instance().snapshot().records()
    if r["name"] in ("redis_command_duration_seconds", "cache_hits", "cache_misses")
}
ours = "chat_turbo_metrics_cache" in Redis.execute_command.__code__.co_filename  # wraps() keeps the names
print(json.dumps({"loaded": loaded, "counts": counts, "patched": ours}))
"""


@pytest.fixture
def fresh() -> Any:
    """``fresh(script, *args)``: what ``script`` prints (a JSON object a line) in a fresh interpreter, given ``args``
    and last a key prefix of its own, written ``<prefix>`` in what it printed."""
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("Redis is not running at 127.0.0.1:6379")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}

    def fresh(script: str, *args: str) -> list[Any]:
        prefix = f"ctm{uuid.uuid4().hex[:10]}"
        done = subprocess.run(
            [sys.executable, "-c", script, *args, prefix], env={**env, "CHAT_TURBO_ENV": "test"},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [json.loads(line.replace(prefix, "<prefix>")) for line in done.stdout.splitlines()]

    return fresh


EXPECTED = {
    "redis_command_duration_seconds SET": 1,
    "redis_command_duration_seconds GET": 3,  # two sync, one async
    "redis_command_duration_seconds PIPELINE": 1,
    "redis_command_duration_seconds DEL": 1,
    "cache_hits <prefix>": 2,  # GET here, and MGET's here in the pipeline
    "cache_misses <prefix>": 3,  # GET gone, MGET's gone, the async GET gone
}


def test_instrument_imports_no_redis_and_its_clients_are_measured_once_imported(fresh: Any) -> None:
    (found,) = fresh(SCRIPT, "instrument")
    assert found["loaded"] == {"at import": [], "at instrument": []}
    assert found["counts"] == EXPECTED
    assert found["patched"] is True
    (eager,) = fresh(SCRIPT, "import,instrument")  # redis-py imported before instrument(): patched at once, same counts
    assert "redis.client" in eager["loaded"]["at instrument"]
    assert eager["counts"] == EXPECTED


def test_uninstrument_before_the_import_leaves_redis_unpatched(fresh: Any) -> None:
    (found,) = fresh(SCRIPT, "instrument,uninstrument")
    assert found["loaded"]["at instrument"] == []
    assert found["counts"] == {}
    assert found["patched"] is False


def test_instrument_uninstrument_instrument_then_import_measures_each_command_once(fresh: Any) -> None:
    (found,) = fresh(SCRIPT, "instrument,uninstrument,instrument")
    assert found["loaded"]["at instrument"] == []
    assert found["counts"] == EXPECTED


def test_a_version_that_cannot_be_patched_whole_is_logged_once_and_left_unpatched(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio.client
    import redis.client

    from chat_turbo_metrics_cache import RedisInstrumentor

    client = redis.asyncio.client
    originals = (client.Redis.execute_command, client.Pipeline.execute, redis.client.Redis.execute_command)
    # Found missing after the async client's execute_command and Pipeline.execute are patched.
    monkeypatch.delattr(client.Pipeline, "immediate_execute_command")
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.instrumentation"):
        RedisInstrumentor().instrument()  # already imported: patched at once, and the failure never raised
    try:
        assert (client.Redis.execute_command, client.Pipeline.execute) == originals[:2]  # none of it half done
        assert redis.client.Redis.execute_command is not originals[2]  # the sync client is its own patch
        logged = [r for r in caplog.records if r.name == "chat_turbo_metrics.instrumentation"]
        assert [(r.levelno, "redis.asyncio.client" in r.getMessage()) for r in logged] == [(logging.WARNING, True)]
    finally:
        RedisInstrumentor().uninstrument()
    assert (client.Redis.execute_command, client.Pipeline.execute, redis.client.Redis.execute_command) == originals


FORKED = """
import json, os, sys

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_cache import RedisInstrumentor

RedisInstrumentor().instrument()
pid = os.fork()  # a pre-fork server: instrumented in the parent, the application imported in each process
if pid:
    os.waitpid(pid, 0)  # the child's line first, whole
try:
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    client.get(f"{sys.argv[1]}:gone")
    client.close()
    misses = PerformanceMonitor.get_instance().snapshot().value("cache_misses", {"cache": sys.argv[1]})
    print(json.dumps({"child": pid == 0, "misses": misses}), flush=True)
finally:
    if pid == 0:
        os._exit(0)  # the child's line printed, or none: it never runs on as the parent
"""


def test_a_process_forked_before_the_import_patches_its_own_redis(fresh: Any) -> None:
    found = sorted(fresh(FORKED), key=lambda line: line["child"])
    assert found == [{"child": False, "misses": 1}, {"child": True, "misses": 1}]
