"""What one finished HTTP request records, through the process-wide monitor's front end.

Shared by the ASGI and WSGI middleware. Per request it costs a few dict lookups and the monitor's own
recording calls: the tag dicts are built once per (method, route, status, scheme) and reused, the monitor's
methods are looked up on every request so that ``configure()`` (which rebinds them to a new recorder) is
followed, and the instruments' units and buckets are declared again whenever the monitor's recorder changes.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from typing import Any

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics_http._settings import HttpMetricsSettings

_logger = logging.getLogger("chat_turbo_metrics_http")
_random = random.random

UNMATCHED = "unmatched"  # the one endpoint value of every request no route matched
OTHER_METHOD = "_OTHER"  # any method outside the standard set (semantic conventions' choice)
STANDARD_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
# Body sizes: 100 B to 10 MB in decades and halves; the SDK's default buckets stop at 10 kB.
SIZE_BUCKETS = (100.0, 1e3, 5e3, 1e4, 5e4, 1e5, 5e5, 1e6, 5e6, 1e7)
_CACHE_LIMIT = 10_000  # tag sets and templates kept; beyond, they are built per request (still bounded series)

DURATION, REQUESTS, ERRORS = "http_request_duration_seconds", "api_requests_total", "errors_total"
REQUEST_SIZE, RESPONSE_SIZE = "http_request_size_bytes", "http_response_size_bytes"
IN_FLIGHT, WEBSOCKETS = "http_requests_in_flight", "websocket_connections_active"
SC_DURATION, SC_ACTIVE = "http.server.request.duration", "http.server.active_requests"
SC_REQUEST_SIZE, SC_RESPONSE_SIZE = "http.server.request.body.size", "http.server.response.body.size"

# (name, kind, unit, description, buckets) declared on each recorder before first use.
_SEED_DEFINITIONS: tuple[tuple[str, Any, str | None, str, tuple[float, ...] | None], ...] = (
    (REQUEST_SIZE, "histogram", "By", "Size of HTTP request bodies received by the server.", SIZE_BUCKETS),
    (RESPONSE_SIZE, "histogram", "By", "Size of HTTP response bodies sent by the server.", SIZE_BUCKETS),
    (IN_FLIGHT, "gauge", None, "HTTP requests being handled right now.", None),
    (WEBSOCKETS, "gauge", None, "WebSocket connections open right now.", None),
)
_SEMCONV_DEFINITIONS: tuple[tuple[str, Any, str | None, str, tuple[float, ...] | None], ...] = (
    (SC_DURATION, "histogram", "s", "Duration of HTTP server requests.", None),
    (SC_REQUEST_SIZE, "histogram", "By", "Size of HTTP server request bodies.", SIZE_BUCKETS),
    (SC_RESPONSE_SIZE, "histogram", "By", "Size of HTTP server response bodies.", SIZE_BUCKETS),
    (SC_ACTIVE, "gauge", "{request}", "Number of active HTTP server requests.", None),
)
# Flask and Django write <converter:name>, Starlette {name:converter}; both become {name}.
_ANGLED = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
_BRACED = re.compile(r"\{([^{}:]+):[^{}]*\}")
_templates: dict[str, str] = {}

# Requests and websockets in flight in this process: append/pop are atomic, so threads need no lock.
_in_flight: list[None] = []
_websockets: list[None] = []


def route_template(route: str) -> str:
    """The endpoint value of a framework's route: ``/`` first, placeholders as ``{name}``.

    Args:
        route: a Starlette (``/m/{id:int}``), Flask (``/m/<int:id>``) or Django (``m/<int:id>``) route.

    Returns:
        ``/m/{id}`` for all three.

    Example:
        >>> route_template("api/messages/<int:id>")
        '/api/messages/{id}'
    """
    template = _templates.get(route)
    if template is None:
        template = _BRACED.sub(r"{\1}", _ANGLED.sub(r"{\1}", route if route.startswith("/") else "/" + route))
        if len(_templates) < _CACHE_LIMIT:
            _templates[route] = template
    return template


def normal_method(method: str) -> str:
    """``method`` if it is a standard HTTP method, else ``_OTHER`` (a bounded set of values)."""
    return method if method in STANDARD_METHODS else OTHER_METHOD


Observe = Callable[[float], None]
Series = Callable[[float, int, int], None]  # (duration, request bytes, response bytes) of one tag set


class Bound:
    """Handles on one recorder of the monitor: the series per tag set, the in-flight gauges.

    Rebuilt when ``configure()`` gives the monitor a new recorder, so recordings follow it; a request that
    started before keeps recording into the recorder it started with.
    """

    __slots__ = ("active", "errored", "marker", "monitor", "series", "websockets")

    def __init__(self, monitor: PerformanceMonitor, active_names: tuple[str, ...]) -> None:
        self.monitor = monitor
        self.marker = monitor.increment_counter  # replaced by configure(): how a new recorder is noticed
        self.series: dict[tuple[str, str, int, str], Series] = {}
        self.errored: dict[tuple[tuple[str, str, int, str], str], Series] = {}
        self.active = tuple(monitor.gauge(name).set for name in active_names)
        self.websockets = monitor.gauge(WEBSOCKETS).set


def _sampled(observe: Observe, rate: float) -> Observe:
    """The monitor samples histograms at ``sampling_rate``; a bound handle does not, so we do."""

    def sampled(value: float) -> None:
        if _random() < rate:
            observe(value)

    return sampled


class RequestMetrics:
    """Records finished requests into the monitor under the configured names.

    Each (method, endpoint, status, scheme) gets bound handles on the monitor's instruments once; a request
    then costs a dict lookup and one handle call per metric. Views, the cardinality limit and sampling apply
    as on every other recording of the monitor.

    Example:
        >>> metrics = RequestMetrics(HttpMetricsSettings(), monitor)
        >>> bound = metrics.started()
        >>> metrics.finish("GET", "/api/messages/{id}", 200, "http", 0.004, 0, 120, None, bound)
        >>> monitor.snapshot().value("api_requests", {"method": "GET", "endpoint": "/api/messages/{id}", "status": 200})
        1
    """

    def __init__(self, settings: HttpMetricsSettings, monitor: PerformanceMonitor | None = None) -> None:
        self.settings = settings
        self.skips = settings.is_excluded  # True for paths that are never measured
        self._fixed = monitor
        self._bound: Bound | None = None
        self._seed = settings.metric_names in ("seed", "both")
        self._semconv = settings.metric_names in ("semconv", "both")
        self._definitions = (_SEED_DEFINITIONS if self._seed else ()) + (_SEMCONV_DEFINITIONS if self._semconv else ())
        self._active_names = ((IN_FLIGHT,) if self._seed else ()) + ((SC_ACTIVE,) if self._semconv else ())

    def bound(self) -> Bound:
        """Handles on the monitor's current recorder: the one given, else the process-wide one."""
        monitor = self._fixed or PerformanceMonitor._instance or PerformanceMonitor.get_instance()
        bound = self._bound
        if bound is None or bound.monitor is not monitor or bound.marker is not monitor.increment_counter:
            bound = self._bind(monitor)
        return bound

    def _bind(self, monitor: PerformanceMonitor) -> Bound:
        for name, kind, unit, description, buckets in self._definitions:
            try:
                monitor.define(name, kind, unit=unit, description=description, buckets=buckets)
            except ValueError as error:  # the application defined it its own way first: keep theirs
                _logger.debug("keeping the application's definition of %s: %s", name, error)
        bound = self._bound = Bound(monitor, self._active_names)
        return bound

    # --- in flight ------------------------------------------------------------------------------
    def started(self) -> Bound:
        """Count a request in flight; the handles to record its end with."""
        bound = self.bound()
        _in_flight.append(None)
        count = len(_in_flight)
        for set_active in bound.active:
            set_active(count)
        return bound

    def websocket_opened(self) -> Bound:
        """Count an open WebSocket connection."""
        bound = self.bound()
        _websockets.append(None)
        bound.websockets(len(_websockets))
        return bound

    def websocket_closed(self, bound: Bound) -> None:
        """A WebSocket connection closed."""
        _websockets.pop()
        bound.websockets(len(_websockets))

    # --- the finished request -------------------------------------------------------------------
    def finish(  # noqa: PLR0917 - called per request; positional arguments are the cheapest to pass
        self,
        method: str,
        endpoint: str,
        status: int,
        scheme: str,
        duration: float,
        received: int,
        sent: int,
        error_type: str | None,
        bound: Bound,
    ) -> None:
        """A request :meth:`started` is over: no longer in flight, and recorded.

        Args:
            method: the request method (anything outside the standard set is recorded as ``_OTHER``).
            endpoint: the route template, or :data:`UNMATCHED`.
            status: the response status (500 when the application raised).
            scheme: ``http`` or ``https``.
            duration: seconds from the request's arrival to its last body chunk.
            received: request body bytes.
            sent: response body bytes.
            error_type: the exception's class name when the application raised; None otherwise.
            bound: what :meth:`started` returned for this request.
        """
        _in_flight.pop()
        count = len(_in_flight)
        for set_active in bound.active:
            set_active(count)
        key = (method, endpoint, status, scheme)
        if error_type is None and status < 500:
            series = bound.series.get(key)
            if series is None:
                series = self._new_series(bound, key, None)
            series(duration, received, sent)
            return
        why = error_type or str(status)  # the conventions' error.type: the exception's class, else the status
        series = bound.errored.get((key, why)) or self._new_series(bound, key, why)
        series(duration, received, sent)

    def _new_series(self, bound: Bound, key: tuple[str, str, int, str], why: str | None) -> Series:
        method, endpoint, status, scheme = key
        method = normal_method(method)
        parts: list[Series] = []
        monitor = bound.monitor
        rate = monitor.config.sampling_rate
        if self._seed:
            tags = {"method": method, "endpoint": endpoint, "status": status}
            errors = monitor.counter(ERRORS, {**tags, "error_type": why}).inc if why is not None else None
            parts.append(_seed_series(monitor, tags, rate, errors))
        if self._semconv:
            semconv: dict[str, Any] = {"http.request.method": method, "url.scheme": scheme}
            semconv["http.response.status_code"] = status
            if endpoint != UNMATCHED:  # the conventions leave http.route out when no route matched
                semconv["http.route"] = endpoint
            if why is not None:
                semconv["error.type"] = why
            parts.append(_semconv_series(monitor, semconv, rate))
        series = parts[0] if len(parts) == 1 else _both(*parts)
        cache: dict[Any, Series] = bound.series if why is None else bound.errored
        if len(cache) < _CACHE_LIMIT:
            cache[key if why is None else (key, why)] = series
        return series


def _histogram(monitor: PerformanceMonitor, name: str, tags: dict[str, Any], rate: float) -> Observe:
    observe = monitor.histogram(name, tags).observe
    return observe if rate >= 1.0 else _sampled(observe, rate)


def _seed_series(
    monitor: PerformanceMonitor, tags: dict[str, Any], rate: float, errors: Callable[[], None] | None
) -> Series:
    duration = _histogram(monitor, DURATION, tags, rate)
    requests = monitor.counter(REQUESTS, tags).inc
    request_size = _histogram(monitor, REQUEST_SIZE, tags, rate)
    response_size = _histogram(monitor, RESPONSE_SIZE, tags, rate)

    def record(seconds: float, received: int, sent: int) -> None:
        duration(seconds)
        requests()
        request_size(received)
        response_size(sent)

    if errors is None:
        return record

    def record_error(seconds: float, received: int, sent: int) -> None:
        record(seconds, received, sent)
        errors()

    return record_error


def _semconv_series(monitor: PerformanceMonitor, tags: dict[str, Any], rate: float) -> Series:
    duration = _histogram(monitor, SC_DURATION, tags, rate)
    request_size = _histogram(monitor, SC_REQUEST_SIZE, tags, rate)
    response_size = _histogram(monitor, SC_RESPONSE_SIZE, tags, rate)

    def record(seconds: float, received: int, sent: int) -> None:
        duration(seconds)
        request_size(received)
        response_size(sent)

    return record


def _both(first: Series, second: Series) -> Series:
    def record(seconds: float, received: int, sent: int) -> None:
        first(seconds, received, sent)
        second(seconds, received, sent)

    return record
