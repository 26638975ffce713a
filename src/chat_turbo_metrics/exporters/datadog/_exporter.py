"""The Datadog exporter: mapping, batching and delivery behind OpenTelemetry's ``MetricExporter``."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.sdk.metrics import Counter, Histogram, ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.config import (
    ConfigurationError,
    DatadogSettings,
    get_monitoring_config,
    setting_label,
)
from chat_turbo_metrics._core.config.declaration import settings_of
from chat_turbo_metrics._core.secret import Secret
from chat_turbo_metrics._pipeline.temporality import INSTRUMENT_CLASSES
from chat_turbo_metrics.exporters.datadog._batching import (
    MAX_COMPRESSED,
    MAX_DECOMPRESSED,
    Batcher,
)
from chat_turbo_metrics.exporters.datadog._mapping import MappingOptions, SeriesMapper
from chat_turbo_metrics.exporters.datadog._transport import (
    Delivery,
    Intake,
    RetryPolicy,
    Sender,
    intake_endpoint,
)

_logger = logging.getLogger("chat_turbo_metrics.exporters.datadog")

# Counters and histograms as deltas (the fan-out converts, and advances only on SUCCESS); up-down
# counters and gauges as their current value.
_TEMPORALITY: dict[type, AggregationTemporality] = {
    **dict.fromkeys(INSTRUMENT_CLASSES, AggregationTemporality.CUMULATIVE),
    **dict.fromkeys((Counter, ObservableCounter, Histogram), AggregationTemporality.DELTA),
}
_MAX_CARRIED = 100_000
_MAX_CARRIED_AGE_S = 3000.0


def _secret(value: str | Secret, setting: str) -> Secret:
    secret = value if isinstance(value, Secret) else Secret(str(value))
    raw = secret.reveal().strip()
    # The value is never part of the message: a key with a typo is still (mostly) a key.
    if not raw:
        raise ConfigurationError(f"{setting} is empty: the Datadog exporter needs an API key (DD_API_KEY)")
    if not raw.isascii() or not raw.isprintable() or any(char.isspace() for char in raw):
        raise ConfigurationError(f"{setting} (DD_API_KEY) contains spaces or characters an HTTP header cannot carry")
    return Secret(raw)


class DataDogExporter(MetricExporter):
    """Send metrics to Datadog's series intake (agentless: ``POST /api/v2/series``, gzip, API key only).

    Add it to a monitor's push fan-out; it runs on its own worker thread there, so the application's
    threads never wait for Datadog. Counters arrive as Datadog counts with an interval, gauges and
    up-down counters as gauges, histograms as ``.count``/``.sum``/``.min``/``.max`` (and optional
    ``.bucket`` counts). A failed export is not lost: its interval is part of the next export's counts.

    Example:
        >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
        >>> monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))
        >>> exporter = DataDogExporter(api_key="0123456789abcdef0123456789abcdef", site="datadoghq.eu")
        >>> exporter
        DataDogExporter(endpoint='https://api.datadoghq.eu/api/v2/series')
        >>> monitor.add_exporter(exporter)  # doctest: +SKIP

    Args:
        api_key: the Datadog API key (``str`` or :class:`~chat_turbo_metrics.Secret`); never logged or shown.
        app_key: accepted because the seed passes one; submitting metrics needs no application key, so it is
            neither sent nor stored.
        site: the Datadog site (``datadoghq.com``, ``datadoghq.eu``, ``us3.datadoghq.com``, ...).
        endpoint: a base URL replacing ``https://api.<site>`` (a proxy or a test intake); ``http://``
            only to a loopback address. User info (``https://user:password@proxy``) is sent as Basic
            authentication, never shown.
        service, env, version: the ``service``/``env``/``version`` tags; default: the resource's
            ``service.name``, ``deployment.environment.name`` and ``service.version``.
        tags: extra tags for every series (``"team:chat"``).
        host: the host sent as the series' resource; default: the resource's ``host.name``, else none.
        histogram_buckets: also send per-bucket counts ``<name>.bucket`` tagged ``lower_bound``/``upper_bound``.
        retry_initial_s, retry_max_s: backoff before the first retry, and its cap.
        max_compressed_bytes, max_decompressed_bytes: request size limits, at most the intake's (512,000 and
            5,242,880); lower them for a proxy with smaller limits.
        ssl_context: TLS settings (default: the system's verified defaults).
        clock: monotonic seconds, for deadlines.

    Raises:
        ConfigurationError: empty or malformed API key, or an endpoint that is not https (or loopback http).
    """

    name = "datadog"

    def __init__(
        self,
        api_key: str | Secret,
        app_key: str | Secret | None = None,
        site: str = "datadoghq.com",
        endpoint: str | Secret | None = None,
        *,
        service: str | None = None,
        env: str | None = None,
        version: str | None = None,
        tags: Iterable[str] = (),
        host: str | None = None,
        histogram_buckets: bool = False,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        max_compressed_bytes: int = MAX_COMPRESSED,
        max_decompressed_bytes: int = MAX_DECOMPRESSED,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(preferred_temporality=_TEMPORALITY)
        del app_key  # not needed to submit metrics; not kept, so it cannot leak
        key = _secret(api_key, "api_key")
        base_url, authorization = intake_endpoint(site, endpoint)
        self._intake = Intake(base_url, key, ssl_context, authorization)
        self._mapper = SeriesMapper(MappingOptions(service, env, version, tuple(tags), host, histogram_buckets))
        for setting, value, limit in (
            ("max_compressed_bytes", max_compressed_bytes, MAX_COMPRESSED),
            ("max_decompressed_bytes", max_decompressed_bytes, MAX_DECOMPRESSED),
        ):
            if not 1024 <= value <= limit:
                raise ConfigurationError(f"{setting}={value!r}: must be between 1024 and the intake's {limit}")
        self._batcher = Batcher(max_compressed_bytes, max_decompressed_bytes)
        self._stop = threading.Event()
        self._sender = Sender(
            self._intake,
            self._batcher,
            policy=RetryPolicy(retry_initial_s, retry_max_s),
            stop=self._stop,
            secret=key,
            clock=clock,
        )
        self._clock = clock
        self._carried: dict[bytes, float] = {}  # series left over by a partial delivery -> when
        self._dropped = {"rejected": 0, "buffer_full": 0, "expired": 0}  # series, by cause (self-telemetry)
        self._lock = threading.Lock()  # one export at a time, even outside the fan-out
        forks.register(self, forks.Phase.PIPELINE)

    @classmethod
    def from_config(cls, config: DatadogSettings) -> DataDogExporter:
        """Build the exporter from the ``datadog_*`` settings (``DD_*`` variables) of a ``MonitoringConfig``.

        Raises:
            ConfigurationError: ``DD_API_KEY`` is not set, or another setting is bad.
        """
        return cls(**_settings(config))

    @property
    def series_url(self) -> str:
        """Where series are posted."""
        return self._intake.base_url + "/api/v2/series"

    @property
    def retries(self) -> int:
        """Requests retried so far."""
        return self._sender.retries

    @property
    def non_finite_dropped(self) -> int:
        """Values not sent because they were NaN or infinite."""
        return self._mapper.non_finite

    def queued_points(self) -> int:
        """Series kept for the next export after a partial delivery (the self-telemetry's queue depth)."""
        return len(self._carried)

    def dropped_points(self) -> dict[str, int]:
        """Series not delivered, by cause: refused by the intake, over the carry-over bound, too old; values
        that were not finite."""
        return {**self._dropped, "not_finite": self._mapper.non_finite}

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        """Map, batch and post; never raises. FAILURE only when nothing reached the intake (so the fan-out's
        next delta covers this interval too); series left over after a partial delivery go with the next export.
        """
        deadline = self._clock() + timeout_millis / 1000
        if self._stop.is_set():
            _logger.warning("Datadog exporter is shut down; metrics not sent")
            return MetricExportResult.FAILURE
        with self._lock:
            try:
                return self._export(metrics_data, deadline)
            except Exception:
                _logger.exception("Datadog export failed unexpectedly")
                return MetricExportResult.FAILURE
            finally:
                self._intake.close()

    def _export(self, metrics_data: MetricsData, deadline: float) -> MetricExportResult:
        series, pending = self._mapper.map(metrics_data)
        self._expire_carried()
        items = [*self._carried, *series]
        delivery = Delivery()
        for batch in self._batcher.batches(items):
            self._sender.deliver(batch, deadline, delivery)
        if delivery.unsent and not delivery.final:
            return MetricExportResult.FAILURE  # nothing delivered: the next delta repeats all of it
        self._mapper.commit(pending)
        self._dropped["rejected"] += delivery.rejected
        self._carry(delivery.unsent)
        return MetricExportResult.SUCCESS

    def _carry(self, unsent: list[bytes]) -> None:
        if len(unsent) > _MAX_CARRIED:
            _logger.error(
                "Datadog intake unreachable: %d undelivered series dropped (keeping %d)",
                len(unsent) - _MAX_CARRIED,
                _MAX_CARRIED,
            )
            self._dropped["buffer_full"] += len(unsent) - _MAX_CARRIED
            unsent = unsent[-_MAX_CARRIED:]
        now = self._clock()
        self._carried = {item: self._carried.get(item, now) for item in unsent}

    def _expire_carried(self) -> None:
        # The intake drops points more than an hour old; a body of stale points would only take a request.
        cutoff = self._clock() - _MAX_CARRIED_AGE_S
        fresh = {item: since for item, since in self._carried.items() if since >= cutoff}
        if len(fresh) < len(self._carried):
            _logger.error(
                "Datadog intake unreachable: %d series undelivered for 50 minutes dropped",
                len(self._carried) - len(fresh),
            )
            self._dropped["expired"] += len(self._carried) - len(fresh)
            self._carried = fresh

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered between exports except series a partial delivery left for the next one."""
        return not self._carried

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop: interrupts a backoff wait or a request in flight on another thread; later exports fail."""
        self._stop.set()
        self._intake.abort()
        if self._carried:
            _logger.warning("Datadog exporter shut down with %d undelivered series", len(self._carried))

    def __repr__(self) -> str:
        return f"DataDogExporter(endpoint={self.series_url!r})"

    def after_fork_in_child(self) -> None:
        # Only the forking thread survives: a lock an export held stays held, and its connection's socket is
        # shared with the parent (dropped, never closed: closing would end the parent's TLS session). Series
        # carried over from a partial delivery are the parent's to send; sending them here too would count
        # them twice.
        self._lock = threading.Lock()
        stop = threading.Event()
        if self._stop.is_set():
            stop.set()
        self._stop = stop
        self._sender.stop = stop
        self._intake.forget_connection()
        self._carried = {}


class EnvironmentDataDogExporter(DataDogExporter):
    """The ``opentelemetry_metrics_exporter`` entry point: a plain OpenTelemetry SDK set-up constructs
    exporters without arguments, so this one reads the monitoring configuration (``DD_*`` variables)."""

    def __init__(self) -> None:
        super().__init__(**_settings(get_monitoring_config()))

    @classmethod
    def from_config(cls, config: DatadogSettings) -> DataDogExporter:
        """The exporter a configuration asks for (what the pipeline builds from this entry point)."""
        return DataDogExporter.from_config(config)


def _settings(config: DatadogSettings) -> dict[str, Any]:
    """The constructor's arguments: each ``datadog_<x>`` setting as ``<x>``."""
    if config.datadog_api_key is None:
        raise ConfigurationError(
            "DD_API_KEY is not set: the Datadog exporter (OTEL_METRICS_EXPORTER=datadog) needs an API key "
            "(setting datadog_api_key)"
        )
    # Checked here too, so that an error names the variable the endpoint came from.
    intake_endpoint(config.datadog_site, config.datadog_endpoint, setting_label(config, "datadog_endpoint"))
    return {item.name.removeprefix("datadog_"): getattr(config, item.name) for item in settings_of(DatadogSettings)}
