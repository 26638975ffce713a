"""Real peers for the notification tests: an HTTP receiver on 127.0.0.1, a clock, alerts and a flapping source."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chat_turbo_metrics.alerting import Alert


@dataclass(frozen=True)
class Reply:
    """What the receiver answers to one request; ``stall`` holds the answer until the receiver is released."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    stall: bool = False
    trickle_s: float = 0.0  # write the answer one byte at a time, this long apart


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request arrived
    answered: int

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1:<free port> that records every POST and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.release = threading.Event()
        self.finished: list[float] = []  # time.monotonic() when each answer was written
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._cond:
                    reply = receiver.script.popleft() if receiver.script else receiver.default
                    receiver.requests.append(
                        Received(self.path, dict(self.headers), body, time.monotonic(), reply.status)
                    )
                    receiver._cond.notify_all()
                if reply.stall:
                    receiver.release.wait(30)
                if reply.trickle_s:
                    self._trickle(reply)
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                with receiver._cond:
                    receiver.finished.append(time.monotonic())
                    receiver._cond.notify_all()

            def _trickle(self, reply: Reply) -> None:
                head = f"HTTP/1.1 {reply.status} OK\r\nContent-Length: {len(reply.body)}\r\n\r\n".encode()
                self.close_connection = True
                for byte in head + reply.body:
                    if receiver.release.wait(reply.trickle_s):
                        return
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """The first ``count`` requests, waiting for them up to ``timeout_s``."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.requests) >= count, timeout_s)
            assert len(self.requests) >= count, f"expected {count} request(s), got {len(self.requests)}"
            return list(self.requests[:count])

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="receivers")
def receivers_fixture() -> Iterator[Any]:
    """Makes HTTP receivers and closes them after the test."""
    made: list[Receiver] = []

    def make() -> Receiver:
        receiver = Receiver()
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


class Clock:
    """A clock the test moves by hand (Unix seconds)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def alert(
    name: str = "HighCPU",
    state: str = "firing",
    at: float = 1_800_000_000.0,
    value: float | None = 97.0,
    **labels: str,
) -> Alert:
    """An alert as Alerting I would report it: firing since ``at`` (or resolved at ``at``)."""
    labels = {"alertname": name, "severity": "warning", **labels}
    base = Alert(
        rule_id=name.lower(),
        name=name,
        labels=labels,
        state="firing",
        active_at=at,
        value=value,
        annotations={"summary": f"{name} on {labels.get('instance', 'all')}"},
        fired_at=at,
    )
    if state == "resolved":
        return dataclasses.replace(base, state="resolved", resolved_at=at)
    if state == "pending":
        return dataclasses.replace(base, state="pending", fired_at=None)
    return base


class FlappingSource:
    """The alerts an evaluator reports for a condition that is true for ``on_s``, then false for ``off_s``.

    ``for`` is 0 (the rule fires at the first true evaluation, as Prometheus does); a firing alert is reported
    once as resolved at the first false evaluation. ``transitions`` counts firing and resolved transitions.
    """

    def __init__(self, start: float, on_s: float, off_s: float, **labels: str) -> None:
        self.start, self.on_s, self.off_s = start, on_s, off_s
        self.labels = labels
        self.firing: Alert | None = None
        self.transitions = 0

    def at(self, now: float) -> tuple[Alert, ...]:
        true = (now - self.start) % (self.on_s + self.off_s) < self.on_s
        if true:
            if self.firing is None:
                self.firing = alert("Flapping", at=now, **self.labels)
                self.transitions += 1
            return (self.firing,)
        if self.firing is not None:
            resolved = dataclasses.replace(self.firing, state="resolved", resolved_at=now)
            self.firing = None
            self.transitions += 1
            return (resolved,)
        return ()
