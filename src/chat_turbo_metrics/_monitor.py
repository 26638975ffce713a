"""The seed's ``PerformanceMonitor``: the documented API, delegating each call to a swappable recorder."""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from chat_turbo_metrics._collection.ratio import add_hit_ratios
from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.config import (
    EXPONENTIAL_HISTOGRAM,
    ConfigurationError,
    MonitoringConfig,
    get_monitoring_config,
)
from chat_turbo_metrics._core.guard import Problems
from chat_turbo_metrics._core.naming import Kind
from chat_turbo_metrics._pipeline import globals as otel_globals
from chat_turbo_metrics._pipeline.health import HealthMetrics, HealthProducer
from chat_turbo_metrics._pipeline.provider import Pipeline
from chat_turbo_metrics._pipeline.view import PipelineView
from chat_turbo_metrics._recording.bundle import bundle
from chat_turbo_metrics._recording.instruments import InstrumentRegistry
from chat_turbo_metrics._recording.protocol import Recorder
from chat_turbo_metrics._recording.sdk import BoundInstrument, NoopRecorder, SdkRecorder, Tags
from chat_turbo_metrics._snapshot import MetricsSnapshot

_logger = logging.getLogger("chat_turbo_metrics")
F = TypeVar("F", bound=Callable[..., Any])
Subscriber = MetricExporter | SpanProcessor
_NO_METERS = metrics.NoOpMeterProvider()
_NO_TRACERS = trace.NoOpTracerProvider()


class _Runtime:
    """A pipeline and the recorder that feeds it (or neither, when monitoring is disabled)."""

    def __init__(self, config: MonitoringConfig, *, strict: bool = True) -> None:
        self.config = config
        self.problems = Problems()
        self.pipeline: Pipeline | None = None
        self.view: PipelineView | None = None  # what monitor.pipeline hands out
        self.recorder: Recorder = NoopRecorder()
        self._spans: _SpanSubscribers | None = None
        if config.enabled:
            self.pipeline = Pipeline(config, strict=strict)
            self.view = PipelineView(self.pipeline)
            self.recorder = make_recorder(config, self.pipeline, self.problems)
            # Each at its place in the collection pass (chat_turbo_metrics._collection.collector.STEPS).
            self.pipeline.collector.add("hit_ratios", add_hit_ratios)
            if config.self_telemetry:
                self.pipeline.collector.add("self_telemetry", health_producer(self.pipeline, self.problems))

    def attach(self, subscriber: Subscriber) -> None:
        """Feed ``subscriber`` from this runtime's pipeline (nothing when monitoring is disabled)."""
        if self.pipeline is None:
            return
        if isinstance(subscriber, MetricExporter):
            self.pipeline.add_exporter(subscriber)
            return
        if self._spans is None:  # one processor on the TracerProvider, whatever monitors subscribe
            self._spans = _SpanSubscribers()
            self.pipeline.add_span_processor(self._spans)
        self._spans.processors = (*self._spans.processors, subscriber)

    def detach(self, subscriber: Subscriber) -> None:
        """Stop feeding ``subscriber``; it is not shut down (its subscriber still owns it)."""
        if self.pipeline is None:
            return
        if isinstance(subscriber, MetricExporter):
            self.pipeline.remove_exporter(subscriber)
        elif self._spans is not None:
            self._spans.processors = tuple(p for p in self._spans.processors if p is not subscriber)

    def shutdown(self, timeout_s: float | None = None) -> None:
        if self.pipeline is not None:
            self.pipeline.shutdown(timeout_s)


class _SpanSubscribers(SpanProcessor):
    """The span processors monitors subscribed, installed once on a pipeline's TracerProvider.

    A reconfiguration moves them out before the old pipeline shuts down, so only the pipeline they are on when it
    ends (at exit, or ``monitor.shutdown()``) shuts them down. One that raises is logged; the span goes on.
    """

    def __init__(self) -> None:
        self.processors: tuple[SpanProcessor, ...] = ()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self.processors:
            try:
                processor.on_start(span, parent_context=parent_context)
            except Exception:
                _logger.exception("span processor %r raised in on_start", processor)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self.processors:
            try:
                processor.on_end(span)
            except Exception:
                _logger.exception("span processor %r raised in on_end", processor)

    def shutdown(self) -> None:
        for processor in self.processors:
            try:
                processor.shutdown()
            except Exception:
                _logger.exception("span processor %r raised in shutdown", processor)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        flushed = True
        for processor in self.processors:
            try:
                flushed = processor.force_flush(timeout_millis) and flushed
            except Exception:
                _logger.exception("span processor %r raised in force_flush", processor)
                flushed = False
        return flushed


def health_producer(pipeline: Pipeline, problems: Problems) -> HealthProducer:
    """The producer that adds the pipeline's self-telemetry to every collection."""
    health = HealthMetrics(pipeline.health_sources(problems.by_cause))
    return HealthProducer(health, pipeline.current_resource)


def make_recorder(config: MonitoringConfig, pipeline: Pipeline, problems: Problems) -> Recorder:
    """The recording front end the configuration asks for."""
    registry = InstrumentRegistry(problems, config.metric_limit)
    if config.series_idle_timeout_s and config.recording == "sdk":
        # The SDK has no public way to remove a series: its memory stays bounded by cardinality_limit alone.
        _logger.warning(
            "series_idle_timeout_s=%s has no effect with recording='sdk': only the fast path evicts idle series",
            config.series_idle_timeout_s,
        )
    if config.recording == "fast":
        from chat_turbo_metrics._recording.fast import FastRecorder

        # Exponential histograms: the fast path has no exponential cells, so histograms and timers are recorded
        # through the SDK, whose aggregation the reader prefers then (see PipelineReader).
        histograms = None
        if config.histogram_aggregation == EXPONENTIAL_HISTOGRAM:
            histograms = SdkRecorder(pipeline.meter, registry, problems, config.sampling_rate)
            if config.series_idle_timeout_s:
                _logger.warning(
                    "series_idle_timeout_s=%s does not evict histogram series while they are exponential "
                    "histograms (recorded through the SDK); counters and gauges are evicted",
                    config.series_idle_timeout_s,
                )
        recorder = FastRecorder(registry, problems, config, overflow=pipeline.overflow, histograms=histograms)
        pipeline.add_producer(recorder.metrics, recorder.recorded)  # every collection reads its cells
        return recorder
    return SdkRecorder(pipeline.meter, registry, problems, config.sampling_rate)


class Timer:
    """Times a block or a function into a histogram; usable as a context manager and a decorator.

    Example:
        >>> with monitor.timer("message_processing", {"channel": "public"}):
        ...     reply = "hello".upper()
        >>> @monitor.timer("db_call")
        ... async def fetch(): ...
        >>> monitor.snapshot().value("message_processing_duration", {"channel": "public"})["count"]
        1
    """

    def __init__(self, monitor: PerformanceMonitor, name: str, tags: Tags) -> None:
        self._monitor = monitor
        self._name = name
        self._tags = tags
        self._starts = threading.local()

    def __enter__(self) -> Timer:
        stack = self._starts.__dict__.setdefault("stack", [])
        stack.append(self._monitor.start_timer(self._name))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._monitor.record_timer(self._name, self._starts.stack.pop(), self._tags)

    def __call__(self, func: F) -> F:
        monitor, name, tags = self._monitor, self._name, self._tags
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = monitor.start_timer(name)
                try:
                    return await func(*args, **kwargs)
                finally:
                    monitor.record_timer(name, start, tags)

            return timed_async  # type: ignore[return-value]

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = monitor.start_timer(name)
            try:
                return func(*args, **kwargs)
            finally:
                monitor.record_timer(name, start, tags)

        return timed  # type: ignore[return-value]


class PerformanceMonitor:
    """Collects HTTP, database, cache, system and custom metrics into OpenTelemetry.

    ``PerformanceMonitor()`` and ``PerformanceMonitor.get_instance()`` share the process-wide pipeline
    (configured from the environment on first use, or by :meth:`configure`). ``PerformanceMonitor(config)``
    builds a private pipeline, e.g. for tests; shut it down when done. The recording methods are ordinary methods:
    ``unittest.mock.patch.object(PerformanceMonitor, "increment_counter")`` intercepts them, a subclass may override
    them (``monitor.timer()`` goes through ``start_timer``/``record_timer``), and each delegates to the recorder of
    the pipeline the monitor records into now.

    Example:
        >>> monitor = PerformanceMonitor.get_instance()
        >>> monitor.increment_counter("messages_sent", {"channel": "public"})
        >>> monitor.record_gauge("active_connections", 12)
        >>> start = monitor.start_timer("api_request")
        >>> monitor.record_timer("api_request", start, {"method": "GET", "endpoint": "/api/x", "status": 200})
    """

    _instance: ClassVar[PerformanceMonitor | None] = None
    _global_runtime: ClassVar[_Runtime | None] = None
    _global_lock: ClassVar[threading.RLock] = threading.RLock()
    _global_monitors: ClassVar[weakref.WeakSet[PerformanceMonitor]] = weakref.WeakSet()

    def __init__(self, config: MonitoringConfig | None = None) -> None:
        """Args:
        config: build a private pipeline from this configuration; None shares the process-wide one.
        """
        self._hooks: list[Callable[[], None]] = []
        self._subscribers: list[Subscriber] = []
        self._shared = config is None  # on the process-wide pipeline, which configure() replaces
        if config is None:
            with PerformanceMonitor._global_lock:
                # Implicit creation (often at import time, or an instrumentor's first request) must not crash the
                # application over its environment: an exporter that cannot start (a taken port) is logged once,
                # the rest runs; a bad setting leaves monitoring off, said once (start_from_environment).
                runtime = PerformanceMonitor._global_runtime or PerformanceMonitor._install_from_environment()
                PerformanceMonitor._global_monitors.add(self)
                self._bind(runtime)
        else:
            self._bind(_Runtime(config))

    def _bind(self, runtime: _Runtime) -> None:
        old = getattr(self, "_runtime", None)
        self._runtime = runtime
        # What every recording method delegates to: one attribute, swapped whole when configure() rebuilds.
        self._recorder = runtime.recorder
        # Collection-time readings and subscribers follow the monitor into the new pipeline (moved out before the
        # old one shuts down: they are the caller's, not the pipeline's).
        for hook in self._hooks:
            if old is not None and old.pipeline is not None and hook in old.pipeline.collector.hooks:
                old.pipeline.collector.hooks.remove(hook)
            if runtime.pipeline is not None:
                runtime.pipeline.collector.hooks.append(hook)
        for subscriber in self._subscribers:
            if old is not None:
                old.detach(subscriber)
            runtime.attach(subscriber)

    # --- process-wide instance and configuration ----------------------------------------------
    @classmethod
    def get_instance(cls) -> PerformanceMonitor:
        """The process-wide monitor (created from the environment on first use)."""
        with cls._global_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    @classmethod
    def configure(
        cls, config: MonitoringConfig | None = None, *, strict: bool = True, **overrides: Any
    ) -> PerformanceMonitor:
        """(Re)build the process-wide pipeline from ``config`` (default: :func:`get_monitoring_config`).

        Args:
            config: the configuration; None reads ``configs/<environment>.toml`` and the environment.
            strict: raise on an unknown or unavailable exporter (False: log it and start the rest).
            **overrides: settings given in code; they win over every other source.

        Returns:
            The process-wide monitor, now recording into the new pipeline.

        Raises:
            ConfigurationError: a setting has a bad value.
        """
        with cls._global_lock:
            old = cls._global_runtime
            if config is None:
                config = get_monitoring_config(**overrides)
            elif overrides:
                config = config.replace(**overrides)
            # Built before anything changes: if it raises, the running pipeline stays in place, untouched.
            # A Prometheus exporter on the port the running pipeline serves takes the endpoint over.
            runtime = cls._install(config, strict)
            for monitor in list(cls._global_monitors):
                monitor._bind(runtime)
            if old is not None:
                old.shutdown()
            return cls.get_instance()

    @classmethod
    def _install_from_environment(cls) -> _Runtime:
        """The process-wide runtime from the environment, or, when it cannot be built, a disabled one (logged)."""
        try:
            return cls._install(get_monitoring_config(), strict=False)
        except Exception as error:  # whatever it is, the application runs on, unmeasured
            _report_not_started(error)
            return cls._install(_NOT_STARTED, strict=True)

    @classmethod
    def _install(cls, config: MonitoringConfig, strict: bool) -> _Runtime:
        runtime = _Runtime(config, strict=strict)
        _install_global_providers()
        pipeline = runtime.pipeline
        otel_globals.METER_PROVIDER.switch(pipeline.meter_provider if pipeline is not None else None)
        otel_globals.TRACER_PROVIDER.switch(pipeline.tracer_provider if pipeline is not None else None)
        cls._global_runtime = runtime
        return runtime

    @classmethod
    def _after_fork_in_child(cls) -> None:
        forks.reinit(cls._global_lock)

    # --- the documented recording API ------------------------------------------------------------
    # Real methods, so patching the class, overriding in a subclass and calling through the class behave as in
    # any Python class. Each delegates to the recorder of the current pipeline in one call (no extra work: the
    # recorder checks and records; a bad value is warned about once, counted and dropped there).
    def increment_counter(self, name: str, tags: Tags = None, value: float = 1) -> None:
        """Add ``value`` (default 1) to counter ``name``; exported as ``<name>_total``."""
        self._recorder.increment_counter(name, tags, value)

    def record_gauge(self, name: str, value: float, tags: Tags = None) -> None:
        """Set gauge ``name`` to ``value`` for these tags."""
        self._recorder.record_gauge(name, value, tags)

    def record_histogram(self, name: str, value: float, tags: Tags = None) -> None:
        """Record ``value`` into histogram ``name``."""
        self._recorder.record_histogram(name, value, tags)

    def start_timer(self, name: str | None = None) -> float:
        """A start token for :meth:`record_timer` (``time.perf_counter()`` seconds)."""
        return self._recorder.start_timer(name)

    def record_timer(self, name: str, start: float, tags: Tags = None) -> None:
        """Record the seconds since ``start`` into histogram ``<name>_duration`` (``_seconds`` in Prometheus)."""
        self._recorder.record_timer(name, start, tags)

    def timer(self, name: str, tags: Tags = None) -> Timer:
        """A context manager and decorator (sync or async) that records its duration like :meth:`record_timer`."""
        return Timer(self, name, tags)

    # --- bound handles for hot loops ------------------------------------------------------------
    def counter(self, name: str, tags: Tags = None) -> BoundInstrument:
        """A handle on one counter series: ``handle.inc(value=1)``."""
        return self._runtime.recorder.bind("counter", name, tags)

    def histogram(self, name: str, tags: Tags = None) -> BoundInstrument:
        """A handle on one histogram series: ``handle.observe(value)``."""
        return self._runtime.recorder.bind("histogram", name, tags)

    def gauge(self, name: str, tags: Tags = None) -> BoundInstrument:
        """A handle on one gauge series: ``handle.set(value)``."""
        return self._runtime.recorder.bind("gauge", name, tags)

    def bundle(
        self, observe: Sequence[Sequence[BoundInstrument]], increment: Sequence[BoundInstrument] = ()
    ) -> Callable[..., None]:
        """One call that records one event into several handles of this monitor, under one lock.

        ``record(v0, v1, ...)`` observes ``v0`` into every histogram handle of ``observe[0]``, ``v1`` into those of
        ``observe[1]``, ..., and adds 1 to every counter handle of ``increment``: what the handle calls would do,
        for the cost of about one (what a web request's four or more recordings need).

        Example:
            >>> tags = {"endpoint": "/api/x"}
            >>> record = monitor.bundle(
            ...     [[monitor.histogram("request_seconds", tags)], [monitor.histogram("response_bytes", tags)]],
            ...     [monitor.counter("requests", tags)],
            ... )
            >>> record(0.004, 1200)
            >>> monitor.snapshot().value("requests", tags), monitor.snapshot().value("response_bytes", tags)["sum"]
            (1, 1200)

        Args:
            observe: per argument position, the histogram handles that observe it.
            increment: counter handles incremented by 1 on every call.

        Returns:
            The recording function; like a handle, it warns once, counts and drops a bad value.
        """
        return bundle(observe, increment)

    def define(
        self,
        name: str,
        kind: Kind,
        *,
        unit: str | None = None,
        description: str | None = None,
        buckets: tuple[float, ...] | None = None,
    ) -> None:
        """Declare a metric's unit, description (HELP) or buckets before first use.

        Raises:
            ValueError: bad name, or the name is already in use with other settings.
        """
        self._runtime.recorder.define(kind, name, unit=unit, description=description, buckets=buckets)

    # --- collection-time readings --------------------------------------------------------------
    def add_collection_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` just before every collection (a scrape or a periodic export), on that thread.

        The hook records current readings (system statistics, pool usage) through this monitor's methods,
        so they cost nothing between collections. It follows the monitor into a reconfigured pipeline.
        An exception from the hook is logged once and the collection goes on.

        Args:
            hook: a callable with no arguments; it must not block.
        """
        self._hooks.append(hook)
        if self._runtime.pipeline is not None:
            self._runtime.pipeline.collector.hooks.append(hook)

    def remove_collection_hook(self, hook: Callable[[], None]) -> None:
        """Stop calling ``hook`` (added by :meth:`add_collection_hook`); unknown hooks are ignored."""
        if hook in self._hooks:
            self._hooks.remove(hook)
        pipeline = self._runtime.pipeline
        if pipeline is not None and hook in pipeline.collector.hooks:
            pipeline.collector.hooks.remove(hook)

    # --- subscribers: the pipeline's data as it is made ----------------------------------------
    def subscribe(self, subscriber: MetricExporter | SpanProcessor) -> None:
        """Hand ``subscriber`` the pipeline's data, following this monitor into every pipeline ``configure()`` builds.

        A ``MetricExporter`` gets the cumulative collection of every export cycle, on its own worker thread (a slow
        one delays nothing else); a ``SpanProcessor`` sees every span of the pipeline's TracerProvider. Unlike
        :meth:`add_exporter`'s, a subscriber stays the caller's: a reconfiguration moves it instead of shutting it
        down, and :meth:`unsubscribe` stops it. Subscribing twice is subscribing once.

        Example:
            >>> from chat_turbo_metrics.exporters.file import FileExporter, read_metric_records
            >>> exporter = FileExporter(tmp_path / "cycle.jsonl")
            >>> monitor.subscribe(exporter)
            >>> monitor.increment_counter("orders", value=3)
            >>> monitor.force_flush()
            True
            >>> [r["value"] for r in read_metric_records(tmp_path / "cycle.jsonl") if r["name"] == "orders"]
            [3]
            >>> monitor.unsubscribe(exporter)
            True

        Raises:
            TypeError: neither a ``MetricExporter`` nor a ``SpanProcessor``.
        """
        if not isinstance(subscriber, MetricExporter | SpanProcessor):
            raise TypeError(
                f"subscribe() takes an OpenTelemetry MetricExporter or SpanProcessor; got {type(subscriber).__name__}"
            )
        with PerformanceMonitor._global_lock:  # configure() moves subscribers under it
            if any(s is subscriber for s in self._subscribers):
                return
            self._subscribers.append(subscriber)
            self._runtime.attach(subscriber)

    def unsubscribe(self, subscriber: MetricExporter | SpanProcessor) -> bool:
        """Stop handing ``subscriber`` data (it is not shut down); the counterpart of :meth:`subscribe`.

        Returns:
            True when it was subscribed.
        """
        with PerformanceMonitor._global_lock:
            if not any(s is subscriber for s in self._subscribers):
                return False
            self._subscribers = [s for s in self._subscribers if s is not subscriber]
            self._runtime.detach(subscriber)
            return True

    # --- data and life cycle ------------------------------------------------------------------
    @property
    def config(self) -> MonitoringConfig:
        """The configuration this monitor's pipeline was built from."""
        return self._runtime.config

    @property
    def pipeline(self) -> PipelineView | None:
        """A read-only view of the pipeline this monitor records into now (None when monitoring is disabled).

        ``configure()`` replaces the process-wide pipeline: read this again rather than keeping it.
        """
        return self._runtime.view

    @property
    def meter_provider(self) -> metrics.MeterProvider:
        """An OpenTelemetry MeterProvider that follows this monitor: its instruments record into the pipeline this
        monitor records into, now and after every ``configure()`` (for the process-wide monitor, the one
        OpenTelemetry's global provider delegates to)."""
        if self._shared:
            return otel_globals.METER_PROVIDER
        pipeline = self._runtime.pipeline
        return pipeline.meter_provider if pipeline is not None else _NO_METERS

    @property
    def tracer_provider(self) -> trace.TracerProvider:
        """An OpenTelemetry TracerProvider that follows this monitor, as :attr:`meter_provider` does."""
        if self._shared:
            return otel_globals.TRACER_PROVIDER
        pipeline = self._runtime.pipeline
        return pipeline.tracer_provider if pipeline is not None else _NO_TRACERS

    @property
    def dropped(self) -> int:
        """Recordings dropped for bad input so far."""
        return self._runtime.problems.total

    def snapshot(self) -> MetricsSnapshot:
        """Current values of every metric, serializable to JSON and Prometheus text."""
        pipeline = self._runtime.pipeline
        scope_labels = self._runtime.config.prometheus_scope_labels  # as /metrics shows them
        return MetricsSnapshot(pipeline.collect() if pipeline is not None else None, scope_labels=scope_labels)

    def add_exporter(self, exporter: Any) -> None:
        """Send metrics to ``exporter`` too: a ``PrometheusExporter`` or any OpenTelemetry ``MetricExporter``.

        The exporter joins the current pipeline and is shut down with it (a ``configure()`` builds the next one
        from the configuration); :meth:`subscribe` one that should follow the monitor instead.
        """
        pipeline = self._runtime.pipeline
        if pipeline is None:
            _logger.warning("monitoring is disabled; %r receives nothing", exporter)
            return
        pipeline.add_exporter(exporter)

    def force_flush(self, timeout_s: float | None = None) -> bool:
        """Export everything recorded so far to every push exporter; False if one timed out."""
        pipeline = self._runtime.pipeline
        return pipeline.force_flush(timeout_s) if pipeline is not None else True

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Export the last data to every exporter once and stop them."""
        self._runtime.shutdown(timeout_s)

    def __repr__(self) -> str:
        state = "disabled" if self._runtime.pipeline is None else f"recording={self._runtime.config.recording}"
        return f"<PerformanceMonitor service={self._runtime.config.service_name!r} {state}>"


@functools.cache  # once per process: OpenTelemetry refuses to replace its global providers
def _install_global_providers() -> None:
    """Make OpenTelemetry's global providers our delegating ones; they follow every later pipeline."""
    metrics.set_meter_provider(otel_globals.METER_PROVIDER)
    trace.set_tracer_provider(otel_globals.TRACER_PROVIDER)
    if metrics.get_meter_provider() is not otel_globals.METER_PROVIDER:
        _logger.warning(
            "OpenTelemetry's global meter provider was set by someone else before chat_turbo_metrics; "
            "instruments from the OpenTelemetry API record there, not into this pipeline"
        )


# Frees the process-wide lock in a forked child (a thread may have been configuring).
forks.register_function(PerformanceMonitor._after_fork_in_child, forks.Phase.LOCKS)
otel_globals.provide_process_monitor(PerformanceMonitor.get_instance)


# What the process-wide monitor runs on when its configuration cannot be used: every recording a no-op.
_NOT_STARTED = MonitoringConfig(enabled=False, metrics_exporters=())


def _report_not_started(error: BaseException) -> None:
    """The one error log of a process-wide start that failed: why, what it means, how to fix it."""
    _logger.error(
        "chat_turbo_metrics not started: %s. The application runs unmeasured (every recording is a no-op) until "
        "this is fixed and the process restarted; `chat-turbo-metrics config` checks the settings.",
        error,
        exc_info=not isinstance(error, ConfigurationError),  # a bug of ours, not a setting: the traceback helps
    )


def start_from_environment() -> PerformanceMonitor:
    """Build the process-wide pipeline from the environment as ``configure(strict=False)`` does, never raising.

    What ``opentelemetry-instrument`` runs. When the configuration cannot be used, one error says why and the
    process-wide monitor stays disabled: instrumentors pass requests through unmeasured, recording calls are
    no-ops, and a later ``configure()`` in code can still start it.

    Returns:
        The process-wide monitor.
    """
    with PerformanceMonitor._global_lock:
        try:
            return PerformanceMonitor.configure(strict=False)
        except Exception as error:
            _report_not_started(error)
            if PerformanceMonitor._global_runtime is None:
                PerformanceMonitor._install(_NOT_STARTED, strict=True)
            return PerformanceMonitor.get_instance()


def configure(config: MonitoringConfig | None = None, *, strict: bool = True, **overrides: Any) -> PerformanceMonitor:
    """Configure the process-wide pipeline; see :meth:`PerformanceMonitor.configure`."""
    return PerformanceMonitor.configure(config, strict=strict, **overrides)
