"""WSGI: Flask apps driven in-process through Flask's test client, measured by our middleware or instrumentor."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import flask
import pytest
from werkzeug.test import Client

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http.wsgi import WsgiMetricsInstrumentor, WsgiMetricsMiddleware

Reader = Callable[..., Any]


# buffered=True: the test client reads and closes the body, as every WSGI server does; a request ends there.


def make_app(monitor: PerformanceMonitor | None = None, *, propagate: bool = False) -> flask.Flask:
    app = flask.Flask("chat")
    app.config["PROPAGATE_EXCEPTIONS"] = propagate

    @app.route("/api/messages/<int:id>")
    def message(id: int) -> str:
        return f"message {id}"

    @app.route("/echo", methods=["POST"])
    def echo() -> bytes:
        return flask.request.get_data()

    @app.route("/fail")
    def fail() -> str:
        return str(1 / 0)

    @app.route("/busy")
    def busy() -> dict[str, Any]:
        assert monitor is not None
        return {"in_flight": monitor.snapshot().value("http_requests_in_flight")}

    @app.route("/stream")
    def stream() -> flask.Response:
        def chunks() -> Iterator[bytes]:
            yield b"first "
            time.sleep(0.2)  # the response is not complete before this
            yield b"last"

        return flask.Response(chunks())

    @app.route("/health")
    def health() -> str:
        return "ok"

    return app


def measured(app: flask.Flask, monitor: PerformanceMonitor, **options: Any) -> flask.Flask:
    app.wsgi_app = WsgiMetricsMiddleware(app.wsgi_app, monitor=monitor, **options)  # type: ignore[method-assign]
    return app


def test_requests_are_counted_per_route_template(
    http_monitor: PerformanceMonitor, requests_of: Reader, duration_of: Reader
) -> None:
    client = measured(make_app(), http_monitor).test_client()
    for n in range(3):
        assert client.get(f"/api/messages/{n}", buffered=True).status_code == 200
    client.get("/nowhere/1", buffered=True)
    client.get("/nowhere/2", buffered=True)
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 3
    assert duration_of(http_monitor, "/api/messages/{id}", 200)["count"] == 3
    assert requests_of(http_monitor, "unmatched", 404) == 2


def test_body_sizes_are_recorded(http_monitor: PerformanceMonitor) -> None:
    client = measured(make_app(), http_monitor).test_client()
    client.post("/echo", data=b"y" * 700, buffered=True)
    tags = {"method": "POST", "endpoint": "/echo", "status": 200}
    snapshot = http_monitor.snapshot()
    assert snapshot.value("http_request_size_bytes", tags)["sum"] == 700
    assert snapshot.value("http_response_size_bytes", tags)["sum"] == 700


def test_an_exception_flask_turns_into_a_500_is_counted_with_its_type(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    client = measured(make_app(), http_monitor).test_client()
    assert client.get("/fail", buffered=True).status_code == 500
    assert requests_of(http_monitor, "/fail", 500) == 1
    tags = {"method": "GET", "endpoint": "/fail", "status": 500, "error_type": "ZeroDivisionError"}
    assert http_monitor.snapshot().value("errors", tags) == 1


def test_a_propagated_exception_is_recorded_as_500_and_reraised_unchanged(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    client = measured(make_app(propagate=True), http_monitor).test_client()
    with pytest.raises(ZeroDivisionError):
        client.get("/fail", buffered=True)
    tags = {"method": "GET", "endpoint": "/fail", "status": 500, "error_type": "ZeroDivisionError"}
    assert http_monitor.snapshot().value("errors", tags) == 1
    assert requests_of(http_monitor, "/fail", 500) == 1


def test_an_exception_outside_flask_is_recorded_as_500_and_reraised(http_monitor: PerformanceMonitor) -> None:
    class Broken(Exception):
        pass

    def app(environ: Any, start_response: Any) -> Any:
        raise Broken("no")

    client = Client(WsgiMetricsMiddleware(app, monitor=http_monitor))
    with pytest.raises(Broken):
        client.get("/x", buffered=True)
    tags = {"method": "GET", "endpoint": "unmatched", "status": 500, "error_type": "Broken"}
    assert http_monitor.snapshot().value("errors", tags) == 1
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0


def test_the_duration_of_a_streaming_response_runs_to_its_last_chunk(
    http_monitor: PerformanceMonitor, duration_of: Reader
) -> None:
    client = measured(make_app(), http_monitor).test_client()
    response = client.get("/stream", buffered=True)
    assert response.data == b"first last"
    histogram = duration_of(http_monitor, "/stream", 200)
    assert histogram["count"] == 1
    assert histogram["sum"] >= 0.2


def test_a_body_closed_before_its_end_is_still_one_request(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    app = measured(make_app(), http_monitor)

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        pass

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/stream", "SERVER_NAME": "x", "SERVER_PORT": "80"}
    environ.update({"wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": None})
    body = app.wsgi_app(environ, start_response)
    assert next(iter(body)) == b"first "
    body.close()  # type: ignore[attr-defined] # the client went away after the first chunk
    assert requests_of(http_monitor, "/stream", 200) == 1
    assert http_monitor.snapshot().value(
        "http_response_size_bytes", {"method": "GET", "endpoint": "/stream", "status": 200}
    )["sum"] == len(b"first ")


def test_requests_in_flight_are_counted_while_handled(http_monitor: PerformanceMonitor) -> None:
    client = measured(make_app(http_monitor), http_monitor).test_client()
    assert client.get("/busy", buffered=True).get_json() == {"in_flight": 1}
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0


def test_excluded_paths_are_not_measured(http_monitor: PerformanceMonitor, requests_of: Reader) -> None:
    client = measured(make_app(), http_monitor, excluded_paths="/health").test_client()
    client.get("/health", buffered=True)
    client.get("/api/messages/1", buffered=True)
    assert requests_of(http_monitor, "/health", 200) is None
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 1


def test_instrument_measures_flask_apps_created_before_and_after(
    http_monitor: PerformanceMonitor, wsgi_instrumentor: WsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    before = make_app()
    wsgi_instrumentor.instrument(monitor=http_monitor)
    after = make_app()
    before.test_client().get("/api/messages/1", buffered=True)
    after.test_client().get("/api/messages/2", buffered=True)
    assert after.test_client().get("/fail", buffered=True).status_code == 500
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 2
    tags = {"method": "GET", "endpoint": "/fail", "status": 500, "error_type": "ZeroDivisionError"}
    assert http_monitor.snapshot().value("errors", tags) == 1


def test_instrument_and_a_hand_added_middleware_count_a_request_once(
    http_monitor: PerformanceMonitor, wsgi_instrumentor: WsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    wsgi_instrumentor.instrument(monitor=http_monitor)
    app = measured(make_app(), http_monitor)
    app.test_client().get("/api/messages/1", buffered=True)
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 1


def test_uninstrument_restores_flask(
    http_monitor: PerformanceMonitor, wsgi_instrumentor: WsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    original = flask.Flask.wsgi_app
    wsgi_instrumentor.instrument(monitor=http_monitor)
    assert flask.Flask.wsgi_app is not original
    wsgi_instrumentor.uninstrument()
    assert flask.Flask.wsgi_app is original
    make_app().test_client().get("/api/messages/1", buffered=True)
    assert requests_of(http_monitor, "/api/messages/{id}", 200) is None


def test_uninstrument_stops_measuring_an_app_that_already_served(
    http_monitor: PerformanceMonitor, wsgi_instrumentor: WsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    wsgi_instrumentor.instrument(monitor=http_monitor)
    app = make_app()
    client = app.test_client()
    client.get("/api/messages/1", buffered=True)  # its measured wsgi_app is now kept on the app
    wsgi_instrumentor.uninstrument()
    client.get("/api/messages/2", buffered=True)
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 1
    assert "wsgi_app" not in vars(app)


def test_a_subclass_overriding_wsgi_app_keeps_its_override_and_is_measured(
    http_monitor: PerformanceMonitor, wsgi_instrumentor: WsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    calls = []

    class Traced(flask.Flask):
        def wsgi_app(self, environ: Any, start_response: Any) -> Any:
            calls.append(environ["PATH_INFO"])
            return super().wsgi_app(environ, start_response)

    wsgi_instrumentor.instrument(monitor=http_monitor)
    app = Traced("chat")
    app.add_url_rule("/api/messages/<int:id>", "message", lambda id: "hi")
    client = app.test_client()
    for n in range(3):
        client.get(f"/api/messages/{n}", buffered=True)
    assert calls == ["/api/messages/0", "/api/messages/1", "/api/messages/2"]
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 3


def test_middleware_wrapped_around_an_instrumented_app_counts_once_and_survives_uninstrument(
    http_monitor: PerformanceMonitor, wsgi_instrumentor: WsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    wsgi_instrumentor.instrument(monitor=http_monitor)
    app = make_app()
    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]  # as Flask's docs show
    app.test_client().get("/api/messages/1", buffered=True)
    wsgi_instrumentor.uninstrument()
    assert isinstance(app.wsgi_app, ProxyFix)  # the application's own choice is left alone
    app.test_client().get("/api/messages/2", buffered=True)
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 2  # it wraps the measured app it was given


def test_contribs_wsgi_middleware_beside_ours_counts_nothing_twice(
    http_monitor: PerformanceMonitor, wsgi_instrumentor: WsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    assert http_monitor.pipeline is not None
    wsgi_instrumentor.instrument(monitor=http_monitor)
    app = make_app()
    app.wsgi_app = OpenTelemetryMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, tracer_provider=tracer_provider, meter_provider=http_monitor.pipeline.meter_provider
    )
    client = app.test_client()
    for n in range(4):
        client.get(f"/api/messages/{n}", buffered=True)
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 4
    assert len(spans.get_finished_spans()) == 4  # spans from contrib's middleware
    durations = [r for r in http_monitor.snapshot().records() if r["name"] == "http.server.duration"]
    assert sum(r["count"] for r in durations) == 4  # contrib's own metric (another name), once each


def test_concurrent_requests_from_threads_are_counted_exactly(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    import threading

    app = measured(make_app(), http_monitor)
    ready = threading.Barrier(8)

    def worker() -> None:
        client = app.test_client()
        ready.wait()
        for n in range(50):
            client.get(f"/api/messages/{n}", buffered=True)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 400
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0
