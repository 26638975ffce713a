"""Faults benchmark: a served application's p99 latency and memory while a push exporter's endpoint fails.

Run: ``python bench/bench_faults.py [otlp_http|otlp_grpc|datadog|postgresql ...]`` (``--quick`` for shorter
phases, ``--null`` to calibrate). For each push exporter that talks to a network endpoint (OTLP/HTTP, OTLP/gRPC,
Datadog, and the database exporter on PostgreSQL when one listens on 127.0.0.1:5432), two identical uvicorn
processes serve a small Starlette application instrumented with ``chat_turbo_metrics_http``'s ASGI middleware (plus
a counter of its own), each exporting every 0.5 s (timeout 1 s) to its own real receiver through its own TCP fault
proxy on 127.0.0.1. A load process (one event loop) sends the same steady 200 requests per second to both
servers at the same moments, over loopback, for a bounded time per phase. The phases of one server's endpoint:

- healthy: the endpoint answers;
- down: the port refuses connections;
- stall: connections are accepted and never answered (every export runs into its timeout);
- flapping: the port alternates down and up every 0.5 s.

The other server's endpoint stays up: it is the control, measured in the same rounds, so that a burst of load
elsewhere on this machine lands on both sides of each comparison. The servers take turns at being faulted, round
by round, and the phases are interleaved in short rounds, so that what differs between the two processes and
drift over time weigh on every phase and role alike.

It prints, per exporter and phase, the faulted server's client-side p50 and p99 latency (over every round's
requests), the control's p99 in the same rounds, their ratio (the target: <= 1.10) with a 90 % bootstrap interval
over rounds, the CPU time (user + system) ratio of the two, the larger RSS at the end of a phase and the failed
exports the fan-out counted; then whether each receiver ended up with every request its application counted
(after a final healthy phase). In the healthy phase nothing differs between the two servers, so its ratio is
the measurement's own spread; ``--null`` runs every phase that way. Compare ratios measured in the same run, not
absolute figures.
"""

from __future__ import annotations

import json
import os
import random
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "exporters"))  # the receivers and the fault proxy the tests use
sys.path.insert(0, str(ROOT / "tests"))

from datadog_intake import DD_KEY, DatadogIntake, total  # noqa: E402
from fault_proxy import DOWN, STALL, UP, FaultProxy  # noqa: E402
from test_otlp import OtlpHttpReceiver, Received, metrics_by_name, number, start_grpc_receiver  # noqa: E402

QUICK = "--quick" in sys.argv
# Calibration: the same phases, but the faulted server's endpoint is never faulted. Its ratios show how far
# apart two identical servers measure here, which is the smallest difference this benchmark can show.
NULL = "--null" in sys.argv
# Short phases, many rounds, interleaved: a burst of load from elsewhere on the machine lasts seconds, so it lands
# on every phase alike instead of deciding one phase's p99.
PHASE_S = 1.5 if QUICK else 2.0
ROUNDS = 4 if QUICK else 20
RATE = 200  # requests per second, open loop
FLAPPING = "flapping"
PHASES = ("healthy", DOWN, STALL, FLAPPING)  # of the faulted server's endpoint; the control's is always up
RESAMPLES = 1000  # bootstrap resamples of the rounds, for each ratio's interval
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
        return JSONResponse({"failures": sum(monitor.pipeline.export_failures.values()), "served": served[0]})

    app = Starlette(routes=[Route("/api/shops/{shop}", message), Route("/status", status)])
    app.add_middleware(AsgiMetricsMiddleware, excluded_paths=["/status"])
    """
)

# One thread, one event loop: the client's own timing is not disturbed by client threads waiting for its GIL.
LOAD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    rate, duration, ports = float(sys.argv[1]), float(sys.argv[2]), [int(port) for port in sys.argv[3:]]

    async def main():
        loop = asyncio.get_running_loop()
        latencies, idle, errors = {port: [] for port in ports}, {port: [] for port in ports}, [0]

        async def request(port, n):
            if idle[port]:  # keep-alive connections, opened as needed
                reader, writer = idle[port].pop()
            else:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent = time.perf_counter()
            try:
                writer.write(f"GET /api/shops/s{n % 50} HTTP/1.1\\r\\nHost: bench\\r\\n\\r\\n".encode())
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                sizes = [line for line in head.split(b"\\r\\n") if line.lower().startswith(b"content-length:")]
                await reader.readexactly(int(sizes[0].split(b":")[1]))
                latencies[port].append(time.perf_counter() - sent)
                idle[port].append((reader, writer))
            except (OSError, asyncio.IncompleteReadError, IndexError):
                errors[0] += 1
                writer.close()

        start, pending, n = loop.time() + 0.1, [], 0
        while start + n / rate <= start + duration:  # open loop: each request at its time, whatever others took
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
            # The same request to every server, at the same moment, the servers' order turning.
            for port in ports[n % len(ports):] + ports[:n % len(ports)]:
                pending.append(asyncio.ensure_future(request(port, n)))
            n += 1
        await asyncio.gather(*pending)
        print(json.dumps({"latencies": {str(port): values for port, values in latencies.items()}, "errors": errors[0]}))

    asyncio.run(main())
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


def _load(ports: list[int], seconds: float) -> tuple[list[list[float]], int]:
    """Latencies per server (in the order of ``ports``) of a load sent to all of them at once, and errors."""
    args = [sys.executable, "-c", LOAD, str(RATE), str(seconds), *map(str, ports)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    return [result["latencies"][str(port)] for port in ports], result["errors"]


def _fault(proxy: FaultProxy, phase: str) -> AbstractContextManager[None]:
    if NULL:
        return nullcontext()
    if phase == FLAPPING:
        return proxy.flapping(0.5)
    proxy.set(UP if phase == "healthy" else phase)
    return nullcontext()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Role:
    """What the server in one role (faulted or control) showed per phase, over every round."""

    latencies: dict[str, list[list[float]]] = field(default_factory=lambda: {phase: [] for phase in PHASES})
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    rss_mb: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))

    def p99(self, phase: str, rounds: list[int]) -> float:
        return _quantile([value for index in rounds for value in self.latencies[phase][index]], 0.99)


@dataclass
class Measured:
    name: str
    faulted: Role
    control: Role
    errors: int
    arrived: list[tuple[int, float]]  # per server: what the application counted, what its receiver holds


def run_phases(build: Callable[[], Target | None], folder: Path) -> Measured | None:
    """Serve the same application twice, each exporting to its own endpoint, and fault one server's at a time.

    The servers take turns, round by round, at being the faulted one, so that whatever differs between the two
    processes (where the scheduler puts them, which was started first) weighs on both roles alike. Returns None
    when the target is not available here.
    """
    built = [target for target in (build(), build()) if target is not None]
    if len(built) < 2:
        for target in built:
            target.stop()
        return None
    faulted, control, errors = Role(), Role(), 0
    try:
        with serving(built[0], folder) as first, serving(built[1], folder) as second:
            processes, ports = [first[0], second[0]], [first[1], second[1]]
            _load(ports, 1.0)  # warm-up: imports, first export, connection pools
            for index in range(ROUNDS):
                turn = index % 2  # the server faulted this round
                roles = (faulted, control) if turn == 0 else (control, faulted)
                for phase in PHASES:
                    before = [
                        (_failures(port), _cpu_s(process.pid)) for port, process in zip(ports, processes, strict=True)
                    ]
                    with _fault(built[turn].proxy, phase):
                        observed, failed_requests = _load(ports, PHASE_S)
                    built[turn].proxy.set(UP)
                    errors += failed_requests
                    for role, port, process, values, (failures, cpu) in zip(
                        roles, ports, processes, observed, before, strict=True
                    ):
                        role.cpu_s[phase] += _cpu_s(process.pid) - cpu
                        role.latencies[phase].append(values)
                        role.rss_mb[phase] = max(role.rss_mb[phase], _rss_mb(process.pid))
                        role.failed[phase] += _failures(port) - failures
            _load(ports, 2.0)  # a final healthy phase: everything recorded must arrive
            arrived = []
            for target, port in zip(built, ports, strict=True):
                served = _status(port)["served"]
                deadline = time.monotonic() + 20
                while target.delivered() < served and time.monotonic() < deadline:
                    time.sleep(0.2)
                arrived.append((served, target.delivered()))
    finally:
        for target in built:
            target.stop()
    return Measured(built[0].name, faulted, control, errors, arrived)


def p99_ratio(measured: Measured, phase: str, rng: random.Random) -> tuple[float, float, float]:
    """The faulted role's p99 over the control's in the same rounds of ``phase``, with a 90 % interval.

    Both servers took the same requests at the same moments, so a burst of load elsewhere on the machine hits
    both sides of the ratio alike. The interval is a bootstrap over whole rounds.
    """
    faulted, control = measured.faulted, measured.control
    every = list(range(len(faulted.latencies[phase])))
    ratio = faulted.p99(phase, every) / control.p99(phase, every)
    resampled = []
    for _ in range(RESAMPLES):
        chosen = rng.choices(every, k=len(every))
        resampled.append(faulted.p99(phase, chosen) / control.p99(phase, chosen))
    return ratio, _quantile(resampled, 0.05), _quantile(resampled, 0.95)


def report(measured: Measured) -> None:
    rng = random.Random(11)
    every = list(range(ROUNDS))
    faulted, control = measured.faulted, measured.control
    shape = f"phases of {PHASE_S:.1f} s x {ROUNDS}, {RATE} req/s to each server"
    print(
        f"\n{measured.name}{' (--null: nothing faulted)' if NULL else ''}  ({shape}; client errors: {measured.errors})"
    )
    print(
        f"  {'phase':<9} {'requests':>8} {'p50 ms':>7} {'p99 ms':>7} {'control':>7} {'p99 ratio [90 % interval]':>26} "
        f"{'CPU ratio':>9} {'RSS MB':>7} {'failed':>6}"
    )
    for phase in PHASES:
        values = [value for rounds in faulted.latencies[phase] for value in rounds]
        ratio, low, high = p99_ratio(measured, phase, rng)
        print(
            f"  {phase:<9} {len(values):>8} {statistics.median(values) * 1e3:>7.2f} "
            f"{faulted.p99(phase, every) * 1e3:>7.2f} {control.p99(phase, every) * 1e3:>7.2f} "
            f"{ratio:>11.2f} [{low:.2f}, {high:.2f}]{'':>2} "
            f"{faulted.cpu_s[phase] / control.cpu_s[phase]:>9.2f} {faulted.rss_mb[phase]:>7.1f} "
            f"{faulted.failed[phase]:>6}"
        )
    for index, (served, delivered) in enumerate(measured.arrived, 1):
        verdict = "all arrived" if delivered >= served else f"MISSING {served - delivered:.0f}"
        if delivered > served:  # a cut answer makes a delta exporter send its interval again
            verdict += f", {delivered - served:.0f} more: intervals sent again after a flap cut their answer"
        print(f"  server {index}: orders counted: {served}; held by its receiver: {delivered:.0f} ({verdict})")


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
            measured = run_phases(builders[name], Path(folder))
            if measured is not None:
                report(measured)


if __name__ == "__main__":
    main()
