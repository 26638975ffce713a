"""Push exporters against an endpoint that is down, stalls or flaps, through a real TCP fault proxy.

Each push exporter that talks to a network endpoint (OTLP/HTTP, OTLP/gRPC, Datadog, the database exporter on
PostgreSQL) exports every 0.1 s through :class:`~fault_proxy.FaultProxy` to a real receiver on 127.0.0.1. While
the endpoint refuses, stalls past the export timeout or alternates up and down, the application keeps recording;
every failed export is counted in ``Fanout.failures`` under the exporter's name; once the endpoint is back,
exports resume and the receiver ends up with everything recorded, the outage included.

What "everything" means differs by protocol: OTLP sends cumulative totals, so the last total received must equal
what was recorded; Datadog and the database receive deltas against the last export that *succeeded*, so the sum
of what they accepted must equal it. While flapping, a request can reach the receiver and lose its answer when
the connection is cut; the exporter then sends that interval again (at least once), so for delta receivers the
flapping case checks that nothing is missing rather than an exact sum.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import test_database
from datadog_intake import DD_KEY, running_intake, total
from fault_proxy import DOWN, STALL, UP, FaultProxy
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from test_exit_signals import file_orders, last_otlp_orders, stored_orders
from test_otlp import OtlpHttpReceiver, Received, start_grpc_receiver

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics._core.compat import keep_grpc_channel
from chat_turbo_metrics.exporters import DatabaseExporter, DataDogExporter, FileExporter
from chat_turbo_metrics.exporters.otlp import GRPC_CHANNEL_OPTIONS
from conftest import require

MonitorFactory = Callable[..., PerformanceMonitor]
PATIENCE_S = 30.0
TIMEOUT_S = 0.5  # each export's timeout: a stalled endpoint is given up on after this
FLAPPING = "flapping"
FAULTS = [DOWN, STALL, FLAPPING]


@dataclass
class Endpoint:
    """A real receiver behind a fault proxy, and how to read what it holds."""

    kind: str
    proxy: FaultProxy
    make_exporter: Callable[[], MetricExporter]
    delivered: Callable[[], float]  # the ``orders`` total the receiver holds
    cumulative: bool  # OTLP: totals (a repeat is harmless); else deltas (a repeat adds)


def _otlp_delivered(received: Received) -> Callable[[], float]:
    def delivered() -> float:
        try:
            return last_otlp_orders(received)
        except AssertionError:  # nothing carried orders yet
            return 0.0

    return delivered


def _database_delivered(url: str) -> Callable[[], float]:
    def delivered() -> float:
        try:
            return stored_orders(url)
        except (ValueError, SQLAlchemyError):  # no orders stored yet, or no tables yet
            return 0.0

    return delivered


def _otlp_http() -> Iterator[Endpoint]:
    receiver = OtlpHttpReceiver()
    thread_pool = ThreadPoolExecutor(max_workers=1)
    thread_pool.submit(receiver.serve_forever, 0.05)
    proxy = FaultProxy(receiver.server_address[:2]).start()
    endpoint = f"http://127.0.0.1:{proxy.port}/v1/metrics"
    try:
        yield Endpoint(
            "otlp_http",
            proxy,
            lambda: HttpMetricExporter(endpoint=endpoint, timeout=TIMEOUT_S),
            _otlp_delivered(receiver.received),
            cumulative=True,
        )
    finally:
        proxy.stop()
        receiver.shutdown()
        receiver.server_close()
        thread_pool.shutdown()


def _grpc_exporter(endpoint: str) -> MetricExporter:
    """Built as the pipeline builds it (exporters/otlp.py): reconnect backoff bounded, channel kept."""
    exporter = GrpcMetricExporter(
        endpoint=endpoint, insecure=True, timeout=TIMEOUT_S, channel_options=GRPC_CHANNEL_OPTIONS
    )
    assert keep_grpc_channel(exporter)
    return exporter


def _otlp_grpc() -> Iterator[Endpoint]:
    received, server, port = start_grpc_receiver()
    proxy = FaultProxy(("127.0.0.1", port)).start()
    try:
        yield Endpoint(
            "otlp_grpc",
            proxy,
            lambda: _grpc_exporter(f"http://127.0.0.1:{proxy.port}"),
            _otlp_delivered(received),
            cumulative=True,
        )
    finally:
        proxy.stop()
        server.stop(grace=None).wait()


def _datadog() -> Iterator[Endpoint]:
    with running_intake() as intake:
        host, port = intake.url.removeprefix("http://").split(":")
        proxy = FaultProxy((host, int(port))).start()
        fast_retry: dict[str, Any] = {"retry_initial_s": 0.05, "retry_max_s": 0.2}
        try:
            yield Endpoint(
                "datadog",
                proxy,
                lambda: DataDogExporter(DD_KEY, endpoint=f"http://127.0.0.1:{proxy.port}", **fast_retry),
                lambda: total(intake.accepted_series(), "orders"),
                cumulative=False,
            )
        finally:
            proxy.stop()


def _postgresql() -> Iterator[Endpoint]:
    reason = test_database._postgres_unavailable()
    if reason is not None:
        require(False, reason)
    schema = f"ctm_faults_{uuid.uuid4().hex[:12]}"  # a schema of this test's own
    admin = create_engine(test_database.POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    proxy = FaultProxy(test_database.POSTGRES).start()
    # connect_timeout: a stalled server is given up on after 1 s instead of the exporter's default 10 s.
    query = f"?options=-csearch_path%3D{schema}&connect_timeout=1"
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test{query}"
    direct = f"{test_database.POSTGRES_URL}{query}"
    try:
        yield Endpoint(
            "postgresql", proxy, lambda: DatabaseExporter(url), _database_delivered(direct), cumulative=False
        )
    finally:
        proxy.stop()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


_KINDS: dict[str, Callable[[], Iterator[Endpoint]]] = {
    "otlp_http": _otlp_http,
    "otlp_grpc": _otlp_grpc,
    "datadog": _datadog,
    "postgresql": _postgresql,
}


@pytest.fixture(params=sorted(_KINDS))
def endpoint(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    yield from _KINDS[request.param]()


def record_orders(monitor: PerformanceMonitor, n: int) -> int:
    for _ in range(n):
        monitor.increment_counter("orders", {"shop": "eu"})
    return n


def wait_until(condition: Callable[[], bool], what: str, state: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {PATIENCE_S} s: {what} ({state()})"
        time.sleep(0.02)


def exporting_monitor(monitor_factory: MonitorFactory, endpoint: Endpoint) -> tuple[PerformanceMonitor, str]:
    """A monitor exporting every 0.1 s to ``endpoint``; returns it and the exporter's name in the fan-out."""
    monitor = monitor_factory(export_interval_s=0.1, export_timeout_s=TIMEOUT_S, shutdown_timeout_s=2.0)
    monitor.add_exporter(endpoint.make_exporter())
    assert monitor.pipeline is not None
    [name] = monitor.pipeline.export_failures
    return monitor, name


def failures(monitor: PerformanceMonitor, name: str) -> int:
    assert monitor.pipeline is not None
    return monitor.pipeline.export_failures[name]


def fault(endpoint: Endpoint, kind: str) -> AbstractContextManager[None]:
    """The endpoint fails as ``kind`` says for the duration of the block; it is up again after."""
    if kind == FLAPPING:
        return endpoint.proxy.flapping(0.25)
    endpoint.proxy.set(kind)
    return nullcontext()


@pytest.mark.parametrize("kind", FAULTS)
def test_failures_are_counted_and_what_was_recorded_during_the_fault_arrives_after(
    endpoint: Endpoint, monitor_factory: MonitorFactory, kind: str
) -> None:
    monitor, name = exporting_monitor(monitor_factory, endpoint)
    # The first export connects (and creates the database's tables): under load it may outlast its 0.5 s timeout,
    # and an export that times out after the receiver took it is sent again (at least once). So one export is
    # acknowledged before the orders; the healthy export of the orders then fails no more.
    wait_until(monitor.force_flush, "a first export acknowledged")
    healthy_failures = failures(monitor, name)
    recorded = record_orders(monitor, 100)
    wait_until(lambda: endpoint.delivered() == recorded, "the healthy export")
    # Acknowledged too before the fault begins: the fault cuts open connections, and an export whose answer it cut
    # is sent again (at least once), its orders twice to a delta receiver. Exports in flight at the cut carry none.
    wait_until(monitor.force_flush, "the healthy export acknowledged")
    assert endpoint.delivered() == recorded
    assert failures(monitor, name) == healthy_failures

    with fault(endpoint, kind):
        refused_at = endpoint.proxy.accepted
        # The application records on while exports fail: until two failures are counted, or (flapping, where
        # an exporter that retries within its timeout may never fail) for five flaps.
        ends = time.monotonic() + (1.25 if kind == FLAPPING else PATIENCE_S)
        while time.monotonic() < ends and (kind == FLAPPING or failures(monitor, name) < 2):
            recorded += record_orders(monitor, 10)
            time.sleep(0.01)
        during = endpoint.delivered()
    endpoint.proxy.set(UP)
    recorded += record_orders(monitor, 5)

    if endpoint.cumulative or kind != FLAPPING:
        wait_until(lambda: endpoint.delivered() == recorded, f"{recorded} orders delivered after the {kind} endpoint")
    else:  # at least once: an answer cut by a flap makes the exporter send that interval again
        wait_until(lambda: endpoint.delivered() >= recorded, f"{recorded} orders delivered after flapping")
    assert during < recorded
    if kind != FLAPPING:
        assert failures(monitor, name) >= 2
    if kind == STALL:
        assert endpoint.proxy.accepted > refused_at  # it did connect, and got no answer


def test_a_stalled_endpoint_holds_no_other_exporter_back(
    endpoint: Endpoint, monitor_factory: MonitorFactory, tmp_path: Path
) -> None:
    monitor, name = exporting_monitor(monitor_factory, endpoint)
    path = tmp_path / "local.jsonl"
    monitor.add_exporter(FileExporter(path))
    recorded = 0
    with fault(endpoint, STALL):
        while failures(monitor, name) < 2:  # a stall always fails: bounded by the test timeout
            recorded += record_orders(monitor, 10)
            time.sleep(0.01)
        wait_until(lambda: path.exists() and file_orders(path) == recorded, "the file export during the stall")
    assert failures(monitor, name) >= 2
    assert failures(monitor, "chat_turbo_file") == 0


def snapshots_alive(monitor: PerformanceMonitor) -> int:
    """Collected snapshots of ``monitor``'s pipeline still in memory (in a slot, an exporter, a buffer)."""
    assert monitor.pipeline is not None
    resource = monitor.pipeline.resource
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, MetricsData) and any(rm.resource is resource for rm in obj.resource_metrics)
    )


@pytest.mark.parametrize("kind", [DOWN, STALL])
def test_a_long_outage_keeps_no_growing_buffer(endpoint: Endpoint, monitor_factory: MonitorFactory, kind: str) -> None:
    # A stalled PostgreSQL connect takes its connect_timeout (1 s, which libpq raises to 2 s) instead of the export
    # timeout: fewer rounds, each spanning some twenty collections. A buffer growing by one snapshot per failed
    # export (let alone per collection) would hold 1 + 2 or 2 + 5 more by the second count.
    early_failures, later_failures = (1, 2) if kind == STALL and endpoint.kind == "postgresql" else (2, 5)
    monitor, name = exporting_monitor(monitor_factory, endpoint)
    for series in range(200):
        monitor.increment_counter("orders", {"shop": f"s{series}"})
    recorded = 200
    # Exported and acknowledged before the fault begins. Otherwise the fault may cut the answer to the export
    # that carries these orders: a delta receiver that took it would get them again (at least once).
    # Under load a healthy export may outlast its 0.5 s timeout (the first one creates the tables): flush again.
    wait_until(monitor.force_flush, "an export acknowledged before the fault")
    failed_before_fault = failures(monitor, name)
    endpoint.proxy.set(kind)

    def fail_exports(count: int) -> None:
        target = failures(monitor, name) + count
        while failures(monitor, name) < target:
            nonlocal recorded
            recorded += record_orders(monitor, 10)
            time.sleep(0.01)

    fail_exports(early_failures)
    early = snapshots_alive(monitor)
    fail_exports(later_failures)
    late = snapshots_alive(monitor)
    failed_in_outage = failures(monitor, name)
    endpoint.proxy.set(UP)

    # Several more failed exports, each with fresh snapshots (five per export during a stall), and what is held is
    # still the snapshot being exported and the next one waiting in the slot, not one per failure. The count may
    # catch the collector's thread holding a new snapshot it has not yet put in the slot, and a delta exporter
    # (Datadog, the database) exports the delta view of its snapshot, a second MetricsData alive while it exports.
    held_at_most = 3 if endpoint.cumulative else 4
    assert 1 <= early <= held_at_most
    assert 1 <= late <= held_at_most
    held = lambda: f"{endpoint.delivered()} of {recorded}"  # noqa: E731
    if endpoint.cumulative:
        wait_until(lambda: endpoint.delivered() == recorded, "every order after the outage", held)
    else:
        # A delta receiver gets every order at least once. Exactly once unless an export failed outside the outage
        # (before the fault, or after the endpoint came back): on a loaded machine a healthy answer can outlast the
        # 0.5 s timeout after the receiver took it, and the exporter sends that interval again (Datadog's and the
        # database's documented at-least-once).
        wait_until(lambda: endpoint.delivered() >= recorded, "every order after the outage", held)
        if failed_before_fault == 0 and failures(monitor, name) == failed_in_outage:
            assert endpoint.delivered() == recorded, held()
