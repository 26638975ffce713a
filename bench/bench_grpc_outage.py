"""CPU an application process spends on its OTLP/gRPC exporter while the endpoint is down, stalls or flaps.

Run: ``python bench/bench_grpc_outage.py [--quick]``. Two processes record a counter 200 times a second and export
it every 0.5 s (timeout 1 s) through one TCP fault proxy (``tests/exporters/fault_proxy.py``) to a real gRPC
receiver on 127.0.0.1: "ours" with the exporter as the pipeline builds it (channel kept through UNAVAILABLE,
bounded reconnect backoff), "stock" with OpenTelemetry's ``OTLPMetricExporter`` as it comes, which rebuilds its
channel at every UNAVAILABLE export. Both run at the same time through the same phases (healthy, down, stall,
flapping every 0.5 s), so load from elsewhere hits them alike. It prints each process's CPU time (user + system,
in ms per second) per phase, its ratio to that process's healthy phases, and the successful exports the receiver
got from each. Compare ratios measured in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "exporters"))
sys.path.insert(0, str(ROOT / "tests"))

from fault_proxy import DOWN, STALL, UP, FaultProxy  # noqa: E402
from test_otlp import metrics_by_name, start_grpc_receiver  # noqa: E402

QUICK = "--quick" in sys.argv
PHASE_S = 5.0 if QUICK else 15.0
ROUNDS = 1 if QUICK else 2
PHASES = ("healthy", DOWN, STALL, "flapping")

CHILD = textwrap.dedent(
    """
    import os, sys, time
    import chat_turbo_metrics
    monitor = chat_turbo_metrics.configure()
    if sys.argv[1] == "stock":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        fanout = monitor._runtime.pipeline.fanout
        fanout.remove(fanout.exporters[0])
        fanout.add(OTLPMetricExporter(endpoint=os.environ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"], timeout=1.0))
    n = 0
    while True:
        monitor.increment_counter(sys.argv[1], {"shop": f"s{n % 50}"})
        n += 1
        time.sleep(0.005)
    """
)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    received, server, port = start_grpc_receiver()
    proxy = FaultProxy(("127.0.0.1", port)).start()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "CHAT_TURBO_", "METRICS_"))}
    env.update(
        {
            "CHAT_TURBO_ENV": "test",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_METRIC_EXPORT_TIMEOUT": "1000",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{proxy.port}",
            "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "true",
        }
    )
    kinds = ("ours", "stock")
    children = {
        kind: subprocess.Popen([sys.executable, "-c", CHILD, kind], env=env, stderr=subprocess.DEVNULL)
        for kind in kinds
    }
    cpu = {kind: dict.fromkeys(PHASES, 0.0) for kind in kinds}
    try:
        time.sleep(3)  # imports and the first exports
        for _ in range(ROUNDS):
            for phase in PHASES:
                before = {kind: _cpu_s(child.pid) for kind, child in children.items()}
                if phase != "flapping":
                    proxy.set(UP if phase == "healthy" else phase)
                with proxy.flapping(0.5) if phase == "flapping" else nullcontext():
                    time.sleep(PHASE_S)
                for kind, child in children.items():
                    cpu[kind][phase] += _cpu_s(child.pid) - before[kind]
                proxy.set(UP)
                time.sleep(2.5)  # recovery, outside the measured phases
    finally:
        for child in children.values():
            child.terminate()
            child.wait(10)
        proxy.stop()
        server.stop(grace=None).wait()
    exports = {kind: sum(kind in metrics_by_name(request) for request in received.requests) for kind in kinds}
    print(f"OTLP/gRPC exporter CPU per phase ({PHASE_S:.0f} s x {ROUNDS}; export every 0.5 s, timeout 1 s)")
    print(f"  {'process':<7} " + " ".join(f"{phase + ' ms/s':>16}" for phase in PHASES) + "  successful exports")
    for kind in kinds:
        rates = [cpu[kind][phase] / (PHASE_S * ROUNDS) * 1e3 for phase in PHASES]
        cells = " ".join(f"{rate:>7.1f} ({rate / rates[0]:>4.2f}x)" for rate in rates)
        print(f"  {kind:<7} {cells}  {exports[kind]:>8}")


if __name__ == "__main__":
    main()
