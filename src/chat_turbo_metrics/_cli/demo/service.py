"""The demo's Chat-Turbo service: a Starlette app with route templates, a SQLAlchemy store on SQLite, a cache.

The service measures nothing itself except the seed's business metrics (messages sent, their size and
processing time): HTTP, database and process metrics come from the instrumentors, loaded as the distro loads
them (see :func:`load_instrumentors`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import StaticPool

from chat_turbo_metrics._cache import cached
from chat_turbo_metrics._monitor import PerformanceMonitor

# The instrumentors the demo uses, by their `opentelemetry_instrumentor` entry point names, and the extra
# that installs each (the Makefile installs them editable beside the core).
INSTRUMENTORS = {"chat_turbo_asgi": "http", "chat_turbo_sqlalchemy": "database", "chat_turbo_system": "system"}
CHANNELS = ("general", "random", "support")
FAILING_ROUTE = "/api/deliberate-failure"  # the demo's only 5xx: a route that always fails, on purpose
SLOW_ROUTE = "/api/search"  # slow during the slow phase: trips the high-response-time rule


@dataclass(frozen=True)
class SlowPhase:
    """When ``SLOW_ROUTE`` answers slowly: ``[start_s, start_s + length_s)`` seconds after ``origin``."""

    origin: float
    start_s: float
    length_s: float
    delay_s: tuple[float, float] = (2.6, 3.4)  # p95 well above the seed rule's 2 s threshold

    def active(self, now: float | None = None) -> bool:
        elapsed = (time.monotonic() if now is None else now) - self.origin
        return self.start_s <= elapsed < self.start_s + self.length_s


def load_instrumentors() -> tuple[list[Any], list[str]]:
    """Instrument through the entry points ``opentelemetry-instrument`` loads; (instrumentors, missing extras)."""
    found = {ep.name: ep for ep in entry_points(group="opentelemetry_instrumentor") if ep.name in INSTRUMENTORS}
    loaded, missing = [], []
    for name, extra in INSTRUMENTORS.items():
        if name not in found:
            missing.append(extra)
            continue
        instrumentor = found[name].load()()
        instrumentor.instrument(excluded_paths=["/health"]) if name == "chat_turbo_asgi" else instrumentor.instrument()
        loaded.append(instrumentor)
    return loaded, missing


def create_store() -> Engine:
    """The service's messages in an in-memory SQLite database (one connection shared by every thread)."""
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE messages (id INTEGER PRIMARY KEY, channel TEXT, body TEXT)"))
    return engine


def build_app(monitor: PerformanceMonitor, store: Engine, slow: SlowPhase) -> Any:
    """The Starlette application; every route has a template (``/api/messages/{id}``), so none is "unmatched"."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    rng = random.Random(11)

    def query(sql: str, **params: Any) -> list[Any]:
        with store.begin() as connection:
            result = connection.execute(text(sql), params)
            return list(result.fetchall()) if result.returns_rows else []

    @cached("channel_history", maxsize=8)
    async def channel_history(channel: str, version: int) -> list[Any]:
        return query("SELECT id, body FROM messages WHERE channel = :c ORDER BY id DESC LIMIT 20", c=channel)

    versions = dict.fromkeys(CHANNELS, 0)

    async def send(request: Request) -> JSONResponse:
        channel = request.path_params["channel"]
        started = time.perf_counter()
        body = (await request.json()).get("text", "")
        query("INSERT INTO messages (channel, body) VALUES (:c, :b)", c=channel, b=body)
        versions[channel] = versions.get(channel, 0) + 1
        monitor.increment_counter("messages_sent", {"channel": channel})
        monitor.record_histogram("message_size", len(body), {"channel": channel})
        monitor.record_histogram("message_processing_time_seconds", time.perf_counter() - started, {"channel": channel})
        return JSONResponse({"ok": True}, status_code=201)

    async def history(request: Request) -> JSONResponse:
        channel = request.path_params["channel"]
        # A new message invalidates the cached page: the version is part of the key.
        rows = await channel_history(channel, versions.get(channel, 0) // 5)
        return JSONResponse({"messages": [row[1] for row in rows]})

    async def message(request: Request) -> JSONResponse:
        rows = query("SELECT id, channel, body FROM messages WHERE id = :i", i=request.path_params["id"])
        if not rows:
            return JSONResponse({"error": "no such message"}, status_code=404)
        return JSONResponse({"id": rows[0][0], "channel": rows[0][1], "text": rows[0][2]})

    async def search(request: Request) -> JSONResponse:
        await asyncio.sleep(rng.uniform(*slow.delay_s) if slow.active() else rng.uniform(0.01, 0.06))
        rows = query("SELECT id FROM messages WHERE body LIKE :q LIMIT 10", q=f"%{request.query_params.get('q', '')}%")
        return JSONResponse({"hits": [row[0] for row in rows]})

    async def failure(request: Request) -> JSONResponse:
        return JSONResponse({"error": "this route fails on purpose (demo)"}, status_code=503)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    routes: list[tuple[str, Callable[..., Any], list[str]]] = [
        ("/api/channels/{channel}/messages", send, ["POST"]),
        ("/api/channels/{channel}/history", history, ["GET"]),
        ("/api/messages/{id:int}", message, ["GET"]),
        (SLOW_ROUTE, search, ["GET"]),
        (FAILING_ROUTE, failure, ["GET"]),
        ("/health", health, ["GET"]),
    ]
    return Starlette(routes=[Route(path, handler, methods=methods) for path, handler, methods in routes])
