"""``make_asgi_app()`` / ``make_wsgi_app()``: /metrics on the application's own port, mounted in Starlette, FastAPI,
Flask and Django, answering exactly what the exporter's port answers (negotiation, gzip, the pre-fork merge)."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter, make_asgi_app, make_wsgi_app
from conftest import clean_env, free_port, require_tool, service_process

MonitorFactory = Callable[..., PerformanceMonitor]
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


@pytest.fixture
def served(monitor_factory: MonitorFactory) -> tuple[PerformanceMonitor, PrometheusExporter]:
    monitor = monitor_factory(self_telemetry=False)
    exporter = PrometheusExporter(host="127.0.0.1", port=0)
    monitor.add_exporter(exporter)
    monitor.increment_counter("messages_sent", {"channel": "public"}, value=3)
    monitor.record_histogram("payload_bytes", 512)
    return monitor, exporter


def from_port(exporter: PrometheusExporter, accept: str) -> tuple[str, bytes]:
    request = urllib.request.Request(exporter.url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read()


@pytest.mark.parametrize("accept", [OPENMETRICS_ACCEPT, "text/plain"])
def test_starlette_mount_serves_what_the_port_serves(
    served: tuple[PerformanceMonitor, PrometheusExporter], accept: str
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    _, exporter = served
    app = Starlette(routes=[Mount("/metrics", app=make_asgi_app())])
    with TestClient(app) as client:
        response = client.get("/metrics/", headers={"Accept": accept})
    assert response.status_code == 200
    assert (response.headers["content-type"], response.content) == from_port(exporter, accept)


def test_fastapi_mount_negotiates_and_compresses(served: tuple[PerformanceMonitor, PrometheusExporter]) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    _, exporter = served
    app = FastAPI()
    app.mount("/metrics", make_asgi_app(exporter))

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    with TestClient(app) as client:
        response = client.get("/metrics/", headers={"Accept": OPENMETRICS_ACCEPT, "Accept-Encoding": "gzip"})
        assert client.get("/hello").json() == {"hello": "world"}
        head = client.head("/metrics/")
        assert client.post("/metrics/").status_code == 405
    assert response.headers["content-encoding"] == "gzip"
    families = {f.name: f for f in parse_openmetrics(response.content.decode())}  # httpx decompressed it
    assert families["messages_sent"].samples[0].value == 3
    assert (head.status_code, head.content) == (200, b"")


def test_asgi_wrapper_passes_other_paths_to_the_application(
    served: tuple[PerformanceMonitor, PrometheusExporter],
) -> None:
    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"app " + scope["path"].encode()})

    _, exporter = served
    wrapped = make_asgi_app(app=application)

    async def run() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=wrapped)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/metrics"), await client.get("/chat/1")

    import asyncio

    metrics, other = asyncio.run(run())
    assert metrics.content == from_port(exporter, "")[1]
    assert other.text == "app /chat/1"


def test_flask_dispatcher_mount_serves_what_the_port_serves(
    served: tuple[PerformanceMonitor, PrometheusExporter],
) -> None:
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    _, exporter = served
    app = Flask("chat")

    @app.get("/hello")
    def hello() -> str:
        return "world"

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": make_wsgi_app()})  # type: ignore[method-assign]
    client = app.test_client()
    for accept in (OPENMETRICS_ACCEPT, "text/plain"):
        response = client.get("/metrics", headers={"Accept": accept})
        assert (response.headers["Content-Type"], response.data) == from_port(exporter, accept)
    assert client.get("/hello").data == b"world"
    assert client.get("/metrics/nothing").status_code == 404


@pytest.fixture(scope="module")
def django_apps() -> tuple[Any, Any]:
    import django
    from django.conf import settings
    from django.http import HttpResponse
    from django.urls import path

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
        )
        django.setup()
    else:  # another test module of this process configured Django first: these URLs are the ones to resolve
        from django.urls import clear_url_caches

        settings.ROOT_URLCONF = __name__
        clear_url_caches()
    global urlpatterns
    urlpatterns = [path("hello", lambda request: HttpResponse(b"world"))]
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application(), get_asgi_application()


urlpatterns: list[Any] = []


def test_django_wsgi_application_wrapped_serves_metrics_beside_its_views(
    served: tuple[PerformanceMonitor, PrometheusExporter], django_apps: tuple[Any, Any]
) -> None:
    from werkzeug.test import Client

    _, exporter = served
    client = Client(make_wsgi_app(app=django_apps[0]))
    response = client.get("/metrics", headers={"Accept": OPENMETRICS_ACCEPT})
    assert (response.headers["Content-Type"], response.data) == from_port(exporter, OPENMETRICS_ACCEPT)
    assert client.get("/hello").data == b"world"


def test_django_asgi_application_wrapped_serves_metrics_beside_its_views(
    served: tuple[PerformanceMonitor, PrometheusExporter], django_apps: tuple[Any, Any]
) -> None:
    import asyncio

    _, exporter = served
    wrapped = make_asgi_app(app=django_apps[1])

    async def run() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=wrapped)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/metrics", headers={"Accept": "text/plain"}), await client.get("/hello")

    metrics, hello = asyncio.run(run())
    assert (metrics.headers["content-type"], metrics.content) == from_port(exporter, "text/plain")
    assert hello.content == b"world"


def test_without_an_exporter_the_app_says_so() -> None:
    from werkzeug.test import Client

    response = Client(make_wsgi_app()).get("/")
    assert response.status_code == 503
    assert b"no Prometheus exporter" in response.data


MEMBER = """
import sys
from werkzeug.test import Client
from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics.exporters.prometheus import make_wsgi_app

monitor = PerformanceMonitor(MonitoringConfig(
    metrics_exporters=("prometheus",), prometheus_host="127.0.0.1", prometheus_port=int(sys.argv[1]),
    multiprocess_dir=sys.argv[2], multiprocess_group="apps-test", environment="test",
))
monitor.increment_counter("jobs", value=5)
from opentelemetry.sdk.trace import TracerProvider
with TracerProvider().get_tracer("member").start_as_current_span("work") as span:
    monitor.record_histogram("work_seconds", 0.3)
    trace_id = f"{span.get_span_context().trace_id:032x}"
response = Client(make_wsgi_app()).get("/metrics", headers={"Accept": sys.argv[3]})
sys.stdout.write(f"{trace_id}\\n{response.status_code}\\n{response.headers['Content-Type']}\\n{response.data.decode()}")
monitor.shutdown()
"""


@pytest.mark.parametrize("accept", ["text/plain", OPENMETRICS_ACCEPT])
def test_a_member_of_a_prefork_group_serves_the_merged_scrape(tmp_path: Any, accept: str) -> None:
    """In a process that does not hold the port, the mounted app answers with the service's merged data."""
    port = free_port()
    holder = service_process(tmp_path, port, multiprocess_group="apps-test")
    try:
        holder.increment_counter("jobs", value=2)
        member = subprocess.run(
            [sys.executable, "-c", MEMBER, str(port), str(tmp_path), accept],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert member.returncode == 0, member.stderr
        trace_id, status, content_type, body = member.stdout.split("\n", 3)
        assert status == "200"
        parse = parse_openmetrics if "openmetrics" in content_type else parse_text
        assert ("openmetrics" in content_type) is (accept == OPENMETRICS_ACCEPT)
        totals = [s.value for f in parse(body) for s in f.samples if s.name == "jobs_total"]
        assert totals == [7]  # the holder's 2 and the member's 5, merged by the holder
        if "openmetrics" in content_type:  # the member's exemplar crossed the merge (prometheus_client's cannot)
            exemplars = [
                s.exemplar for f in parse(body) for s in f.samples if s.name == "work_seconds_bucket" and s.exemplar
            ]
            assert [e.labels["trace_id"] for e in exemplars] == [trace_id]
            assert exemplars[0].value == 0.3
    finally:
        holder.shutdown()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def wsgi_server(served: tuple[PerformanceMonitor, PrometheusExporter]) -> Iterator[tuple[WSGIServer, Any]]:
    """The mounted WSGI app on a real HTTP server; Accept rewritten to the text format (Prometheus 2.x always
    asks for OpenMetrics first), so a real Prometheus scrapes the text format through it."""
    inner = make_wsgi_app()

    def text_only(environ: dict[str, Any], start_response: Any) -> Any:
        environ["HTTP_ACCEPT"] = "text/plain;version=0.0.4"
        return inner(environ, start_response)

    server = make_server("127.0.0.1", 0, text_only, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, served
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_real_prometheus_scrapes_both_formats(wsgi_server: tuple[WSGIServer, Any], tmp_path: Any) -> None:
    """Prometheus scrapes the exporter's port (it negotiates OpenMetrics) and the mounted app (text format)."""
    from test_prometheus import start_prometheus, values, wait_ready

    require_tool("prometheus")
    server, (monitor, exporter) = wsgi_server
    from opentelemetry.sdk.trace import TracerProvider

    with TracerProvider().get_tracer("t").start_as_current_span("request") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
        monitor.record_histogram("payload_bytes", 700)
    process, prometheus = start_prometheus(
        tmp_path, exporter.port, extra_targets=[f"127.0.0.1:{server.server_address[1]}"]
    )
    try:
        wait_ready(process, prometheus)
        prometheus.wait_for("up", lambda r: sorted(values(r)) == [1.0, 1.0])
        result = prometheus.wait_for("messages_sent_total", lambda r: len(r) == 2)
        assert sorted(values(result)) == [3.0, 3.0]
        assert {series["metric"]["otel_scope_name"] for series in result} == {"chat_turbo_metrics"}
        # The OpenMetrics scrape's exemplar reached Prometheus's exemplar storage.
        exemplars = prometheus.wait_exemplars("payload_bytes_bucket", bool)
        assert trace_id in {e["labels"].get("trace_id") for e in exemplars}
    finally:
        process.terminate()
        process.wait(10)
