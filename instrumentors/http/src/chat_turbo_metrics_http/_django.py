"""Django: every request through ``BaseHandler.get_response`` (WSGI servers and the test client) is measured.

The route template is ``request.resolver_match.route`` (``api/messages/<int:id>`` becomes
``/api/messages/{id}``); an exception Django turns into a 500 response is named by the
``got_request_exception`` signal. Streaming responses are measured to their last chunk. Django served by
an ASGI server (uvicorn, daphne: ``get_response_async``) is measured the same way by :func:`patch_django_asgi`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http._metrics import (
    UNMATCHED,
    RequestMetrics,
    _in_flight,
    _new_in_flight,
    _templates,
    route_template,
)
from chat_turbo_metrics_http.wsgi import ERROR_TYPE, MEASURED, content_length

_perf_counter = time.perf_counter
# The module the patches wait for: Django's BaseHandler, loaded by its WSGI and ASGI handlers and its test client
# (``import django`` alone does not load it; nothing is patched before a request can be handled either).
HANDLER_MODULE = "django.core.handlers.base"


def _store_error(sender: Any, request: Any = None, **extra: Any) -> None:
    """Sent inside Django's ``except`` block: the exception is the one being handled."""
    error = sys.exc_info()[1]
    if request is not None and error is not None:
        request.META[ERROR_TYPE] = type(error).__name__


def measure(metrics: RequestMetrics, get_response: Callable[[Any], Any], request: Any) -> Any:
    """Handle ``request`` with ``get_response``, measured unless excluded or measured further out.

    Args:
        metrics: where to record.
        get_response: Django's handler (or the rest of the middleware chain).
        request: the ``HttpRequest``.

    Returns:
        The response (a streaming one records at its last chunk).
    """
    meta = request.META
    if MEASURED in meta or (metrics.excludes and metrics.skips(request.path_info)):
        return get_response(request)
    scheme = request.scheme or "http"  # read once: Django's reads a setting through LazySettings on every access
    meta[MEASURED] = (metrics.started(request.method or "GET", scheme), scheme)  # its requests in flight, its scheme
    start = _perf_counter()
    try:
        response = get_response(request)
    except BaseException as error:
        _finish(metrics, request, 500, start, 0, type(error).__name__)
        raise  # unchanged
    if response.streaming:
        chunks = response.streaming_content
        response.streaming_content = _measured_stream(metrics, request, response.status_code, chunks, start)
    else:
        _finish(metrics, request, response.status_code, start, len(response.content), None)
    return response


def connect_errors(uid: str) -> None:
    """Name the exceptions Django turns into 500 responses (``errors_total{error_type=...}``)."""
    from django.core.signals import got_request_exception

    got_request_exception.connect(_store_error, weak=False, dispatch_uid=uid)


def patch_django(metrics: RequestMetrics) -> Callable[[], None]:
    """Measure every Django request from now on.

    Args:
        metrics: where to record.

    Returns:
        A function that restores Django as it was.
    """
    from django.core.handlers.base import BaseHandler
    from django.core.signals import got_request_exception

    original = BaseHandler.__dict__["get_response"]

    def get_response(self: Any, request: Any) -> Any:
        return measure(metrics, original.__get__(self), request)

    get_response.__wrapped__ = original  # type: ignore[attr-defined]
    BaseHandler.get_response = get_response
    connect_errors("chat_turbo_metrics_http.instrumentor")

    def undo() -> None:
        BaseHandler.get_response = original
        got_request_exception.disconnect(dispatch_uid="chat_turbo_metrics_http.instrumentor")

    return undo


def _measured_stream(
    metrics: RequestMetrics, request: Any, status: int, chunks: Iterable[bytes], start: float
) -> Iterator[bytes]:
    sent = 0
    error_type = None
    try:
        for chunk in chunks:
            sent += len(chunk)
            yield chunk
    except GeneratorExit:  # closed before the end (the client went away): still one request
        raise
    except BaseException as error:
        error_type = type(error).__name__
        raise
    finally:
        _finish(metrics, request, status, start, sent, error_type)


def _finish(  # noqa: PLR0917 - one call site, called per request
    metrics: RequestMetrics,
    request: Any,
    status: int,
    start: float,
    sent: int,
    error_type: str | None,
) -> None:
    end = _perf_counter()
    meta = request.META
    flight, scheme = meta[MEASURED]  # what the request started with
    if error_type is not None:
        status = 500
    elif status >= 500:
        error_type = meta.get(ERROR_TYPE)
    received = content_length(meta) if "CONTENT_LENGTH" in meta else 0
    method = request.method or "GET"
    metrics.finish(method, endpoint_of(request), status, scheme, end - start, received, sent, error_type, flight)


def endpoint_of(request: Any) -> str:
    """The template of the URL pattern Django resolved ``request`` to (``resolver_match.route``), or unmatched."""
    try:
        route = request.resolver_match.route
    except AttributeError:  # none matched: resolver_match is None
        return UNMATCHED
    return (_templates.get(route) or route_template(route)) if isinstance(route, str) and route else UNMATCHED


def measured_get_response_async(
    metrics: RequestMetrics, original: Callable[[Any, Any], Awaitable[Any]]
) -> Callable[[Any, Any], Awaitable[Any]]:
    """``BaseHandler.get_response_async`` (``original``) measured as :func:`measure` measures ``get_response``.

    A coroutine function of its own, not a function returning one: Django awaits the measuring coroutine directly,
    with no frame of ours in between (ASGI's target is tight: each frame costs 0.1 to 0.3 µs of the 4 a request).
    """
    from django.conf import settings

    # Django's request.scheme reads settings.SECURE_PROXY_SSL_HEADER through LazySettings (0.3 µs a request).
    # LazySettings keeps every setting read in its instance dict, which it empties whenever a setting changes
    # (assignment, override_settings): read there, the value is the one request.scheme would read.
    read_settings = vars(settings)
    # Django's ASGIRequest, whose scheme without a proxy header is the scope's. Found at the first request, not
    # here: BaseHandler is patched as it is imported, which may be half-way through importing the ASGI handler.
    asgi_request: Any = None

    async def get_response_async(self: Any, request: Any) -> Any:
        nonlocal asgi_request
        meta = request.META
        if MEASURED in meta or (metrics.excludes and metrics.skips(request.path_info)):
            return await original(self, request)
        if type(request) is asgi_request and not read_settings.get("SECURE_PROXY_SSL_HEADER", True):
            scheme = request.scope.get("scheme") or "http"  # what ASGIRequest.scheme returns without a proxy header
        else:  # a proxy header set (or the setting not read yet), or a request class of the project's: Django's way
            scheme = request.scheme or "http"
            if asgi_request is None:
                asgi_request = _asgi_request_class()
        # metrics.started(), inline (ASGI's target is tight; the sync path calls it): the requests in flight it
        # counts among (per method and scheme), and its scheme.
        kind = (request.method or "GET", scheme)
        flight = _in_flight.get(kind)
        if flight is None:
            flight = _new_in_flight(*kind)
        flight.append(None)
        if metrics._bound is None:  # the first request: the monitor reads the gauges from now on
            metrics.bound()
        meta[MEASURED] = (flight, scheme)
        start = _perf_counter()
        try:
            response = await original(self, request)
        except BaseException as error:  # a cancellation (the client went away) too
            _finish(metrics, request, 500, start, 0, type(error).__name__)
            raise  # unchanged
        if response.streaming:
            chunks, status = response.streaming_content, response.status_code
            measured = _measured_async_stream if getattr(response, "is_async", False) else _measured_stream
            response.streaming_content = measured(metrics, request, status, chunks, start)
            return response
        # _finish()'s common case inline (a frame less and META not read again: ASGI's target is tight): a response
        # below 500 whose series is bound to the current recorder. Anything else goes through _finish().
        end = _perf_counter()
        status, sent = response.status_code, len(response.content)
        bound = metrics._bound
        monitor = metrics._fixed or PerformanceMonitor._instance
        if status < 500 and bound is not None and bound.monitor is monitor and bound.marker is monitor._recorder:
            try:  # endpoint_of(request), inline
                route = request.resolver_match.route
            except AttributeError:  # none matched: resolver_match is None
                route = None
            endpoint = UNMATCHED
            if isinstance(route, str) and route:
                endpoint = _templates.get(route) or route_template(route)
            series = bound.series.get((request.method or "GET", endpoint, status, scheme))
            if series is not None:
                flight.pop()
                series(end - start, content_length(meta) if "CONTENT_LENGTH" in meta else 0, sent)
                return response
        _finish(metrics, request, status, start, sent, None)
        return response

    get_response_async.__wrapped__ = original  # type: ignore[attr-defined]
    return get_response_async


def _asgi_request_class() -> Any:
    """Django's ``ASGIRequest``: asked for while a request is handled, when the ASGI handler's module is whole."""
    from django.core.handlers.asgi import ASGIRequest

    return ASGIRequest


async def _measured_async_stream(
    metrics: RequestMetrics, request: Any, status: int, chunks: AsyncIterator[bytes], start: float
) -> AsyncIterator[bytes]:
    sent = 0
    error_type = None
    try:
        async for chunk in chunks:
            sent += len(chunk)
            yield chunk
    except GeneratorExit:  # closed before the end (the client went away): still one request
        raise
    except BaseException as error:
        error_type = type(error).__name__
        raise
    finally:
        _finish(metrics, request, status, start, sent, error_type)


def patch_django_asgi(metrics: RequestMetrics) -> Callable[[], None]:
    """Measure every Django request served through ASGI from now on; returns the undo."""
    from django.core.handlers.base import BaseHandler
    from django.core.signals import got_request_exception

    original = BaseHandler.__dict__["get_response_async"]
    BaseHandler.get_response_async = measured_get_response_async(metrics, original)
    connect_errors("chat_turbo_metrics_http.asgi_instrumentor")

    def undo() -> None:
        BaseHandler.get_response_async = original
        got_request_exception.disconnect(dispatch_uid="chat_turbo_metrics_http.asgi_instrumentor")

    return undo
