"""What one finished client request records: its duration by method, server, status and error type.

Shared by the four client instrumentors. A request costs a ``perf_counter`` pair, a dict lookup of its series by
method, server key (a URL's text before its path: a ``find`` and a slice, parsed only when its series is made)
and status (bound handles, rebound when ``configure()`` gives the monitor a new recorder) and one ``observe``.
Only the URL's host and port reach a label: never its path, query or user info.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.instrumentation import Problems, semconv_mode
from chat_turbo_metrics_http._metrics import normal_method
from chat_turbo_metrics_http._settings import METRIC_NAMES_VARIABLE, usable_settings

DURATION = "http_client_request_duration_seconds"  # the seed's style
OPEN = "http_client_open_connections"  # a gauge {state, server_address, server_port}, read at collection
SC_OPEN = "http.client.open_connections"  # {http.connection.state, server.address, server.port}
OPEN_DESCRIPTION = "Number of outbound HTTP connections that are currently active or idle on the client."
SC_DURATION = "http.client.request.duration"  # the semantic conventions' (CHAT_TURBO_HTTP_METRIC_NAMES)
# The semantic conventions' bucket advice for HTTP durations.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_CACHE_LIMIT = 10_000
_logger = logging.getLogger("chat_turbo_metrics_http_client")
_random = random.random
perf_counter = time.perf_counter

# Set while one instrumented call is measured: a client call made inside it (requests over urllib3, a redirect
# requests follows by calling send() again, urllib3's own retries) is part of that request, not one more.
measuring: contextvars.ContextVar[bool] = contextvars.ContextVar("chat_turbo_http_client", default=False)

Observe = Callable[[float], None]
Server = str | tuple[str, int]  # a URL's text before its path, or (host, port): see authority()
Key = tuple[Any, ...]  # (method, server, status) of a response; (method, server, 0, error type) of a raise


def metric_names(given: str | None, environ: Mapping[str, str] | None) -> str | None:
    """``seed``, ``semconv``, ``both``, or ``auto``: the one place the client instrumentors choose their names.

    The keyword argument, else ``CHAT_TURBO_HTTP_METRIC_NAMES`` when it is set (read as the HTTP server
    instrumentors read it, with their one error per process for a bad value: None is returned and the caller
    measures nothing); else ``auto``: the monitor's ``semconv_stability_opt_in`` (``OTEL_SEMCONV_STABILITY_OPT_IN``)
    decides, asked through :func:`chat_turbo_metrics.instrumentation.semconv_mode` when the monitor is bound.

    Raises:
        ConfigurationError: ``given`` is not one of ``seed``, ``semconv``, ``both``.
    """
    env = os.environ if environ is None else environ
    if given is None and METRIC_NAMES_VARIABLE not in env:
        return "auto"
    settings = usable_settings((), given, env)  # excluded paths are a server's setting: not read here
    return None if settings is None else settings.metric_names


_authorities: dict[str, tuple[str, int]] = {}


def server_of(url: str) -> tuple[str, int]:
    """The host and port of an absolute URL (the scheme's default port when none is written).

    Example:
        >>> server_of("https://user:secret@api.example.com/v1/items?token=x")
        ('api.example.com', 443)
    """
    start = url.find("://")
    end = len(url)
    for mark in "/?#":
        found = url.find(mark, start + 3)
        if found != -1 and found < end:
            end = found
    prefix = url[:end]
    known = _authorities.get(prefix)
    if known is None:
        try:
            parts = urlsplit(prefix)
            port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
            known = (parts.hostname or "", port)
        except ValueError:  # a bad port: the library will refuse the URL; we record it as unknown
            known = ("", 0)
        if len(_authorities) < _CACHE_LIMIT:
            _authorities[prefix] = known
    return known


def error_type(error: BaseException) -> str:
    """The ``error_type`` of a request that raised: the exception's class name."""
    return type(error).__name__


def authority(url: str) -> Server:
    """The cheap key of an absolute URL's server: the text before its path, or its (host, port) when that text
    holds more than scheme and authority (user info, or a query string where no path is written).

    Example:
        >>> authority("https://api.example.com/v1/items?token=x"), authority("http://u:secret@db.local/x")
        ('https://api.example.com', ('db.local', 80))
    """
    end = url.find("/", 8)  # past "https://": the first "/" of the path (a one-letter host's "/" is at 8 in http)
    prefix = url if end == -1 else url[:end]
    if "?" in prefix or "#" in prefix or "@" in prefix:  # never a query or a password in our state
        return server_of(url)
    return prefix


def server_at(server: Server) -> tuple[str, int]:
    """The host and port of a server key: :func:`authority`'s prefix, or a (host, port) already."""
    return server_of(server) if isinstance(server, str) else server


class ClientMetrics:
    """Records finished client requests into the monitor under the chosen names.

    ``done(method, server, status, seconds)`` per response and ``failed(method, server, error_type, seconds)`` per
    request that raised; ``server`` is :func:`authority`'s key (a URL's prefix, or host and port).

    Example:
        >>> metrics = ClientMetrics("seed", monitor)
        >>> metrics.done("GET", ("127.0.0.1", 8080), 200, 0.004)
        >>> metrics.done("GET", "http://127.0.0.1:8080", 200, 0.002)
        >>> tags = {"method": "GET", "server_address": "127.0.0.1", "server_port": 8080, "status": 200}
        >>> monitor.snapshot().value("http_client_request_duration_seconds", tags)["count"]
        2
    """

    def __init__(
        self, names: str, monitor: PerformanceMonitor | None = None, connections: Connections | None = None
    ) -> None:
        self._fixed = monitor
        self._connections = connections  # the library's pools: their open connections are read at each collection
        self._hooked: PerformanceMonitor | None = None
        self._names = names
        self._seed = names in ("seed", "both")
        self._semconv = names in ("semconv", "both")
        self._monitor: PerformanceMonitor | None = None
        self._marker: Any = None
        self._series: dict[Key, Observe] = {}
        self.problems = Problems(_logger)

    def done(self, method: str, server: Server, status: int, seconds: float) -> None:
        """A response came: its status; the error type is the status for 4xx and 5xx."""
        try:
            monitor = self._fixed or PerformanceMonitor._instance or PerformanceMonitor.get_instance()
            if monitor._recorder is not self._marker:  # a recorder is one monitor's: configure() makes a new one
                self._bind(monitor)
            series = self._series.get((method, server, status))
            if series is None:
                series = self._new_series((method, server, status), status, str(status) if status >= 400 else None)
            series(seconds)
        except Exception as error:  # never into the application's request
            self.problems.report(("record", type(error)), "cannot record an HTTP client request: %r", error)

    def failed(self, method: str, server: Server, why: str, seconds: float) -> None:
        """No response came: the request raised ``why`` (the exception's class name)."""
        try:
            monitor = self._fixed or PerformanceMonitor._instance or PerformanceMonitor.get_instance()
            if monitor._recorder is not self._marker:
                self._bind(monitor)
            series = self._series.get((method, server, 0, why))
            if series is None:
                series = self._new_series((method, server, 0, why), 0, why)
            series(seconds)
        except Exception as error:
            self.problems.report(("record", type(error)), "cannot record an HTTP client request: %r", error)

    def _bind(self, monitor: PerformanceMonitor) -> None:
        self._series = {}
        if self._names == "auto":  # asked again whenever configure() gives the monitor a new recorder
            mode = semconv_mode("http", monitor)
            self._seed, self._semconv = mode.seed, mode.semconv
        for name, wanted in ((DURATION, self._seed), (SC_DURATION, self._semconv)):
            if wanted:
                try:
                    monitor.define(
                        name, "histogram", unit="s", description="Duration of HTTP client requests.", buckets=BUCKETS
                    )
                except ValueError as error:  # the application defined it its own way first: keep theirs
                    _logger.debug("keeping the application's definition of %s: %s", name, error)
        if self._connections is not None:
            for name, wanted in ((OPEN, self._seed), (SC_OPEN, self._semconv)):
                if wanted:
                    try:
                        monitor.define(name, "gauge", unit="{connection}", description=OPEN_DESCRIPTION)
                    except ValueError as error:
                        _logger.debug("keeping the application's definition of %s: %s", name, error)
            if monitor is not self._hooked:  # the readings join this monitor's collections (and follow it)
                if self._hooked is not None:
                    _open_connections_of(self._hooked).leave(self)
                _open_connections_of(monitor).join(self)
                self._hooked = monitor
        self._monitor, self._marker = monitor, monitor._recorder

    def close(self) -> None:
        """The instrumentor stopped: its library's connections are no longer read."""
        hooked, self._hooked = self._hooked, None
        if hooked is not None:
            _open_connections_of(hooked).leave(self)

    def _new_series(self, key: Key, status: int, why: str | None) -> Observe:
        method = normal_method(key[0].upper())
        host, port = server_at(key[1])
        monitor = self._monitor
        assert monitor is not None
        observers: list[Observe] = []
        if self._seed:
            tags: dict[str, Any] = {"method": method, "server_address": host, "server_port": port}
            if status:
                tags["status"] = status
            if why is not None:
                tags["error_type"] = why
            observers.append(monitor.histogram(DURATION, tags).observe)
        if self._semconv:
            tags = {"http.request.method": method, "server.address": host, "server.port": port}
            if status:
                tags["http.response.status_code"] = status
            if why is not None:
                tags["error.type"] = why
            observers.append(monitor.histogram(SC_DURATION, tags).observe)
        series = observers[0] if len(observers) == 1 else _both(*observers)
        rate = monitor.config.sampling_rate
        if rate < 1.0:
            series = _sampled(series, rate)
        if len(self._series) < _CACHE_LIMIT:
            self._series[key] = series
        return series


class Connections(Protocol):
    """A library's pools, followed while instrumented (``_connections.Tracked``)."""

    def read(self) -> Counter[tuple[str, str, int]]:
        """The open connections now: (state, server address, server port) -> count."""
        ...


class OpenConnections:
    """A monitor's one collection hook for the clients' open connections: the libraries whose instrumentors
    record into it, each read once (requests and urllib3 share urllib3's pools) and summed per server and state,
    so that two libraries talking to one server never overwrite each other's gauge."""

    def __init__(self, monitor: PerformanceMonitor) -> None:
        self._monitor = monitor
        self._users: dict[ClientMetrics, None] = {}  # insertion-ordered set
        self._reported: set[tuple[str, str, str, int]] = set()
        self._marker: Any = None
        self.problems = Problems(_logger)

    def join(self, metrics: ClientMetrics) -> None:
        with _hooks_lock:
            if not self._users:
                self._monitor.add_collection_hook(self.read)
            self._users[metrics] = None

    def leave(self, metrics: ClientMetrics) -> None:
        with _hooks_lock:
            if metrics in self._users:
                del self._users[metrics]
                if not self._users:
                    self._monitor.remove_collection_hook(self.read)

    def read(self) -> None:
        """At a collection: record every followed library's open connections (0 for a series none has now)."""
        try:
            monitor = self._monitor
            if monitor._recorder is not self._marker:  # a new pipeline starts with no series
                self._reported, self._marker = set(), monitor._recorder
            users = list(self._users)
            for metrics in users:
                if metrics._marker is not monitor._recorder:  # configure() since its last request: which names
                    metrics._bind(monitor)
            wanted = {
                name: {metrics._connections for metrics in users if metrics._connections is not None and want(metrics)}
                for name, want in ((OPEN, _wants_seed), (SC_OPEN, _wants_semconv))
            }
            readings = {connections: connections.read() for connections in set().union(*wanted.values())}
            found: dict[tuple[str, str, str, int], int] = {}
            for name, followed in wanted.items():
                for connections in followed:
                    for (state, host, port), count in readings[connections].items():
                        found[name, state, host, port] = found.get((name, state, host, port), 0) + count
            for key in self._reported - found.keys():
                found[key] = 0
            for (name, state, host, port), count in found.items():
                if name == OPEN:
                    tags = {"state": state, "server_address": host, "server_port": port}
                else:
                    tags = {"http.connection.state": state, "server.address": host, "server.port": port}
                monitor.record_gauge(name, count, tags)
            self._reported = {key for key, count in found.items() if count}
        except Exception as error:  # never into the collection
            self.problems.report(("open", type(error)), "cannot read the open HTTP client connections: %r", error)


def _wants_seed(metrics: ClientMetrics) -> bool:
    return metrics._seed


def _wants_semconv(metrics: ClientMetrics) -> bool:
    return metrics._semconv


_hooks: weakref.WeakKeyDictionary[PerformanceMonitor, OpenConnections] = weakref.WeakKeyDictionary()
_hooks_lock = threading.RLock()


def renew_hooks_lock() -> None:
    """In a forked child: a fresh lock (a parent's thread may have held the old one at fork())."""
    global _hooks_lock  # noqa: PLW0603 - the module's one lock, replaced only in a forked child
    _hooks_lock = threading.RLock()


def _open_connections_of(monitor: PerformanceMonitor) -> OpenConnections:
    with _hooks_lock:
        hook = _hooks.get(monitor)
        if hook is None:
            hook = _hooks[monitor] = OpenConnections(monitor)
        return hook


def _both(first: Observe, second: Observe) -> Observe:
    def observe(value: float) -> None:
        first(value)
        second(value)

    return observe


def _sampled(observe: Observe, rate: float) -> Observe:
    """The monitor samples histograms at ``sampling_rate``; a bound handle does not, so we do."""

    def sampled(value: float) -> None:
        if _random() < rate:
            observe(value)

    return sampled


def client_metrics(kwargs: Mapping[str, Any], connections: Connections | None = None) -> ClientMetrics | None:
    """The metrics an instrumentor's ``instrument(**kwargs)`` records into; None when a variable is bad."""
    names = metric_names(kwargs.get("metric_names"), kwargs.get("environ"))
    return None if names is None else ClientMetrics(names, kwargs.get("monitor"), connections)


class Patches:
    """Attributes replaced on classes or modules, put back by :meth:`restore`."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def replace(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Set ``owner.name`` to ``make(original)``, the original kept for :meth:`restore`."""
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        wrapper = make(original)
        wrapper.__wrapped__ = original
        self._saved.append((owner, name, original))
        setattr(owner, name, wrapper)

    def restore(self) -> None:
        """Put every replaced attribute back, the last replaced first."""
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)


def patched(patch: Callable[[Patches], None]) -> Callable[[], None]:
    """Run ``patch`` on new :class:`Patches`, all or nothing: returns their ``restore``; a patch that raises is
    undone as far as it went (then raised on: :func:`~chat_turbo_metrics.instrumentation.when_imported` logs it)."""
    patches = Patches()
    try:
        patch(patches)
    except BaseException:
        patches.restore()
        raise
    return patches.restore
