"""``instrument()`` imports no framework: each is patched when the application imports it, in a fresh interpreter.

Under ``opentelemetry-instrument`` every installed instrumentor runs at start-up; one that imported its framework there
would load Flask, Django, Starlette and aiohttp into every service. Here the four server instrumentors run first, then
each framework is imported in turn and serves a real request on 127.0.0.1: measured once; after ``uninstrument()``
before the import, not patched at all; after instrument, uninstrument, instrument, patched exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

SCRIPT = """
import asyncio, json, sys, threading, types, urllib.request

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_http.aiohttp_server import AiohttpServerInstrumentor
from chat_turbo_metrics_http.asgi import AsgiMetricsInstrumentor
from chat_turbo_metrics_http.django_asgi import DjangoAsgiInstrumentor
from chat_turbo_metrics_http.wsgi import WsgiMetricsInstrumentor
import chat_turbo_metrics_http.django_middleware

LIBRARIES = ("flask", "werkzeug", "django", "starlette", "fastapi", "aiohttp", "uvicorn")
INSTRUMENTORS = (WsgiMetricsInstrumentor, AsgiMetricsInstrumentor, AiohttpServerInstrumentor, DjangoAsgiInstrumentor)
monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=()))
report = {"at_start": sorted(name for name in LIBRARIES if name in sys.modules)}
for action in sys.argv[1].split(","):  # instrument, uninstrument...: each instrumentor in turn
    for cls in INSTRUMENTORS:
        getattr(cls(), action)(**({"monitor": monitor} if action == "instrument" else {}))
report["after_instrument"] = sorted(name for name in LIBRARIES if name in sys.modules)


def layers(owner, name):
    # How many wrappers of ours stand over the original: 1 patched, 0 not, 2 patched twice.
    found, value = 0, owner.__dict__[name]
    while hasattr(value, "__wrapped__"):
        found, value = found + 1, value.__wrapped__
    return found


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status, response.read().decode()


def serve_wsgi(app, paths):
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        return [get(server.server_port, path) for path in paths]
    finally:
        server.shutdown()
        server.server_close()


def serve_asgi(app, paths):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.02)
    try:
        return [get(server.servers[0].sockets[0].getsockname()[1], path) for path in paths]
    finally:
        server.should_exit = True
        thread.join(10)


def step(name, run):
    # The framework (and the others) not loaded before its turn; then the patch points and what a request records.
    report[name] = {"loaded_before": name in sys.modules, "served": run()}


def flask_step():
    from flask import Flask

    app = Flask("lazy")
    app.add_url_rule("/flask/<name>", "hello", lambda name: f"hello {name}")
    served = serve_wsgi(app, ["/flask/ann", "/flask/bob"])
    return served, layers(Flask, "wsgi_app")


def django_step():
    import django
    from django.conf import settings
    from django.http import HttpResponse
    from django.urls import path

    async def hello(request, name):
        return HttpResponse(f"hello {name}")

    urls = types.ModuleType("lazy_urls")
    urls.urlpatterns = [path("django/<str:name>", hello), path("django-asgi/<str:name>", hello)]
    settings.configure(SECRET_KEY="lazy", ALLOWED_HOSTS=["*"], ROOT_URLCONF=urls, MIDDLEWARE=[], INSTALLED_APPS=[])
    django.setup()
    waiting = "django.core.handlers.base" in sys.modules  # Django's handler is not loaded by setup()
    from django.core.handlers.base import BaseHandler
    from django.core.wsgi import get_wsgi_application

    served = serve_wsgi(get_wsgi_application(), ["/django/ann", "/django/bob"])
    return served, layers(BaseHandler, "get_response"), waiting


def django_asgi_step():
    from django.core.asgi import get_asgi_application
    from django.core.handlers.base import BaseHandler

    served = serve_asgi(get_asgi_application(), ["/django-asgi/ann", "/django-asgi/bob"])
    return served, layers(BaseHandler, "get_response_async")


async def hello(request):
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(f"hello {request.path_params['name']}")


def starlette_step():
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(routes=[Route("/starlette/{name}", hello)])
    served = serve_asgi(app, ["/starlette/ann", "/starlette/bob"])
    return served, layers(Starlette, "build_middleware_stack"), "__init_subclass__" in Starlette.__dict__


def fastapi_step():
    from fastapi import FastAPI
    from starlette.responses import PlainTextResponse

    async def greet(name: str):
        return PlainTextResponse(f"hello {name}")

    app = FastAPI()  # a subclass of Starlette defined after the patch
    app.add_api_route("/fastapi/{name}", greet)
    served = serve_asgi(app, ["/fastapi/ann", "/fastapi/bob"])
    return served, layers(FastAPI, "build_middleware_stack")


def aiohttp_step():
    from aiohttp import web
    from aiohttp.web_app import Application

    async def handle(request):
        return web.Response(text=f"hello {request.match_info['name']}")

    async def run():
        app = web.Application()
        app.add_routes([web.get("/aiohttp/{name}", handle)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return [await asyncio.to_thread(get, port, path) for path in ("/aiohttp/ann", "/aiohttp/bob")]
        finally:
            await runner.cleanup()

    return asyncio.run(run()), layers(Application, "_handle")


for name, run in (
    ("flask", flask_step),
    ("django", django_step),
    ("django_asgi", django_asgi_step),
    ("starlette", starlette_step),
    ("fastapi", fastapi_step),
    ("aiohttp", aiohttp_step),
):
    step(name, run)
report["measured"] = {
    record["attributes"]["endpoint"]: record["value"]
    for record in monitor.snapshot().records()
    if record["name"] == "api_requests"
}
print(json.dumps(report))
"""

ENDPOINTS = ("flask", "django", "django-asgi", "starlette", "fastapi", "aiohttp")


MODES = {"lazy": "instrument", "cancelled": "instrument,uninstrument", "again": "instrument,uninstrument,instrument"}


def run(mode: str) -> dict[str, Any]:
    """The script in a fresh interpreter (whose imports are its own) after ``MODES[mode]``: what it saw, as JSON."""
    command = [sys.executable, "-c", textwrap.dedent(SCRIPT), MODES[mode]]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def served(patched: int, hello: list[Any]) -> dict[str, Any]:
    """What each framework's step reports: not loaded before its turn, two requests answered, patched ``patched``."""
    return {
        "flask": {"loaded_before": False, "served": [hello, patched]},
        "django": {"loaded_before": False, "served": [hello, patched, False]},
        "django_asgi": {"loaded_before": False, "served": [hello, patched]},
        "starlette": {"loaded_before": False, "served": [hello, patched, bool(patched)]},
        "fastapi": {"loaded_before": False, "served": [hello, patched]},
        "aiohttp": {"loaded_before": False, "served": [hello, patched]},
    }


HELLO = [[200, "hello ann"], [200, "hello bob"]]


@pytest.mark.parametrize("mode", ["lazy", "again"])
def test_instrument_imports_no_framework_and_each_is_measured_once_when_imported(mode: str) -> None:
    """``again``: instrument, uninstrument, instrument: one patch (one wrapper), each request counted once."""
    report = run(mode)
    assert report.pop("at_start") == report.pop("after_instrument") == []
    assert report.pop("measured") == {f"/{name}/{{name}}": 2 for name in ENDPOINTS}
    assert report == served(1, HELLO)


def test_uninstrument_before_the_import_leaves_every_framework_unpatched() -> None:
    report = run("cancelled")
    assert report.pop("at_start") == report.pop("after_instrument") == []
    assert report.pop("measured") == {}
    assert report == served(0, HELLO)


FORKED = """
import json, os, sys, threading, urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_http.wsgi import WsgiMetricsInstrumentor

monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=()))


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def worker():
    # What a server's worker does after fork(): import the application (Flask with it), serve.
    from flask import Flask

    app = Flask("forked")
    app.add_url_rule("/hello/<name>", "hello", lambda name: f"hello {name}")
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/hello/ann", timeout=10) as response:
        status = response.status
    server.shutdown()
    tags = {"method": "GET", "endpoint": "/hello/{name}", "status": 200}
    return [status, monitor.snapshot().value("api_requests", tags), hasattr(Flask.__dict__["wsgi_app"], "__wrapped__")]


def fork_worker():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, json.dumps(worker()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(seen) if seen else None


WsgiMetricsInstrumentor().instrument(monitor=monitor)
first = fork_worker()
WsgiMetricsInstrumentor().uninstrument()  # in the parent, before the next worker imports Flask
print(json.dumps({"instrumented": first, "uninstrumented": fork_worker(), "parent_has_flask": "flask" in sys.modules}))
"""


def test_a_worker_forked_after_instrument_patches_flask_when_it_imports_it() -> None:
    """gunicorn without ``--preload``: instrumented in the parent, the application (Flask) imported in each worker."""
    command = [sys.executable, "-c", textwrap.dedent(FORKED)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "instrumented": [200, 1, True],
        "uninstrumented": [200, None, False],
        "parent_has_flask": False,
    }
