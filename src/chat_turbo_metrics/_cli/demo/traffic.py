"""Realistic traffic for the demo service, and what its client saw (for the live display)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from chat_turbo_metrics._cli.demo.service import CHANNELS, FAILING_ROUTE, SLOW_ROUTE

# (weight, method, route template): what a chat client mostly does, and a little of the deliberate failure.
MIX = (
    (30, "POST", "/api/channels/{channel}/messages"),
    (30, "GET", "/api/channels/{channel}/history"),
    (20, "GET", "/api/messages/{id}"),
    (15, "GET", SLOW_ROUTE),
    (5, "GET", FAILING_ROUTE),
)
WORDS = ("hello", "deploy", "lunch", "latency", "incident", "thanks", "review", "merge", "coffee", "release")


@dataclass
class ClientStats:
    """Responses as the traffic's client saw them: totals, and the last ``window_s`` for rates and p95."""

    window_s: float = 10.0
    requests: int = 0
    errors: int = 0  # 5xx
    deliberate: int = 0  # 5xx from FAILING_ROUTE
    failed: int = 0  # no response (connection error, timeout)
    by_route: Counter[str] = field(default_factory=Counter)
    recent: deque[tuple[float, float, int]] = field(default_factory=deque)  # (when, seconds, status)

    def add(self, route: str, status: int, seconds: float, now: float) -> None:
        self.requests += 1
        self.by_route[route] += 1
        if status >= 500:
            self.errors += 1
            self.deliberate += route.endswith(FAILING_ROUTE)
        self.recent.append((now, seconds, status))
        while self.recent and self.recent[0][0] < now - self.window_s:
            self.recent.popleft()

    def recent_rate(self) -> float:
        return len(self.recent) / self.window_s

    def recent_error_ratio(self) -> float:
        return sum(status >= 500 for _, _, status in self.recent) / len(self.recent) if self.recent else 0.0

    def recent_p95(self) -> float | None:
        durations = sorted(seconds for _, seconds, _ in self.recent)
        return durations[min(len(durations) - 1, int(0.95 * len(durations)))] if durations else None


def _request(rng: random.Random, sent: int) -> tuple[str, str, str, dict[str, str] | None]:
    """(method, route template, path, JSON body) of the next request."""
    _, method, route = rng.choices(MIX, weights=[weight for weight, _, _ in MIX])[0]
    channel = rng.choice(CHANNELS)
    if route.endswith("/messages") and method == "POST":
        text = " ".join(rng.choices(WORDS, k=rng.randint(1, 30)))
        return method, route, f"/api/channels/{channel}/messages", {"text": text}
    if route.endswith("/history"):
        return method, route, f"/api/channels/{channel}/history", None
    if route == "/api/messages/{id}":  # mostly messages that exist; now and then one that does not (404)
        return method, route, f"/api/messages/{rng.randint(1, max(1, int(sent * 0.35)))}", None
    if route == SLOW_ROUTE:
        return method, route, f"{SLOW_ROUTE}?q={rng.choice(WORDS)}", None
    return method, route, route, None


async def drive(base_url: str, stats: ClientStats, stop: asyncio.Event, rate: float = 25.0, seed: int = 7) -> None:
    """Send requests at about ``rate`` per second (Poisson arrivals, at most 200 in flight) until ``stop``."""
    import httpx

    rng = random.Random(seed)
    in_flight: set[asyncio.Task[None]] = set()
    limit = asyncio.Semaphore(200)
    # trust_env=False: a proxy set in the environment must not carry loopback traffic elsewhere.
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as client:

        async def one(method: str, route: str, path: str, body: dict[str, str] | None) -> None:
            async with limit:
                started = time.perf_counter()
                try:
                    response = await client.request(method, path, json=body)
                    status = response.status_code
                except httpx.HTTPError:
                    stats.failed += 1
                    return
                stats.add(f"{method} {route}", status, time.perf_counter() - started, time.monotonic())

        while not stop.is_set():
            task = asyncio.create_task(one(*_request(rng, stats.requests)))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=rng.expovariate(rate))
        if in_flight:  # let the requests under way finish, so the server's counts and the client's agree
            await asyncio.wait(in_flight, timeout=15)
