"""Hot-path work without a clock: Python frames and bytecode instructions of one warmed recording call.

Run: ``python bench/bench_hotpath_ops.py``. Timings on a busy machine (CI, several test suites at once) vary by
2x between runs; the instructions a call executes do not. Run it before and after a change to the recording
path (e.g. ``PYTHONPATH=<checkout of main>/src python bench/bench_hotpath_ops.py``): equal counts mean the call
does the same work; ``bench_hotpath.py`` still gives the times and ratios against the peers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor

TAGS = {"method": "GET", "endpoint": "/api/x", "status": 200}
m = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), environment="test"))
inc = m.counter("bound_c", TAGS)
obs = m.histogram("bound_h", TAGS)
cases: dict[str, Callable[[], None]] = {
    "increment_counter": lambda: m.increment_counter("c", TAGS),
    "record_histogram": lambda: m.record_histogram("h", 0.1, TAGS),
    "record_timer": lambda: m.record_timer("t", m.start_timer(), TAGS),
    "record_gauge": lambda: m.record_gauge("g", 3, TAGS),
    "bound inc()": lambda: inc.inc(),  # noqa: PLW0108 - every case counts one lambda frame, like the others
    "bound observe()": lambda: obs.observe(0.1),
}
for name, call in cases.items():
    for _ in range(3):
        call()  # warm: series created, cached
    count = {"ops": 0, "calls": 0}

    def tracer(frame: FrameType, event: str, arg: Any, count: dict[str, int] = count) -> Any:
        frame.f_trace_opcodes = True
        if event == "call":
            count["calls"] += 1
        elif event == "opcode":
            count["ops"] += 1
        return tracer

    sys.settrace(tracer)
    call()
    sys.settrace(None)
    print(f"{name:20s} python frames {count['calls']:3d}  opcodes {count['ops']:4d}")
m.shutdown()
