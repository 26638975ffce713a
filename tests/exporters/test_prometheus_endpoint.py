"""The /metrics endpoint against hostile and clumsy clients, over real sockets on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

from chat_turbo_metrics._pipeline.fanout import Fanout
from chat_turbo_metrics.exporters._prometheus_server import Endpoint, acquire, release
from conftest import free_port


class Text:
    def __init__(self, text: str) -> None:
        self.text = text

    def render(self) -> str:
        return self.text


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    owner = Text("up 1\n")
    served = Endpoint("127.0.0.1", 0, max_connections=2, client_timeout_s=0.5)
    served.owners = [owner]
    yield served
    served.stop()


def get(port: int, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, "/metrics")
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_head_answers_headers_without_a_body(endpoint: Endpoint) -> None:
    status, headers, body = get(endpoint.port, "HEAD")
    _, get_headers, get_body = get(endpoint.port)
    assert status == 200
    assert body == b""
    assert headers["Content-Length"] == str(len(get_body)) == get_headers["Content-Length"]


def test_an_idle_client_is_cut_after_the_client_timeout(endpoint: Endpoint) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.port)) as idle:
        idle.settimeout(5)
        started = time.monotonic()
        assert idle.recv(1024) == b""  # the server closed it
        assert time.monotonic() - started < 3


class HeldText:
    """Renders ``held`` scrapes only when released (they stay busy answering); later ones at once."""

    def __init__(self, held: int) -> None:
        self._held = threading.Semaphore(held)
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)

    def render(self) -> str:
        if self._held.acquire(blocking=False):
            self.waiting.release()
            self.release.wait(10)
        return "up 1\n"


def hold_busy(endpoint: Endpoint, count: int, source: str = "127.0.0.1") -> tuple[HeldText, list[socket.socket]]:
    """``count`` connections from ``source`` whose scrapes are being answered (their render is held)."""
    held = HeldText(count)
    endpoint.owners = [held]
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", endpoint.port), source_address=(source, 0))
        client.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        clients.append(client)
        assert held.waiting.acquire(timeout=5)  # being answered now
    return held, clients


def test_a_connection_gets_a_quick_503_only_when_every_slot_is_busy_answering(endpoint: Endpoint) -> None:
    held, clients = hold_busy(endpoint, 2)
    try:
        started = time.monotonic()
        status, _, _ = get(endpoint.port)
        assert status == 503
        assert time.monotonic() - started < 1
    finally:
        held.release.set()
        for client in clients:
            client.close()
    time.sleep(0.2)
    assert get(endpoint.port)[0] == 200


def test_idle_connections_from_an_attacker_never_lock_the_scraper_out() -> None:
    served = Endpoint("127.0.0.1", 0)  # the default limits
    served.owners = [Text("up 1\n")]
    attackers: list[socket.socket] = []
    try:
        statuses = []
        for _ in range(48):
            attackers.append(socket.create_connection(("127.0.0.1", served.port)))
            if len(attackers) % 2 == 0:
                statuses.append(get(served.port)[0])
        for _ in range(48):
            statuses.append(get(served.port)[0])
        assert statuses == [200] * 72
    finally:
        for attacker in attackers:
            attacker.close()
        served.stop()


def test_a_slow_request_line_is_idle_and_makes_room_for_a_scrape(endpoint: Endpoint) -> None:
    slow = [socket.create_connection(("127.0.0.1", endpoint.port)) for _ in range(2)]
    try:
        for client in slow:
            client.sendall(b"GET /metr")  # never finished
        time.sleep(0.1)
        status, _, body = get(endpoint.port)
        assert (status, body) == (200, b"up 1\n")
    finally:
        for client in slow:
            client.close()


def test_one_peer_cannot_take_the_slots_of_another() -> None:
    served = Endpoint("127.0.0.1", 0, max_connections=4, client_timeout_s=5, max_connections_per_peer=2)
    held, clients = hold_busy(served, 2, source="127.0.0.2")
    try:
        with socket.create_connection(("127.0.0.1", served.port), source_address=("127.0.0.2", 0)) as third:
            third.settimeout(5)
            third.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert third.recv(1024).startswith(b"HTTP/1.0 503")
        assert get(served.port)[:3:2] == (200, b"up 1\n")  # another peer (127.0.0.1) is served
    finally:
        held.release.set()
        for client in clients:
            client.close()
        served.stop()


def test_responses_do_not_name_the_server_software(endpoint: Endpoint) -> None:
    for path in ("/metrics", "/nothing-here"):
        connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            assert response.getheader("Server") is None
            assert response.getheader("Date")
        finally:
            connection.close()


def test_stop_is_immediate() -> None:
    served = Endpoint("127.0.0.1", 0)
    time.sleep(0.2)  # the serve loop is waiting
    started = time.monotonic()
    served.stop()
    assert time.monotonic() - started < 0.2
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=1)


def test_a_second_owner_on_the_same_port_takes_over_and_hands_back() -> None:
    first, second = Text("first 1\n"), Text("second 2\n")
    port = free_port()
    endpoint = acquire("127.0.0.1", port, first)
    try:
        taken = acquire("127.0.0.1", port, second)
        assert taken is endpoint
        assert get(port)[2] == b"second 2\n"
        release(taken, second)
        assert get(port)[2] == b"first 1\n"
    finally:
        release(endpoint, first)


def test_a_scrape_while_the_last_owner_is_released_gets_503_not_an_empty_page(endpoint: Endpoint) -> None:
    # release() drops the owner before it stops the server: a scrape in between must fail, not report nothing.
    endpoint.owners = []

    status, _, body = get(endpoint.port)

    assert status == 503
    assert b"up 1" not in body


def test_accept_failing_with_emfile_does_not_spin_and_recovers() -> None:
    code = textwrap.dedent(
        """
        import errno, json, resource, socket, time, urllib.request
        from chat_turbo_metrics.exporters._prometheus_server import Endpoint
        class Text:
            def render(self): return "up 1\\n"
        endpoint = Endpoint("127.0.0.1", 0)
        endpoint.owners = [Text()]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        clients = [socket.socket() for _ in range(4)]
        hogs = []
        try:
            while True:
                hogs.append(open("/dev/null"))
        except OSError as error:
            assert error.errno == errno.EMFILE
        for client in clients:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", endpoint.port))   # queued by the kernel; accept() hits EMFILE
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(1.5)
        busy = (time.process_time() - cpu) / (time.monotonic() - wall)
        for hog in hogs:
            hog.close()
        for client in clients:
            client.close()
        body = urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=30).read().decode()
        endpoint.stop()
        print("REPORT " + json.dumps({"busy": busy, "body": body}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("REPORT ")).removeprefix("REPORT "))
    assert report["body"] == "up 1\n"
    assert report["busy"] < 0.3, report  # a spinning accept loop keeps one core ~100% busy


# --- push exporters that keep failing --------------------------------------------------------------------


class FlakyExporter(MetricExporter):
    """A user's exporter whose peer is down until told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""


def test_a_failing_exporter_logs_once_per_outage_and_once_on_recovery(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.metrics.export import MetricsData

    exporter = FlakyExporter()
    fanout = Fanout(lambda: MetricsData(resource_metrics=[]), interval_s=3600, timeout_s=5)
    fanout.add(exporter)
    try:
        with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.export"):
            for _ in range(5):
                assert fanout.force_flush(5) is False
            exporter.down = False
            for _ in range(3):
                assert fanout.force_flush(5) is True
            exporter.down = True
            assert fanout.force_flush(5) is False
        messages = [record for record in caplog.records if record.name == "chat_turbo_metrics.export"]
        assert len(messages) == 3, [m.getMessage() for m in messages]  # down, up again (after 5), down
        assert "5" in messages[1].getMessage()
        assert fanout.failures[next(iter(fanout.failures))] == 6
    finally:
        fanout.shutdown(1)


# --- the same through the public exporter ------------------------------------------------------------------


def test_exporter_answers_head_and_stops_at_once(monitor_factory: Any) -> None:
    from chat_turbo_metrics.exporters.prometheus import PrometheusExporter

    monitor = monitor_factory()
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    monitor.add_exporter(exporter)
    monitor.increment_counter("jobs")
    status, headers, body = get(exporter.port, "HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) == len(get(exporter.port)[2]) > 0
    port = exporter.port
    time.sleep(0.2)  # the serve loop is waiting for a connection
    started = time.monotonic()
    exporter.shutdown()
    assert time.monotonic() - started < 0.2  # not the 0.5 s poll interval of socketserver
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
