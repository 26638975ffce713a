"""Django's own ASGI handler (what uvicorn and daphne call), measured after ``DjangoAsgiInstrumentor.instrument()``."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http.django_asgi import DjangoAsgiInstrumentor

django = pytest.importorskip("django")
Reader = Callable[..., Any]


def _urlconf() -> types.ModuleType:
    from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
    from django.urls import path

    async def message(request: HttpRequest, id: int) -> HttpResponse:
        return HttpResponse(f"message {id}")

    def sync_message(request: HttpRequest, name: str) -> HttpResponse:
        return HttpResponse(f"user {name}")

    async def fail(request: HttpRequest) -> HttpResponse:
        raise KeyError("gone")

    async def stream(request: HttpRequest) -> StreamingHttpResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"chunk"
                await asyncio.sleep(0.05)

        return StreamingHttpResponse(chunks())

    urls = types.ModuleType("chat_turbo_http_test_asgi_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("api/messages/<int:id>", message),
        path("users/<slug:name>", sync_message),
        path("fail", fail),
        path("stream", stream),
        path("health", fail),
    ]
    return urls


@pytest.fixture
def django_asgi(http_monitor: PerformanceMonitor) -> Iterator[Callable[[list[str]], list[tuple[int, bytes]]]]:
    """``call(paths)``: GET each path through Django's ASGIHandler; measured into ``http_monitor``."""
    from django.conf import settings
    from django.urls import clear_url_caches

    if not settings.configured:
        settings.configure(DEBUG=False, SECRET_KEY="chat-turbo-metrics-tests", ALLOWED_HOSTS=["*"],
                           ROOT_URLCONF=_urlconf(), MIDDLEWARE=[], INSTALLED_APPS=[], DATABASES={})  # fmt: skip
        django.setup()
    previous = settings.ROOT_URLCONF
    settings.ROOT_URLCONF = _urlconf()
    clear_url_caches()
    from django.core.handlers.asgi import ASGIHandler

    DjangoAsgiInstrumentor().instrument(monitor=http_monitor, excluded_paths=["/health"])

    def call(paths: list[str]) -> list[tuple[int, bytes]]:
        async def run() -> list[tuple[int, bytes]]:
            transport = httpx.ASGITransport(app=ASGIHandler(), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return [((r := await client.get(path)).status_code, r.content) for path in paths]

        return asyncio.run(run())

    yield call
    DjangoAsgiInstrumentor().uninstrument()
    settings.ROOT_URLCONF = previous
    clear_url_caches()


def test_django_under_asgi_is_measured_per_route_template(
    django_asgi: Callable[[list[str]], list[tuple[int, bytes]]], http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    from django.core.handlers.base import BaseHandler

    answers = django_asgi(["/api/messages/1", "/api/messages/2", "/users/ann", "/fail", "/nope", "/stream", "/health"])
    assert [status for status, _ in answers] == [200, 200, 200, 500, 404, 200, 500]
    assert answers[5][1] == b"chunk" * 3
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 2
    assert requests_of(http_monitor, "/users/{name}", 200) == 1  # a sync view, run by Django in a thread
    assert requests_of(http_monitor, "/fail", 500) == 1
    assert requests_of(http_monitor, "unmatched", 404) == 1
    assert requests_of(http_monitor, "/health", 500) is None  # excluded
    error = {"method": "GET", "endpoint": "/fail", "status": 500, "error_type": "KeyError"}
    assert http_monitor.snapshot().value("errors", error) == 1
    streamed = {"method": "GET", "endpoint": "/stream", "status": 200}
    assert http_monitor.snapshot().value("http_response_size_bytes", streamed)["sum"] == 15
    assert http_monitor.snapshot().value("http_request_duration_seconds", streamed)["sum"] >= 0.1  # to the last chunk
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0
    # Ours is a coroutine function itself (Django awaits its coroutine directly), as Django's check (asgiref's; on
    # Python 3.12 and later inspect's too) requires.
    from asgiref.sync import iscoroutinefunction

    assert iscoroutinefunction(BaseHandler.get_response_async)
    assert iscoroutinefunction(BaseHandler().get_response_async)
    DjangoAsgiInstrumentor().uninstrument()
    assert getattr(BaseHandler.get_response_async, "__wrapped__", None) is None  # restored
    django_asgi(["/api/messages/3"])
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 2  # no longer measured
    DjangoAsgiInstrumentor().instrument(monitor=http_monitor)


def test_url_scheme_is_djangos_request_scheme_as_the_proxy_header_setting_changes(
    django_asgi: Callable[[list[str]], list[tuple[int, bytes]]], http_monitor: PerformanceMonitor
) -> None:
    # Ours reads SECURE_PROXY_SSL_HEADER where LazySettings keeps it: a change (override_settings, assignment) must
    # show on the next request, as request.scheme would see it.
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler, ASGIRequest
    from django.test import override_settings

    DjangoAsgiInstrumentor().uninstrument()
    DjangoAsgiInstrumentor().instrument(monitor=http_monitor, metric_names="semconv")
    forwarded = {"X-Forwarded-Proto": "https"}

    def get(base: str, headers: dict[str, str], handler: Any = ASGIHandler) -> int:
        async def run() -> int:
            transport = httpx.ASGITransport(app=handler())
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                return (await client.get("/api/messages/1", headers=headers)).status_code

        return asyncio.run(run())

    def by_scheme() -> dict[str, int]:
        counts = {}
        for scheme in ("http", "https"):
            tags = {"http.request.method": "GET", "url.scheme": scheme, "http.response.status_code": 200,
                    "http.route": "/api/messages/{id}"}  # fmt: skip
            counts[scheme] = (http_monitor.snapshot().value("http.server.request.duration", tags) or {}).get("count", 0)
        return counts

    previous = settings.SECURE_PROXY_SSL_HEADER
    assert not previous
    assert get("https://testserver", {}) == 200  # the ASGI scope's scheme
    assert get("http://testserver", forwarded) == 200  # the header means nothing without the setting
    assert by_scheme() == {"http": 1, "https": 1}
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert get("http://testserver", forwarded) == 200  # the proxy's word
        assert get("https://testserver", {"X-Forwarded-Proto": "http"}) == 200
        assert by_scheme() == {"http": 2, "https": 2}
    assert get("http://testserver", forwarded) == 200  # the setting restored: the scope's scheme again
    assert by_scheme() == {"http": 3, "https": 2}
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")  # assigned, as some projects do at start
    try:
        assert get("http://testserver", forwarded) == 200
        assert by_scheme() == {"http": 3, "https": 3}
    finally:
        settings.SECURE_PROXY_SSL_HEADER = previous
    assert get("http://testserver", forwarded) == 200
    assert by_scheme() == {"http": 4, "https": 3}

    class TerminatedRequest(ASGIRequest):  # a project's request class that knows its TLS terminator
        scheme = property(lambda self: "https")

    class TerminatedHandler(ASGIHandler):
        request_class = TerminatedRequest

    assert get("http://testserver", {}, TerminatedHandler) == 200
    assert by_scheme() == {"http": 4, "https": 4}


def test_instrumented_before_django_loads_its_asgi_handler(tmp_path: Any) -> None:
    # BaseHandler is patched as Django's ASGI handler module imports it, half-way through that module's own import:
    # the patch must not need the ASGI handler (its ASGIRequest is looked up at the first request).
    import json
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import asyncio, json, sys, types
        import django
        from django.conf import settings
        from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
        from chat_turbo_metrics_http.django_asgi import DjangoAsgiInstrumentor

        monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=()))
        DjangoAsgiInstrumentor().instrument(monitor=monitor, metric_names="semconv")
        assert "django.core.handlers.base" not in sys.modules
        from django.core.asgi import get_asgi_application  # imports the ASGI handler, which imports BaseHandler

        async def hello(request):
            from django.http import HttpResponse
            return HttpResponse("hi")

        from django.urls import path
        urls = types.ModuleType("urls")
        urls.urlpatterns = [path("hello", hello)]
        settings.configure(SECRET_KEY="t", ALLOWED_HOSTS=["*"], ROOT_URLCONF=urls, MIDDLEWARE=[], INSTALLED_APPS=[])
        app = get_asgi_application()

        async def get(scheme):
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": scheme, "path": "/hello", "raw_path": b"/hello", "query_string": b"",
                     "root_path": "", "headers": [(b"host", b"t")], "client": ("127.0.0.1", 1),
                     "server": ("127.0.0.1", 80)}
            sent = []
            async def receive():
                if sent:
                    await asyncio.Event().wait()
                sent.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            async def send(message):
                pass
            await app(scope, receive, send)

        for scheme in ("https", "https", "http"):  # the first request finds ASGIRequest, the next use it
            asyncio.run(get(scheme))
        counts = {}
        for scheme in ("http", "https"):
            tags = {"http.request.method": "GET", "url.scheme": scheme, "http.response.status_code": 200,
                    "http.route": "/hello"}
            counts[scheme] = monitor.snapshot().value("http.server.request.duration", tags)["count"]
        print("REPORT " + json.dumps(counts))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "cannot instrument" not in result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert json.loads(line[len("REPORT ") :]) == {"http": 1, "https": 2}
