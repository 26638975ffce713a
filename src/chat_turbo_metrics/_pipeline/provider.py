"""One pipeline per process: one MeterProvider with ONE reader, feeding the scrape and every push exporter.

Every OpenTelemetry reader re-processes every measurement (each reader adds the whole recording cost
again), so the pipeline registers a single cumulative reader. Prometheus serves from it on demand; push
exporters (file, database, OTLP, console, Datadog) share one periodic collection in
:class:`~chat_turbo_metrics._pipeline.fanout.Fanout`, which converts to delta per exporter. The cost of a
recording call is therefore the same with one exporter or ten.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import (
    MeterProvider,
)
from opentelemetry.sdk.metrics.export import Metric, MetricExporter, MetricReader, MetricsData
from opentelemetry.sdk.metrics.view import (
    DropAggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from chat_turbo_metrics._collection.collector import Collector, Producer
from chat_turbo_metrics._collection.exportable import Unexportable, exportable
from chat_turbo_metrics._collection.overflow import Overflow, OverflowWatcher
from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.compat import (
    count_measurements,
    forget_inherited_sums,
    provider_resource,
    reinit_sdk_metric_locks,
)
from chat_turbo_metrics._core.config import (
    EXPONENTIAL_HISTOGRAM,
    ConfigurationError,
    MonitoringConfig,
    ViewConfig,
    setting_label,
)
from chat_turbo_metrics._core.version import __version__
from chat_turbo_metrics._pipeline import registry as _registry
from chat_turbo_metrics._pipeline import termination as _termination
from chat_turbo_metrics._pipeline.fanout import Fanout
from chat_turbo_metrics._pipeline.health import Sources
from chat_turbo_metrics._pipeline.pull import Membership, PullExporter, ServingExporter
from chat_turbo_metrics._pipeline.temporality import INSTRUMENT_CLASSES
from chat_turbo_metrics._recording.streams import SCOPE

_logger = logging.getLogger("chat_turbo_metrics.pipeline")


class PipelineReader(MetricReader):
    """The one reader: cumulative for every instrument, collected on demand by whoever needs data.

    With ``exponential``, histograms that no View gives explicit buckets are aggregated as base-2 exponential
    histograms (``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION``): the reader's preferred aggregation,
    as the SDK's OTLP exporter sets it on its own reader. Here there is one reader, so every exporter receives them.
    """

    def __init__(self, cardinality_limit: int, *, exponential: bool = False) -> None:
        super().__init__(
            cardinality_limits=dict.fromkeys(INSTRUMENT_CLASSES, cardinality_limit),
            preferred_aggregation=exponential_aggregation() if exponential else None,
        )
        self._lock = threading.Lock()
        self._received: MetricsData | None = None
        # The SDK's count of synchronous measurements, and what it was when a collection last read the SDK.
        self._measurements: Callable[[], int] | None = None
        self._measurements_read = 0
        forks.register(self, forks.Phase.LOCKS)

    def watch_measurements(self, count: Callable[[], int] | None) -> None:
        """Answer :meth:`recorded` from ``count`` (the SDK's measurements so far; None: always True)."""
        self._measurements = count

    def recorded(self) -> bool:
        """Whether the SDK took a synchronous measurement since a collection last read it."""
        count = self._measurements
        return count is None or count() != self._measurements_read

    def after_fork_in_child(self) -> None:
        # A thread of the parent may have been collecting: its lock, and the SDK's, would stay held.
        forks.reinit(self._lock)
        self._received = None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self._received = metrics_data

    def collect_sdk(self) -> MetricsData | None:
        """What the SDK's instruments hold now; safe from any thread (cumulative data makes concurrent collections
        harmless). The pipeline's :class:`Collector` adds the rest."""
        with self._lock:
            self._received = None
            if self._measurements is not None:
                self._measurements_read = self._measurements()  # before the read: a later one counts as new
            self.collect()
            data = self._received
            self._received = None
        return data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release: exporters are shut down by the pipeline."""


# The SDK's own defaults for ExponentialBucketHistogramAggregation, spelled out: they are what we document.
EXPONENTIAL_MAX_SIZE = 160
EXPONENTIAL_MAX_SCALE = 20


def exponential_aggregation() -> dict[type, Any]:
    """The reader's preferred aggregation for histogram instruments when exponential histograms are asked for."""
    aggregation = ExponentialBucketHistogramAggregation(max_size=EXPONENTIAL_MAX_SIZE, max_scale=EXPONENTIAL_MAX_SCALE)
    return {HistogramInstrument: aggregation}


def build_views(views: tuple[ViewConfig, ...]) -> list[View]:
    """SDK Views for the configured per-metric settings.

    Raises:
        ConfigurationError: the SDK refuses a view (e.g. a rename on a wildcard).
    """
    built = []
    for spec in views:
        aggregation: Any = None
        if spec.drop:
            aggregation = DropAggregation()
        elif spec.buckets is not None:
            aggregation = ExplicitBucketHistogramAggregation(boundaries=spec.buckets)
        try:
            built.append(
                View(
                    instrument_name=spec.instrument,
                    name=spec.name,
                    description=spec.description,
                    attribute_keys=set(spec.attribute_keys) if spec.attribute_keys is not None else None,
                    aggregation=aggregation,
                )
            )
        except Exception as error:
            raise ConfigurationError(f"views: {spec!r}: {error}") from None
    return built


def build_resource(config: MonitoringConfig) -> Resource:
    """Resource attributes: service name and environment, then OTEL_RESOURCE_ATTRIBUTES on top."""
    attributes: dict[str, Any] = {
        "service.name": config.service_name,
        "deployment.environment.name": config.environment,
        "telemetry.distro.name": "chat_turbo_metrics",
        "telemetry.distro.version": __version__,
    }
    attributes.update(config.resource_attributes)
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; ours were parsed from it already, so pass them
    # on top to keep the precedence the configuration resolved.
    return Resource.create(attributes)


class Pipeline:
    """The MeterProvider, TracerProvider and exporters built from one :class:`MonitoringConfig`.

    Example:
        >>> pipeline = Pipeline(MonitoringConfig(metrics_exporters=()))
        >>> pipeline.meter.create_counter("jobs").add(1)
        >>> pipeline.shutdown()
    """

    def __init__(self, config: MonitoringConfig, *, strict: bool = True) -> None:
        """Build every component; with ``strict=False`` a bad exporter is logged and skipped, not raised."""
        self.config = config
        self.resource = build_resource(config)
        self.reader = PipelineReader(
            config.cardinality_limit, exponential=config.histogram_aggregation == EXPONENTIAL_HISTOGRAM
        )
        self.collector = Collector(self.reader.collect_sdk)
        # Measurements past a metric's cardinality limit: counted by the fast path at the call (see add_producer),
        # found in the SDK's collection by the watcher.
        self.overflow = Overflow(config.cardinality_limit)
        self.collector.add("overflow", OverflowWatcher(self.overflow))
        # Points no exporter could encode (bool, huge ints, NaN from OTel-API instruments), dropped here.
        self.unexportable = Unexportable()
        self.collector.add("exportable", functools.partial(exportable, unexportable=self.unexportable))
        self.meter_provider = MeterProvider(
            metric_readers=[self.reader],
            resource=self.resource,
            views=build_views(config.views),
            shutdown_on_exit=False,  # our own atexit hook flushes exporters first
        )
        self.meter = self.meter_provider.get_meter("chat_turbo_metrics", __version__)
        # Whether anything was recorded since a collection (Collector.quiet_since): the SDK's measurements here,
        # each recorder's cells where it is added (add_producer).
        self.reader.watch_measurements(count_measurements(self.meter_provider))
        self.collector.watch(self.reader.recorded)
        self.tracer_provider = TracerProvider(resource=self.resource, shutdown_on_exit=False)
        self.fanout = Fanout(
            self.collect,
            interval_s=config.export_interval_s,
            timeout_s=config.export_timeout_s,
        )
        self.pull_exporters: list[PullExporter] = []
        self._memberships: list[Membership] = []  # places serving exporters took (pre-fork groups)
        self._shutdown_lock = threading.Lock()
        self._is_shutdown = False
        self._shutdown_done = threading.Event()
        self._shutdown_thread: threading.Thread | None = None
        try:
            for name in config.metrics_exporters:
                self._add_named(
                    name, setting_label(config, "metrics_exporters"), _registry.build_metric_exporter, strict
                )
            for name in config.traces_exporters:
                self._add_named(name, setting_label(config, "traces_exporters"), _registry.build_span_processor, strict)
        except BaseException:
            # A half-built pipeline must not keep a port, a thread or a file: the running one stays in charge.
            self.shutdown(1.0)
            raise
        forks.register(self, forks.Phase.PIPELINE)
        atexit.register(self.shutdown)

    def after_fork_in_child(self) -> None:
        # Another thread may have been recording or collecting: the SDK's own locks would stay held.
        forks.reinit(self._shutdown_lock)
        forks.reinit(self._shutdown_done)
        if self._is_shutdown:  # the thread that was shutting down is not in the child: nobody to wait for
            self._shutdown_done.set()
        reinit_sdk_metric_locks(self.meter_provider)
        # The parent keeps reporting what it recorded before the fork; the child reports only its own.
        forget_inherited_sums(self.meter_provider)

    def _add_named(
        self,
        name: str,
        variable: str,
        build: Callable[[str, MonitoringConfig, str], Any],
        strict: bool,
    ) -> None:
        try:
            component = build(name, self.config, variable)
            if isinstance(component, SpanProcessor):
                self.tracer_provider.add_span_processor(component)
            else:
                self.add_exporter(component)
        except (ConfigurationError, OSError) as error:  # OSError: e.g. the Prometheus port is taken
            if strict:
                raise
            _logger.error("%s; continuing without it", error)

    def add_exporter(self, exporter: MetricExporter | PullExporter) -> None:
        """Attach a pull exporter to the reader, or add a push exporter to the shared periodic export."""
        if isinstance(exporter, MetricExporter):
            self.fanout.add(exporter)
            _termination.flush_on_sigterm(self)  # a plain SIGTERM would end the process before its final export
        elif isinstance(exporter, PullExporter):
            if isinstance(exporter, ServingExporter):
                membership = exporter.serve(self)  # it takes its place itself (Prometheus: for its pre-fork group)
                if membership is not None:
                    self._memberships.append(membership)
            else:
                exporter.attach(self.collect)
            self.pull_exporters.append(exporter)
        else:
            raise TypeError(
                f"add_exporter() takes an OpenTelemetry MetricExporter or a pull exporter with attach(); "
                f"got {type(exporter).__name__}"
            )

    def remove_exporter(self, exporter: MetricExporter | PullExporter) -> bool:
        """Stop feeding a push exporter :meth:`add_exporter` added; it is not shut down (the caller owns it again).

        Returns:
            True when it was being fed; False otherwise (a pull exporter stops only with the pipeline).
        """
        return isinstance(exporter, MetricExporter) and self.fanout.remove(exporter)

    def health_sources(self, dropped_recordings: Callable[[], Mapping[str, int]] = dict) -> Sources:
        """What this pipeline's self-telemetry reads; ``dropped_recordings`` from the recorder's guard."""
        return Sources(
            dropped_recordings=dropped_recordings,
            unexportable=lambda: self.unexportable.total,
            overflow=self.overflow,
            exports=self.fanout.stats,
            export_queues=self.fanout.pending,
            exporters=lambda: self.fanout.named_exporters,
            multiprocess=self._multiprocess_health,
        )

    def _multiprocess_health(self) -> Mapping[str, int]:
        causes: dict[str, int] = {}
        for membership in self._memberships:
            for cause, degraded in membership.health().items():
                causes[cause] = max(causes.get(cause, 0), degraded)
        return causes

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Install a span processor (alerting, exporting) on the pipeline's TracerProvider."""
        self.tracer_provider.add_span_processor(processor)

    def collect(self, *, readings: bool = True) -> MetricsData | None:
        """Cumulative metrics of the whole pipeline, right now; without the collection-time readings (the
        collection hooks) when ``readings`` is False: what was recorded, as a background copy needs it."""
        return self.collector.collect(readings=readings)

    @property
    def collections(self) -> int:
        """Collections started so far (see :meth:`quiet_since`)."""
        return self.collector.collections

    def quiet_since(self, mark: int) -> bool:
        """True when nothing was recorded since collection number ``mark``, the last one (``collections + 1``
        read just before it); answered without collecting (see :meth:`Collector.quiet_since`)."""
        return self.collector.quiet_since(mark)

    def current_resource(self) -> Resource:
        """The resource the MeterProvider holds now (the SDK refreshes it after a fork), else the pipeline's."""
        return provider_resource(self.meter_provider) or self.resource

    def add_producer(
        self, metrics: Callable[[int], Sequence[Metric]], recorded: Callable[[], bool] | None = None
    ) -> None:
        """Add what ``metrics(now_ns)`` returns (a fast recorder's metrics) to every collection, in the
        ``chat_turbo_metrics`` scope, at the ``recorder`` step of the collection pass.

        Args:
            metrics: the producer's metrics at a collection time.
            recorded: whether it holds data no collection read yet (:meth:`quiet_since`); None: it cannot
                tell, and :meth:`quiet_since` is never True.
        """
        self.collector.add("recorder", Producer(metrics, self.current_resource, SCOPE))
        self.collector.watch(recorded or _always)

    def force_flush(self, timeout_s: float | None = None) -> bool:
        """Export current data to every push exporter and flush spans; False if something timed out."""
        flushed = self.fanout.force_flush(timeout_s)
        return self.tracer_provider.force_flush(int((timeout_s or self.config.export_timeout_s) * 1000)) and flushed

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Export the last data once, then stop every exporter and provider. Idempotent; a call while another
        thread is shutting down waits (up to ``timeout_s``) for that shutdown to finish.

        Args:
            timeout_s: the longest the whole shutdown waits (default ``config.shutdown_timeout_s``); an
                exporter still busy then is left to its daemon thread, which dies with the process.
        """
        limit = self.config.shutdown_timeout_s if timeout_s is None else timeout_s
        with self._shutdown_lock:
            running = self._is_shutdown
            self._is_shutdown = True
            if not running:
                self._shutdown_thread = threading.current_thread()
        if running and self._shutdown_thread is not threading.current_thread():
            # Another thread is shutting down (SIGTERM's flush while the interpreter exits): returning now
            # would let the process end in the middle of that final export.
            self._shutdown_done.wait(max(0.0, limit))
        if running:
            return
        try:
            self._shut_down(time.monotonic() + max(0.0, limit))
        finally:
            self._shutdown_done.set()
            # Only now: while this runs on another thread, the exit hook is what keeps the interpreter waiting.
            atexit.unregister(self.shutdown)

    def _shut_down(self, deadline: float) -> None:
        self.fanout.shutdown(_remaining(deadline))
        for membership in self._memberships:
            membership.close()  # the final state must be on disk before the port is let go
        for exporter in self.pull_exporters:
            try:
                exporter.shutdown(timeout_millis=_remaining(deadline) * 1000)
            except Exception:
                _logger.exception("shutting down exporter %s failed", exporter.name)
        # Span processors export on shutdown (OTLP retries for a long time): bounded like the rest.
        _bounded(self.tracer_provider.shutdown, _remaining(deadline), "the tracer provider")
        _bounded(self.meter_provider.shutdown, _remaining(deadline), "the meter provider")


def _always() -> bool:
    return True


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _bounded(call: Callable[[], object], timeout_s: float, what: str) -> None:
    """Run ``call`` on a daemon thread and wait at most ``timeout_s`` for it."""

    def run() -> None:
        try:
            call()
        except Exception:
            _logger.exception("shutting down %s failed", what)

    thread = threading.Thread(target=run, name="chat-turbo-metrics-shutdown", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _logger.warning("shutting down %s did not finish in %.1f s; not waiting for it", what, timeout_s)
