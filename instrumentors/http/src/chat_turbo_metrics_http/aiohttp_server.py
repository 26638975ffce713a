"""HTTP metrics for aiohttp's server: every ``aiohttp.web.Application``, with the route template it resolved.

After ``AiohttpServerInstrumentor().instrument()``, ``Application._handle`` (what aiohttp's server calls per request
once the application is started) measures each request: the endpoint is the canonical path of the resource the
router matched (``/users/{id}``, sub-applications' prefixes included), ``unmatched`` for a 404 or 405.
``instrument()`` does not import aiohttp: ``Application`` is patched when the application imports it
(``aiohttp.web_app``, which ``from aiohttp import web`` loads), or at once if it already has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics.instrumentation import when_imported
from chat_turbo_metrics_http._metrics import UNMATCHED, RequestMetrics, route_template
from chat_turbo_metrics_http._settings import usable_settings

_perf_counter = time.perf_counter


def endpoint_of(request: Any) -> str:
    """The canonical path of the resource aiohttp's router matched, or ``unmatched``."""
    try:
        info = request.match_info
        if info.http_exception is not None:
            return UNMATCHED
        resource = info.route.resource
    except Exception:  # the request failed before the router resolved it
        return UNMATCHED
    canonical = getattr(resource, "canonical", None)
    return route_template(canonical) if isinstance(canonical, str) and canonical else UNMATCHED


def _sent(response: Any, plain: Any) -> int:
    """Response body bytes: a ``Response``'s body, a ``StreamResponse``'s declared ``Content-Length`` (else 0: what
    aiohttp counts for a stream it wrote includes the headers and the chunked framing).

    Args:
        response: what the handler returned.
        plain: ``aiohttp.web.Response``. Its ``content_length`` asks whether the body is a ``Payload``, an abstract
            class whose check costs more than the rest of this function: a plain ``Response`` with a ``bytes`` body
            (not chunked, no ``Content-Length`` set, so not compressed either) gives the same answer, ``len(body)``.
    """
    if response.__class__ is plain and not response.chunked:
        body = response.body
        if body.__class__ is bytes and "Content-Length" not in response.headers:
            return len(body)
    length = response.content_length
    return int(length) if isinstance(length, int) and length > 0 else 0


class AiohttpServerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Measures every aiohttp server application: entry point ``chat_turbo_aiohttp_server``.

    Example:
        >>> from aiohttp import web
        >>> AiohttpServerInstrumentor().instrument(excluded_paths=["/health"])
        >>> app = web.Application()  # measured once served, no code change
        >>> AiohttpServerInstrumentor().uninstrument()

    Records what :class:`~chat_turbo_metrics_http.asgi.AsgiMetricsMiddleware` records. The duration runs from the
    request's arrival (its headers read) to the handler's return: a ``web.Response``'s body is written after it,
    a ``StreamResponse`` the handler wrote is inside it. An ``HTTPException`` the handler raised is recorded with
    its status; any other exception as a 500 with its class as ``error_type``. The response size of a streamed
    response without a ``Content-Length`` is recorded as 0.
    """

    _switch: list[bool] = [False]  # noqa: RUF012 - off: servers started while instrumented pass requests through
    _undo: list[Callable[[], None]] = []  # noqa: RUF012 - what uninstrument() restores

    def instrumentation_dependencies(self) -> Collection[str]:
        """aiohttp."""
        return ("aiohttp >= 3.8",)

    def _instrument(self, **kwargs: Any) -> None:
        settings = usable_settings(kwargs.get("excluded_paths"), kwargs.get("metric_names"), kwargs.get("environ"))
        if settings is None:  # a bad variable, logged: applications are left as they are
            return
        metrics = RequestMetrics(settings, kwargs.get("monitor"))
        switch = AiohttpServerInstrumentor._switch = [True]
        # aiohttp's server is patched when the application imports it (now, if it has).
        undo = when_imported(WEB_APP, lambda module: _patch_application(module, metrics, switch))
        AiohttpServerInstrumentor._undo.append(undo)

    def _uninstrument(self, **kwargs: Any) -> None:
        AiohttpServerInstrumentor._switch[0] = False
        while AiohttpServerInstrumentor._undo:
            AiohttpServerInstrumentor._undo.pop()()


WEB_APP = "aiohttp.web_app"  # where Application is defined (it imports web_exceptions and web_response first)


def _patch_application(module: ModuleType, metrics: RequestMetrics, switch: list[bool]) -> Callable[[], None]:
    """Measure every request of every ``Application`` from now on; returns the undo."""
    from aiohttp.web_exceptions import HTTPException  # loaded before web_app (it imports from there)
    from aiohttp.web_response import Response

    application = module.Application
    original = application.__dict__["_handle"]
    http_exception, plain = HTTPException, Response

    async def _handle(app: Any, request: Any) -> Any:
        if not switch[0] or (metrics.excludes and metrics.skips(request.path)):
            return await original(app, request)
        method, scheme = request.method, request.scheme  # read once: properties
        flight = metrics.started(method, scheme)
        start = _perf_counter()
        status, sent, error_type = 500, 0, None
        try:
            response = await original(app, request)
            status, sent = response.status, _sent(response, plain)
            return response
        except http_exception as error:  # aiohttp answers with its status
            status = error.status
            raise
        except BaseException as error:  # aiohttp answers 500; a cancellation: the client went away
            error_type = type(error).__name__
            raise
        finally:
            metrics.finish(
                method,
                endpoint_of(request),
                status,
                scheme,
                _perf_counter() - start,
                request.content_length or 0,
                sent,
                error_type,
                flight,
            )

    _handle.__wrapped__ = original  # type: ignore[attr-defined]
    application._handle = _handle

    def undo() -> None:
        application._handle = original

    return undo
