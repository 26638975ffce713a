"""WSGI: a Django project driven in-process through Django's test client, measured after ``instrument()``."""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http.wsgi import WsgiMetricsInstrumentor

django = pytest.importorskip("django")
Reader = Callable[..., Any]


def _urlconf() -> types.ModuleType:
    from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
    from django.urls import include, path

    def message(request: HttpRequest, **params: Any) -> HttpResponse:
        return HttpResponse(f"message {params}")

    def echo(request: HttpRequest) -> HttpResponse:
        return HttpResponse(request.body)

    def fail(request: HttpRequest) -> HttpResponse:
        return HttpResponse(str(1 / 0))

    def busy(request: HttpRequest) -> JsonResponse:
        monitor = request.META["test.monitor"]
        return JsonResponse({"in_flight": monitor.snapshot().value("http_requests_in_flight")})

    def active(request: HttpRequest) -> JsonResponse:
        # The semantic conventions' gauge of this request's own (normalised) method and scheme, while it is handled.
        monitor = request.META["test.monitor"]
        method = request.method if request.method in ("GET", "POST") else "_OTHER"
        tags = {"http.request.method": method, "url.scheme": request.scheme}
        return JsonResponse({"active": monitor.snapshot().value("http.server.active_requests", tags)})

    def stream(request: HttpRequest) -> StreamingHttpResponse:
        def chunks() -> Iterator[bytes]:
            yield b"first "
            time.sleep(0.2)  # the response is not complete before this
            yield b"last"

        return StreamingHttpResponse(chunks())

    users = types.ModuleType("chat_turbo_http_test_users")
    users.urlpatterns = [path("users/<slug:name>", message)]  # type: ignore[attr-defined]
    urls = types.ModuleType("chat_turbo_http_test_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("api/messages/<int:id>", message),
        path("echo", echo),
        path("fail", fail),
        path("busy", busy),
        path("active", active),
        path("stream", stream),
        path("health", echo),
        path("v2/", include(users)),
    ]
    return urls


@pytest.fixture(scope="module")
def django_client() -> Any:
    from django.conf import settings
    from django.urls import clear_url_caches

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="chat-turbo-metrics-tests",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=_urlconf(),
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATABASES={},
        )
        django.setup()
    else:  # another test module of this process configured Django first: these URLs are the ones to resolve
        settings.ROOT_URLCONF = _urlconf()
        clear_url_caches()
    from django.test import Client

    return Client(raise_request_exception=False)


@pytest.fixture
def instrumented(http_monitor: PerformanceMonitor, wsgi_instrumentor: WsgiMetricsInstrumentor) -> PerformanceMonitor:
    """The monitor Django's requests are measured into (the instrumentor fixture uninstruments)."""
    wsgi_instrumentor.instrument(monitor=http_monitor, excluded_paths=["/health"])
    return http_monitor


def test_requests_are_counted_per_route_template(
    django_client: Any, instrumented: PerformanceMonitor, requests_of: Reader, duration_of: Reader
) -> None:
    for n in range(3):
        assert django_client.get(f"/api/messages/{n}").status_code == 200
    django_client.get("/v2/users/ann")
    django_client.get("/no/such/page")
    django_client.get("/health")
    assert requests_of(instrumented, "/api/messages/{id}", 200) == 3
    assert duration_of(instrumented, "/api/messages/{id}", 200)["count"] == 3
    assert requests_of(instrumented, "/v2/users/{name}", 200) == 1
    assert requests_of(instrumented, "unmatched", 404) == 1
    assert requests_of(instrumented, "/health", 200) is None


def test_body_sizes_are_recorded(django_client: Any, instrumented: PerformanceMonitor) -> None:
    django_client.post("/echo", data=b"z" * 321, content_type="application/octet-stream")
    tags = {"method": "POST", "endpoint": "/echo", "status": 200}
    snapshot = instrumented.snapshot()
    assert snapshot.value("http_request_size_bytes", tags)["sum"] == 321
    assert snapshot.value("http_response_size_bytes", tags)["sum"] == 321


def test_an_exception_django_turns_into_a_500_is_counted_with_its_type(
    django_client: Any, instrumented: PerformanceMonitor, requests_of: Reader
) -> None:
    assert django_client.get("/fail").status_code == 500
    assert requests_of(instrumented, "/fail", 500) == 1
    tags = {"method": "GET", "endpoint": "/fail", "status": 500, "error_type": "ZeroDivisionError"}
    assert instrumented.snapshot().value("errors", tags) == 1


def test_the_duration_of_a_streaming_response_runs_to_its_last_chunk(
    django_client: Any, instrumented: PerformanceMonitor, duration_of: Reader
) -> None:
    response = django_client.get("/stream")
    assert b"".join(response.streaming_content) == b"first last"
    histogram = duration_of(instrumented, "/stream", 200)
    assert histogram["count"] == 1
    assert histogram["sum"] >= 0.2


def test_requests_in_flight_are_counted_while_handled(django_client: Any, instrumented: PerformanceMonitor) -> None:
    response = django_client.get("/busy", **{"test.monitor": instrumented})
    assert response.json() == {"in_flight": 1}
    assert instrumented.snapshot().value("http_requests_in_flight") == 0


def test_active_requests_are_counted_per_method_and_scheme(
    django_client: Any, http_monitor: PerformanceMonitor, wsgi_instrumentor: WsgiMetricsInstrumentor
) -> None:
    wsgi_instrumentor.instrument(monitor=http_monitor, metric_names="semconv")
    extra = {"test.monitor": http_monitor}
    assert django_client.get("/active", **extra).json() == {"active": 1}
    assert django_client.post("/active", secure=True, **extra).json() == {"active": 1}
    assert django_client.generic("PURGE", "/active", **extra).json() == {"active": 1}
    snapshot = http_monitor.snapshot()
    for method, scheme in (("GET", "http"), ("POST", "https"), ("_OTHER", "http")):
        tags = {"http.request.method": method, "url.scheme": scheme}
        assert snapshot.value("http.server.active_requests", tags) == 0
    assert snapshot.value("http.server.active_requests", {"http.request.method": "PURGE", "url.scheme": "http"}) is None


def test_uninstrument_restores_django(
    django_client: Any,
    http_monitor: PerformanceMonitor,
    wsgi_instrumentor: WsgiMetricsInstrumentor,
    requests_of: Reader,
) -> None:
    from django.core.handlers.base import BaseHandler

    original = BaseHandler.get_response
    wsgi_instrumentor.instrument(monitor=http_monitor)
    assert BaseHandler.get_response is not original
    wsgi_instrumentor.uninstrument()
    assert BaseHandler.get_response is original
    django_client.get("/api/messages/1")
    assert requests_of(http_monitor, "/api/messages/{id}", 200) is None


def test_the_hand_added_middleware_measures_and_counts_once_beside_instrument(
    django_client: Any,
    http_monitor: PerformanceMonitor,
    wsgi_instrumentor: WsgiMetricsInstrumentor,
    requests_of: Reader,
) -> None:
    from django.test import Client, override_settings

    middleware = ["chat_turbo_metrics_http.django_middleware.DjangoMetricsMiddleware"]
    with override_settings(MIDDLEWARE=middleware, CHAT_TURBO_HTTP={"monitor": http_monitor}):
        client = Client(raise_request_exception=False)
        client.get("/api/messages/1")
        assert client.get("/fail").status_code == 500
        wsgi_instrumentor.instrument(monitor=http_monitor)
        client.get("/api/messages/2")
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 2
    tags = {"method": "GET", "endpoint": "/fail", "status": 500, "error_type": "ZeroDivisionError"}
    assert http_monitor.snapshot().value("errors", tags) == 1
