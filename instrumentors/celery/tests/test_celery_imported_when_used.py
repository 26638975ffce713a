"""``instrument()`` imports no part of Celery: its signals are connected when (and if) the application imports it.

Each test runs in a fresh interpreter (this one imported Celery long ago): tasks run in the process, and a task
published through Kombu's in-memory broker (stamped with its publication time by the instrumentor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

SCRIPT = """
import json, sys

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_celery import SENT_AT, CeleryInstrumentor

def celery_modules():
    return sorted(name for name in sys.modules if name.partition(".")[0] in ("celery", "kombu", "billiard"))

loaded = {"at import": celery_modules()}
for step in sys.argv[1].split(","):
    if step == "import":  # as an application that imports Celery before instrument()
        from celery import Celery
    else:
        getattr(CeleryInstrumentor(), step)()
loaded["at instrument"] = celery_modules()

from celery import Celery, signals

app = Celery("imported_when_used", broker="memory://")

@app.task(name="tasks.add")
def add(a, b):
    return a + b

@app.task(name="tasks.fail")
def fail():
    raise KeyError("gone")

stamped = []
signals.before_task_publish.connect(  # after the instrumentor's handler, if it is connected
    lambda headers=None, **extra: stamped.append(SENT_AT in headers), weak=False
)
assert add.apply(args=(2, 3)).get() == 5
fail.apply()
add.delay(1, 2)
counts = {
    f"{r['name']} {r['attributes']['task']} {r['attributes']['outcome']}": r.get("count", r.get("value"))
    for r in PerformanceMonitor.get_instance().snapshot().records()
    if r["name"] in ("celery_task_duration_seconds", "celery_tasks")
}
print(json.dumps({"loaded": loaded, "counts": counts, "stamped": stamped}))
"""


def _run(steps: str) -> Any:
    """SCRIPT in a fresh interpreter, after ``instrument()``/``uninstrument()`` (or ``import``) per step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, steps], env={**env, "CHAT_TURBO_ENV": "test"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


EXPECTED = {
    "celery_task_duration_seconds tasks.add success": 1,
    "celery_task_duration_seconds tasks.fail failure": 1,
    "celery_tasks tasks.add success": 1,
    "celery_tasks tasks.fail failure": 1,
}


def test_instrument_imports_no_celery_and_its_tasks_are_measured_once_imported() -> None:
    found = _run("instrument")
    assert found["loaded"] == {"at import": [], "at instrument": []}
    assert found["counts"] == EXPECTED
    assert found["stamped"] == [True]
    eager = _run("import,instrument")  # Celery imported before instrument(): connected at once, the same counts
    assert "celery.signals" in eager["loaded"]["at instrument"]
    assert (eager["counts"], eager["stamped"]) == (EXPECTED, [True])


def test_uninstrument_before_the_import_leaves_celery_unmeasured() -> None:
    found = _run("instrument,uninstrument")
    assert found["loaded"]["at instrument"] == []
    assert (found["counts"], found["stamped"]) == ({}, [False])


def test_instrument_uninstrument_instrument_then_import_measures_each_task_once() -> None:
    found = _run("instrument,uninstrument,instrument")
    assert found["loaded"]["at instrument"] == []
    assert (found["counts"], found["stamped"]) == (EXPECTED, [True])
