"""Real servers under ``opentelemetry-instrument`` with a monitoring setting that cannot be used (issue 19).

uvicorn and gunicorn (two workers) in subprocesses: every request is answered by the application as if monitoring
were not there, and the log says once what is wrong.
"""

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

STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def message(request):
    return PlainTextResponse(f"message {request.path_params['id']}")

async def fail(request):
    raise KeyError("gone")

app = Starlette(routes=[Route("/api/messages/{id:int}", message), Route("/fail", fail)])
"""

FLASK_APP = """
from flask import Flask

app = Flask("chat")

@app.route("/api/messages/<int:id>")
def message(id):
    return f"message {id}"

@app.route("/fail")
def fail():
    raise KeyError("gone")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


Served = Callable[..., tuple[int, Callable[[], str]]]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``served(source, server, **env)``: the app under opentelemetry-instrument; (port, stop -> its stderr)."""
    processes: list[subprocess.Popen[str]] = []

    def stop(process: subprocess.Popen[str]) -> str:
        process.terminate()
        try:
            return process.communicate(timeout=15)[1]
        except subprocess.TimeoutExpired:
            process.kill()
            return process.communicate()[1]

    def start(source: str, server: str, **extra_env: str) -> tuple[int, Callable[[], str]]:
        (tmp_path / "served_app.py").write_text(textwrap.dedent(source))
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
        # contrib's Redis and SQLAlchemy instrumentations, installed for the coexistence tests, import their
        # libraries at start-up (0.6 s of CPU in each instrumented interpreter): off, as in a service running ours.
        env.update(
            {
                "CHAT_TURBO_ENV": "test",
                "PYTHONPATH": str(tmp_path),
                "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis,sqlalchemy",
                **extra_env,
            }
        )
        bindir = Path(sys.executable).parent
        command = {
            "uvicorn": [sys.executable, "-m", "uvicorn", "served_app:app", "--host", "127.0.0.1", "--port", str(port)],
            "gunicorn": [str(bindir / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "served_app:app"],
        }[server]
        process = subprocess.Popen(
            [str(bindir / "opentelemetry-instrument"), *command],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}): {process.communicate()[1][-3000:]}")
            try:
                _get(f"http://127.0.0.1:{port}/api/messages/0")
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("timed out waiting for the server")
        return port, lambda: stop(processes.pop(processes.index(process)))

    yield start
    for process in processes:
        stop(process)


def _answers(port: int) -> list[tuple[int, str]]:
    return [_get(f"http://127.0.0.1:{port}/api/messages/{n}") for n in (1, 2, 3)] + [
        (_get(f"http://127.0.0.1:{port}/fail")[0], "")
    ]


ANSWERED = [(200, "message 1"), (200, "message 2"), (200, "message 3"), (500, "")]


@pytest.mark.parametrize(
    ("source", "server", "variable", "value"),
    [
        (STARLETTE_APP, "uvicorn", "METRICS_SAMPLING_RATE", "1.5"),
        (STARLETTE_APP, "uvicorn", "METRICS_SAMPLING_RATE", "0"),
        (FLASK_APP, "gunicorn", "METRICS_SAMPLING_RATE", "0"),
        (STARLETTE_APP, "uvicorn", "OTEL_METRIC_EXPORT_INTERVAL", "1e400"),
        (FLASK_APP, "gunicorn", "ALERT_EMAIL_ENABLED", "true"),
        (STARLETTE_APP, "uvicorn", "CHAT_TURBO_HTTP_METRIC_NAMES", "prometheus"),
        (FLASK_APP, "gunicorn", "CHAT_TURBO_HTTP_EXCLUDED_PATHS", "health"),
    ],
    ids=lambda value: value if isinstance(value, str) and "\n" not in value else None,
)
def test_every_request_is_answered_and_one_error_names_the_setting(
    served: Served, source: str, server: str, variable: str, value: str
) -> None:
    port, stop = served(source, server, **{variable: value})

    assert _answers(port) == ANSWERED  # the application's own answers, its own 500 included
    stderr = stop()
    named = [line for line in stderr.splitlines() if variable in line]
    assert len(named) == 1, stderr[-3000:]  # once, in the process that started (gunicorn's workers inherit it)
    assert value.lower() in named[0].lower()  # ALERT_EMAIL_ENABLED=True


def test_a_bad_key_in_the_users_config_file_leaves_the_app_serving(served: Served, tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "production.toml").write_text("export_interval_s = 1e300\n")

    port, stop = served(
        STARLETTE_APP, "uvicorn", CHAT_TURBO_ENV="production", CHAT_TURBO_CONFIG_DIR=str(tmp_path / "configs")
    )

    assert _answers(port) == ANSWERED
    named = [line for line in stop().splitlines() if "export_interval_s" in line]
    assert len(named) == 1
    assert str(tmp_path / "configs" / "production.toml") in named[0]
