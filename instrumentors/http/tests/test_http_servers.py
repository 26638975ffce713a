"""Real servers in subprocesses: a Starlette app under uvicorn, Flask and Django apps under Werkzeug, started by
``opentelemetry-instrument`` with no monitoring code, read back from the Prometheus endpoint with exact counts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def message(request):
    return PlainTextResponse("message")

async def fail(request):
    raise KeyError("gone")

app = Starlette(routes=[Route("/api/messages/{id:int}", message), Route("/fail", fail), Route("/health", message)])
"""

FLASK_APP = """
import sys
from flask import Flask

app = Flask("chat")

@app.route("/api/messages/<int:id>")
def message(id):
    return "message"

@app.route("/fail")
def fail():
    raise KeyError("gone")

@app.route("/health")
def health():
    return "ok"

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
"""

FASTAPI_APP = """
from fastapi import FastAPI, Response

app = FastAPI()  # FastAPI is imported after opentelemetry-instrument ran the instrumentors

@app.get("/api/messages/{id}")
async def message(id: int):
    return Response("message")

@app.get("/fail")
async def fail():
    raise KeyError("gone")

@app.get("/health")
async def health():
    return Response("ok")
"""

DJANGO_APP = """
import sys
from django.conf import settings

settings.configure(DEBUG=False, SECRET_KEY="served", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, MIDDLEWARE=[])

from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path

def message(request, id):
    return HttpResponse("message")

def fail(request):
    raise KeyError("gone")

def health(request):
    return HttpResponse("ok")

urlpatterns = [path("api/messages/<int:id>", message), path("fail", fail), path("health", health)]
application = get_wsgi_application()

if __name__ == "__main__":
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", int(sys.argv[1]), application, threaded=True)
"""

DJANGO_ASGI_APP = DJANGO_APP.replace(
    "django.core.wsgi import get_wsgi_application", "django.core.asgi import get_asgi_application"
).replace("application = get_wsgi_application()", "application = get_asgi_application()")

AIOHTTP_APP = """
import sys
from aiohttp import web

async def message(request):
    return web.Response(text="message")

async def fail(request):
    raise KeyError("gone")

async def health(request):
    return web.Response(text="ok")

app = web.Application()  # created after opentelemetry-instrument ran the instrumentors
app.add_routes([web.get("/api/messages/{id}", message), web.get("/fail", fail), web.get("/health", health)])

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[str], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}) before {what}: {process.communicate()[1][-3000:]}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[int, int]]]:
    """``serve(source, command, **env)`` runs the app under opentelemetry-instrument; (app port, metrics port)."""
    started: list[subprocess.Popen[str]] = []

    def start(source: str, command: Callable[[int], list[str]], **extra_env: str) -> tuple[int, int]:
        (tmp_path / "served_app.py").write_text(textwrap.dedent(source))
        app_port, metrics_port = _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
        env.update(
            CHAT_TURBO_ENV="test",
            METRICS_PROMETHEUS_SCOPE_LABELS="false",  # the expected lines are written without them
            OTEL_METRICS_EXPORTER="prometheus",
            OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
            OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
            CHAT_TURBO_HTTP_EXCLUDED_PATHS="/health",
            PYTHONPATH=str(tmp_path),
            # contrib's, when installed for the benchmarks: its Django instrumentor configures settings first; its
            # Redis and SQLAlchemy ones, installed for the coexistence tests, import their libraries at start-up
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="django,aiohttp-server,redis,sqlalchemy",
        )
        env.update(extra_env)
        instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
        process = subprocess.Popen(
            [instrument, *command(app_port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        _wait_until(lambda: _get(f"http://127.0.0.1:{app_port}/health") == 200, process, "the app served")
        _wait_until(lambda: bool(_scrape(metrics_port) is not None), process, "the metrics endpoint served")
        return app_port, metrics_port

    yield start
    for process in started:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _uvicorn(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "served_app:app", "--host", "127.0.0.1", "--port", str(port)]


def _uvicorn_django(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "served_app:application", "--host", "127.0.0.1", "--port", str(port)]


def _werkzeug(port: int) -> list[str]:
    return [sys.executable, "served_app.py", str(port)]


def _requests(port: int) -> None:
    statuses = [_get(f"http://127.0.0.1:{port}/api/messages/{n}") for n in (1, 2, 3, 1, 2)]
    statuses += [_get(f"http://127.0.0.1:{port}/no/such/page/{n}") for n in (1, 2)]
    statuses.append(_get(f"http://127.0.0.1:{port}/fail"))
    statuses += [_get(f"http://127.0.0.1:{port}/health") for _ in range(3)]
    assert statuses == [200] * 5 + [404] * 2 + [500] + [200] * 3


def _series(endpoint: str, status: int) -> frozenset[tuple[str, str]]:
    return frozenset({"method": "GET", "endpoint": endpoint, "status": str(status)}.items())


def _check_exact_counts(process_metrics_port: int) -> None:
    wanted = {
        ("api_requests_total", _series("/api/messages/{id}", 200)): 5.0,
        ("api_requests_total", _series("unmatched", 404)): 2.0,
        ("api_requests_total", _series("/fail", 500)): 1.0,
        ("http_request_duration_seconds_count", _series("/api/messages/{id}", 200)): 5.0,
        ("errors_total", frozenset({*_series("/fail", 500), ("error_type", "KeyError")})): 1.0,
    }
    deadline = time.monotonic() + 10  # the server answers before the request's record is made
    samples = _scrape(process_metrics_port)
    while any(samples.get(key) != value for key, value in wanted.items()) and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = _scrape(process_metrics_port)
    assert {key: samples.get(key) for key in wanted} == wanted
    endpoints = {dict(labels).get("endpoint") for name, labels in samples if name == "api_requests_total"}
    assert endpoints == {"/api/messages/{id}", "unmatched", "/fail"}  # /health excluded, raw paths never
    assert samples[("http_requests_in_flight", frozenset())] == 0


@pytest.mark.parametrize(
    ("source", "command"),
    [
        (STARLETTE_APP, _uvicorn),
        (FASTAPI_APP, _uvicorn),
        (FLASK_APP, _werkzeug),
        (DJANGO_APP, _werkzeug),
        (DJANGO_ASGI_APP, _uvicorn_django),
        (AIOHTTP_APP, _werkzeug),  # the script serves itself (web.run_app)
    ],
    ids=["starlette-uvicorn", "fastapi-uvicorn", "flask-werkzeug", "django-werkzeug", "django-uvicorn", "aiohttp"],
)
def test_an_app_without_monitoring_code_is_measured_under_opentelemetry_instrument(
    serve: Callable[..., tuple[int, int]], source: str, command: Callable[[int], list[str]]
) -> None:
    app_port, metrics_port = serve(source, command)
    _requests(app_port)
    _check_exact_counts(metrics_port)


def test_disabled_instrumentations_turn_it_off(serve: Callable[..., tuple[int, int]]) -> None:
    app_port, metrics_port = serve(
        STARLETTE_APP, _uvicorn, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="chat_turbo_asgi,chat_turbo_wsgi"
    )
    _requests(app_port)
    # The metrics endpoint serves (serve() waited for it); the same set-up without the variable has the series.
    names = {name for name, _ in _scrape(metrics_port)}
    assert not {n for n in names if n.startswith(("api_requests", "http_request", "errors"))}
