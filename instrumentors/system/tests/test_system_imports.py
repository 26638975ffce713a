"""The system instrumentor's own imports: psutil (its readings need it) and nothing else outside the standard library.

Under ``opentelemetry-instrument`` it runs in every process; a library it pulled in would cost each of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, sys

import chat_turbo_metrics
from chat_turbo_metrics import PerformanceMonitor
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

PerformanceMonitor.get_instance()  # what the core and every instrumentor load anyway
before = set(sys.modules)
from chat_turbo_metrics_system import SystemInstrumentor

SystemInstrumentor().instrument()
print(json.dumps(sorted({name.partition(".")[0] for name in set(sys.modules) - before} - sys.stdlib_module_names)))
"""


def test_instrument_loads_psutil_and_no_other_library() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env={**env, "CHAT_TURBO_ENV": "test"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    added = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(added) <= {"chat_turbo_metrics", "chat_turbo_metrics_system", "psutil"}, added  # the core's own too
    assert "chat_turbo_metrics_system" in added  # the comparison saw the instrumentor's own import
