"""Pre-fork benchmark: recording cost in a forked worker, ours against prometheus_client's multiprocess mode.

Run: ``python bench/bench_prefork.py`` (``--quick`` for a rough, shorter run). A holder process binds a
Prometheus port and forks a worker; in the worker (a member of the service's multiprocess session, as under
gunicorn) it times labelled ``increment_counter``/``record_histogram`` on the fast path. A second forked worker
times prometheus_client with ``PROMETHEUS_MULTIPROC_DIR`` set (mmap-backed values) doing ``labels().inc()`` and
``labels().observe()``. Both run in this same run; the ratio is what the issue's target (<= 0.4x) is judged by.
Then the worker's background publication of its state (1,000 series), and one scrape of four workers with
1,000 series each, are timed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Callable
from typing import Any

QUICK = "--quick" in sys.argv
REPEAT = 3 if QUICK else 7
TARGET_S = 0.05 if QUICK else 0.2
TAGS: dict[str, Any] = {"method": "GET", "endpoint": "/api/x", "status": 200}
LABELS = ("method", "endpoint", "status")


def ns_per_op(fn: Callable[[], Any]) -> float:
    """Minimum over REPEAT runs of a loop sized to take about TARGET_S, in ns per call."""
    timer = timeit.Timer(fn)
    number = max(1, int(TARGET_S / max(timer.timeit(1_000) / 1_000, 1e-9)))
    return min(timer.repeat(repeat=REPEAT, number=number)) / number * 1e9


def in_child(measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run ``measure`` in a forked child (a pre-fork worker) and return what it measured."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, json.dumps(measure()).encode())
        except BaseException:
            import traceback

            os.write(write_end, json.dumps({"error": traceback.format_exc()}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result: dict[str, Any] = json.loads(pipe.read())
    os.waitpid(pid, 0)
    if "error" in result:
        raise RuntimeError(f"the forked worker failed:\n{result['error']}")
    return result


def ours() -> dict[str, float]:
    from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
    from chat_turbo_metrics.multiprocess._session import Session

    with tempfile.TemporaryDirectory() as directory:
        holder = PerformanceMonitor(
            MonitoringConfig(
                metrics_exporters=("prometheus",),
                prometheus_host="127.0.0.1",
                prometheus_port=_free_port(),
                multiprocess_dir=directory,
            )
        )

        def measure() -> dict[str, float]:
            start = time.perf_counter()
            timings = {
                "inc": ns_per_op(lambda: holder.increment_counter("api_requests", TAGS)),
                "observe": ns_per_op(lambda: holder.record_histogram("latency_seconds", 0.123, TAGS)),
                "timer": ns_per_op(lambda: holder.record_timer("api_request", start, TAGS)),
            }
            # What the worker's background publication (once a second, off the recording path) costs.
            for i in range(1_000):
                holder.increment_counter("requests", {"route": f"/r/{i}"})
            (session,) = holder._runtime.pipeline._memberships  # type: ignore[union-attr]
            assert isinstance(session, Session)
            timings["publish"] = min(timeit.repeat(session._publish, number=1, repeat=REPEAT))
            return timings

        try:
            return in_child(measure)
        finally:
            holder.shutdown()


def prometheus_multiprocess() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:

        def measure() -> dict[str, float]:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
            import prometheus_client as pc

            # The value class is chosen from the environment at import, and OTel's exporter imported it already.
            pc.values.ValueClass = pc.values.get_value_class()
            assert pc.values.ValueClass.__name__ != "MutexValue", "prometheus_client is not in multiprocess mode"
            registry = pc.CollectorRegistry()
            counter = pc.Counter("requests", "c", LABELS, registry=registry)
            histogram = pc.Histogram("latency_seconds", "h", LABELS, registry=registry)
            values = tuple(str(v) for v in TAGS.values())
            return {
                "inc": ns_per_op(lambda: counter.labels(*values).inc()),
                "observe": ns_per_op(lambda: histogram.labels(*values).observe(0.123)),
            }

        return in_child(measure)


def scrape_four_workers() -> float:
    from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor

    with tempfile.TemporaryDirectory() as directory:
        port = _free_port()
        holder = PerformanceMonitor(
            MonitoringConfig(
                metrics_exporters=("prometheus",),
                prometheus_host="127.0.0.1",
                prometheus_port=port,
                multiprocess_dir=directory,
            )
        )
        children = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                try:
                    for i in range(1_000):
                        holder.increment_counter("requests", {"route": f"/r/{i}"})
                    time.sleep(30)
                finally:
                    os._exit(0)
            children.append(pid)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            deadline = time.monotonic() + 20
            while urllib.request.urlopen(url).read().count(b"\nrequests_total{") < 1_000:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            timings = []
            for _ in range(REPEAT):
                begin = time.perf_counter()
                body = urllib.request.urlopen(url).read()
                timings.append(time.perf_counter() - begin)
            assert b'requests_total{route="/r/999"} 4' in body
            return min(timings)
        finally:
            for pid in children:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            holder.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    mine, theirs = ours(), prometheus_multiprocess()
    print("per call in a forked worker, 3 labels (ns, min of repeats)")
    print(f"  ours fast path   increment_counter {mine['inc']:7.0f}   record_histogram {mine['observe']:7.0f}")
    print(f"  prometheus_client multiprocess inc  {theirs['inc']:7.0f}   observe          {theirs['observe']:7.0f}")
    print(f"  ratio inc {mine['inc'] / theirs['inc']:.2f}x   observe {mine['observe'] / theirs['observe']:.2f}x")
    print("  (target: <= 0.4x)")
    print(f"background publication of a worker's ~1,000 series (once a second): {mine['publish'] * 1000:.1f} ms")
    print(f"one scrape, holder + 4 workers x 1,000 counter series: {scrape_four_workers() * 1000:.1f} ms")


if __name__ == "__main__":
    main()
