"""A Datadog-like v2 series intake on 127.0.0.1 that checks every request strictly.

Anything a real intake would refuse, or that Datadog would silently mangle (NaN, float timestamps, tags
that break the tag rules, bodies over the limits, a missing key), is recorded as a violation and answered
400; tests assert there were none. Responses can be scripted: 202, 400, 403, 413, 429 with Retry-After,
500, a dropped connection, a stall until released, or an answer trickled one byte at a time.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DD_KEY = "feedc0ffee5ec4e7abcdef0123456789"  # distinctive, so a leak is easy to search for
MAX_COMPRESSED = 512_000
MAX_DECOMPRESSED = 5_242_880
PATIENCE_S = 15.0

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,199}\Z")
_TAG = re.compile(r"[^\W\d_][\w\-:./]{0,199}\Z")  # a letter, then Datadog's allowed characters
_SERIES_KEYS = {"metric", "type", "points", "interval", "tags", "resources", "unit"}
STALL = "stall"
DROP = "drop"
TRICKLE = "trickle"  # accept, then answer one byte every TRICKLE_S
TRICKLE_S = 0.2


@dataclass
class Answer:
    """One scripted answer: a status with headers and body, or STALL / DROP."""

    status: int | str = 202
    headers: dict[str, str] = field(default_factory=dict)
    body: str = '{"errors":[]}'


@dataclass
class Received:
    """One request as the intake saw it."""

    at: float
    status: int | str
    compressed: int
    decompressed: int
    series: list[dict[str, Any]]
    headers: dict[str, str]


def _schema_problems(payload: Any) -> Iterator[str]:
    """What the datadog-api-client's MetricPayload model cannot parse (a second, independent schema check)."""
    from datadog_api_client import ApiClient, Configuration
    from datadog_api_client.v2.model.metric_payload import MetricPayload

    # The client's model is slow (~0.3 ms a series): every rule above runs on all series, this one on a sample.
    sample = {"series": payload["series"][:300]}
    parsed = ApiClient(Configuration()).deserialize(json.dumps(sample), (MetricPayload,), True)
    for index, series in enumerate(parsed.series):
        objects = [series, *series.points, *getattr(series, "resources", [])]
        if any(getattr(obj, "_unparsed", False) for obj in objects):
            yield f"series[{index}]: MetricPayload cannot parse it"


def _series_problems(series: Any, now: float) -> Iterator[str]:  # noqa: PLR0912 - one check per rule
    if not isinstance(series, dict):
        yield "a series is not an object"
        return
    if set(series) - _SERIES_KEYS:
        yield f"unknown keys {sorted(set(series) - _SERIES_KEYS)}"
    name = series.get("metric")
    if not isinstance(name, str) or not _NAME.match(name):
        yield f"bad metric name {name!r}"
    kind = series.get("type")
    if type(kind) is not int or kind not in (0, 1, 2, 3):
        yield f"{name}: bad type {kind!r}"
    points = series.get("points")
    if not isinstance(points, list) or not points:
        yield f"{name}: no points"
        points = []
    for point in points:
        timestamp, value = point.get("timestamp"), point.get("value")
        if type(timestamp) is not int or abs(timestamp - now) > 3600:
            yield f"{name}: timestamp {timestamp!r} is not integer seconds within an hour of now"
        if type(value) not in (int, float) or not math.isfinite(value):
            yield f"{name}: value {value!r} is not a finite number"
    if "interval" in series and (type(series["interval"]) is not int or series["interval"] <= 0):
        yield f"{name}: bad interval {series['interval']!r}"
    if kind == 1 and "interval" not in series:
        yield f"{name}: a count without interval"
    for tag in series.get("tags", []):
        if not isinstance(tag, str) or not _TAG.match(tag) or tag != tag.lower():
            yield f"{name}: tag {tag!r} breaks Datadog's tag rules"
    for resource in series.get("resources", []):
        if set(resource) != {"type", "name"} or resource["type"] != "host" or not resource["name"]:
            yield f"{name}: bad resource {resource!r}"
    if "unit" in series and not isinstance(series["unit"], str):
        yield f"{name}: bad unit"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read what the intake recorded instead."""

    def do_POST(self) -> None:
        intake = self.server.intake
        answer = intake.next_answer()
        if answer.status == STALL:
            intake.stalled.set()
            intake.release.wait(PATIENCE_S * 4)
            self.close_connection = True
            return
        if answer.status == DROP:
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if answer.status == TRICKLE:
            intake.record([], Received(time.monotonic(), TRICKLE, len(body), 0, [], dict(self.headers)))
            self._trickle(b"HTTP/1.1 202 Accepted\r\nContent-Length: 13\r\n\r\n" + b'{"errors":[]}', intake)
            return
        problems, series, decompressed = intake.check(self.path, dict(self.headers.items()), body)
        status = 400 if problems else answer.status
        if (
            not problems
            and status == 202
            and (len(body) > intake.max_compressed or decompressed > intake.max_decompressed)
        ):
            status = 413
        intake.record(problems, Received(time.monotonic(), status, len(body), decompressed, series, dict(self.headers)))
        text = json.dumps({"errors": problems}) if problems else answer.body
        data = text.encode()
        self.send_response(int(status))
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _trickle(self, data: bytes, intake: DatadogIntake) -> None:
        self.close_connection = True
        for byte in data:
            if intake.release.wait(TRICKLE_S):
                return
            try:
                self.wfile.write(bytes([byte]))
            except OSError:  # the exporter gave up on us
                return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    intake: DatadogIntake

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (it gave up on a stalled answer, or refused our certificate) is part of what
        the tests do; anything else is a bug in the intake and fails the test."""
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, ssl.SSLError)):
            self.intake.violations.append(f"intake error: {error!r}")


class DatadogIntake:
    """The fake intake. ``answer(...)`` scripts the next responses; after the script, ``default`` answers.

    Example:
        intake = DatadogIntake(api_key=KEY); intake.start()
        intake.answer(Answer(429, {"Retry-After": "1"}))   # first request rate limited, the next accepted
        ...
        assert intake.violations == []
    """

    def __init__(
        self,
        api_key: str,
        max_compressed: int = MAX_COMPRESSED,
        max_decompressed: int = MAX_DECOMPRESSED,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.api_key = api_key
        self.max_compressed = max_compressed
        self.max_decompressed = max_decompressed
        self.default = Answer()
        self.requests: list[Received] = []
        self.violations: list[str] = []
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._script: deque[Answer] = deque()
        self._cond = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.intake = self
        self._scheme = "https" if tls else "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host}:{port}"

    def start(self) -> DatadogIntake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def answer(self, *answers: Answer) -> None:
        with self._cond:
            self._script.extend(answers)

    def next_answer(self) -> Answer:
        with self._cond:
            return self._script.popleft() if self._script else self.default

    def check(self, path: str, headers: dict[str, str], body: bytes) -> tuple[list[str], list[dict[str, Any]], int]:
        """Every rule a request must follow; returns the problems, the series and the decompressed size."""
        lower = {key.lower(): value for key, value in headers.items()}
        problems = []
        if path != "/api/v2/series":
            problems.append(f"path {path}")
        if lower.get("dd-api-key") != self.api_key:
            problems.append("missing or wrong DD-API-KEY")
        if "dd-application-key" in lower:
            problems.append("an application key was sent; submission needs none")
        if lower.get("content-type") != "application/json":
            problems.append(f"Content-Type {lower.get('content-type')}")
        if lower.get("content-encoding") != "gzip":
            problems.append(f"Content-Encoding {lower.get('content-encoding')}")
        try:
            raw = gzip.decompress(body)
            payload = json.loads(raw, parse_constant=_reject)
        except ValueError as error:
            return [*problems, f"body is not gzip JSON: {error}"], [], 0
        series = payload.get("series") if isinstance(payload, dict) else None
        if not isinstance(series, list) or not series or set(payload) != {"series"}:
            return [*problems, "body is not {'series': [...]} with at least one series"], [], len(raw)
        if len(body) > MAX_COMPRESSED or len(raw) > MAX_DECOMPRESSED:
            problems.append(f"body over Datadog's limits: {len(body)} compressed, {len(raw)} decompressed bytes")
        now = time.time()
        for one in series:
            problems.extend(_series_problems(one, now))
        problems.extend(_schema_problems(payload))
        return problems, series, len(raw)

    def record(self, problems: list[str], received: Received) -> None:
        with self._cond:
            self.violations.extend(problems)
            self.requests.append(received)
            self._cond.notify_all()

    def accepted_series(self) -> list[dict[str, Any]]:
        """Every series of every request answered 202, in arrival order."""
        with self._cond:
            return [one for request in self.requests if request.status == 202 for one in request.series]

    def wait_for(self, condition: Callable[[DatadogIntake], bool], timeout_s: float = PATIENCE_S) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not condition(self):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"intake condition not met after {timeout_s} s; requests: {len(self.requests)}"
                self._cond.wait(remaining)


def _reject(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON a Datadog intake accepts")


def points(series: list[dict[str, Any]], metric: str, *tags: str) -> list[dict[str, Any]]:
    """The series named ``metric`` that carry every tag in ``tags``."""
    return [one for one in series if one["metric"] == metric and set(tags) <= set(one.get("tags", []))]


def total(series: list[dict[str, Any]], metric: str, *tags: str) -> float:
    """Sum of every point value of the matching series (what Datadog adds up for a count)."""
    return sum(point["value"] for one in points(series, metric, *tags) for point in one["points"])


@contextmanager
def running_intake(tls: ssl.SSLContext | None = None, **limits: int) -> Iterator[DatadogIntake]:
    """An intake for one test; on exit it must have seen no request that breaks the rules."""
    server = DatadogIntake(DD_KEY, tls=tls, **limits).start()
    try:
        yield server
    finally:
        server.stop()
    assert server.violations == [], server.violations
