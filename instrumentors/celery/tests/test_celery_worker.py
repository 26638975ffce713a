"""A real Celery worker (prefork pool, two children) on the Redis at 127.0.0.1:6379, started by
``opentelemetry-instrument`` with no monitoring code; its Prometheus endpoint serves the sum of its processes.

Redis database 14 is this test's own: flushed before and after.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_celery import CeleryInstrumentor

BROKER = "redis://127.0.0.1:6379/14"
TASKS = """
import os, time

import redis
from celery import Celery

BROKER = os.environ["CELERY_TEST_BROKER"]
app = Celery("chat_turbo_celery_test", broker=BROKER, backend=BROKER)
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)

@app.task(name="tasks.add")
def add(a, b):
    return a + b

@app.task(name="tasks.fail")
def fail():
    raise KeyError("gone")

@app.task(name="tasks.flaky", bind=True, max_retries=3)
def flaky(self, key):
    if redis.Redis.from_url(os.environ["CELERY_TEST_BROKER"]).incr(key) < 2:
        raise self.retry(countdown=0)
    return "ok"

@app.task(name="tasks.sleepy")
def sleepy(seconds):
    time.sleep(seconds)
    return seconds
"""


def _up(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {  # the series' own labels (the exposition adds otel_scope_name and otel_scope_version)
        (
            sample.name,
            frozenset((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope_")),
        ): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def flushed() -> Iterator[Any]:
    import redis

    if not _up(6379):
        pytest.skip("Redis is not running at 127.0.0.1:6379")
    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def worker(flushed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, int]]:
    """(the tasks module, imported here as a producer; the worker's Prometheus port)."""
    (tmp_path / "celery_tasks.py").write_text(textwrap.dedent(TASKS))
    metrics_port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    env.update(
        CHAT_TURBO_ENV="test",
        CELERY_TEST_BROKER=BROKER,
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="celery,redis,sqlalchemy",  # contrib's (benchmarks, coexistence tests)
        PYTHONPATH=str(tmp_path),
    )
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    command = [instrument, sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "--pool", "prefork",
               "--concurrency", "2", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
               "-n", f"worker-{uuid.uuid4().hex[:6]}@localhost"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    monkeypatch.setenv("CELERY_TEST_BROKER", BROKER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import celery_tasks  # type: ignore[import-not-found]

    try:
        deadline = time.monotonic() + 60
        while not celery_tasks.app.control.ping(timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not start: {process.communicate(timeout=5)[1][-3000:]}")
        yield celery_tasks, metrics_port
    finally:
        process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        sys.modules.pop("celery_tasks", None)


def series(task: str, outcome: str) -> frozenset[tuple[str, str]]:
    return frozenset({"task": task, "outcome": outcome}.items())


def test_a_prefork_worker_reports_durations_outcomes_queue_wait_and_revocations(
    worker: tuple[Any, int], flushed: Any, tmp_path: Path
) -> None:
    tasks, metrics_port = worker
    monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=()))
    CeleryInstrumentor().instrument(monitor=monitor)  # the producer stamps its messages
    try:
        assert [tasks.add.delay(n, 1).get(timeout=30) for n in range(3)] == [1, 2, 3]
        with pytest.raises(KeyError):
            tasks.fail.delay().get(timeout=30)
        assert tasks.flaky.delay(f"flaky-{uuid.uuid4().hex}").get(timeout=30) == "ok"
        revoked_id = str(uuid.uuid4())
        tasks.app.control.revoke(revoked_id)
        time.sleep(0.5)  # the worker has the id in its revoked set before the message arrives
        tasks.sleepy.apply_async(args=(0,), task_id=revoked_id)
    finally:
        CeleryInstrumentor().uninstrument()
        monitor.shutdown()

    wanted = {
        ("celery_tasks_total", series("tasks.add", "success")): 3.0,
        ("celery_tasks_total", series("tasks.fail", "failure")): 1.0,
        ("celery_tasks_total", series("tasks.flaky", "retry")): 1.0,
        ("celery_tasks_total", series("tasks.flaky", "success")): 1.0,
        ("celery_tasks_total", series("tasks.sleepy", "revoked")): 1.0,
        ("celery_task_duration_seconds_count", series("tasks.add", "success")): 3.0,
        ("celery_task_queue_wait_seconds_count", frozenset({("task", "tasks.add")})): 3.0,
        ("celery_task_queue_wait_seconds_count", frozenset({("task", "tasks.flaky")})): 2.0,  # the retry too
    }
    deadline = time.monotonic() + 20
    samples = _scrape(metrics_port)
    while any(samples.get(key) != value for key, value in wanted.items()) and time.monotonic() < deadline:
        time.sleep(0.2)
        samples = _scrape(metrics_port)
    assert {key: samples.get(key) for key in wanted} == wanted
    in_flight = {dict(labels)["worker"]: value for (name, labels), value in samples.items() if name == IN_FLIGHT}
    assert in_flight  # the worker's gauge, served with the rest
    assert set(in_flight.values()) == {0.0}  # nothing running now, in any process


IN_FLIGHT = "celery_tasks_in_flight"


def test_in_process_outcomes_and_uninstrument(flushed: Any) -> None:
    from celery import Celery

    app = Celery("chat_turbo_celery_local", broker="memory://")

    @app.task(name="local.ok")
    def ok() -> str:
        return "ok"

    @app.task(name="local.boom")
    def boom() -> None:
        raise ValueError("boom")

    monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=()))
    read: Callable[[str, str], Any] = lambda task, outcome: monitor.snapshot().value(  # noqa: E731
        "celery_tasks", {"task": task, "outcome": outcome}
    )
    CeleryInstrumentor().instrument(monitor=monitor)
    try:
        assert ok.apply().get() == "ok"
        assert boom.apply().failed()
        workers = {
            r["attributes"]["worker"]: r["value"] for r in monitor.snapshot().records() if r["name"] == IN_FLIGHT
        }
        assert list(workers.values()) == [0]  # one worker (this process's hostname), nothing running now
    finally:
        CeleryInstrumentor().uninstrument()
    ok.apply()  # not measured any more
    assert (read("local.ok", "success"), read("local.boom", "failure")) == (1, 1)
    monitor.shutdown()
