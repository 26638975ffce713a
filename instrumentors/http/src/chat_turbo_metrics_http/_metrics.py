"""What one finished HTTP request records, through the process-wide monitor's front end.

Shared by the ASGI and WSGI middleware. Per request it costs a dict lookup and one call of a bundle (as
:meth:`~chat_turbo_metrics.PerformanceMonitor.bundle` makes, without re-checking the values we produced) that records
the duration, the count and both sizes under one lock: the handles are bound once per (method, route, status,
scheme), rebound when ``configure()`` gives the monitor a new recorder (noticed by one identity test per request),
and the instruments' units and buckets are declared again then. The in-flight gauges are read when metrics are
collected, not set per request: requests in flight are counted per (method, scheme), which
``http.server.active_requests`` reports as it is and ``http_requests_in_flight`` sums.
"""

from __future__ import annotations

import logging
import random
import re
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.instrumentation import SemconvMode, bundle_produced, semconv_mode
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
_SEMCONV_HISTOGRAMS = (SC_DURATION, SC_REQUEST_SIZE, SC_RESPONSE_SIZE)

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

# Requests in flight in this process per (method, scheme), and websockets: append/pop are atomic, so threads need
# no lock. The method is normalised (anything outside the standard set counts under _OTHER): the keys are bounded.
# A deque, not a list: a list frees its storage whenever it empties and allocates it again on the next append
# (a malloc and a realloc per request of a one-at-a-time worker); a deque keeps its block.
Flight = deque[None]
_in_flight: dict[tuple[str, str], Flight] = {}
_websockets: list[None] = []
_SCHEME_LIMIT = 8  # distinct url.scheme values counted; beyond, a request counts under (_OTHER, _OTHER)


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


def in_flight(method: str, scheme: str) -> Flight:
    """The requests in flight of ``method`` (normalised) and ``scheme``: append when one starts, pop when it ends.

    Example:
        >>> in_flight("FROB", "http") is in_flight("_OTHER", "http")
        True
    """
    flight = _in_flight.get((method, scheme))
    return _new_in_flight(method, scheme) if flight is None else flight


def _new_in_flight(method: str, scheme: str) -> Flight:
    """The first request of a (method, scheme), or a method outside the standard set (never a key of its own)."""
    method = normal_method(method)
    key = (method, scheme)
    flight = _in_flight.get(key)
    if flight is None:
        schemes = {known for _, known in _in_flight}
        if scheme not in schemes and len(schemes - {OTHER_METHOD}) >= _SCHEME_LIMIT:
            key = (OTHER_METHOD, OTHER_METHOD)
        flight = _in_flight.setdefault(key, deque())  # setdefault: two threads making the same key share one list
    return flight


Observe = Callable[[float], None]
Series = Callable[[float, int, int], None]  # (duration, request bytes, response bytes) of one tag set


class Bound:
    """Handles on one recorder of the monitor: the series per tag set, the WebSocket gauge.

    Rebuilt when ``configure()`` gives the monitor a new recorder, so recordings follow it (a request in
    flight then records into the new one: the old pipeline has been shut down).
    """

    __slots__ = ("errored", "lines", "marker", "monitor", "series", "websockets")

    def __init__(self, monitor: PerformanceMonitor) -> None:
        self.monitor = monitor
        self.marker = monitor._recorder  # swapped whole by configure(): how a new recorder is noticed
        self.series: dict[tuple[str, str, int, str], Series] = {}
        # The same series keyed by a WSGI status line ("200 OK"): found without parsing the status.
        self.lines: dict[tuple[str, str, str, str], Series] = {}
        self.errored: dict[tuple[tuple[str, str, int, str], str], Series] = {}
        self.websockets = monitor.gauge(WEBSOCKETS).set


# Monitor -> in-flight gauge names its collection hook sets; one hook per monitor, however many middlewares.
_in_flight_names: weakref.WeakKeyDictionary[PerformanceMonitor, set[str]] = weakref.WeakKeyDictionary()


def _read_in_flight(monitor: weakref.ref[PerformanceMonitor], names: set[str]) -> Callable[[], None]:
    def read() -> None:
        found = monitor()
        if found is None:
            return
        counts = [(key, len(flight)) for key, flight in tuple(_in_flight.items())]
        total = sum(count for _, count in counts)
        for name in tuple(names):
            if name != SC_ACTIVE:  # the seed's gauge: one process-wide count
                found.record_gauge(name, total)
                continue
            for (method, scheme), count in counts:  # the conventions': per method and scheme, 0 once idle
                found.record_gauge(name, count, {"http.request.method": method, "url.scheme": scheme})

    return read


def _report_in_flight(monitor: PerformanceMonitor, names: tuple[str, ...]) -> None:
    """Have ``monitor`` read the requests in flight into the gauges ``names`` at every collection."""
    known = _in_flight_names.get(monitor)
    if known is None:
        known = _in_flight_names[monitor] = set()
        monitor.add_collection_hook(_read_in_flight(weakref.ref(monitor), known))
    known.update(names)


def _sampled(observe: Observe, rate: float) -> Observe:
    """The monitor samples histograms at ``sampling_rate``; a bound handle does not, so we do."""

    def sampled(value: float) -> None:
        if _random() < rate:
            observe(value)

    return sampled


class RequestMetrics:
    """Records finished requests into the monitor under the configured names.

    Each (method, endpoint, status, scheme) gets bound handles on the monitor's instruments once; a request
    then costs a dict lookup and one bundled recording. Views, the cardinality limit and sampling apply as on
    every other recording of the monitor.

    Example:
        >>> metrics = RequestMetrics(HttpMetricsSettings(), monitor)
        >>> flight = metrics.started("GET", "http")
        >>> metrics.finish("GET", "/api/messages/{id}", 200, "http", 0.004, 0, 120, None, flight)
        >>> monitor.snapshot().value("api_requests", {"method": "GET", "endpoint": "/api/messages/{id}", "status": 200})
        1
    """

    def __init__(self, settings: HttpMetricsSettings, monitor: PerformanceMonitor | None = None) -> None:
        self.settings = settings
        self.skips = settings.is_excluded  # True for paths that are never measured
        self.excludes = bool(settings.exact or settings.prefixes)  # False: skips() need not be asked
        self._fixed = monitor
        self._bound: Bound | None = None
        self._chosen = None if settings.metric_names is None else SemconvMode(settings.metric_names)
        self._names(self._chosen or SemconvMode.SEED)

    def _names(self, mode: SemconvMode) -> None:
        """Emit the seed's names, the semantic conventions' or both (series already bound keep theirs)."""
        self.mode = mode
        self._seed, self._semconv = mode.seed, mode.semconv
        self._definitions = (_SEED_DEFINITIONS if self._seed else ()) + (_SEMCONV_DEFINITIONS if self._semconv else ())
        self._active_names = ((IN_FLIGHT,) if self._seed else ()) + ((SC_ACTIVE,) if self._semconv else ())

    def bound(self) -> Bound:
        """Handles on the monitor's current recorder: the one given, else the process-wide one."""
        monitor = self._fixed or PerformanceMonitor._instance or PerformanceMonitor.get_instance()
        bound = self._bound
        if bound is None or bound.monitor is not monitor or bound.marker is not monitor._recorder:
            bound = self._bind(monitor)
        return bound

    def _bind(self, monitor: PerformanceMonitor) -> Bound:
        # Not chosen by argument or CHAT_TURBO_HTTP_METRIC_NAMES: the monitor's configuration says, each time
        # this binds to a monitor or to a recorder configure() made (OTEL_SEMCONV_STABILITY_OPT_IN, files, code).
        self._names(self._chosen or semconv_mode("http", monitor))
        for name, kind, unit, description, buckets in self._definitions:
            try:
                monitor.define(name, kind, unit=unit, description=description, buckets=buckets)
            except ValueError as error:  # the application defined it its own way first: keep theirs
                _logger.debug("keeping the application's definition of %s: %s", name, error)
        _report_in_flight(monitor, self._active_names)
        bound = self._bound = Bound(monitor)
        return bound

    # --- in flight ------------------------------------------------------------------------------
    def started(self, method: str, scheme: str) -> Flight:
        """Count a request in flight (the gauges read the count when metrics are collected).

        Args:
            method: the request method.
            scheme: ``http`` or ``https``.

        Returns:
            The requests in flight it counts among, for :meth:`finish` (an application that rewrites the method
            on the way, as method-override middleware does, leaves the count right).
        """
        flight = _in_flight.get((method, scheme))
        if flight is None:
            flight = _new_in_flight(method, scheme)
        flight.append(None)
        if self._bound is None:  # the first request: the monitor reads the gauges from now on
            self.bound()
        return flight

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
        flight: Flight,
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
            flight: what :meth:`started` returned for this request.
        """
        flight.pop()
        bound = self._bound
        monitor = self._fixed or PerformanceMonitor._instance
        if bound is None or bound.monitor is not monitor or bound.marker is not monitor._recorder:
            bound = self.bound()  # the first request, or configure() made a new recorder: :meth:`bound`, inline
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
        monitor = bound.monitor
        rate = monitor.config.sampling_rate
        if rate >= 1.0:
            series = self._bundled(monitor, method, endpoint, status, scheme, why)
        else:
            series = self._sampled_series(monitor, rate, method, endpoint, status, scheme, why)
        cache: dict[Any, Series] = bound.series if why is None else bound.errored
        if len(cache) < _CACHE_LIMIT:
            cache[key if why is None else (key, why)] = series
        return series

    def _tags(self, method: str, endpoint: str, status: int, scheme: str, why: str | None) -> tuple[Any, Any]:
        """The seed and the semantic-convention tag sets of one series (None for a set not emitted)."""
        seed = {"method": method, "endpoint": endpoint, "status": status} if self._seed else None
        semconv: dict[str, Any] | None = None
        if self._semconv:
            semconv = {"http.request.method": method, "url.scheme": scheme, "http.response.status_code": status}
            if endpoint != UNMATCHED:  # the conventions leave http.route out when no route matched
                semconv["http.route"] = endpoint
            if why is not None:
                semconv["error.type"] = why
        return seed, semconv

    def _bundled(  # noqa: PLR0917 - one call site
        self, monitor: PerformanceMonitor, method: str, endpoint: str, status: int, scheme: str, why: str | None
    ) -> Series:
        """Every metric of the series in one call of a bundle. Its values are ours: a ``perf_counter`` difference and
        two ``len()`` sums or a capped ``Content-Length`` (see :func:`content_length`), never checked again."""
        seed, semconv = self._tags(method, endpoint, status, scheme, why)
        observe: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
        increment = []
        for tags, names in ((seed, (DURATION, REQUEST_SIZE, RESPONSE_SIZE)), (semconv, _SEMCONV_HISTOGRAMS)):
            if tags is not None:
                for group, name in zip(observe, names, strict=True):
                    group.append(monitor.histogram(name, tags))
        if seed is not None:
            increment.append(monitor.counter(REQUESTS, seed))
            if why is not None:
                increment.append(monitor.counter(ERRORS, {**seed, "error_type": why}))
        return bundle_produced(observe, increment)

    def _sampled_series(  # noqa: PLR0917 - one call site
        self,
        monitor: PerformanceMonitor,
        rate: float,
        method: str,
        endpoint: str,
        status: int,
        scheme: str,
        why: str | None,
    ) -> Series:
        """Handle by handle: the monitor samples histograms at ``sampling_rate``, each on its own."""
        seed, semconv = self._tags(method, endpoint, status, scheme, why)
        parts: list[Series] = []
        if seed is not None:
            errors = monitor.counter(ERRORS, {**seed, "error_type": why}).inc if why is not None else None
            parts.append(_seed_series(monitor, seed, rate, errors))
        if semconv is not None:
            parts.append(_semconv_series(monitor, semconv, rate))
        return parts[0] if len(parts) == 1 else _both(*parts)


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
