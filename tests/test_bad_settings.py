"""Whatever monitoring's configuration says, the application keeps working (issue 19).

The cases are generated, not picked: every variable chat_turbo_metrics and its HTTP instrumentors declare (their
``opentelemetry_environment_variables`` entry points) or read (the ``OTEL_*`` ones), and every key of a
``configs/<environment>.toml`` (both read from the one declaration of settings), each given every hostile value
below. A value ``chat-turbo-metrics config`` (or the HTTP settings) refuses is a case, one per distinct reason. In
each case the process-wide monitor starts from that environment, as under ``opentelemetry-instrument``, and every
instrumentor and the seed's API then do the application's work in-process: the work must come out right, one error
must name the setting, and what could not start must measure nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import http.server
import io
import logging
import os
import ssl
import sys
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics._cli import config as config_command
from chat_turbo_metrics._cli.config import run_config_command
from chat_turbo_metrics._core.config.table import SETTINGS, VARIABLES
from chat_turbo_metrics_http import _settings as http_settings
from chat_turbo_metrics_http._settings import HttpMetricsSettings
from conftest import MONITORING_ENV_PREFIXES, port_open, require

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

HOSTILE_TEXT = ("nonsense", "-1", "0", "1.5", "1e400", "1e308", "1e-300", "nan", "10s", "a b", "é", ",")
HOSTILE_TOML = ('"nonsense"', "-1", "0", "1.5", "1e308", "inf", "nan", "true", "[1, 2]", "{ a = 1 }", '""')
HOSTILE_TOML += ("1979-05-27",)  # a date
BASE = {"CHAT_TURBO_ENV": "test"}  # configs/test.toml: no exporter, nothing bound
# Variables whose value an error never quotes (an endpoint's is shown with its user info masked).
SECRETS = frozenset(
    variable.name for item in SETTINGS if item.secret not in (None, "userinfo") for variable in item.variables
)


def declared_variables() -> list[str]:
    """Every variable a setting is read from, and every variable our packages declare."""
    names = set(VARIABLES)
    for entry_point in entry_points(group="opentelemetry_environment_variables"):
        if entry_point.name.startswith("chat_turbo_metrics"):
            module = entry_point.load()
            names |= {value for key, value in vars(module).items() if key.isupper() and isinstance(value, str)}
    return sorted(names)


def refusal(env: dict[str, str]) -> str | None:
    """What ``chat-turbo-metrics config`` (or the HTTP settings) says is wrong with ``env``; None if nothing."""
    try:
        run_config_command(None, env, io.StringIO())
        HttpMetricsSettings.from_options(None, None, env)
    except ConfigurationError as error:
        return str(error)
    return None


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # the variable or the file key
    value: str  # as the user typed it
    env: dict[str, str]
    toml: str | None = None  # the test.toml written to $CHAT_TURBO_CONFIG_DIR

    @property
    def http_only(self) -> bool:
        return self.name.startswith("CHAT_TURBO_HTTP_")


def variable_cases() -> list[Case]:
    found: dict[tuple[str, str], Case] = {}
    for name in declared_variables():
        for value in HOSTILE_TEXT:
            env = {**BASE, name: value}
            why = refusal(env)
            if why is not None:  # one case per distinct reason (the value taken out of the message)
                found.setdefault((name, why.replace(repr(value), "").replace(value, "")), Case(name, value, env))
    return list(found.values())


def file_cases() -> list[Case]:
    found: dict[tuple[str, str], Case] = {}
    with tempfile.TemporaryDirectory() as directory:
        for key in FILE_KEYS:
            for value in HOSTILE_TOML:
                toml = f"{key} = {value}\n"
                if key != "metrics_exporters":
                    toml += "metrics_exporters = []\n"
                (Path(directory) / "test.toml").write_text(toml)
                why = refusal({**BASE, "CHAT_TURBO_CONFIG_DIR": directory})
                if why is not None:
                    parsed = repr(tomllib.loads(f"v = {value}")["v"])
                    reason = (key, why.replace(directory, "").replace(parsed, ""))
                    found.setdefault(reason, Case(key, value, dict(BASE), toml))
    return list(found.values())


FILE_KEYS = [item.name for item in SETTINGS]  # a setting's name is its key in a file
# Finding the cases asks the configuration command some 1,300 times, and each answer read every installed
# distribution's entry points again (2 of the 3 seconds this took in every pytest-xdist worker's collection); they
# do not change meanwhile, so the cases are found with them read once. The tests themselves run unpatched.
with mock.patch.object(config_command, "declared_modules", functools.cache(config_command.declared_modules)):
    VARIABLE_CASES = variable_cases()
    FILE_CASES = file_cases()


def test_every_declared_variable_and_file_key_is_covered_or_takes_any_text() -> None:
    # Guards the generation itself: a setting no hostile value is refused for must be free text (a name, a
    # path, a secret) or matter only when its feature is on (checked in the next test).
    refused = {case.name for case in VARIABLE_CASES}
    free = set(declared_variables()) - refused
    assert {"METRICS_SAMPLING_RATE", "OTEL_METRIC_EXPORT_INTERVAL", "CHAT_TURBO_HTTP_METRIC_NAMES"} <= refused
    for name in free:
        for value in HOSTILE_TEXT:
            assert refusal({**BASE, name: value}) is None
    assert set(FILE_KEYS) == {field.name for field in dataclasses.fields(MonitoringConfig)} - {"sources"}
    assert set(FILE_KEYS) == {case.name for case in FILE_CASES}  # every key refuses some value (a wrong type at least)
    assert sorted(SECRETS) == ["ALERT_EMAIL_PASSWORD", "ALERT_SLACK_WEBHOOK_URL", "DD_API_KEY", "METRICS_DATABASE_URL"]
    assert len(VARIABLE_CASES) >= 40
    assert len(FILE_CASES) >= 100


# --- the application ------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, str]], None]]:
    """``use(env)``: from now on, a process with that environment whose monitor has not started yet."""
    for name in [name for name in os.environ if name.startswith(MONITORING_ENV_PREFIXES)]:
        monkeypatch.delenv(name)

    def stop() -> None:
        runtime = PerformanceMonitor._global_runtime
        if runtime is not None:
            runtime.shutdown(5)

    def use(env: dict[str, str]) -> None:
        stop()
        for name in [name for name in os.environ if name.startswith(MONITORING_ENV_PREFIXES)]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(PerformanceMonitor, "_global_runtime", None)
        monkeypatch.setattr(PerformanceMonitor, "_instance", None)
        monkeypatch.setattr(PerformanceMonitor, "_global_monitors", weakref.WeakSet())
        monkeypatch.setattr(http_settings, "_reported", set())  # nothing said yet in this "process"

    yield use
    stop()


def asgi_instrumentor() -> None:
    from starlette.applications import Starlette

    from chat_turbo_metrics_http.asgi import AsgiMetricsInstrumentor

    instrumentor = AsgiMetricsInstrumentor()
    instrumentor.instrument()
    try:
        assert serve_asgi(Starlette(routes=starlette_routes())) == (200, "hello ann")
    finally:
        instrumentor.uninstrument()


def asgi_middleware() -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from chat_turbo_metrics_http.asgi import AsgiMetricsMiddleware

    app = Starlette(routes=starlette_routes(), middleware=[Middleware(AsgiMetricsMiddleware)])  # built at request
    assert serve_asgi(app) == (200, "hello ann")


def starlette_routes() -> list[Any]:
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello {request.path_params['name']}")

    return [Route("/hello/{name}", hello)]


def serve_asgi(app: Any) -> tuple[int, str]:
    import httpx

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/hello/ann")

    response = asyncio.run(run())
    return response.status_code, response.text


def flask_instrumentor() -> None:
    from flask import Flask

    from chat_turbo_metrics_http.wsgi import WsgiMetricsInstrumentor

    instrumentor = WsgiMetricsInstrumentor()
    instrumentor.instrument()
    try:
        app = Flask("bad_settings")
        app.add_url_rule("/hello/<name>", "hello", lambda name: f"hello {name}")
        response = app.test_client().get("/hello/ann")
        assert (response.status_code, response.text) == (200, "hello ann")
    finally:
        instrumentor.uninstrument()


def wsgi_middleware() -> None:
    from werkzeug.test import Client

    from chat_turbo_metrics_http.wsgi import WsgiMetricsMiddleware

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"hello {environ['PATH_INFO'].rsplit('/', 1)[-1]}".encode()]

    response = Client(WsgiMetricsMiddleware(app)).get("/hello/ann")
    assert (response.status_code, response.text) == (200, "hello ann")


def django_middleware() -> None:
    from django.conf import settings

    if not settings.configured:
        import django

        settings.configure(SECRET_KEY="chat-turbo-metrics-tests", ALLOWED_HOSTS=["*"], INSTALLED_APPS=[])
        django.setup()
    from django.http import HttpRequest, HttpResponse
    from django.test import RequestFactory

    from chat_turbo_metrics_http.django_middleware import DjangoMetricsMiddleware

    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(f"hello {request.path.rsplit('/', 1)[-1]}")

    response = DjangoMetricsMiddleware(view)(RequestFactory().get("/hello/ann"))
    assert (response.status_code, response.content) == (200, b"hello ann")


def aiohttp_server_instrumentor() -> None:
    import aiohttp
    from aiohttp import web

    from chat_turbo_metrics_http.aiohttp_server import AiohttpServerInstrumentor

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.match_info['name']}")

    async def run() -> tuple[int, str]:
        app = web.Application()
        app.add_routes([web.get("/hello/{name}", hello)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/hello/ann"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                return response.status, await response.text()
        finally:
            await runner.cleanup()

    instrumentor = AiohttpServerInstrumentor()
    instrumentor.instrument()
    try:
        assert asyncio.run(run()) == (200, "hello ann")
    finally:
        instrumentor.uninstrument()


def django_asgi_instrumentor() -> None:
    import types

    django_middleware()  # Django configured (once per process)
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler
    from django.http import HttpRequest, HttpResponse
    from django.urls import clear_url_caches, path

    from chat_turbo_metrics_http.django_asgi import DjangoAsgiInstrumentor

    async def hello(request: HttpRequest, name: str) -> HttpResponse:
        return HttpResponse(f"hello {name}")

    urls = types.ModuleType("bad_settings_asgi_urls")
    urls.urlpatterns = [path("hello/<str:name>", hello)]  # type: ignore[attr-defined]
    settings.ROOT_URLCONF = urls
    clear_url_caches()
    instrumentor = DjangoAsgiInstrumentor()
    instrumentor.instrument()
    try:
        assert serve_asgi(ASGIHandler()) == (200, "hello ann")
    finally:
        instrumentor.uninstrument()


def sqlalchemy_instrumentor() -> None:
    from sqlalchemy import create_engine, text

    from chat_turbo_metrics_database import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument()
    try:
        engine = create_engine("sqlite://")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 41 + 1")).scalar() == 42
        engine.dispose()
    finally:
        instrumentor.uninstrument()


def redis_instrumentor() -> None:
    import redis

    from chat_turbo_metrics_cache import RedisInstrumentor

    key = f"bad-settings:{uuid.uuid4().hex}"
    instrumentor = RedisInstrumentor()
    instrumentor.instrument()
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        client.set(key, "1", ex=60)
        with client.pipeline() as pipe:
            assert pipe.get(key).get(f"{key}:missing").execute() == [b"1", None]
        assert client.get(key) == b"1"
    finally:
        client.delete(key)
        client.close()
        instrumentor.uninstrument()


def system_instrumentor() -> None:
    from chat_turbo_metrics_system import SystemInstrumentor

    instrumentor = SystemInstrumentor()
    instrumentor.instrument(watch_loops=False)
    try:
        PerformanceMonitor.get_instance().snapshot()  # a collection: the instrumentor's hook runs if it is live
    finally:
        instrumentor.uninstrument()


def seed_api() -> None:
    from sqlalchemy import create_engine

    from chat_turbo_metrics import monitor_database_query, record_cache_hit

    monitor = PerformanceMonitor.get_instance()
    monitor.increment_counter("messages_sent", {"channel": "public"})
    monitor.record_gauge("active_connections", 3)
    monitor.record_timer("api_request", monitor.start_timer("api_request"))
    with monitor.timer("message_processing"):
        pass
    record_cache_hit("sessions")
    engine = create_engine("sqlite://")
    assert monitor_database_query("SELECT 6 * 7", connection=engine).fetchall() == [(42,)]
    engine.dispose()


# --- issue 24: HTTP clients against a server on 127.0.0.1, the PostgreSQL drivers used directly -------------


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


_served: list[str] = []  # the base URL of the module's HTTP server while its fixture runs


@pytest.fixture(scope="module", autouse=True)
def http_server() -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _served.append(f"http://127.0.0.1:{server.server_address[1]}/hello?token=t")
    yield
    _served.clear()
    server.shutdown()
    server.server_close()
    thread.join(5)


# One TLS context for every httpx client of every case: a client made without one loads the CA bundle (some 50 ms,
# twice a case, most of this module's time). The server is plain HTTP; the context is only what httpx requires.
TLS = ssl.create_default_context()


def http_clients() -> None:
    import aiohttp
    import httpx
    import requests
    import urllib3

    from chat_turbo_metrics_http_client import (
        AiohttpClientInstrumentor,
        HttpxInstrumentor,
        RequestsInstrumentor,
        Urllib3Instrumentor,
    )

    instrumentors = (RequestsInstrumentor(), HttpxInstrumentor(), AiohttpClientInstrumentor(), Urllib3Instrumentor())
    for instrumentor in instrumentors:
        instrumentor.instrument()
    url = _served[0]

    async def async_clients() -> list[str]:
        async with (
            httpx.AsyncClient(verify=TLS) as client,
            aiohttp.ClientSession() as session,
            session.get(url) as response,
        ):
            return [(await client.get(url)).text, await response.text()]

    try:
        assert requests.get(url, timeout=5).text == "ok"
        assert httpx.get(url, verify=TLS).text == "ok"
        assert urllib3.request("GET", url).data == b"ok"
        assert asyncio.run(async_clients()) == ["ok", "ok"]
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()


def postgres_drivers() -> None:
    import asyncpg
    import psycopg
    import psycopg2

    from chat_turbo_metrics_database import AsyncpgInstrumentor, Psycopg2Instrumentor, PsycopgInstrumentor

    instrumentors = (PsycopgInstrumentor(), Psycopg2Instrumentor(), AsyncpgInstrumentor())
    for instrumentor in instrumentors:
        instrumentor.instrument()

    async def on_asyncpg() -> Any:
        connection = await asyncpg.connect("postgresql://127.0.0.1:5432/test")
        try:
            return await connection.fetchval("SELECT 40 + 2")
        finally:
            await connection.close()

    try:
        with psycopg.connect("host=127.0.0.1 dbname=test") as connection:
            assert connection.execute("SELECT 40 + 2").fetchone() == (42,)
        connection2 = psycopg2.connect("host=127.0.0.1 dbname=test")
        try:
            cursor = connection2.cursor()
            cursor.execute("SELECT 40 + 2")
            assert cursor.fetchone() == (42,)
        finally:
            connection2.close()
        assert asyncio.run(on_asyncpg()) == 42
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()


def celery_instrumentor() -> None:
    from celery import Celery

    from chat_turbo_metrics_celery import CeleryInstrumentor

    app = Celery("bad_settings", broker="memory://")

    @app.task(name="bad_settings.add")
    def add(a: int, b: int) -> int:
        return a + b

    instrumentor = CeleryInstrumentor()
    instrumentor.instrument()
    try:
        assert add.apply(args=(40, 2)).get() == 42
    finally:
        instrumentor.uninstrument()


def client_requests_counted(monitor: PerformanceMonitor) -> Any:
    found = monitor.snapshot().value(
        "http_client_request_duration_seconds",
        {
            "method": "GET",
            "server_address": "127.0.0.1",
            "server_port": int(_served[0].split(":")[2].split("/")[0]),
            "status": 200,
        },
    )
    return None if found is None else found["count"]


def statements_counted(monitor: PerformanceMonitor) -> Any:
    found = monitor.snapshot().value(
        "database_query_duration_seconds", {"table": "other", "operation": "select", "status": "success"}
    )
    return None if found is None else found["count"]


HTTP_STEPS = (asgi_instrumentor, asgi_middleware, flask_instrumentor, wsgi_middleware, django_middleware)
HTTP_STEPS += (aiohttp_server_instrumentor, django_asgi_instrumentor)
STEPS = (*HTTP_STEPS, http_clients, sqlalchemy_instrumentor, postgres_drivers, redis_instrumentor)
STEPS += (celery_instrumentor, system_instrumentor, seed_api)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def run_application(case: Case, caplog: pytest.LogCaptureFixture) -> PerformanceMonitor:
    """Start the process-wide monitor from ``case``'s environment, then do every step's work, checking the logs."""
    require(port_open("127.0.0.1", 6379), "Redis is not running at 127.0.0.1:6379")
    caplog.set_level(logging.WARNING)
    monitor = PerformanceMonitor.get_instance()  # what the distro or the first recording does
    started = errors(caplog)
    if case.http_only:
        assert started == []
    elif monitor.pipeline is None:  # not started: one error, naming the setting and the value as typed
        (error,) = started
        assert case.name in error
        if case.name in SECRETS:
            assert case.value not in error
        elif case.toml is None and f"{case.name}=" in error:  # (not a combination that names another first)
            assert f"{case.name}={case.value!r}" in error
    else:  # an exporter refused (strict=False): one error per name refused, naming the setting
        assert started
        assert all(case.name in error for error in started)
    for step in STEPS:
        caplog.clear()
        step()
        logged = errors(caplog)
        if case.http_only and step is HTTP_STEPS[0]:  # the HTTP setting is said once, by the first to read it
            (error,) = logged
            assert f"{case.name}: {case.value!r}" in error
        else:
            assert logged == [], step.__name__
    return monitor


def requests_counted(monitor: PerformanceMonitor) -> Any:
    return monitor.snapshot().value("api_requests", {"method": "GET", "endpoint": "/hello/{name}", "status": 200})


@pytest.mark.parametrize("case", VARIABLE_CASES + FILE_CASES, ids=lambda case: f"{case.name}={case.value}")
def test_the_application_works_whatever_a_setting_says(
    case: Case, fresh_process: Callable[[dict[str, str]], None], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    env = dict(case.env)
    if case.toml is not None:
        (tmp_path / "test.toml").write_text(case.toml)
        env["CHAT_TURBO_CONFIG_DIR"] = str(tmp_path)
    fresh_process(env)

    monitor = run_application(case, caplog)

    if case.http_only:  # monitoring runs; the HTTP instrumentors, told nonsense, measured nothing
        assert requests_counted(monitor) is None
        assert monitor.snapshot().value("messages_sent", {"channel": "public"}) == 1
        if "METRIC_NAMES" in case.name:  # the clients read the names too; the drivers are not HTTP's
            assert client_requests_counted(monitor) is None
        else:
            assert client_requests_counted(monitor) == 5
        assert statements_counted(monitor) == 5
    elif monitor.pipeline is None:  # monitoring could not start: every recording was a no-op
        assert not monitor.config.enabled
        assert monitor.snapshot().value("messages_sent", {"channel": "public"}) is None
    else:  # only an exporter was refused (strict=False): the rest started and measured
        # ASGI twice, Flask, aiohttp's server and Django under ASGI: the WSGI and Django-middleware apps use other paths
        assert requests_counted(monitor) == 5
        assert client_requests_counted(monitor) == 5  # requests, httpx twice, urllib3, aiohttp
        assert statements_counted(monitor) == 5  # psycopg, psycopg2, asyncpg, SQLAlchemy's and the seed API's
        assert monitor.snapshot().value("celery_tasks", {"task": "bad_settings.add", "outcome": "success"}) == 1


FREE_VARIABLES = sorted(set(declared_variables()) - {case.name for case in VARIABLE_CASES})


@pytest.mark.parametrize("name", FREE_VARIABLES)
def test_the_application_works_whatever_a_setting_of_a_feature_turned_on_says(
    name: str, fresh_process: Callable[[dict[str, str]], None], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # With every feature on, the settings that were free text above may be refused: an endpoint, a key, a list.
    on = {
        **BASE,
        "OTEL_METRICS_EXPORTER": "chat_turbo_file,chat_turbo_database,datadog",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        "METRICS_SHUTDOWN_TIMEOUT": "1",
        "METRICS_FILE_PATH": str(tmp_path / "metrics.jsonl"),
        "METRICS_DATABASE_URL": f"sqlite:///{tmp_path / 'metrics.db'}",
        "DD_API_KEY": "0" * 32,
        "CHAT_TURBO_DATADOG_ENDPOINT": "http://127.0.0.1:9",  # loopback, nothing listens: never a real intake
        "ALERT_EMAIL_ENABLED": "true",
        "ALERT_EMAIL_HOST": "127.0.0.1",
        "ALERT_EMAIL_FROM": "alerts@example.com",
        "ALERT_EMAIL_TO": "oncall@example.com",
    }
    assert refusal(on) is None
    reasons: dict[str, str] = {}
    for value in HOSTILE_TEXT:
        why = refusal({**on, name: value})
        if why is not None:
            reasons.setdefault(why.replace(repr(value), "").replace(value, ""), value)
    for value in reasons.values():
        caplog.clear()
        fresh_process({**on, name: value})
        monitor = run_application(Case(name, value, {**on, name: value}), caplog)
        if monitor.pipeline is not None:  # the exporter this setting configures was left out; the rest measured
            assert requests_counted(monitor) == 5
            assert monitor.config.metrics_exporters == ("chat_turbo_file", "chat_turbo_database", "datadog")
