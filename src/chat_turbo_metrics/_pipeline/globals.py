"""OpenTelemetry's global meter and tracer providers, kept pointing at the live pipeline.

OpenTelemetry lets a process set its global providers once. ``configure()`` may build a new pipeline later
(the seed's pattern: ``get_instance()`` at import, ``configure(...)`` at start-up), so the globals are
installed once as *delegating* providers and switched to each new pipeline. Meters, tracers and instruments
handed out earlier switch with them: a contrib instrumentation that created its instruments at import
records into whichever pipeline is live. A measurement costs one extra call frame.

Example:
    >>> from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    >>> provider = DelegatingMeterProvider()
    >>> jobs = provider.get_meter("lib").create_counter("jobs")
    >>> provider.switch(SdkMeterProvider())
    >>> jobs.add(1)   # recorded by the SDK provider switched to, though created before it
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackT, Meter, NoOpMeterProvider
from opentelemetry.util.types import Attributes

from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.compat import ApiGauge

_Factory = Callable[[Meter], Any]
_MAX_METERS = 1000  # identities cached; past that, meters are still handed out, just not shared


class _Counter(metrics.Counter):
    def __init__(self, real: Any) -> None:
        self._real = real

    def add(self, amount: int | float, attributes: Attributes = None, context: Any = None) -> None:
        self._real.add(amount, attributes, context)


class _UpDownCounter(metrics.UpDownCounter):
    def __init__(self, real: Any) -> None:
        self._real = real

    def add(self, amount: int | float, attributes: Attributes = None, context: Any = None) -> None:
        self._real.add(amount, attributes, context)


class _Histogram(metrics.Histogram):
    def __init__(self, real: Any) -> None:
        self._real = real

    def record(self, amount: int | float, attributes: Attributes = None, context: Any = None) -> None:
        self._real.record(amount, attributes, context)


class _Gauge(ApiGauge):
    def __init__(self, real: Any) -> None:
        self._real = real

    def set(self, amount: int | float, attributes: Attributes = None, context: Any = None) -> None:
        self._real.set(amount, attributes, context)


class _Observable:
    """An asynchronous instrument: nothing to call on it; its callbacks are re-registered on each switch."""

    def __init__(self, real: Any) -> None:
        self._real = real


class _ObservableCounter(_Observable, metrics.ObservableCounter):
    pass


class _ObservableUpDownCounter(_Observable, metrics.ObservableUpDownCounter):
    pass


class _ObservableGauge(_Observable, metrics.ObservableGauge):
    pass


class _DelegatingMeter(Meter):
    """Creates delegating instruments and re-creates their targets on the meter switched to."""

    def __init__(self, target: metrics.MeterProvider, args: tuple[Any, ...]) -> None:
        self._args = args
        self._lock = threading.Lock()
        # Weak: code that creates an instrument per call must not make this grow.
        self._instruments: weakref.WeakKeyDictionary[Any, _Factory] = weakref.WeakKeyDictionary()
        self._real = target.get_meter(*args)

    @property
    def name(self) -> str:
        return str(self._args[0])

    @property
    def version(self) -> str | None:
        return self._args[1]  # type: ignore[no-any-return]

    @property
    def schema_url(self) -> str | None:
        return self._args[2]  # type: ignore[no-any-return]

    def switch(self, target: metrics.MeterProvider) -> None:
        with self._lock:
            self._real = real = target.get_meter(*self._args)
            for instrument, factory in list(self._instruments.items()):
                instrument._real = factory(real)

    def _make(self, wrapper: Callable[[Any], Any], factory: _Factory) -> Any:
        with self._lock:
            instrument = wrapper(factory(self._real))
            self._instruments[instrument] = factory
        return instrument

    def create_counter(self, name: str, unit: str = "", description: str = "") -> metrics.Counter:
        return self._make(_Counter, lambda meter: meter.create_counter(name, unit, description))  # type: ignore[no-any-return]

    def create_up_down_counter(self, name: str, unit: str = "", description: str = "") -> metrics.UpDownCounter:
        return self._make(  # type: ignore[no-any-return]
            _UpDownCounter, lambda meter: meter.create_up_down_counter(name, unit, description)
        )

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> metrics.Histogram:
        return self._make(  # type: ignore[no-any-return]
            _Histogram,
            lambda meter: meter.create_histogram(
                name, unit, description, explicit_bucket_boundaries_advisory=explicit_bucket_boundaries_advisory
            ),
        )

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> Any:
        return self._make(_Gauge, lambda meter: meter.create_gauge(name, unit, description))

    def create_observable_counter(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "", description: str = ""
    ) -> metrics.ObservableCounter:
        return self._make(  # type: ignore[no-any-return]
            _ObservableCounter, lambda meter: meter.create_observable_counter(name, callbacks, unit, description)
        )

    def create_observable_up_down_counter(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "", description: str = ""
    ) -> metrics.ObservableUpDownCounter:
        return self._make(  # type: ignore[no-any-return]
            _ObservableUpDownCounter,
            lambda meter: meter.create_observable_up_down_counter(name, callbacks, unit, description),
        )

    def create_observable_gauge(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "", description: str = ""
    ) -> metrics.ObservableGauge:
        return self._make(  # type: ignore[no-any-return]
            _ObservableGauge, lambda meter: meter.create_observable_gauge(name, callbacks, unit, description)
        )


class DelegatingMeterProvider(metrics.MeterProvider):
    """The process's global MeterProvider: hands out meters that follow :meth:`switch`.

    Anything else (``force_flush``, ``shutdown``) goes to the provider currently switched to.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: metrics.MeterProvider = NoOpMeterProvider()
        self._meters: weakref.WeakSet[_DelegatingMeter] = weakref.WeakSet()
        self._by_key: dict[str, _DelegatingMeter] = {}
        forks.register(self, forks.Phase.LOCKS)

    def get_meter(
        self, name: str, version: str | None = None, schema_url: str | None = None, attributes: Attributes = None
    ) -> Meter:
        # One meter per identity (repr: attribute values may be unhashable lists).
        key = repr((name, version, schema_url, sorted(attributes.items()) if attributes else ()))
        with self._lock:
            meter = self._by_key.get(key)
            if meter is None:
                meter = _DelegatingMeter(self._target, (name, version, schema_url, attributes))
                if len(self._by_key) < _MAX_METERS:
                    self._by_key[key] = meter
                self._meters.add(meter)
        return meter

    def switch(self, target: metrics.MeterProvider | None) -> None:
        """Send every meter and instrument handed out so far, and later, to ``target`` (None: nowhere)."""
        with self._lock:
            self._target = target if target is not None else NoOpMeterProvider()
            meters = list(self._meters)
        for meter in meters:
            meter.switch(self._target)

    @property
    def target(self) -> metrics.MeterProvider:
        """The provider measurements go to now."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        for meter in list(self._meters):
            meter._lock = threading.Lock()


class _DelegatingTracer(trace.Tracer):
    def __init__(self, target: trace.TracerProvider, args: tuple[Any, ...]) -> None:
        self._args = args
        self._real = target.get_tracer(*args)

    def switch(self, target: trace.TracerProvider) -> None:
        self._real = target.get_tracer(*self._args)

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._real.start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._real.start_as_current_span(*args, **kwargs)


class DelegatingTracerProvider(trace.TracerProvider):
    """The process's global TracerProvider: hands out tracers that follow :meth:`switch`.

    Anything else (``add_span_processor``, ``force_flush``, ``resource``) goes to the provider switched to.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: trace.TracerProvider = trace.NoOpTracerProvider()
        # Weak: libraries that call get_tracer() per request must not make this grow.
        self._tracers: weakref.WeakSet[_DelegatingTracer] = weakref.WeakSet()
        forks.register(self, forks.Phase.LOCKS)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        with self._lock:
            tracer = _DelegatingTracer(
                self._target, (instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
            )
            self._tracers.add(tracer)
        return tracer

    def switch(self, target: trace.TracerProvider | None) -> None:
        """Send every tracer handed out so far, and later, to ``target`` (None: nowhere)."""
        with self._lock:
            self._target = target if target is not None else trace.NoOpTracerProvider()
            for tracer in list(self._tracers):
                tracer.switch(self._target)

    @property
    def target(self) -> trace.TracerProvider:
        """The provider spans go to now."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


METER_PROVIDER = DelegatingMeterProvider()
TRACER_PROVIDER = DelegatingTracerProvider()

_process_monitor: list[Callable[[], Any]] = []


def provide_process_monitor(get: Callable[[], Any]) -> None:
    """How to get the process-wide monitor, said once by the facade that owns it (``chat_turbo_metrics._monitor``,
    imported with the package), so that the layers below it (alerting's default monitor) find it without importing
    it."""
    _process_monitor[:] = [get]


def process_monitor() -> Any:
    """The process-wide ``PerformanceMonitor`` (created from the environment on first use).

    Raises:
        RuntimeError: the facade was never imported (it is imported with ``chat_turbo_metrics``).
    """
    if not _process_monitor:
        raise RuntimeError("chat_turbo_metrics._monitor was not imported: no process-wide monitor")
    return _process_monitor[0]()
