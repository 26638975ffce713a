"""WSGI without a framework: the body shapes PEP 3333 allows, driven the way a server drives them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http.wsgi import WsgiMetricsMiddleware

Reader = Callable[..., Any]
OK = {"method": "GET", "endpoint": "unmatched", "status": 200}


def environ(path: str = "/x", **extra: Any) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.url_scheme": "http", **extra}


class Server:
    """Calls an application as a WSGI server does: start_response, iterate, then close() (PEP 3333)."""

    def __init__(self) -> None:
        self.status = ""
        self.written: list[bytes] = []

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        self.status = status
        return self.written.append

    def serve(self, app: Any, env: dict[str, Any] | None = None) -> bytes:
        body = app(env or environ(), self.start_response)
        try:
            return b"".join(self.written) + b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


class Body:
    """A body iterable that counts how often it is closed."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for n, chunk in enumerate(self.chunks):
            if n == self.fail_after:
                raise LookupError("gone")
            yield chunk

    def close(self) -> None:
        self.closed += 1


def app_returning(body: Any, status: str = "200 OK") -> Callable[..., Any]:
    def app(env: Any, start_response: Any) -> Any:
        start_response(status, [("Content-Type", "text/plain")])
        return body

    return app


def sizes(monitor: PerformanceMonitor, tags: dict[str, Any] = OK) -> tuple[Any, Any, Any]:
    snapshot = monitor.snapshot()
    return (
        snapshot.value("api_requests", tags),
        snapshot.value("http_response_size_bytes", tags),
        snapshot.value("http_request_duration_seconds", tags),
    )


def test_a_list_body_is_returned_as_it_is_and_recorded(http_monitor: PerformanceMonitor) -> None:
    body = [b"hello ", b"world"]
    middleware = WsgiMetricsMiddleware(app_returning(body), monitor=http_monitor)
    server = Server()
    returned = middleware(environ(CONTENT_LENGTH="11"), server.start_response)
    assert returned is body  # nothing to wait for: no wrapper for the server to go through
    count, response, duration = sizes(http_monitor)
    assert count == 1
    assert response["sum"] == 11
    assert duration["count"] == 1
    assert http_monitor.snapshot().value("http_request_size_bytes", OK)["sum"] == 11
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0


@pytest.mark.parametrize("announced", ["9" * 400, "-5", "12abc", "0"])
def test_an_impossible_content_length_is_a_request_of_no_body(http_monitor: PerformanceMonitor, announced: str) -> None:
    middleware = WsgiMetricsMiddleware(app_returning([b"ok"]), monitor=http_monitor)
    Server().serve(middleware, environ(CONTENT_LENGTH=announced))
    Server().serve(middleware, environ(CONTENT_LENGTH="7"))
    received = http_monitor.snapshot().value("http_request_size_bytes", OK)
    assert (received["count"], received["sum"]) == (2, 7)  # recorded as 0, then 7: nothing dropped
    assert sizes(http_monitor)[0] == 2
    assert http_monitor.dropped == 0


def test_a_tuple_body_counts_its_bytes_too(http_monitor: PerformanceMonitor) -> None:
    middleware = WsgiMetricsMiddleware(app_returning((b"abc", b"de")), monitor=http_monitor)
    assert Server().serve(middleware) == b"abcde"
    assert sizes(http_monitor)[1]["sum"] == 5


def test_a_generator_body_is_measured_to_its_last_chunk(http_monitor: PerformanceMonitor) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"first "
        time.sleep(0.2)  # the response is not complete before this
        yield b"last"

    middleware = WsgiMetricsMiddleware(app_returning(chunks()), monitor=http_monitor)
    assert Server().serve(middleware) == b"first last"
    count, response, duration = sizes(http_monitor)
    assert (count, response["sum"], duration["count"]) == (1, 10, 1)
    assert duration["sum"] >= 0.2


@pytest.mark.parametrize("removed", ["REQUEST_METHOD", "wsgi.url_scheme"])
def test_an_environ_that_loses_a_key_mid_request_is_still_recorded_once(
    http_monitor: PerformanceMonitor, removed: str
) -> None:
    """The key is read again at the last chunk (an application may rewrite it): gone by then, the defaults stand in
    and nothing raises into the server, for the first request of its series and for a later one."""

    def app(env: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        del env[removed]
        return Body([b"ab", b"c"])

    middleware = WsgiMetricsMiddleware(app, monitor=http_monitor)
    Server().serve(middleware)  # binds the series
    for _ in range(2):
        assert Server().serve(middleware, environ()) == b"abc"
    count, response, duration = sizes(http_monitor)
    assert (count, response["sum"], duration["count"]) == (3, 9, 3)
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0


def test_an_environ_without_method_or_scheme_counts_under_the_defaults(http_monitor: PerformanceMonitor) -> None:
    middleware = WsgiMetricsMiddleware(app_returning(Body([b"xy"])), monitor=http_monitor)
    for _ in range(2):
        assert Server().serve(middleware, {"PATH_INFO": "/x"}) == b"xy"
    assert sizes(http_monitor)[0] == 2
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0


def test_the_apps_body_is_closed_exactly_once(http_monitor: PerformanceMonitor) -> None:
    body = Body([b"a", b"bc"])
    middleware = WsgiMetricsMiddleware(app_returning(body), monitor=http_monitor)
    assert Server().serve(middleware) == b"abc"
    assert body.closed == 1
    assert sizes(http_monitor)[0] == 1


def test_a_body_closed_early_is_closed_once_and_counted_once(http_monitor: PerformanceMonitor) -> None:
    body = Body([b"a", b"bc", b"def"])
    middleware = WsgiMetricsMiddleware(app_returning(body), monitor=http_monitor)
    wrapped = middleware(environ(), Server().start_response)
    iterator = iter(wrapped)
    assert next(iterator) == b"a"
    wrapped.close()  # type: ignore[attr-defined] # the client went away (the iterator still exists)
    assert body.closed == 1
    count, response, _ = sizes(http_monitor)
    assert (count, response["sum"]) == (1, 1)
    del iterator  # its end now records nothing more
    assert sizes(http_monitor)[0] == 1
    assert http_monitor.snapshot().value("http_requests_in_flight") == 0


def test_an_exception_while_iterating_is_a_500_and_reraised_unchanged(http_monitor: PerformanceMonitor) -> None:
    body = Body([b"a", b"b"], fail_after=1)
    middleware = WsgiMetricsMiddleware(app_returning(body), monitor=http_monitor)
    with pytest.raises(LookupError, match="gone"):
        Server().serve(middleware)
    failed = {"method": "GET", "endpoint": "unmatched", "status": 500}
    assert http_monitor.snapshot().value("errors", {**failed, "error_type": "LookupError"}) == 1
    count, response, _ = sizes(http_monitor, failed)
    assert (count, response["sum"]) == (1, 1)
    assert sizes(http_monitor)[0] is None  # not also counted as a 200
    assert body.closed == 1


def test_bytes_given_to_write_count_as_sent(http_monitor: PerformanceMonitor) -> None:
    def app(env: Any, start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"12345")
        write(b"678")
        return [b"9"]

    server = Server()
    assert server.serve(WsgiMetricsMiddleware(app, monitor=http_monitor)) == b"123456789"
    assert sizes(http_monitor)[1]["sum"] == 9


def test_a_body_of_other_things_than_bytes_is_a_500_with_the_servers_error(http_monitor: PerformanceMonitor) -> None:
    middleware = WsgiMetricsMiddleware(app_returning([b"ok", 7]), monitor=http_monitor)
    body = middleware(environ(), Server().start_response)
    with pytest.raises(TypeError):
        b"".join(body)
    failed = {"method": "GET", "endpoint": "unmatched", "status": 500, "error_type": "TypeError"}
    assert http_monitor.snapshot().value("errors", failed) == 1


@pytest.mark.parametrize("line", ["200 OK", "200 Fine", "200"])
def test_any_status_line_of_a_status_counts_under_it(http_monitor: PerformanceMonitor, line: str) -> None:
    middleware = WsgiMetricsMiddleware(app_returning([b"x"], status=line), monitor=http_monitor)
    for _ in range(3):
        Server().serve(middleware)
    assert sizes(http_monitor)[0] == 3


def test_a_5xx_after_2xx_on_one_route_is_an_error_named_by_its_status(http_monitor: PerformanceMonitor) -> None:
    statuses = iter(["200 OK", "503 Service Unavailable", "200 OK", "503 Service Unavailable"])

    def app(env: Any, start_response: Any) -> list[bytes]:
        start_response(next(statuses), [])
        return [b"x"]

    middleware = WsgiMetricsMiddleware(app, monitor=http_monitor)
    for _ in range(4):
        Server().serve(middleware)
    unavailable = {"method": "GET", "endpoint": "unmatched", "status": 503}
    assert sizes(http_monitor)[0] == 2
    assert http_monitor.snapshot().value("api_requests", unavailable) == 2
    assert http_monitor.snapshot().value("errors", {**unavailable, "error_type": "503"}) == 2


def test_an_unreadable_status_line_is_recorded_as_500(http_monitor: PerformanceMonitor) -> None:
    middleware = WsgiMetricsMiddleware(app_returning([b"x"], status="teapot"), monitor=http_monitor)
    Server().serve(middleware)
    failed = {"method": "GET", "endpoint": "unmatched", "status": 500, "error_type": "500"}
    assert http_monitor.snapshot().value("errors", failed) == 1


def test_the_in_flight_gauge_is_read_at_collection_and_follows_configure(tmp_path: Any) -> None:
    code = textwrap.dedent(
        """
        import json
        import chat_turbo_metrics
        from chat_turbo_metrics import PerformanceMonitor
        from chat_turbo_metrics_http.wsgi import WsgiMetricsMiddleware

        seen = []

        def app(environ, start_response):
            start_response("200 OK", [])
            seen.append(PerformanceMonitor.get_instance().snapshot().value("http_requests_in_flight"))
            return [b"x"]

        def serve(app):
            app({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda status, headers, exc_info=None: None)

        middleware = WsgiMetricsMiddleware(app)  # before configure(): nothing is resolved until a request
        first = chat_turbo_metrics.configure(environment="test", metrics_exporters=())
        serve(middleware)
        old_pipeline = first.pipeline
        monitor = chat_turbo_metrics.configure(environment="test", metrics_exporters=())
        assert monitor.pipeline is not old_pipeline
        serve(middleware)
        serve(middleware)
        tags = {"method": "GET", "endpoint": "unmatched", "status": 200}
        print("REPORT " + json.dumps({
            "seen": seen,
            "after": monitor.snapshot().value("http_requests_in_flight"),
            "requests": monitor.snapshot().value("api_requests", tags),
        }))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    # Each reading is taken by the pipeline collecting it (the second and third by the new one).
    assert json.loads(line[len("REPORT ") :]) == {"seen": [1, 1, 1], "after": 0, "requests": 2}
