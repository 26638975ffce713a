"""Prometheus pull exporter: ``/metrics`` served from the pipeline's one reader.

Metric and unit naming follow ``opentelemetry-exporter-prometheus``'s mapping, with the seed's own names
kept as documented (``memory_usage_mb``, ``api_requests_total``); see :mod:`chat_turbo_metrics._core.naming`.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import logging
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics import multiprocess
from chat_turbo_metrics._core.config import ExportSettings
from chat_turbo_metrics._pipeline.attached import ALERT_MANAGERS, attached
from chat_turbo_metrics._pipeline.ports import PortInUseError
from chat_turbo_metrics._pipeline.pull import Membership, Source
from chat_turbo_metrics.exporters import _prometheus_server
from chat_turbo_metrics.exporters._prometheus_http import Request, Response, add_page, plain, respond
from chat_turbo_metrics.exporters._prometheus_server import Endpoint
from chat_turbo_metrics.exporters._prometheus_text import to_prometheus_text
from chat_turbo_metrics.exporters._status import HEADERS as STATUS_HEADERS
from chat_turbo_metrics.exporters._status import StatusHistory, page, status_data
from chat_turbo_metrics.multiprocess import SharedEndpoint

__all__ = ["PrometheusExporter", "make_asgi_app", "make_wsgi_app"]

Collect = Callable[[], MetricsData | None]
_logger = logging.getLogger("chat_turbo_metrics.exporters.prometheus")


class PrometheusExporter(SharedEndpoint):
    """Serves the Prometheus text exposition of every metric at ``http://host:port/metrics``.

    Binds to localhost unless told otherwise; port 0 picks a free port (see :attr:`port` after start).
    Answers GET and HEAD; cuts idle clients after 10 s and serves at most 16 at once. Attached to a port this
    process already serves (``configure()`` again), it takes the endpoint over instead of failing to bind;
    shutting it down hands the endpoint back to the previous exporter, if any. Under a pre-fork server one
    process serves the port for every process of the service (:mod:`chat_turbo_metrics.multiprocess`).

    Example:
        >>> from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
        >>> exporter = PrometheusExporter(host="127.0.0.1", port=0)
        >>> monitor.add_exporter(exporter)
        >>> exporter.url  # doctest: +ELLIPSIS
        'http://127.0.0.1:.../metrics'
    """

    name = "prometheus"

    def __init__(self, host: str | None = None, port: int | None = None, *, scope_labels: bool = True) -> None:
        """Args:
        host: interface to bind (default ``localhost``).
        port: TCP port (default 9464). :meth:`from_config` takes both from the configuration
            (METRICS_PROMETHEUS_PORT, OTEL_EXPORTER_PROMETHEUS_HOST, ...); the constructor reads nothing else.
        scope_labels: label samples with ``otel_scope_name``/``otel_scope_version``
            (METRICS_PROMETHEUS_SCOPE_LABELS).
        """
        defaults = ExportSettings()
        host = defaults.prometheus_host if host is None else host
        port = defaults.prometheus_port if port is None else port
        self.host = host
        self.scope_labels = scope_labels
        self._requested_port = port
        self._endpoint: Endpoint | None = None
        self._collect: Collect | None = None
        self._source: Source | None = None  # the pipeline served: whose alert managers the status page shows
        self._status_history = StatusHistory()
        self._member = False  # a member of a pre-fork group: another process of the service serves the port

    @classmethod
    def from_config(cls, config: ExportSettings) -> PrometheusExporter:
        """The exporter a configuration asks for."""
        return cls(
            host=config.prometheus_host, port=config.prometheus_port, scope_labels=config.prometheus_scope_labels
        )

    def attach(self, collect: Collect) -> None:
        """Start serving what ``collect`` returns. Called by the pipeline once.

        Raises:
            PortInUseError: another process holds the port (the message names it when it can be seen).
            OSError: the port cannot be bound for another reason (named in the message).
        """
        if self._collect is not None:
            raise RuntimeError("this PrometheusExporter is already attached to a monitor")
        self._collect = collect
        try:
            self._endpoint = _prometheus_server.acquire(self.host, self._requested_port, self)
        except OSError as error:
            # Nothing is kept, so attaching again (after the port is freed) works.
            self._collect = None
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(self.host, self._requested_port) from None
            raise OSError(
                error.errno,
                f"Prometheus exporter cannot listen on {self.host}:{self._requested_port}: {error.strerror or error}",
            ) from None
        _serving.add(self)

    def serve(self, source: Source) -> Membership | None:
        """Take this exporter's place for ``source`` (a pipeline): its port, alone, or for its pre-fork group.

        Called by the pipeline once. Under a pre-fork server with ``multiprocess`` on, one process of the group
        serves the port for all of them (:mod:`chat_turbo_metrics.multiprocess`); otherwise this is :meth:`attach`.

        Returns:
            The membership the pipeline keeps (None when the port is not shared).

        Raises:
            PortInUseError: a process outside this group holds the port.
            OSError: the port cannot be bound for another reason.
        """
        self._source = source
        membership = multiprocess.serve(source, self)
        if self._collect is None and membership is not None:
            self._member = True  # the holder serves the merged data; a mounted app asks it
            _serving.add(self)
        return membership

    def render(self, openmetrics: bool = False) -> str:
        """The exposition a scrape returns now: the text format 0.0.4, or OpenMetrics 1.0 (the status page's
        charts take a point of it when due)."""
        data = self._collect() if self._collect is not None else None
        now = time.time()
        if self._status_history.due(now):
            self._status_history.observe(data, now)
        return to_prometheus_text(data, openmetrics=openmetrics, scope_labels=self.scope_labels)

    def status_page(self, path: str) -> tuple[bytes, str]:
        """``/status`` (HTML) or ``/status.json``: alerts, silences, notifications, health, the last hour.

        The alerting shown is that of the alert managers made for the pipeline this exporter serves; under a
        pre-fork server, that of the process serving the port (the metrics are the group's).
        """
        source = self._source
        data = status_data(
            self._collect() if self._collect is not None else None,
            attached(source, ALERT_MANAGERS) if source is not None else (),
            self._status_history,
            multiprocess=source is not None and source.config.multiprocess and self._requested_port > 0,
        )
        return page(path, data)

    def respond(self, path: str = "/metrics", accept: str = "", accept_encoding: str = "") -> Response:
        """What the exporter's port answers to a GET of ``path`` with these headers, answered here.

        In a member of a pre-fork group (another process serves the port) the request is passed to the port,
        so the answer is the service's merged scrape, as Prometheus sees it.
        """
        if self._collect is None and self._member:
            return _from_holder(self._holder_host(), self._requested_port, path, accept, accept_encoding)
        return respond(self if self._collect is not None else None, path, accept, accept_encoding)

    def _holder_host(self) -> str:
        return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)

    @property
    def requested_port(self) -> int:
        """The configured port (0: any free port)."""
        return self._requested_port

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._endpoint.port if self._endpoint is not None else self._requested_port

    @property
    def url(self) -> str:
        """Where Prometheus should scrape."""
        return f"http://{self.host}:{self.port}/metrics"

    def detach_after_fork(self) -> None:
        """In a forked child: detach from the parent's endpoint (whose own fork hook closes the socket copy), so
        that this exporter can attach again when the child takes the port over."""
        self._endpoint, self._collect = None, None
        self._status_history = StatusHistory()

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop answering scrapes (at once; in a forked child, without waiting for the parent's thread)."""
        _serving.discard(self)
        self._member = False
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            _prometheus_server.release(endpoint, self, max(0.0, timeout_millis / 1000))

    def __repr__(self) -> str:
        return f"PrometheusExporter(host={self.host!r}, port={self.port})"


class _Serving:
    """The exporters serving in this process (attached, or members of a pre-fork group), oldest first: a mounted
    app made without an exporter answers with the newest."""

    def __init__(self) -> None:
        self._exporters: dict[int, PrometheusExporter] = {}
        self._lock = threading.Lock()

    def add(self, exporter: PrometheusExporter) -> None:
        with self._lock:
            self._exporters.pop(id(exporter), None)
            self._exporters[id(exporter)] = exporter

    def discard(self, exporter: PrometheusExporter) -> None:
        with self._lock:
            self._exporters.pop(id(exporter), None)

    def newest(self) -> PrometheusExporter | None:
        with self._lock:
            return next(reversed(self._exporters.values()), None)


_serving = _Serving()
_PROXY_TIMEOUT_S = 10.0
_PASSED_HEADERS = ("content-type", "content-encoding")


def _from_holder(host: str, port: int, path: str, accept: str, accept_encoding: str) -> Response:
    """The answer of the service's port (its holder) to the same request; 503 when it cannot be reached."""
    route, _, query = path.partition("?")
    target = ("/metrics" if route in ("", "/") else route) + (f"?{query}" if query else "")
    headers = {name: value for name, value in (("Accept", accept), ("Accept-Encoding", accept_encoding)) if value}
    connection = http.client.HTTPConnection(host, port, timeout=_PROXY_TIMEOUT_S)
    try:
        connection.request("GET", target, headers=headers)
        answer = connection.getresponse()
        body = answer.read()
        kept = tuple((k, v) for k, v in answer.getheaders() if k.lower() in _PASSED_HEADERS)
        return Response(answer.status, kept, body)
    except (OSError, http.client.HTTPException) as error:
        _logger.warning("the service's metrics endpoint %s:%s cannot be reached: %s", host, port, error)
        return plain(503, "the service's metrics endpoint cannot be reached")
    finally:
        connection.close()


def _source(exporter: PrometheusExporter | None) -> PrometheusExporter | None:
    return exporter if exporter is not None else _serving.newest()


def _answer(exporter: PrometheusExporter | None, path: str, accept: str, accept_encoding: str) -> Response:
    source = _source(exporter)
    if source is None:
        return plain(503, "no Prometheus exporter is serving in this process (METRICS_EXPORTERS=prometheus)")
    return source.respond(path, accept, accept_encoding)


def _below(path: str, prefix: str) -> str | None:
    """``path`` relative to the mount point ``prefix`` (``/metrics`` -> ``/``), or None if outside it."""
    if not prefix or prefix == "/":
        return path or "/"
    if path == prefix or path.startswith(prefix + "/"):
        return path[len(prefix) :] or "/"
    return None


def make_asgi_app(
    exporter: PrometheusExporter | None = None, *, app: Any = None, path: str = "/metrics"
) -> Callable[..., Any]:
    """An ASGI app serving exactly what the Prometheus exporter serves (pre-fork merge, OpenMetrics included).

    Mount it (Starlette/FastAPI: ``app.mount("/metrics", make_asgi_app())``), or wrap a whole application
    with ``make_asgi_app(app=application)``: requests under ``path`` get the metrics, the others go to it
    (Django's ``get_asgi_application()``).

    Args:
        exporter: the exporter to serve; default: the newest one serving in this process, looked up per request.
        app: the application the wrapper passes every other request to (None: a mounted app).
        path: where the metrics answer when wrapping ``app``.

    The exposition is collected in a worker thread: a scrape never blocks the event loop.
    """

    async def metrics_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            if app is not None:
                await app(scope, receive, send)
            return
        full = scope.get("path", "/")
        root = scope.get("root_path", "")
        if app is not None:
            inner = _below(full, path)
            if inner is None:
                await app(scope, receive, send)
                return
        else:
            inner = full[len(root) :] if root and full.startswith(root) else full
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        query = scope.get("query_string", b"").decode("latin-1")
        target = inner + (f"?{query}" if query else "")
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            response = plain(405, "GET or HEAD")
        else:
            response = await asyncio.get_running_loop().run_in_executor(
                None, _answer, exporter, target, headers.get("accept", ""), headers.get("accept-encoding", "")
            )
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        raw.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": raw})
        body = b"" if scope.get("method") == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})

    return metrics_app


def make_wsgi_app(
    exporter: PrometheusExporter | None = None, *, app: Any = None, path: str = "/metrics"
) -> Callable[..., Any]:
    """A WSGI app serving exactly what the Prometheus exporter serves (pre-fork merge, OpenMetrics included).

    Mount it (Flask: ``DispatcherMiddleware(flask_app.wsgi_app, {"/metrics": make_wsgi_app()})``), or wrap a
    whole application with ``make_wsgi_app(app=application)``: requests under ``path`` get the metrics, the
    others go to it (Django's ``wsgi.py``: ``application = make_wsgi_app(app=get_wsgi_application())``).

    Args:
        exporter: the exporter to serve; default: the newest one serving in this process, looked up per request.
        app: the application the wrapper passes every other request to (None: a mounted app).
        path: where the metrics answer when wrapping ``app``.
    """

    def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        full = environ.get("PATH_INFO", "") or "/"
        if app is not None:
            inner = _below(full, path)
            if inner is None:
                return app(environ, start_response)  # type: ignore[no-any-return]
        else:
            inner = full
        method = environ.get("REQUEST_METHOD", "GET")
        query = environ.get("QUERY_STRING", "")
        if method not in ("GET", "HEAD"):
            response = plain(405, "GET or HEAD")
        else:
            target = inner + (f"?{query}" if query else "")
            response = _answer(
                exporter, target, environ.get("HTTP_ACCEPT", ""), environ.get("HTTP_ACCEPT_ENCODING", "")
            )
        headers = [*response.headers, ("Content-Length", str(len(response.body)))]
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        return [b"" if method == "HEAD" else response.body]

    return metrics_app


def _status_page(source: Any, request: Request) -> Response:
    """``/status`` and ``/status.json`` on the endpoint and in the mounted apps (404 where nothing serves one)."""
    status_page = getattr(source, "status_page", None)
    if status_page is None:
        return plain(404, "no status page on this endpoint")
    body, content_type = status_page(request.path)
    return Response(200, (("Content-Type", content_type), *STATUS_HEADERS), body)


for _path in ("/status", "/status.json"):
    add_page(_path, _status_page)
