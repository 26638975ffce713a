"""HTTP metrics for WSGI applications: a middleware, and an instrumentor for every Flask and Django app.

After ``WsgiMetricsInstrumentor().instrument()``, ``Flask.wsgi_app`` and Django's
``BaseHandler.get_response`` measure every request of every application (created before or after), with
no code change; ``uninstrument()`` restores them. The endpoint is the route template the framework matched
(Flask's ``url_rule``, Django's ``resolver_match.route``); requests no route matched share ``unmatched``.

``instrument()`` imports neither framework: each is patched when the application imports it (Flask at
``import flask``, Django when it loads its request handler, ``django.core.handlers.base``), at once if it has.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.instrumentation import FLOAT_MAX, when_imported
from chat_turbo_metrics_http._metrics import (
    _CACHE_LIMIT,
    UNMATCHED,
    Flight,
    RequestMetrics,
    _in_flight,
    _new_in_flight,
    _templates,
    route_template,
)
from chat_turbo_metrics_http._settings import MEASURE_NOTHING, usable_settings

Environ = MutableMapping[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

MEASURED = "chat_turbo_metrics.measured"  # environ key: an outer middleware of ours measures this request
ERROR_TYPE = "chat_turbo_metrics.error_type"  # environ key: the exception a framework turned into a 500
ROUTE = "chat_turbo_metrics.route"  # environ key: the route template, for frameworks that do not keep it
_perf_counter = time.perf_counter
_COMPLETE = frozenset((list, tuple))  # bodies complete when the application returns them (exact types)


def route_of(environ: Environ) -> str:
    """The route template the framework matched for this request (Flask/Werkzeug, or set under ``ROUTE``)."""
    request = environ.get("werkzeug.request")  # Werkzeug's Request registers itself in the environ
    if request is not None:
        rule = getattr(request, "url_rule", None)
        return (_templates.get(rule.rule) or route_template(rule.rule)) if rule is not None else UNMATCHED
    route = environ.get(ROUTE)
    return route if isinstance(route, str) else UNMATCHED


def content_length(headers: Mapping[str, Any]) -> int:
    """The request body size the client announced (``CONTENT_LENGTH``), 0 when absent or bad.

    Always an ``int`` in ``0 <= size < FLOAT_MAX``: the recording does not check it again.
    """
    length = headers.get("CONTENT_LENGTH")
    if not length:
        return 0
    try:
        size = int(length)
    except ValueError:
        return 0
    return size if 0 < size < FLOAT_MAX else 0


class _Exchange:
    """One measured request: its ``start_response`` and ``write``, and its body, which records at the last chunk.

    It has no ``__init__``: :meth:`_MeasuredApp.__call__` sets the fields, which saves a call frame per request.
    Slots, every one set before it is read: a read that found its value on the class (a default) took the
    interpreter's generic attribute path, several times dearer inside a framework's request.
    """

    __slots__ = (
        "body",
        "done",
        "environ",
        "flight",
        "metrics",
        "respond",
        "route",
        "sent",
        "start",
        "status",
        "written",
    )

    metrics: _WsgiMetrics
    environ: Environ
    respond: StartResponse  # the server's start_response
    written: Callable[[bytes], Any]  # the server's write (set by start_response)
    body: Iterable[bytes]  # (set when the application returns it)
    start: float
    flight: Flight  # the requests in flight it counts among
    status: str  # the status line, "" until start_response
    route: str  # the endpoint, "" until start_response
    sent: int
    done: bool

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        self.status = status
        # Flask drops the request from the environ when its context ends, after this call, before the body.
        # route_of(), its common case inline: a frame less per request, no get() or getattr() call.
        try:
            rule = self.environ["werkzeug.request"].url_rule
        except (KeyError, AttributeError):  # not Werkzeug's: route_of() reads what else the environ holds
            rule = None
        self.route = (
            (_templates.get(rule.rule) or route_template(rule.rule)) if rule is not None else route_of(self.environ)
        )
        self.written = self.respond(status, headers, exc_info)
        return self  # the write() callable: the exchange itself, no bound method made per request

    def __call__(self, data: bytes) -> None:
        """PEP 3333's imperative ``write()``: its bytes count as body bytes sent."""
        self.sent += len(data)
        self.written(data)

    write = __call__

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.body:
                self.sent += len(chunk)  # here, not in a local: close() may come before this generator ends
                yield chunk
        except GeneratorExit:  # the server stopped iterating; close() records
            raise
        except BaseException as error:
            self.metrics.finish_exchange(self, type(error).__name__)
            raise
        # The duration runs to the last body chunk. The common case (a series already bound, nothing closed
        # first) is finish_exchange() inline: inside a framework's request every call frame of ours costs.
        metrics = self.metrics
        bound = metrics._bound
        monitor = metrics._fixed or PerformanceMonitor._instance
        if self.done or bound is None or bound.monitor is not monitor or bound.marker is not monitor._recorder:
            metrics.finish_exchange(self, None)
            return
        environ = self.environ  # read now: an application may have rewritten the method or the scheme
        try:  # subscripts, not get(): a method call each; an environ short of PEP 3333's keys takes the long way
            series = bound.lines[environ["REQUEST_METHOD"], self.route, self.status, environ["wsgi.url_scheme"]]
        except KeyError:  # a series not found by its status line yet, or an odd environ
            metrics.finish_exchange(self, None)
            return
        self.done = True
        self.flight.pop()
        series(_perf_counter() - self.start, content_length(environ) if "CONTENT_LENGTH" in environ else 0, self.sent)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            if not self.done:
                self.metrics.finish_exchange(self, None)


class _WsgiMetrics(RequestMetrics):
    """:class:`RequestMetrics` that finish an :class:`_Exchange`, finding its series by the status line."""

    def finish_exchange(self, exchange: _Exchange, error_type: str | None) -> None:
        """The request of ``exchange`` is over: recorded once, whatever calls this later.

        Args:
            exchange: the request.
            error_type: the class name of the exception that ended it, or None.
        """
        if exchange.done:
            return
        exchange.done = True
        duration = _perf_counter() - exchange.start
        environ = exchange.environ
        received = content_length(environ) if "CONTENT_LENGTH" in environ else 0
        key = (
            environ.get("REQUEST_METHOD", "GET"),
            exchange.route or route_of(environ),
            exchange.status,
            environ.get("wsgi.url_scheme", "http"),
        )
        if error_type is None:
            bound = self._bound
            monitor = self._fixed or PerformanceMonitor._instance
            if bound is None or bound.monitor is not monitor or bound.marker is not monitor._recorder:
                bound = self.bound()
            series = bound.lines.get(key)
            if series is not None:
                exchange.flight.pop()
                series(duration, received, exchange.sent)
                return
        self._finish_parsed(key, duration, received, exchange.sent, error_type, exchange)

    def _finish_parsed(  # noqa: PLR0917 - one call site
        self,
        key: tuple[str, str, str, str],
        duration: float,
        received: int,
        sent: int,
        error_type: str | None,
        exchange: _Exchange,
    ) -> None:
        """:meth:`finish` from a status line: a 5xx is an error named by the exception the framework caught."""
        method, route, line, scheme = key
        try:
            status = int(line[:3])
        except (TypeError, ValueError):
            status = 500
        if error_type is not None:
            status = 500
        elif status >= 500:
            error_type = exchange.environ.get(ERROR_TYPE)
        self.finish(method, route, status, scheme, duration, received, sent, error_type, exchange.flight)
        if error_type is None and status < 500:  # found by its status line from now on
            bound = self.bound()
            series = bound.series.get((method, route, status, scheme))
            if series is not None and len(bound.lines) < _CACHE_LIMIT:
                bound.lines[key] = series


class _MeasuredApp:
    """A WSGI application, measured: what :class:`WsgiMetricsMiddleware` is, and each Flask application's
    ``wsgi_app`` after ``instrument()``. Its ``__call__`` is the whole measured path, so a request goes from the
    server (or ``Flask.__call__``) straight into it: no function of ours between it and the application.
    """

    __slots__ = ("_metrics", "app")

    app: WSGIApp
    _metrics: _WsgiMetrics

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Run one request through the application, measured unless excluded or measured further out.

        Returns:
            The application's body, wrapped to record when its last chunk is sent (or it is closed); a list or
            tuple, complete when the application returns, is recorded then and returned as it is.
        """
        metrics = self._metrics
        if MEASURED in environ or (metrics.excludes and metrics.skips(environ.get("PATH_INFO", ""))):
            return self.app(environ, start_response)
        environ[MEASURED] = True
        # metrics.started(), inline; subscripts, not get(): a method call each
        try:
            flight = _in_flight[environ["REQUEST_METHOD"], environ["wsgi.url_scheme"]]
        except KeyError:  # the first request of its kind, a method outside the standard set, an odd environ
            flight = _new_in_flight(environ.get("REQUEST_METHOD", "GET"), environ.get("wsgi.url_scheme", "http"))
        flight.append(None)
        if metrics._bound is None:
            metrics.bound()
        exchange = _Exchange()
        exchange.metrics = metrics
        exchange.environ = environ
        exchange.respond = start_response
        exchange.flight = flight
        exchange.status = exchange.route = ""
        exchange.sent = 0
        exchange.done = False
        exchange.start = _perf_counter()
        try:
            body = exchange.body = self.app(environ, exchange.start_response)
        except BaseException as error:
            metrics.finish_exchange(exchange, type(error).__name__)
            raise  # unchanged
        if body.__class__ in _COMPLETE:  # a list or tuple: nothing left to wait for, nothing to close
            try:
                exchange.sent += sum(map(len, body))
            except TypeError:  # not bytes: the server will say so; measure it as any other body
                return exchange
            metrics.finish_exchange(exchange, None)
            return body
        return exchange


class WsgiMetricsMiddleware(_MeasuredApp):
    """Measures every request of the WSGI application it wraps.

    Records through the process-wide :class:`~chat_turbo_metrics.PerformanceMonitor` (or ``monitor``) the
    same metrics as :class:`~chat_turbo_metrics_http.asgi.AsgiMetricsMiddleware`. The request size is the
    announced ``Content-Length``; the response size counts the bytes of the body iterable.

    Example:
        >>> from flask import Flask
        >>> app = Flask("chat")
        >>> app.wsgi_app = WsgiMetricsMiddleware(app.wsgi_app, excluded_paths=["/health"])

    Args:
        app: the WSGI application.
        excluded_paths: paths (``/health``) or prefixes (``/static/*``) never measured.
        metric_names: ``seed``, ``semconv`` or ``both`` (default: ``CHAT_TURBO_HTTP_METRIC_NAMES``, else
            ``OTEL_SEMCONV_STABILITY_OPT_IN``: ``http`` is ``semconv``, ``http/dup`` is ``both``, unset ``seed``).
        monitor: record into this monitor instead of the process-wide one.
        environ: read defaults from this mapping instead of ``os.environ``.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        excluded_paths: Iterable[str] | str | None = None,
        metric_names: str | None = None,
        monitor: PerformanceMonitor | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        settings = usable_settings(excluded_paths, metric_names, environ)  # None: a bad variable, logged
        self._metrics = _WsgiMetrics(settings or MEASURE_NOTHING, monitor)
        _connect_flask_errors()


class WsgiMetricsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Measures every Flask and Django application: ``opentelemetry_instrumentor`` entry point ``chat_turbo_wsgi``.

    Example:
        >>> from flask import Flask
        >>> WsgiMetricsInstrumentor().instrument(excluded_paths=["/health"])
        >>> app = Flask("chat")  # measured, no code change
        >>> WsgiMetricsInstrumentor().uninstrument()

    ``instrument()`` takes ``excluded_paths``, ``metric_names`` and ``monitor`` like
    :class:`WsgiMetricsMiddleware`; under ``opentelemetry-instrument`` they come from the environment.
    """

    _undo: list[Callable[[], None]] = []  # noqa: RUF012 - what uninstrument() restores

    def instrumentation_dependencies(self) -> Collection[str]:
        """Flask or Django, whichever is installed (either is enough)."""
        found = tuple(spec for name, spec in _FRAMEWORKS if importlib.util.find_spec(name) is not None)
        return found[:1] or (_FRAMEWORKS[0][1],)

    def _instrument(self, **kwargs: Any) -> None:
        settings = usable_settings(kwargs.get("excluded_paths"), kwargs.get("metric_names"), kwargs.get("environ"))
        if settings is None:  # a bad variable, logged: the frameworks are left as they are
            return
        from chat_turbo_metrics_http._django import HANDLER_MODULE, patch_django  # imports this module (not Django)

        metrics = _WsgiMetrics(settings, kwargs.get("monitor"))
        # Each framework is patched when the application imports it (now, if it has): none is imported here.
        WsgiMetricsInstrumentor._undo.append(when_imported("flask", lambda flask: _patch_flask(flask, metrics)))
        WsgiMetricsInstrumentor._undo.append(when_imported(HANDLER_MODULE, lambda base: patch_django(metrics)))

    def _uninstrument(self, **kwargs: Any) -> None:
        while WsgiMetricsInstrumentor._undo:
            WsgiMetricsInstrumentor._undo.pop()()


_FRAMEWORKS = (("flask", "flask >= 2.2"), ("django", "django >= 3.2"))


def _patch_flask(flask: ModuleType, metrics: _WsgiMetrics) -> Callable[[], None]:
    patch = _FlaskWsgiApp(flask.Flask.__dict__["wsgi_app"], metrics)
    flask.Flask.wsgi_app = patch
    _connect_flask_errors()
    return patch.undo


class _FlaskWsgiApp:
    """``Flask.wsgi_app`` while instrumented: an application's ``wsgi_app`` is a :class:`_MeasuredApp` of its own,
    made on first use and kept in the application's ``__dict__``, where ``Flask.__call__`` finds it from then on.
    A subclass's override of ``wsgi_app`` (calling ``super().wsgi_app``) keeps working: nothing is kept then.
    """

    def __init__(self, original: Callable[..., Iterable[bytes]], metrics: _WsgiMetrics) -> None:
        self.__wrapped__ = original
        self.metrics = metrics
        self.apps: weakref.WeakSet[Any] = weakref.WeakSet()  # applications whose __dict__ holds theirs

    def __get__(self, app: Any, owner: type | None = None) -> Any:
        if app is None:
            return self
        measured = _MeasuredApp()
        measured.app = self.__wrapped__.__get__(app, owner)
        measured._metrics = self.metrics
        if next(klass.__dict__["wsgi_app"] for klass in type(app).__mro__ if "wsgi_app" in klass.__dict__) is self:
            app.__dict__["wsgi_app"] = measured
            self.apps.add(app)
        return measured

    def undo(self) -> None:
        """Restore ``Flask.wsgi_app``, and every application's that this patch made."""
        import flask

        flask.Flask.wsgi_app = self.__wrapped__  # type: ignore[method-assign]
        for app in list(self.apps):
            kept = app.__dict__.get("wsgi_app")
            if isinstance(kept, _MeasuredApp) and kept._metrics is self.metrics:
                del app.__dict__["wsgi_app"]


def _flask_error(sender: Any, exception: BaseException, **extra: Any) -> None:
    """Flask turns an unhandled exception into a 500 response (or re-raises it after its context ended): keep
    its type for ``errors_total``, and the route while the request still knows it."""
    import flask

    environ = flask.request.environ
    environ[ERROR_TYPE] = type(exception).__name__
    environ[ROUTE] = route_of(environ)


def _connect_flask_errors() -> None:
    flask = sys.modules.get("flask")  # a Flask application has imported it by now; others need not pay for it
    if flask is None:
        return
    flask.got_request_exception.connect(_flask_error, weak=False)  # idempotent: one receiver, however often
