"""ASGI: Starlette and FastAPI apps driven in-process through httpx's ASGI transport, measured by our middleware."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from chat_turbo_metrics import ConfigurationError, PerformanceMonitor, ViewConfig
from chat_turbo_metrics_http import _settings
from chat_turbo_metrics_http.asgi import AsgiMetricsInstrumentor, AsgiMetricsMiddleware

Reader = Callable[..., Any]


class Boom(RuntimeError):
    """What the failing endpoint raises."""


def make_app(monitor: PerformanceMonitor | None = None) -> Starlette:
    async def message(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"message {list(request.path_params.values())}")

    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await request.body())

    async def fail(request: Request) -> PlainTextResponse:
        raise Boom("broken")

    async def busy(request: Request) -> JSONResponse:
        # Reads the in-flight gauge while this request is being handled.
        assert monitor is not None
        return JSONResponse({"in_flight": monitor.snapshot().value("http_requests_in_flight")})

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first "
            await asyncio.sleep(0.2)  # the response is not complete before this
            yield b"last"

        return StreamingResponse(chunks())

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            opened = monitor.snapshot().value("websocket_connections_active") if monitor else None
            await websocket.send_text(f"{text} {opened}")

    return Starlette(
        routes=[
            Route("/api/messages/{id:int}", message),
            Route("/echo", echo, methods=["POST", "PURGE"]),
            Route("/fail", fail),
            Route("/busy", busy),
            Route("/stream", stream),
            Route("/health", message),
            Mount("/v2", routes=[Route("/users/{name}", message)]),
            Mount("/teams/{team}", routes=[Mount("/users/{user}", routes=[Route("/posts/{post}", message)])]),
            WebSocketRoute("/ws", chat),
        ]
    )


def drive(app: Any, *requests: tuple[str, str], body: bytes = b"", raise_errors: bool = True) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [await client.request(method, path, content=body or None) for method, path in requests]

    return asyncio.run(run())


def test_requests_are_counted_per_route_template_method_and_status(
    http_monitor: PerformanceMonitor, requests_of: Reader, duration_of: Reader
) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    drive(app, ("GET", "/api/messages/1"), ("GET", "/api/messages/2"), ("GET", "/api/messages/3"))
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 3
    histogram = duration_of(http_monitor, "/api/messages/{id}", 200)
    assert histogram["count"] == 3
    assert 0 < histogram["sum"] < 1
    assert histogram["bucket_bounds"][:3] == [0.005, 0.01, 0.025]  # semantic-convention HTTP buckets


def test_unmatched_paths_collapse_into_one_endpoint_value(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    drive(app, *[("GET", f"/no/such/page/{n}") for n in range(5)])
    assert requests_of(http_monitor, "unmatched", 404) == 5
    endpoints = {r["attributes"]["endpoint"] for r in http_monitor.snapshot().records() if r["name"] == "api_requests"}
    assert endpoints == {"unmatched"}


def test_a_mounted_route_is_recorded_with_the_mount_prefix(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    drive(app, ("GET", "/v2/users/ann"), ("GET", "/v2/users/bob"), ("GET", "/v2/nothing"))
    drive(app, *[("GET", f"/teams/t{n}/users/u{n}/posts/{n}") for n in range(3)])
    assert requests_of(http_monitor, "/v2/users/{name}", 200) == 2
    assert requests_of(http_monitor, "unmatched", 404) == 1
    assert requests_of(http_monitor, "/teams/{team}/users/{user}/posts/{post}", 200) == 3  # templates, not raw


def test_body_sizes_are_recorded(http_monitor: PerformanceMonitor) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    drive(app, ("POST", "/echo"), ("POST", "/echo"), body=b"x" * 1500)
    tags = {"method": "POST", "endpoint": "/echo", "status": 200}
    snapshot = http_monitor.snapshot()
    assert snapshot.value("http_request_size_bytes", tags)["sum"] == 3000
    assert snapshot.value("http_response_size_bytes", tags)["sum"] == 3000
    assert snapshot.value("http_response_size_bytes", tags)["bucket_bounds"][:2] == [100.0, 1000.0]


def test_an_exception_is_recorded_as_500_with_its_type_and_reraised_unchanged(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    with pytest.raises(Boom, match="broken"):
        drive(app, ("GET", "/fail"))
    assert requests_of(http_monitor, "/fail", 500) == 1
    errors = http_monitor.snapshot().value(
        "errors", {"method": "GET", "endpoint": "/fail", "status": 500, "error_type": "Boom"}
    )
    assert errors == 1


def test_a_5xx_response_without_exception_counts_as_an_error_named_by_its_status(
    http_monitor: PerformanceMonitor,
) -> None:
    async def unavailable(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"later"})

    drive(AsgiMetricsMiddleware(unavailable, monitor=http_monitor), ("GET", "/x"), ("GET", "/y"))
    tags = {"method": "GET", "endpoint": "unmatched", "status": 503, "error_type": "503"}
    assert http_monitor.snapshot().value("errors", tags) == 2


def test_the_duration_of_a_streaming_response_runs_to_its_last_chunk(
    http_monitor: PerformanceMonitor, duration_of: Reader
) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    (response,) = drive(app, ("GET", "/stream"))
    assert response.content == b"first last"
    histogram = duration_of(http_monitor, "/stream", 200)
    assert histogram["count"] == 1
    assert histogram["sum"] >= 0.2
    assert http_monitor.snapshot().value(
        "http_response_size_bytes", {"method": "GET", "endpoint": "/stream", "status": 200}
    )["sum"] == len(b"first last")


def test_requests_in_flight_are_counted_while_handled(http_monitor: PerformanceMonitor) -> None:
    app = AsgiMetricsMiddleware(make_app(http_monitor), monitor=http_monitor)
    (response,) = drive(app, ("GET", "/busy"))
    assert response.json() == {"in_flight": 1}
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0


def test_websockets_count_as_active_connections(http_monitor: PerformanceMonitor) -> None:
    with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its TestClient; httpx works
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    app = AsgiMetricsMiddleware(make_app(http_monitor), monitor=http_monitor)
    with TestClient(app) as client, client.websocket_connect("/ws") as first:
        first.send_text("hello")
        assert first.receive_text() == "hello 1"
        with client.websocket_connect("/ws") as second:
            second.send_text("hi")
            assert second.receive_text() == "hi 2"
    assert http_monitor.snapshot().value("websocket_connections_active") == 0
    assert http_monitor.snapshot().value("api_requests", {"method": "GET", "endpoint": "/ws", "status": 200}) is None


def test_excluded_paths_and_prefixes_are_not_measured(http_monitor: PerformanceMonitor, requests_of: Reader) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor, excluded_paths=["/health", "/api/messages/*"])
    drive(app, ("GET", "/health"), ("GET", "/api/messages/1"), ("GET", "/stream"))
    assert requests_of(http_monitor, "/health", 200) is None
    assert requests_of(http_monitor, "/api/messages/{id}", 200) is None
    assert requests_of(http_monitor, "/stream", 200) == 1


def test_excluded_paths_come_from_the_environment_mapping(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    environ = {"CHAT_TURBO_HTTP_EXCLUDED_PATHS": "/health, /metrics"}
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor, environ=environ)
    drive(app, ("GET", "/health"), ("GET", "/stream"))
    assert requests_of(http_monitor, "/health", 200) is None
    assert requests_of(http_monitor, "/stream", 200) == 1


def test_a_bad_keyword_argument_fails_at_construction_naming_it() -> None:
    with pytest.raises(ConfigurationError, match=r"excluded_paths.*'health'"):
        AsgiMetricsMiddleware(make_app(), excluded_paths=["health"])
    with pytest.raises(ConfigurationError, match=r"metric_names.*'prometheus'"):
        AsgiMetricsMiddleware(make_app(), metric_names="prometheus")


@pytest.mark.parametrize(
    "environ", [{"CHAT_TURBO_HTTP_METRIC_NAMES": "prometheus"}, {"CHAT_TURBO_HTTP_EXCLUDED_PATHS": "x"}]
)
def test_a_bad_variable_leaves_requests_unmeasured_with_one_error_naming_it(
    http_monitor: PerformanceMonitor,
    requests_of: Reader,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
) -> None:
    monkeypatch.setattr(_settings, "_reported", set())  # a process that has not said it yet
    ((variable, value),) = environ.items()
    with caplog.at_level(logging.ERROR, logger="chat_turbo_metrics_http"):
        apps = [AsgiMetricsMiddleware(make_app(), monitor=http_monitor, environ=environ) for _ in range(2)]
        responses = drive(apps[0], ("GET", "/api/messages/1")) + drive(apps[1], ("GET", "/api/messages/2"))

    assert [(response.status_code, response.text) for response in responses] == [
        (200, "message [1]"),
        (200, "message [2]"),
    ]
    assert requests_of(http_monitor, "/api/messages/{id}", 200) is None
    (error,) = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert f"{variable}: {value!r}" in error


def test_methods_outside_the_standard_set_collapse_to_other(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    drive(app, ("PURGE", "/echo"), ("PURGE", "/echo"), ("POST", "/echo"))
    assert requests_of(http_monitor, "/echo", 200, method="_OTHER") == 2
    assert requests_of(http_monitor, "/echo", 200, method="POST") == 1


def test_semantic_convention_names_replace_the_seed_names(http_monitor: PerformanceMonitor) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor, metric_names="semconv")
    drive(app, ("GET", "/api/messages/7"), ("GET", "/nowhere"))
    with pytest.raises(Boom):
        drive(app, ("GET", "/fail"))
    snapshot = http_monitor.snapshot()
    assert "api_requests" not in snapshot.names()
    assert "http_request_duration_seconds" not in snapshot.names()
    base = {"http.request.method": "GET", "url.scheme": "http"}
    found = snapshot.value(
        "http.server.request.duration", {**base, "http.response.status_code": 200, "http.route": "/api/messages/{id}"}
    )
    assert found["count"] == 1
    assert snapshot.value("http.server.request.duration", {**base, "http.response.status_code": 404})["count"] == 1
    failed = {**base, "http.response.status_code": 500, "http.route": "/fail", "error.type": "Boom"}
    assert snapshot.value("http.server.request.duration", failed)["count"] == 1
    units = {r["name"]: r["unit"] for r in snapshot.records()}
    assert units["http.server.request.duration"] == "s"
    assert units["http.server.response.body.size"] == "By"
    assert snapshot.value("http.server.active_requests", base) == 0


def test_both_name_sets_can_be_emitted_side_by_side(http_monitor: PerformanceMonitor, requests_of: Reader) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor, metric_names="both")
    drive(app, ("GET", "/api/messages/7"))
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 1
    tags = {
        "http.request.method": "GET",
        "url.scheme": "http",
        "http.response.status_code": 200,
        "http.route": "/api/messages/{id}",
    }
    assert http_monitor.snapshot().value("http.server.request.duration", tags)["count"] == 1


def test_the_monitors_views_and_cardinality_limit_apply(
    http_monitor_factory: Callable[..., PerformanceMonitor],
) -> None:
    monitor = http_monitor_factory(
        cardinality_limit=3,
        views=(ViewConfig(instrument="http_request_duration_seconds", attribute_keys=("method",)),),
    )
    app = AsgiMetricsMiddleware(make_app(), monitor=monitor)
    drive(app, ("GET", "/api/messages/1"), ("GET", "/stream"), ("GET", "/nowhere"), ("GET", "/v2/users/x"))
    snapshot = monitor.snapshot()
    assert snapshot.value("http_request_duration_seconds", {"method": "GET"})["count"] == 4
    series = {str(r["attributes"]): r["value"] for r in snapshot.records() if r["name"] == "api_requests"}
    assert str({"otel.metric.overflow": True}) in series  # four tag sets do not fit under a limit of three
    assert len(series) <= 4
    assert sum(series.values()) == 4


def test_sampling_applies_to_histograms_and_never_to_counters(
    http_monitor_factory: Callable[..., PerformanceMonitor], requests_of: Reader, duration_of: Reader
) -> None:
    monitor = http_monitor_factory(sampling_rate=0.25)
    app = AsgiMetricsMiddleware(make_app(), monitor=monitor)
    drive(app, *[("GET", "/api/messages/1")] * 400)
    assert requests_of(monitor, "/api/messages/{id}", 200) == 400
    sampled = duration_of(monitor, "/api/messages/{id}", 200)["count"]
    assert 40 <= sampled <= 160  # 100 expected; outside this range with probability < 1e-9


def test_our_middleware_counts_a_request_once_however_often_it_wraps_it(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    inner = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    app = AsgiMetricsMiddleware(inner, monitor=http_monitor)
    drive(app, ("GET", "/api/messages/1"))
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 1


def test_instrument_measures_apps_created_afterwards_fastapi_too(
    http_monitor: PerformanceMonitor, asgi_instrumentor: AsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    from fastapi import FastAPI

    asgi_instrumentor.instrument(monitor=http_monitor, excluded_paths=["/health"])
    starlette_app = make_app()
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    drive(starlette_app, ("GET", "/api/messages/1"), ("GET", "/health"))
    drive(api, ("GET", "/items/1"), ("GET", "/items/2"), ("GET", "/missing"))
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 1
    assert requests_of(http_monitor, "/health", 200) is None
    assert requests_of(http_monitor, "/items/{item_id}", 200) == 2
    assert requests_of(http_monitor, "unmatched", 404) == 1


def test_a_fastapi_subclass_defined_after_instrument_is_measured_once(
    http_monitor: PerformanceMonitor, asgi_instrumentor: AsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    from fastapi import FastAPI

    asgi_instrumentor.instrument(monitor=http_monitor)

    class MyAPI(FastAPI):
        def build_middleware_stack(self) -> Any:
            return super().build_middleware_stack()

    api = MyAPI()

    @api.get("/ping")
    async def ping() -> str:
        return "pong"

    drive(api, ("GET", "/ping"))
    assert requests_of(http_monitor, "/ping", 200) == 1


def test_uninstrument_stops_measuring_new_and_running_apps(
    http_monitor: PerformanceMonitor, asgi_instrumentor: AsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    asgi_instrumentor.instrument(monitor=http_monitor)
    running = make_app()
    drive(running, ("GET", "/api/messages/1"))  # builds its middleware stack: measured
    asgi_instrumentor.uninstrument()
    later = make_app()
    drive(running, ("GET", "/api/messages/1"))
    drive(later, ("GET", "/api/messages/1"))
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 1
    assert "__init_subclass__" not in Starlette.__dict__
    assert not hasattr(Starlette.build_middleware_stack, "__wrapped__")


def test_contribs_asgi_middleware_beside_ours_counts_nothing_twice(
    http_monitor: PerformanceMonitor, asgi_instrumentor: AsgiMetricsInstrumentor, requests_of: Reader
) -> None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    assert http_monitor.pipeline is not None
    asgi_instrumentor.instrument(monitor=http_monitor)
    app = OpenTelemetryMiddleware(
        make_app(), tracer_provider=tracer_provider, meter_provider=http_monitor.pipeline.meter_provider
    )
    drive(app, *[("GET", f"/api/messages/{n}") for n in range(4)])
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 4  # ours, once each
    server_spans = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert len(server_spans) == 4  # spans from contrib's middleware
    durations = [r for r in http_monitor.snapshot().records() if r["name"] == "http.server.duration"]
    assert sum(r["count"] for r in durations) == 4  # contrib's own metric (another name), once each


def test_configure_is_followed_by_an_instrumented_app(tmp_path: Any) -> None:
    import json
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import asyncio, json, httpx
        import chat_turbo_metrics
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from chat_turbo_metrics_http.asgi import AsgiMetricsInstrumentor

        async def hello(request):
            return PlainTextResponse("hi")

        def drive(app, n):
            async def run():
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    for _ in range(n):
                        await client.get("/api/messages/1")
            asyncio.run(run())

        AsgiMetricsInstrumentor().instrument()  # before configure(): nothing is resolved until a request
        first = chat_turbo_metrics.configure(environment="test", metrics_exporters=())
        app = Starlette(routes=[Route("/api/messages/{id}", hello)])
        tags = {"method": "GET", "endpoint": "/api/messages/{id}", "status": 200}
        drive(app, 2)
        before = first.snapshot().value("api_requests", tags)
        old_pipeline = first.pipeline
        monitor = chat_turbo_metrics.configure(environment="test", metrics_exporters=(), cardinality_limit=50)
        assert monitor.pipeline is not old_pipeline
        drive(app, 3)
        snapshot = monitor.snapshot()
        print("REPORT " + json.dumps({
            "before": before,
            "after": snapshot.value("api_requests", tags),
            "size_buckets": snapshot.value("http_response_size_bytes", tags)["bucket_bounds"][:2],
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert json.loads(line[len("REPORT ") :]) == {"before": 2, "after": 3, "size_buckets": [100.0, 1000.0]}


def test_a_client_that_goes_away_mid_response_is_recorded_and_the_error_reraised(
    http_monitor: PerformanceMonitor,
) -> None:
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    scope = {"type": "http", "method": "GET", "path": "/stream", "root_path": "", "headers": [], "query_string": b""}
    scope.update({"scheme": "http", "http_version": "1.1", "asgi": {"version": "3.0"}})

    received: list[bool] = []

    async def receive() -> dict[str, Any]:
        if received:  # the request was read: wait for a disconnect that the failing send reports instead
            await asyncio.Event().wait()
        received.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message.get("more_body"):
            raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError, match="client went away"):
        asyncio.run(app(scope, receive, send))
    tags = {"method": "GET", "endpoint": "/stream", "status": 500, "error_type": "ConnectionResetError"}
    assert http_monitor.snapshot().value("errors", tags) == 1
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0


def test_a_disabled_monitor_records_nothing_and_the_app_still_works(
    http_monitor_factory: Callable[..., PerformanceMonitor],
) -> None:
    monitor = http_monitor_factory(enabled=False)
    app = AsgiMetricsMiddleware(make_app(), monitor=monitor)
    responses = drive(app, ("GET", "/api/messages/1"), ("POST", "/echo"), body=b"abc")
    assert [r.status_code for r in responses] == [200, 200]
    assert monitor.snapshot().records() == []


def test_without_scope_route_the_endpoint_is_found_from_the_matched_endpoint(
    http_monitor: PerformanceMonitor, requests_of: Reader
) -> None:
    async def message(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    router = Starlette(routes=[Route("/api/messages/{id}", message)]).router

    async def older_starlette(scope: Any, receive: Any, send: Any) -> None:
        # What Starlette releases before scope["route"] leave behind: the router and the matched endpoint.
        scope.update(router=router, endpoint=message if scope["path"].startswith("/api/") else None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    drive(AsgiMetricsMiddleware(older_starlette, monitor=http_monitor), ("GET", "/api/messages/9"), ("GET", "/x"))
    assert requests_of(http_monitor, "/api/messages/{id}", 200) == 1
    assert requests_of(http_monitor, "unmatched", 200) == 1


def test_handles_are_bound_once_not_per_request(http_monitor: PerformanceMonitor) -> None:
    """The hot path: a second request reuses the first one's handles (a rebind per request cost ~20x)."""
    app = AsgiMetricsMiddleware(make_app(), monitor=http_monitor)
    drive(app, ("GET", "/api/messages/1"))
    bound = app._metrics._bound
    assert bound is not None
    drive(app, ("GET", "/api/messages/2"), ("GET", "/api/messages/3"))
    assert app._metrics._bound is bound
    assert len(bound.series) == 1  # one (method, route, status, scheme) series, reused
