"""requests, urllib3 and httpx's sync client against a real HTTP server on 127.0.0.1: every outcome, exact counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_http_client import HttpxInstrumentor, RequestsInstrumentor, Urllib3Instrumentor

Series = Callable[..., dict[Any, int]]


def tags(port: int, method: str = "GET", status: int | None = 200, error: str | None = None) -> frozenset[Any]:
    found: dict[str, Any] = {"method": method, "server_address": "127.0.0.1", "server_port": port}
    if status is not None:
        found["status"] = status
    if error is not None:
        found["error_type"] = error
    return frozenset(found.items())


# --- requests -------------------------------------------------------------------------------------------------


def test_requests_outcomes_by_status_and_error(
    instrumented: Callable[..., None],
    client_server: Any,
    client_monitor: PerformanceMonitor,
    client_series: Series,
    refused_port: int,
) -> None:
    instrumented(RequestsInstrumentor)
    port = client_server.port
    assert requests.get(client_server.url("/ok?token=s3cret"), timeout=5).text == "ok"
    assert requests.post(client_server.url("/ok"), data=b"x", timeout=5).status_code == 200
    assert requests.get(client_server.url("/fail"), timeout=5).status_code == 500
    assert requests.get(client_server.url("/missing"), timeout=5).status_code == 404
    assert requests.request("PURGE", client_server.url("/x"), timeout=5).text == "purged"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{refused_port}/private?token=s3cret", timeout=5)
    with pytest.raises(requests.ReadTimeout):
        requests.get(client_server.url("/slow"), timeout=0.1)

    assert client_series(client_monitor) == {
        tags(port): 1,
        tags(port, "POST"): 1,
        tags(port, status=500, error="500"): 1,
        tags(port, status=404, error="404"): 1,
        tags(port, "_OTHER"): 1,
        tags(refused_port, status=None, error="ConnectionError"): 1,
        tags(port, status=None, error="ReadTimeout"): 1,
    }
    assert "s3cret" not in client_monitor.snapshot().to_prometheus()
    assert "/ok" not in client_monitor.snapshot().to_prometheus()


def test_requests_retries_redirects_and_urllib3_below_count_one_request_each(
    instrumented: Callable[..., None], client_server: Any, client_monitor: PerformanceMonitor, client_series: Series
) -> None:
    instrumented(RequestsInstrumentor)
    instrumented(Urllib3Instrumentor)  # requests sends through urllib3: still one request each
    session = requests.Session()
    retry = urllib3.Retry(total=3, status_forcelist=[503], backoff_factor=0)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    assert session.get(client_server.url("/flaky"), timeout=5).text == "flaky"
    assert client_server.hits["/flaky"] == 3  # two 503s retried by urllib3, then the 200
    assert session.get(client_server.url("/redirect"), timeout=5).text == "ok"  # 302 followed
    session.close()
    assert client_series(client_monitor) == {tags(client_server.port): 2}


def test_requests_stream_is_measured_to_its_headers(
    instrumented: Callable[..., None], client_server: Any, client_monitor: PerformanceMonitor
) -> None:
    instrumented(RequestsInstrumentor)
    with requests.get(client_server.url("/stream"), stream=True, timeout=5) as response:
        assert b"".join(response.iter_content(None)) == b"chunk" * 3
    record = client_monitor.snapshot().value("http_client_request_duration_seconds", dict(tags(client_server.port)))
    assert record["count"] == 1
    assert record["sum"] < 0.1  # the three chunks take 0.15 s after the headers: not in the duration


def test_uninstrument_restores_and_stops_measuring(
    client_server: Any, client_monitor: PerformanceMonitor, client_series: Series
) -> None:
    originals = (requests.Session.send, urllib3.HTTPConnectionPool.urlopen, httpx.Client.send, httpx.AsyncClient.send)
    for cls in (RequestsInstrumentor, Urllib3Instrumentor, HttpxInstrumentor):
        cls().instrument(monitor=client_monitor)
    assert requests.Session.send is not originals[0]
    for cls in (RequestsInstrumentor, Urllib3Instrumentor, HttpxInstrumentor):
        cls().uninstrument()
    now = (requests.Session.send, urllib3.HTTPConnectionPool.urlopen, httpx.Client.send, httpx.AsyncClient.send)
    assert now == originals
    requests.get(client_server.url("/ok"), timeout=5)
    assert client_series(client_monitor) == {}


def test_semconv_names_under_the_http_switch(
    instrumented: Callable[..., None],
    client_server: Any,
    client_monitor: PerformanceMonitor,
    client_series: Series,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHAT_TURBO_HTTP_METRIC_NAMES", "both")
    instrumented(RequestsInstrumentor)
    requests.get(client_server.url("/fail"), timeout=5)
    semconv = {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": client_server.port,
        "http.response.status_code": 500,
        "error.type": "500",
    }
    assert client_series(client_monitor, "http.client.request.duration") == {frozenset(semconv.items()): 1}
    assert client_series(client_monitor) == {tags(client_server.port, status=500, error="500"): 1}


def test_a_bad_keyword_raises_and_a_bad_variable_measures_nothing(
    client_server: Any,
    client_monitor: PerformanceMonitor,
    client_series: Series,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ConfigurationError, match="metric_names"):
        RequestsInstrumentor().instrument(monitor=client_monitor, metric_names="prometheus")
    RequestsInstrumentor().uninstrument()
    monkeypatch.setattr("chat_turbo_metrics_http._settings._reported", set())
    monkeypatch.setenv("CHAT_TURBO_HTTP_METRIC_NAMES", "prometheus")
    RequestsInstrumentor().instrument(monitor=client_monitor)
    try:
        assert requests.get(client_server.url("/ok"), timeout=5).text == "ok"
    finally:
        RequestsInstrumentor().uninstrument()
    assert client_series(client_monitor) == {}
    assert any("CHAT_TURBO_HTTP_METRIC_NAMES" in record.getMessage() for record in caplog.records)


def test_a_recording_that_fails_never_reaches_the_application(
    instrumented: Callable[..., None],
    client_server: Any,
    client_monitor: PerformanceMonitor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instrumented(RequestsInstrumentor)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("recorder gone")

    monkeypatch.setattr(client_monitor, "histogram", broken)
    assert requests.get(client_server.url("/ok"), timeout=5).text == "ok"


# --- urllib3 --------------------------------------------------------------------------------------------------


def test_urllib3_outcomes_and_own_retries(
    instrumented: Callable[..., None],
    client_server: Any,
    client_monitor: PerformanceMonitor,
    client_series: Series,
    refused_port: int,
) -> None:
    instrumented(Urllib3Instrumentor)
    port = client_server.port
    with urllib3.PoolManager() as pool:
        assert pool.request("GET", client_server.url("/ok?token=s3cret")).data == b"ok"
        flaky = pool.request("GET", client_server.url("/flaky"), retries=urllib3.Retry(3, status_forcelist=[503]))
        assert flaky.status == 200
        assert pool.request("GET", client_server.url("/fail"), retries=False).status == 500
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            pool.request("GET", f"http://127.0.0.1:{refused_port}/", retries=urllib3.Retry(1, backoff_factor=0))
        streamed = pool.request("GET", client_server.url("/stream"), preload_content=False)
        assert b"".join(streamed.stream()) == b"chunk" * 3
        streamed.release_conn()
    assert client_server.hits["/flaky"] == 3
    assert client_series(client_monitor) == {
        tags(port): 3,  # /ok, /flaky (its retries inside), /stream
        tags(port, status=500, error="500"): 1,
        tags(refused_port, status=None, error="MaxRetryError"): 1,
    }


# --- httpx (sync) ---------------------------------------------------------------------------------------------


def test_httpx_sync_outcomes(
    instrumented: Callable[..., None],
    client_server: Any,
    client_monitor: PerformanceMonitor,
    client_series: Series,
    refused_port: int,
) -> None:
    instrumented(HttpxInstrumentor)
    port = client_server.port
    with httpx.Client(timeout=5, follow_redirects=True) as client:
        assert client.get(client_server.url("/ok?token=s3cret")).text == "ok"
        assert client.get(client_server.url("/redirect")).text == "ok"  # one request, redirect inside
        assert client.get(client_server.url("/fail")).status_code == 500
        with client.stream("GET", client_server.url("/stream")) as response:
            assert b"".join(response.iter_bytes()) == b"chunk" * 3
        with pytest.raises(httpx.ReadTimeout):
            client.get(client_server.url("/slow"), timeout=0.1)
    retrying = httpx.HTTPTransport(retries=2)  # the transport retries a refused connection itself
    with httpx.Client(transport=retrying) as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{refused_port}/")
    assert client_series(client_monitor) == {
        tags(port): 3,
        tags(port, status=500, error="500"): 1,
        tags(port, status=None, error="ReadTimeout"): 1,
        tags(refused_port, status=None, error="ConnectError"): 1,
    }
    assert "s3cret" not in client_monitor.snapshot().to_prometheus()


def test_without_the_http_switch_the_monitors_semconv_opt_in_decides(
    client_server: Any, client_series: Series, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAT_TURBO_HTTP_METRIC_NAMES", raising=False)
    monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=(),
                                                  semconv_stability_opt_in=("http/dup",)))  # fmt: skip
    HttpxInstrumentor().instrument(monitor=monitor)
    try:
        assert httpx.get(client_server.url("/ok")).text == "ok"
    finally:
        HttpxInstrumentor().uninstrument()
    semconv = {"http.request.method": "GET", "server.address": "127.0.0.1", "server.port": client_server.port,
               "http.response.status_code": 200}  # fmt: skip
    assert client_series(monitor, "http.client.request.duration") == {frozenset(semconv.items()): 1}
    assert client_series(monitor) == {tags(client_server.port): 1}  # "/dup": the seed's name as well
    monitor.shutdown()


def test_requests_bind_their_series_once_per_configure(client_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path reuses the first request's handles; a configure() (a new recorder) makes it bind once more."""
    import chat_turbo_metrics
    from chat_turbo_metrics_http_client._metrics import ClientMetrics

    binds: list[object] = []
    real = ClientMetrics._bind

    def counting(self: ClientMetrics, monitor: PerformanceMonitor) -> None:
        binds.append(monitor)
        real(self, monitor)

    monkeypatch.setattr(ClientMetrics, "_bind", counting)
    chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)
    RequestsInstrumentor().instrument()
    try:
        session = requests.Session()
        for _ in range(5):
            session.get(client_server.url("/ok"), timeout=5)
        assert len(binds) == 1
        chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)
        for _ in range(3):
            session.get(client_server.url("/ok"), timeout=5)
        assert len(binds) == 2
        found = (
            PerformanceMonitor.get_instance()
            .snapshot()
            .value("http_client_request_duration_seconds", dict(tags(client_server.port)))
        )
        assert found["count"] == 3  # the new pipeline's requests
        session.close()
    finally:
        RequestsInstrumentor().uninstrument()
        chat_turbo_metrics.configure(environment="test", metrics_exporters=(), self_telemetry=False)
