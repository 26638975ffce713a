"""Prometheus pull exporter: ``/metrics`` served from the pipeline's one reader.

Metric and unit naming follow ``opentelemetry-exporter-prometheus``'s mapping, with the seed's own names
kept as documented (``memory_usage_mb``, ``api_requests_total``); see :mod:`chat_turbo_metrics._recording.naming`.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._config import MonitoringConfig
from chat_turbo_metrics._exposition.prometheus_text import CONTENT_TYPE, to_prometheus_text

_logger = logging.getLogger("chat_turbo_metrics.exporters.prometheus")
Collect = Callable[[], MetricsData | None]


def _accepts_gzip(header: str) -> bool:
    """True when an Accept-Encoding header allows gzip (``gzip;q=0`` refuses it)."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower().removeprefix("q=") if params.strip().lower().startswith("q=") else "1"
            try:
                return float(quality) > 0
            except ValueError:
                return False
    return False


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "try /metrics")
            return
        try:
            # "replace": a tag value with a lone surrogate must not make every scrape fail.
            body = self.server.render().encode("utf-8", "replace")
        except Exception:
            _logger.exception("collecting metrics for a scrape failed")
            self.send_error(500, "collection failed; see the application's log")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        if _accepts_gzip(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=1)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are routine; keep them out of the application's log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    render: Callable[[], str]


class PrometheusExporter:
    """Serves the Prometheus text exposition of every metric at ``http://host:port/metrics``.

    Binds to localhost unless told otherwise; port 0 picks a free port (see :attr:`port` after start).

    Example:
        >>> from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
        >>> exporter = PrometheusExporter(host="127.0.0.1", port=0)
        >>> monitor.add_exporter(exporter)
        >>> exporter.url  # doctest: +ELLIPSIS
        'http://127.0.0.1:.../metrics'
    """

    name = "prometheus"

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        """Args:
        host: interface to bind (default ``localhost``).
        port: TCP port (default 9464). :meth:`from_config` takes both from the configuration
            (METRICS_PROMETHEUS_PORT, OTEL_EXPORTER_PROMETHEUS_HOST, ...); the constructor reads nothing else.
        """
        defaults = MonitoringConfig()
        host = defaults.prometheus_host if host is None else host
        port = defaults.prometheus_port if port is None else port
        self.host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._collect: Collect | None = None

    @classmethod
    def from_config(cls, config: MonitoringConfig) -> PrometheusExporter:
        """The exporter a configuration asks for."""
        return cls(host=config.prometheus_host, port=config.prometheus_port)

    def attach(self, collect: Collect) -> None:
        """Start serving what ``collect`` returns. Called by the pipeline once.

        Raises:
            OSError: the port cannot be bound (named in the message).
        """
        if self._collect is not None:
            raise RuntimeError("this PrometheusExporter is already attached to a monitor")
        try:
            server = _Server((self.host, self._requested_port), _Handler)
        except OSError as error:
            # Nothing is kept, so attaching again (after the port is freed) works.
            raise OSError(
                error.errno, f"Prometheus exporter cannot listen on {self.host}:{self._requested_port}: {error}"
            ) from None
        self._collect = collect
        server.render = self.render
        self._server = server
        threading.Thread(target=server.serve_forever, name="chat-turbo-metrics-prometheus", daemon=True).start()

    def render(self) -> str:
        """The exposition text a scrape returns now."""
        return to_prometheus_text(self._collect() if self._collect is not None else None)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.server_address[1] if self._server is not None else self._requested_port

    @property
    def url(self) -> str:
        """Where Prometheus should scrape."""
        return f"http://{self.host}:{self.port}/metrics"

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop serving; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __repr__(self) -> str:
        return f"PrometheusExporter(host={self.host!r}, port={self.port})"
