"""Faults benchmark: a served application's p99 latency and memory while a push exporter's endpoint fails.

Run: ``python bench/bench_faults.py [otlp_http|otlp_grpc|datadog|postgresql ...]`` (``--quick`` for shorter
phases). For each push exporter that talks to a
network endpoint (OTLP/HTTP, OTLP/gRPC, Datadog, and the database exporter on PostgreSQL when one listens on
127.0.0.1:5432), one uvicorn process serves a small Starlette application instrumented with
``chat_turbo_metrics_http``'s ASGI middleware (plus a counter of its own), exporting every 0.5 s (timeout 1 s) to a
real receiver through a TCP fault proxy on 127.0.0.1. A load process sends a steady 200 requests per second over
loopback for a bounded time per phase; the phases are, in many short interleaved rounds so that drift and load
from elsewhere on the machine hit all of them alike:

- healthy: the endpoint answers;
- down: the port refuses connections;
- stall: connections are accepted and never answered (every export runs into its timeout);
- flapping: the port alternates down and up every 0.5 s.

It prints, per exporter and phase, the client-side p50 and p99 latency (the median of the rounds' p99s, so
that one burst of load elsewhere on the machine does not decide it), the p99 ratio to the healthy phases of the
same server (the target: <= 1.10; "pooled" is the same ratio over all rounds' requests together), the server's
CPU time (user + system) relative to the healthy phases, its RSS at the end of the phase, and the failed exports
the fan-out counted; then whether the receiver ended up with every request the application counted (after a
final healthy phase). Compare ratios measured in the same run, not absolute figures.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "exporters"))  # the receivers and the fault proxy the tests use
sys.path.insert(0, str(ROOT / "tests"))

from datadog_intake import DD_KEY, DatadogIntake, total  # noqa: E402
from fault_proxy import DOWN, STALL, UP, FaultProxy  # noqa: E402
from test_otlp import OtlpHttpReceiver, Received, metrics_by_name, number, start_grpc_receiver  # noqa: E402

QUICK = "--quick" in sys.argv
# Short phases, many rounds, interleaved: a burst of load from elsewhere on the machine lasts seconds, so it lands
# on every phase alike instead of deciding one phase's p99.
PHASE_S = 1.5 if QUICK else 2.0
ROUNDS = 4 if QUICK else 10
RATE = 200  # requests per second, open loop
FLAPPING = "flapping"
PHASES = ("healthy", DOWN, STALL, FLAPPING)
POSTGRES = ("127.0.0.1", 5432)
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

APP = textwrap.dedent(
    """
    import json
    import chat_turbo_metrics
    from chat_turbo_metrics_http.asgi import AsgiMetricsMiddleware
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    monitor = chat_turbo_metrics.configure()
    served = [0]  # what the receiver must end up with; one event loop thread, so a plain int

    async def message(request):
        monitor.increment_counter("orders", {"shop": request.path_params["shop"]})
        served[0] += 1
        return PlainTextResponse("ok")

    async def status(request):
        return JSONResponse({"failures": sum(monitor.pipeline.fanout.failures.values()), "served": served[0]})

    app = Starlette(routes=[Route("/api/shops/{shop}", message), Route("/status", status)])
    app.add_middleware(AsgiMetricsMiddleware, excluded_paths=["/status"])
    """
)

LOAD = textwrap.dedent(
    """
    import http.client, json, sys, threading, time
    port, rate, duration = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    threads = 8
    latencies, errors = [], [0]
    lock = threading.Lock()
    start = time.monotonic() + 0.1

    def run(index):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine, n = [], index
        while True:
            due = start + n / rate  # open loop: each request at its time, whatever the others took
            if due > start + duration:
                break
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            sent = time.perf_counter()
            try:
                connection.request("GET", f"/api/shops/s{n % 50}")
                reply = connection.getresponse()
                reply.read()
                mine.append(time.perf_counter() - sent)
            except (OSError, http.client.HTTPException):
                with lock:
                    errors[0] += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            n += threads
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(json.dumps({"latencies": latencies, "errors": errors[0]}))
    """
)


@dataclass
class Target:
    """One push exporter: its receiver behind a fault proxy, its environment, and what the receiver holds."""

    name: str
    proxy: FaultProxy
    env: dict[str, str]
    delivered: Callable[[], float]
    stop: Callable[[], None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _last_otlp_total(received: Received) -> float:
    totals = [
        sum(number(point) for point in metrics_by_name(request)["orders"].sum.data_points)
        for request in list(received.requests)
        if "orders" in metrics_by_name(request)
    ]
    return totals[-1] if totals else 0.0


class _QuietOtlpHttpReceiver(OtlpHttpReceiver):
    def handle_error(self, request: object, client_address: object) -> None:
        """A flap cuts connections mid-answer; that is the point here, not an error to print."""


def _otlp_http() -> Target:
    receiver = _QuietOtlpHttpReceiver()
    threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True).start()
    proxy = FaultProxy(receiver.server_address[:2]).start()

    def stop() -> None:
        proxy.stop()
        receiver.shutdown()
        receiver.server_close()

    env = {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{proxy.port}/v1/metrics",
    }
    return Target("OTLP/HTTP", proxy, env, lambda: _last_otlp_total(receiver.received), stop)


def _otlp_grpc() -> Target:
    received, server, port = start_grpc_receiver()
    proxy = FaultProxy(("127.0.0.1", port)).start()

    def stop() -> None:
        proxy.stop()
        server.stop(grace=None).wait()

    env = {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{proxy.port}",
        "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "true",
    }
    return Target("OTLP/gRPC", proxy, env, lambda: _last_otlp_total(received), stop)


def _datadog() -> Target:
    intake = DatadogIntake(DD_KEY).start()
    host, port = intake.url.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port))).start()

    def stop() -> None:
        proxy.stop()
        intake.stop()
        if intake.violations:
            print(f"  Datadog intake violations: {intake.violations[:3]}")

    env = {
        "OTEL_METRICS_EXPORTER": "datadog",
        "DD_API_KEY": DD_KEY,
        "CHAT_TURBO_DATADOG_ENDPOINT": f"http://127.0.0.1:{proxy.port}",
    }
    return Target("Datadog", proxy, env, lambda: total(intake.accepted_series(), "orders"), stop)


def _postgresql() -> Target | None:
    try:
        socket.create_connection(POSTGRES, timeout=1).close()
        from sqlalchemy import create_engine, text
    except (OSError, ImportError) as error:
        print(f"PostgreSQL: skipped ({error})")
        return None
    schema = f"ctm_bench_faults_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    proxy = FaultProxy(POSTGRES).start()
    query = f"?options=-csearch_path%3D{schema}&connect_timeout=1"

    def delivered() -> float:
        with admin.connect() as conn:
            exists = conn.execute(text(f"SELECT to_regclass('{schema}.ctm_points')")).scalar()
            if exists is None:
                return 0.0
            sql = (
                f"SELECT coalesce(sum(p.value), 0) FROM {schema}.ctm_points p "
                f"JOIN {schema}.ctm_streams s ON s.id = p.stream_id WHERE s.name = 'orders'"
            )
            return float(conn.execute(text(sql)).scalar() or 0)

    def stop() -> None:
        proxy.stop()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

    env = {
        "OTEL_METRICS_EXPORTER": "chat_turbo_database",
        "METRICS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test{query}",
    }
    return Target("PostgreSQL", proxy, env, delivered, stop)


def _server_env(target: Target) -> dict[str, str]:
    prefixes = ("OTEL_", "METRICS_", "PERFORMANCE_", "ALERT_", "CHAT_TURBO_", "DD_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env.update(
        {
            "CHAT_TURBO_ENV": "test",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_METRIC_EXPORT_TIMEOUT": "1000",
            "OTEL_SERVICE_NAME": "bench-faults",
        }
    )
    env.update(target.env)
    return env


@contextmanager
def serving(target: Target, folder: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    args = [sys.executable, "-m", "uvicorn", "faults_app:app", "--port", str(port), "--log-level", "error"]
    server = subprocess.Popen(args, cwd=folder, env=_server_env(target), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{target.name}: the server did not start") from None
                time.sleep(0.1)
        yield server, port
    finally:
        server.terminate()
        server.wait(30)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _status(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as reply:
        return dict(json.loads(reply.read()))


def _failures(port: int) -> int:
    return _status(port)["failures"]


def _load(port: int, seconds: float) -> tuple[list[float], int]:
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(port), str(RATE), str(seconds)], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    return result["latencies"], result["errors"]


def _fault(proxy: FaultProxy, phase: str) -> AbstractContextManager[None]:
    if phase == FLAPPING:
        return proxy.flapping(0.5)
    proxy.set(UP if phase == "healthy" else phase)
    return nullcontext()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Phases:
    """What one server showed per phase, over every round."""

    latencies: dict[str, list[float]]
    round_p99s: dict[str, list[float]]
    cpu_s: dict[str, float]
    rss_mb: dict[str, float]
    failed: dict[str, int]
    errors: int = 0
    served: int = 0
    delivered: float = 0.0

    @classmethod
    def empty(cls) -> Phases:
        return cls(
            latencies={phase: [] for phase in PHASES},
            round_p99s={phase: [] for phase in PHASES},
            cpu_s=dict.fromkeys(PHASES, 0.0),
            rss_mb=dict.fromkeys(PHASES, 0.0),
            failed=dict.fromkeys(PHASES, 0),
        )


def run_phases(target: Target, folder: Path) -> Phases:
    seen = Phases.empty()
    with serving(target, folder) as (server, port):
        _load(port, 1.0)  # warm-up: imports, first export, connection pools
        for _ in range(ROUNDS):
            for phase in PHASES:
                before, cpu_before = _failures(port), _cpu_s(server.pid)
                with _fault(target.proxy, phase):
                    observed, errors = _load(port, PHASE_S)
                seen.cpu_s[phase] += _cpu_s(server.pid) - cpu_before
                target.proxy.set(UP)
                seen.latencies[phase] += observed
                seen.round_p99s[phase].append(_quantile(observed, 0.99))
                seen.errors += errors
                seen.rss_mb[phase] = _rss_mb(server.pid)
                seen.failed[phase] += _failures(port) - before
        _load(port, 2.0)  # a final healthy phase: everything recorded must arrive
        seen.served = _status(port)["served"]
        deadline = time.monotonic() + 20
        while target.delivered() < seen.served and time.monotonic() < deadline:
            time.sleep(0.2)
        seen.delivered = target.delivered()
    return seen


def report(target: Target, seen: Phases) -> None:
    healthy = statistics.median(seen.round_p99s["healthy"])
    healthy_pooled = _quantile(seen.latencies["healthy"], 0.99)
    print(f"\n{target.name}  (phases of {PHASE_S:.1f} s x {ROUNDS}, {RATE} req/s; client errors: {seen.errors})")
    print(
        f"  {'phase':<10} {'requests':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99 ratio':>9} {'pooled':>7} "
        f"{'CPU ratio':>9} {'RSS MB':>7} {'failed':>7}"
    )
    for phase in PHASES:
        values, p99 = seen.latencies[phase], statistics.median(seen.round_p99s[phase])
        print(
            f"  {phase:<10} {len(values):>8} {statistics.median(values) * 1e3:>7.2f} {p99 * 1e3:>7.2f} "
            f"{p99 / healthy:>9.2f} {_quantile(values, 0.99) / healthy_pooled:>7.2f} "
            f"{seen.cpu_s[phase] / seen.cpu_s['healthy']:>9.2f} {seen.rss_mb[phase]:>7.1f} {seen.failed[phase]:>7}"
        )
    served, delivered = seen.served, seen.delivered
    verdict = "all arrived" if delivered >= served else f"MISSING {served - delivered:.0f}"
    if delivered > served:  # a cut answer makes a delta exporter send its interval again
        verdict += f", {delivered - served:.0f} more: intervals sent again after a flap cut their answer"
    print(f"  orders counted by the application: {served}; held by the receiver: {delivered:.0f} ({verdict})")


def main() -> None:
    builders: dict[str, Callable[[], Target | None]] = {
        "otlp_http": _otlp_http,
        "otlp_grpc": _otlp_grpc,
        "datadog": _datadog,
        "postgresql": _postgresql,
    }
    chosen = [name for name in sys.argv[1:] if not name.startswith("--")] or list(builders)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "faults_app.py").write_text(APP)
        for name in chosen:
            target = builders[name]()
            if target is None:
                continue
            try:
                report(target, run_phases(target, Path(folder)))
            finally:
                target.stop()


if __name__ == "__main__":
    main()
