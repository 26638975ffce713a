"""The /metrics endpoint against hostile and clumsy clients, over real sockets on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import subprocess
import sys
import textwrap
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


def test_connections_beyond_the_limit_get_a_quick_503_and_service_resumes(endpoint: Endpoint) -> None:
    holders = [socket.create_connection(("127.0.0.1", endpoint.port)) for _ in range(2)]
    try:
        time.sleep(0.1)  # both accepted and waiting for a request line
        status, _, _ = get(endpoint.port)
        assert status == 503
    finally:
        for holder in holders:
            holder.close()
    time.sleep(0.2)
    assert get(endpoint.port)[0] == 200


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
