"""Prometheus pull exporter: ``/metrics`` served from the pipeline's one reader.

Metric and unit naming follow ``opentelemetry-exporter-prometheus``'s mapping, with the seed's own names
kept as documented (``memory_usage_mb``, ``api_requests_total``); see :mod:`chat_turbo_metrics._core.naming`.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics import multiprocess
from chat_turbo_metrics._core.config import ExportSettings
from chat_turbo_metrics._pipeline.attached import ALERT_MANAGERS, attached
from chat_turbo_metrics._pipeline.ports import PortInUseError
from chat_turbo_metrics._pipeline.pull import Membership, Source
from chat_turbo_metrics.exporters import _prometheus_server
from chat_turbo_metrics.exporters._prometheus_server import Endpoint
from chat_turbo_metrics.exporters._prometheus_text import to_prometheus_text
from chat_turbo_metrics.exporters._status import StatusHistory, page, status_data
from chat_turbo_metrics.multiprocess import SharedEndpoint

Collect = Callable[[], MetricsData | None]


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

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        """Args:
        host: interface to bind (default ``localhost``).
        port: TCP port (default 9464). :meth:`from_config` takes both from the configuration
            (METRICS_PROMETHEUS_PORT, OTEL_EXPORTER_PROMETHEUS_HOST, ...); the constructor reads nothing else.
        """
        defaults = ExportSettings()
        host = defaults.prometheus_host if host is None else host
        port = defaults.prometheus_port if port is None else port
        self.host = host
        self._requested_port = port
        self._endpoint: Endpoint | None = None
        self._collect: Collect | None = None
        self._source: Source | None = None  # the pipeline served: whose alert managers the status page shows
        self._status_history = StatusHistory()

    @classmethod
    def from_config(cls, config: ExportSettings) -> PrometheusExporter:
        """The exporter a configuration asks for."""
        return cls(host=config.prometheus_host, port=config.prometheus_port)

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
        return multiprocess.serve(source, self)

    def render(self) -> str:
        """The exposition text a scrape returns now (the status page's charts take a point of it when due)."""
        data = self._collect() if self._collect is not None else None
        now = time.time()
        if self._status_history.due(now):
            self._status_history.observe(data, now)
        return to_prometheus_text(data)

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
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            _prometheus_server.release(endpoint, self, max(0.0, timeout_millis / 1000))

    def __repr__(self) -> str:
        return f"PrometheusExporter(host={self.host!r}, port={self.port})"
