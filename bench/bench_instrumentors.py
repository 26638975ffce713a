"""Issue 24's instrumentors against contrib's (metrics only, traces off) and the bare library, in the same run.

Run: ``python bench/bench_instrumentors.py [clients] [drivers] [aiohttp] [asgi] [django]`` (``--quick`` for a
rough run); the contrib peers come with the ``bench`` extra (``pip install -e '.[bench]'``); a peer not installed is
left out of the table (five need ``pip install --no-deps``: see the ``bench`` extra in pyproject.toml). Timing is
this process's CPU time, so the servers' work (an HTTP server in a subprocess, PostgreSQL) is not counted, only the
client's. Clients and drivers: paired rounds (:func:`paired`: each overhead is the median of per-round differences
against bare, printed with its standard error); servers: ``bench_datastores``' method (minimum over repeats and
over rounds that alternate the cases).

- HTTP clients: requests and httpx (sync) with the network stubbed out below them (requests' adapter, httpx's
  connection pool, as ``bench_datastores`` does for redis: only the client and the instrumentations are timed);
  urllib3 and aiohttp with a ``GET`` on a keep-alive loopback server (their round trip's CPU is in the bare
  figure: on a loaded machine the noise of a few µs per call is in every case).
- Drivers, ``SELECT 1`` on an open connection to the PostgreSQL at 127.0.0.1:5432 (db ``test``): psycopg,
  psycopg2, asyncpg; and what one histogram observation costs inside a psycopg2 ``execute`` after its round trip
  (:func:`bench_observe_after_a_round_trip`).
- Servers, in-process, no sockets (as ``bench_http``): aiohttp's ``Application._handle`` on a mocked request,
  against contrib's aiohttp-server instrumentation and, for scale, OTel's ASGI middleware; Django's ``ASGIHandler``
  driven with an ASGI scope, against ``OpenTelemetryMiddleware`` around it (contrib's way for Django on ASGI).
  The targets: 0.07 of OTel ASGI's overhead.

Contrib runs with a no-op tracer provider and an SDK meter provider (its metrics on, its spans off). The ratio
compares overheads: (ours - bare) / (contrib - bare); the targets are 0.2 or less.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import statistics
import subprocess
import sys
import textwrap
import time
import timeit
from collections.abc import Callable
from typing import Any

from bench_datastores import interleaved
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NoOpTracerProvider

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_database import AsyncpgInstrumentor, Psycopg2Instrumentor, PsycopgInstrumentor
from chat_turbo_metrics_http_client import (
    AiohttpClientInstrumentor,
    HttpxInstrumentor,
    RequestsInstrumentor,
    Urllib3Instrumentor,
)

SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: Nagle would hold the body for the client's ACK
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""
DSN = "host=127.0.0.1 port=5432 dbname=test"
Case = tuple[Callable[[], None], Callable[[], Any], Callable[[], None]]
QUICK = "--quick" in sys.argv
# Many short rounds rather than a few long ones: the standard error falls with the square root of the rounds, and a
# slow stretch of the host spoils one short batch, not a case's figure (30 rounds of 25 ms left psycopg2's at +-2.7
# µs, against contrib's +20; 120 of 10 ms bring it to about +-0.5).
PAIRED_ROUNDS = 8 if QUICK else 120
PAIRED_BATCH_S = 0.01


def _nothing() -> None:
    """No set-up or tear-down."""


def contrib(module: str, cls: str) -> Any:
    """contrib's instrumentor class, or None when its package is not installed."""
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        return None


def contrib_on(instrumentor: Any) -> Callable[[], None]:
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return lambda: instrumentor().instrument(tracer_provider=NoOpTracerProvider(), meter_provider=meter_provider)


def cases(operation: Callable[[], Any], ours: Any, theirs: Any, monitor: PerformanceMonitor,
          fresh: Callable[[], None] = _nothing) -> dict[str, Case]:  # fmt: skip
    """bare, ours, contrib: ``fresh()`` runs after each set-up (a connection opened under the instrumentation)."""

    def then(first: Callable[[], None]) -> Callable[[], None]:
        return lambda: (first(), fresh())  # type: ignore[func-returns-value]

    found: dict[str, Case] = {
        "bare": (fresh, operation, _nothing),
        "ours": (then(lambda: ours().instrument(monitor=monitor)), operation, lambda: ours().uninstrument()),
    }
    if theirs is not None:
        found["contrib"] = (then(contrib_on(theirs)), operation, lambda: theirs().uninstrument())
    return found


# OTel's ASGI middleware's added µs per request (the "asgi" section): the HTTP server targets are stated against it.
_otel_asgi: list[float] = []


def report(title: str, results: dict[str, float], requests: int = 0) -> None:
    """One line; with ``requests`` (per call) and the "asgi" section run first, ours per request against OTel ASGI's."""
    bare = results["bare"]
    line = f"{title:<34} bare {bare:8.2f} µs  ours +{results['ours'] - bare:6.2f} µs"
    if "contrib" in results:
        theirs = results["contrib"] - bare
        line += f"  contrib +{theirs:6.2f} µs  ours/contrib {(results['ours'] - bare) / theirs:6.3f}"
    if requests and _otel_asgi:
        line += f"  ours/OTel ASGI {(results['ours'] - bare) / requests / _otel_asgi[0]:6.3f} (<= 0.07)"
    print(line, flush=True)


def paired(cases: dict[str, Case]) -> dict[str, tuple[float, float]]:
    """Each case's CPU µs per call minus bare's in the same round: (median over rounds, its standard error).

    For the clients and drivers, whose round trip makes one call cost 10 to 300 µs of which the instrumentations
    add about 1: a round runs every case once (set up, one warm-up call, a batch of calls timed on this process's
    CPU time, tear down), starting with a different case each round, so drift and the order hit every case alike;
    the median of the per-round differences is robust to the rounds another process disturbed, and its standard
    error (1.4826 * MAD * 1.2533 / sqrt(rounds)) is printed so a figure below the noise shows as such.
    """
    set_up, operation, tear_down = cases["bare"]
    set_up()
    try:
        operation()
        timer = timeit.Timer(operation, timer=time.process_time)
        number = max(20, int(PAIRED_BATCH_S / max(timer.timeit(50) / 50, 1e-9)))
    finally:
        tear_down()
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(PAIRED_ROUNDS):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            set_up, operation, tear_down = cases[name]
            set_up()
            try:
                operation()  # the first call after set-up binds its series, opens its connection
                times[name].append(timeit.Timer(operation, timer=time.process_time).timeit(number) / number * 1e6)
            finally:
                tear_down()
    found = {"bare": (statistics.median(times["bare"]), 0.0)}
    for name in names[1:]:
        differences = [mine - bare for mine, bare in zip(times[name], times["bare"], strict=True)]
        middle = statistics.median(differences)
        spread = statistics.median(abs(value - middle) for value in differences)
        found[name] = (middle, 1.4826 * spread * 1.2533 / len(differences) ** 0.5)
    return found


def report_paired(title: str, results: dict[str, tuple[float, float]]) -> None:
    """One line: bare's µs per call, each instrumentation's added µs (± standard error), ours/contrib."""
    line = f"{title:<34} bare {results['bare'][0]:8.2f} µs"
    ours, ours_error = results["ours"]
    line += f"  ours +{ours:6.2f} ±{ours_error:4.2f} µs"
    if "contrib" in results:
        theirs, theirs_error = results["contrib"]
        line += f"  contrib +{theirs:6.2f} ±{theirs_error:4.2f} µs  ours/contrib {ours / theirs:6.3f}"
    print(line, flush=True)


def bench_clients(monitor: PerformanceMonitor, base: str) -> None:
    import aiohttp
    import httpx
    import requests
    import urllib3
    from requests.adapters import HTTPAdapter

    class StubAdapter(HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            response = requests.Response()
            response.status_code, response._content, response.url, response.request = 200, b"ok", request.url, request
            return response

    class StubPool:
        def handle_request(self, request: Any) -> Any:
            import httpcore

            return httpcore.Response(200, headers=[(b"content-length", b"2")], content=b"ok")

        def close(self) -> None:
            pass

    session = requests.Session()
    session.mount("http://", StubAdapter())
    report_paired("requests GET (network stubbed)", paired(cases(
        lambda: session.get(base), RequestsInstrumentor,
        contrib("opentelemetry.instrumentation.requests", "RequestsInstrumentor"), monitor,
    )))  # fmt: skip
    transport = httpx.HTTPTransport()
    transport._pool = StubPool()  # type: ignore[assignment]
    client = httpx.Client(transport=transport)
    report_paired("httpx Client GET (network stubbed)", paired(cases(
        lambda: client.get(base), HttpxInstrumentor,
        contrib("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"), monitor,
    )))  # fmt: skip
    pool = urllib3.PoolManager()
    report_paired("urllib3 PoolManager GET", paired(cases(
        lambda: pool.request("GET", base), Urllib3Instrumentor,
        contrib("opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"), monitor,
    )))  # fmt: skip
    loop = asyncio.new_event_loop()
    sessions: list[Any] = []

    def fresh_session() -> None:  # contrib adds its trace config to sessions created after instrument()
        async def make() -> Any:
            return aiohttp.ClientSession()

        if sessions:
            loop.run_until_complete(sessions.pop().close())
        sessions.append(loop.run_until_complete(make()))

    async def get() -> None:
        async with sessions[-1].get(base) as response:
            await response.read()

    report_paired("aiohttp ClientSession GET", paired(cases(
        lambda: loop.run_until_complete(get()), AiohttpClientInstrumentor,
        contrib("opentelemetry.instrumentation.aiohttp_client", "AioHttpClientInstrumentor"), monitor, fresh_session,
    )))  # fmt: skip
    loop.run_until_complete(sessions.pop().close())
    loop.close()
    session.close()
    client.close()


def bench_drivers(monitor: PerformanceMonitor) -> None:
    import asyncpg
    import psycopg
    import psycopg2

    opened: list[Any] = []

    def reopen(connect: Callable[[], Any]) -> Callable[[], None]:
        def fresh() -> None:  # psycopg2's instrumentations both reach connections opened after instrument()
            while opened:
                opened.pop().close()
            opened.append(connect())

        return fresh

    def on_psycopg() -> Any:
        return opened[-1].execute("SELECT 1").fetchone()

    report_paired("psycopg SELECT 1", paired(cases(
        on_psycopg, PsycopgInstrumentor, contrib("opentelemetry.instrumentation.psycopg", "PsycopgInstrumentor"),
        monitor, reopen(lambda: psycopg.connect(DSN)),
    )))  # fmt: skip

    def on_psycopg2() -> Any:
        cursor = opened[-1].cursor()
        cursor.execute("SELECT 1")
        return cursor.fetchone()

    report_paired("psycopg2 SELECT 1", paired(cases(
        on_psycopg2, Psycopg2Instrumentor, contrib("opentelemetry.instrumentation.psycopg2", "Psycopg2Instrumentor"),
        monitor, reopen(lambda: psycopg2.connect(DSN)),
    )))  # fmt: skip
    while opened:
        opened.pop().close()
    bench_observe_after_a_round_trip(monitor, psycopg2)

    loop = asyncio.new_event_loop()
    connection = loop.run_until_complete(asyncpg.connect("postgresql://127.0.0.1:5432/test"))
    report_paired("asyncpg fetchval SELECT 1", paired(cases(
        lambda: loop.run_until_complete(connection.fetchval("SELECT 1")), AsyncpgInstrumentor,
        contrib("opentelemetry.instrumentation.asyncpg", "AsyncPGInstrumentor"), monitor,
    )))  # fmt: skip
    loop.run_until_complete(connection.close())
    loop.close()


def bench_observe_after_a_round_trip(monitor: PerformanceMonitor, psycopg2: Any) -> None:
    """What one histogram observation costs where a driver instrumentation makes it: in a psycopg2 cursor's
    ``execute``, after the round trip (cold caches). A cursor subclass with a Python ``execute`` that only times the
    statement; the same recording into a bound handle (outside a span: an append to its series, folded when read);
    a plain list append for scale. The figures are added µs against the bare cursor."""
    handle = monitor.histogram("bench_statement_seconds", {"bench": "observe"})
    appended: list[float] = []
    base = psycopg2.extensions.cursor

    def timing(record: Callable[[float], None]) -> type:
        def execute(self: Any, query: Any, vars: Any = None) -> Any:
            start = time.perf_counter()
            result = base.execute(self, query, vars)
            record(time.perf_counter() - start)
            return result

        return type("TimedCursor", (base,), {"__slots__": (), "execute": execute})

    opened: list[Any] = []

    def reopen(factory: Any) -> Callable[[], None]:
        def fresh() -> None:
            while opened:
                opened.pop().close()
            opened.append(psycopg2.connect(DSN, cursor_factory=factory))

        return fresh

    def on_cursor() -> Any:
        cursor = opened[-1].cursor()
        cursor.execute("SELECT 1")
        return cursor.fetchone()

    results = paired({
        "bare": (reopen(base), on_cursor, _nothing),
        "timed, nothing recorded": (reopen(timing(lambda seconds: None)), on_cursor, _nothing),
        "timed, list append": (reopen(timing(appended.append)), on_cursor, appended.clear),
        "timed, handle observe": (reopen(timing(handle.observe)), on_cursor, _nothing),
    })  # fmt: skip
    while opened:
        opened.pop().close()
    line = "  ".join(f"{name} +{added:.2f} ±{error:.2f} µs" for name, (added, error) in list(results.items())[1:])
    print(f"{'psycopg2 wrapper, one observation':<34} bare {results['bare'][0]:8.2f} µs  {line}", flush=True)


def bench_aiohttp_server(monitor: PerformanceMonitor) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from chat_turbo_metrics_http.aiohttp_server import AiohttpServerInstrumentor

    async def message(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    loop = asyncio.new_event_loop()
    apps: list[Any] = []

    def fresh_app() -> None:  # contrib's middleware is added to applications created after instrument()
        app = web.Application()
        app.add_routes([web.get("/api/messages/{id}", message)])
        app.freeze()
        apps[:] = [app]

    # Each request is a clone() of one mocked request: made per request, make_mocked_request()'s mocks cost 400 of
    # the 470 µs a request took, and their noise buried the few µs an instrumentation adds (a clone: ~20 µs).
    template: list[Any] = []

    async def handle(n: int) -> None:
        app = apps[0]
        if not template or template[0] is not app:
            template[:] = [app, make_mocked_request("GET", "/api/messages/42", app=app, loop=loop)]
        request = template[1]
        for _ in range(n):
            await app._handle(request.clone())

    report("aiohttp server (10 requests)", interleaved(cases(
        lambda: loop.run_until_complete(handle(10)), AiohttpServerInstrumentor,
        contrib("opentelemetry.instrumentation.aiohttp_server", "AioHttpServerInstrumentor"), monitor, fresh_app,
    )), requests=10)  # fmt: skip
    loop.close()


SCOPE = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
    "path": "/api/messages/42", "raw_path": b"/api/messages/42", "query_string": b"", "root_path": "",
    "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
}  # fmt: skip


def drive_asgi(app: Any, loop: asyncio.AbstractEventLoop, n: int) -> None:
    async def send(message: Any) -> None:
        pass

    async def run() -> None:
        never = asyncio.Event()
        for _ in range(n):
            sent = []

            async def receive(sent: list[bool] = sent) -> dict[str, Any]:
                if sent:  # Django listens for the disconnect after the body: the client stays
                    await never.wait()
                sent.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}

            await app(dict(SCOPE), receive, send)

    loop.run_until_complete(run())


def bench_django_asgi(monitor: PerformanceMonitor) -> None:
    import types

    import django
    from django.conf import settings
    from django.http import HttpResponse
    from django.urls import path

    from chat_turbo_metrics_http.django_asgi import DjangoAsgiInstrumentor

    async def message(request: Any, id: int) -> HttpResponse:
        return HttpResponse("hi")

    urls = types.ModuleType("bench_django_urls")
    urls.urlpatterns = [path("api/messages/<int:id>", message)]  # type: ignore[attr-defined]
    settings.configure(DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], ROOT_URLCONF=urls, MIDDLEWARE=[],
                       INSTALLED_APPS=[], DATABASES={})  # fmt: skip
    django.setup()
    from django.core.handlers.asgi import ASGIHandler
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    loop = asyncio.new_event_loop()
    handler = ASGIHandler()
    otel = OpenTelemetryMiddleware(ASGIHandler(), meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
                                   tracer_provider=NoOpTracerProvider())  # fmt: skip
    found = interleaved({
        "bare": (_nothing, lambda: drive_asgi(handler, loop, 5), _nothing),
        "ours": (lambda: DjangoAsgiInstrumentor().instrument(monitor=monitor), lambda: drive_asgi(handler, loop, 5),
                 lambda: DjangoAsgiInstrumentor().uninstrument()),
        "contrib": (_nothing, lambda: drive_asgi(otel, loop, 5), _nothing),
    })  # fmt: skip
    report("Django ASGIHandler (5 requests)", found, requests=5)
    # What ours wraps, BaseHandler.get_response_async, on one ASGIRequest each: no thread hops (ASGIHandler runs
    # Django's request signals through sync_to_async, whose tens of µs of noise per request bury ours).
    from django.core.handlers.asgi import ASGIRequest

    async def respond(n: int) -> None:
        for _ in range(n):
            await handler.get_response_async(ASGIRequest(dict(SCOPE), io.BytesIO()))

    found = interleaved({
        "bare": (_nothing, lambda: loop.run_until_complete(respond(10)), _nothing),
        "ours": (lambda: DjangoAsgiInstrumentor().instrument(monitor=monitor),
                 lambda: loop.run_until_complete(respond(10)), lambda: DjangoAsgiInstrumentor().uninstrument()),
    })  # fmt: skip
    report("Django get_response_async (10 req)", found, requests=10)
    loop.close()


def bench_otel_asgi_scale(monitor: PerformanceMonitor) -> None:
    """OTel's ASGI middleware around a bare ASGI app: the overhead the server targets are stated against."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    from chat_turbo_metrics_http.asgi import AsgiMetricsMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    loop = asyncio.new_event_loop()
    otel = OpenTelemetryMiddleware(app, meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
                                   tracer_provider=NoOpTracerProvider())  # fmt: skip
    ours = AsgiMetricsMiddleware(app, monitor=monitor)
    found = interleaved({
        "bare": (_nothing, lambda: drive_asgi(app, loop, 10), _nothing),
        "ours": (_nothing, lambda: drive_asgi(ours, loop, 10), _nothing),
        "contrib": (_nothing, lambda: drive_asgi(otel, loop, 10), _nothing),
    })  # fmt: skip
    _otel_asgi[:] = [(found["contrib"] - found["bare"]) / 10]
    report("OTel ASGI scale (10 requests)", found)
    loop.close()


def main() -> None:
    monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), environment="test"))
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVER)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{server.stdout.readline().strip()}/items?token=x"
        print("CPU µs per call of this process (servers not counted); overheads against the bare library")
        only = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
        sections: tuple[tuple[str, Callable[[], None]], ...] = (
            ("clients", lambda: bench_clients(monitor, base)),
            ("drivers", lambda: bench_drivers(monitor)),
            ("asgi", lambda: bench_otel_asgi_scale(monitor)),  # first: the scale the two below are read against
            ("aiohttp", lambda: bench_aiohttp_server(monitor)),
            ("django", lambda: bench_django_asgi(monitor)),
        )
        for name, run in sections:
            if not only or name in only:
                run()
    finally:
        server.terminate()
        server.wait(5)
        monitor.shutdown()
    time.sleep(0)


if __name__ == "__main__":
    main()
