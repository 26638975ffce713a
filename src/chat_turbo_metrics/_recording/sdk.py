"""Recording front ends behind :class:`PerformanceMonitor`: the plain SDK path and the disabled no-op.

A recorder's public methods ARE the monitor's methods (the monitor binds them at set-up time), so a
recording call costs one frame plus the work below. Choices such as sampling are made when the recorder
is built, never per call.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.metrics import Meter

from chat_turbo_metrics._core.guard import (
    EXACT_TYPES,
    FLOAT_MAX,
    INT64_BOUND,
    Problems,
    checked_tags,
    install_sdk_log_filter,
    number,
    plain_tags,
    short_repr,
    timer_seconds,
)
from chat_turbo_metrics._core.naming import Kind
from chat_turbo_metrics._recording.instruments import InstrumentRegistry, InstrumentSpec

Tags = Mapping[str, Any] | None
_perf_counter = time.perf_counter
_EXACT = EXACT_TYPES
_I64 = INT64_BOUND
_FMAX = FLOAT_MAX


class _Dropped:
    """Stands in for an instrument that cannot exist (bad name, kind clash): records nothing."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Drop."""

    record = set = add


DROPPED = _Dropped()


def create_instrument(meter: Meter, spec: InstrumentSpec) -> Any:
    """The SDK synchronous instrument for ``spec``."""
    if spec.kind == "counter":
        return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)
    if spec.kind == "updowncounter":
        return meter.create_up_down_counter(spec.name, unit=spec.unit, description=spec.description)
    if spec.kind == "gauge":
        return meter.create_gauge(spec.name, unit=spec.unit, description=spec.description)
    return meter.create_histogram(
        spec.name,
        unit=spec.unit,
        description=spec.description,
        explicit_bucket_boundaries_advisory=list(spec.buckets) if spec.buckets is not None else None,
    )


class BoundInstrument:
    """A handle on one series (instrument + tags) for hot loops: ``inc()``, ``observe()``, ``set()``.

    Example:
        >>> sent = monitor.counter("messages_sent", {"channel": "public"})
        >>> sent.inc()
        >>> sent.inc(2)
        >>> monitor.snapshot().value("messages_sent", {"channel": "public"})
        3
    """

    __slots__ = ("_instrument", "_problems", "_tags", "name")

    def __init__(self, instrument: Any, tags: Tags, problems: Problems, name: str) -> None:
        self._instrument = instrument
        self._tags = tags
        self._problems = problems
        self.name = name

    def inc(self, value: float = 1) -> None:
        """Add ``value`` (default 1) to a counter."""
        try:
            if value.__class__ in _EXACT and 0 <= value < _I64:
                self._instrument.add(value, self._tags)
                return
        except Exception:
            pass
        self._slow("add", value, True)

    def observe(self, value: float) -> None:
        """Record one observation into a histogram."""
        try:
            if value.__class__ in _EXACT and 0 <= value < _FMAX:
                self._instrument.record(value, self._tags)
                return
        except Exception:
            pass
        self._slow("record", value, True)

    def set(self, value: float) -> None:
        """Set a gauge."""
        try:
            if value.__class__ in _EXACT and -_I64 <= value < _I64:
                self._instrument.set(value, self._tags)
                return
        except Exception:
            pass
        self._slow("set", value, False)

    def _slow(self, method: str, value: Any, non_negative: bool) -> None:
        checked, why = number(value, non_negative=non_negative)
        if why is not None:
            self._problems.report(("value", self.name, why[0]), "%s: cannot record %s", self.name, why[1])
            return
        try:
            getattr(self._instrument, method)(checked, self._tags)
        except Exception as error:
            self._problems.report(
                ("value", self.name, type(error)), "%s: cannot record %r: %s", self.name, value, error
            )


class SdkRecorder:
    """Records every call straight into the OpenTelemetry SDK's synchronous instruments.

    Keeps per-measurement exemplars and every SDK feature; costs what the SDK costs (~10 µs a call).
    """

    def __init__(self, meter: Meter, registry: InstrumentRegistry, problems: Problems, sampling_rate: float) -> None:
        self._meter = meter
        self._registry = registry
        self._problems = problems
        self._by_kind: dict[tuple[Kind, bool], dict[str, Any]] = {
            ("counter", False): {},
            ("gauge", False): {},
            ("histogram", False): {},
            ("histogram", True): {},
        }
        self._counters = self._by_kind["counter", False]
        self._gauges = self._by_kind["gauge", False]
        self._histograms = self._by_kind["histogram", False]
        self._timers = self._by_kind["histogram", True]
        self._rate = sampling_rate
        install_sdk_log_filter()
        if sampling_rate < 1.0:
            # Sampling applies to distributions only; decided here so the unsampled path has no branch.
            self.record_histogram = self._sampled_histogram  # type: ignore[method-assign]
            self.record_timer = self._sampled_timer  # type: ignore[method-assign]

    # --- slow path: first use of a name, bad input ----------------------------------------------
    def _instrument(self, kind: Kind, name: Any, timer: bool = False) -> Any:
        cache = self._by_kind[kind, timer]
        spec = self._registry.resolve(kind, name, timer=timer)
        if spec is None:
            return DROPPED  # not cached: every call is counted as dropped, like on the fast path
        instrument = create_instrument(self._meter, spec)
        if isinstance(name, str):
            cache[name] = instrument
        return instrument

    def _number(self, name: Any, value: Any, non_negative: bool) -> int | float | None:
        """``value`` normalised like the fast path does it, or None (reported) when it cannot be recorded."""
        checked, why = number(value, non_negative=non_negative)
        if why is not None:
            self._problems.report(("value", name, why[0]), "%s: cannot record %s: %s", name, short_repr(value), why[1])
        return checked

    def _record(self, route: tuple[Kind, bool, bool], name: Any, tags: Tags, value: Any) -> None:
        """Everything but the common case: a new or bad name, bad tags, a value that needs normalising."""
        kind, timer, non_negative = route
        try:
            instrument = self._by_kind[kind, timer].get(name) or self._instrument(kind, name, timer)
            if instrument is DROPPED:
                return
            clean = None if tags is None else checked_tags(name, tags, self._problems)
            if tags is not None and clean is None:
                return  # refused; reported
            if timer:
                value, problem = timer_seconds(value, _perf_counter())
                if problem is not None:
                    self._problems.report(("value", name, problem[0]), "%s: cannot record %s", name, problem[1])
                    return
            else:
                value = self._number(name, value, non_negative)
                if value is None:
                    return
            _RECORD[kind](instrument, value, clean)
        except Exception as error:  # never raise while recording
            self._problems.report(("internal", type(error)), "%s: recording failed: %r", name, error)

    # --- hot path: a known name, plain tags, a plain int/float in range --------------------------------
    def increment_counter(self, name: str, tags: Tags = None, value: float = 1) -> None:
        try:
            counter = self._counters[name]
            if value.__class__ in _EXACT and 0 <= value < _I64 and (tags is None or plain_tags(tags)):
                counter.add(value, tags)
                return
        except Exception:  # a new name, or bad input: the slow path sorts it out
            pass
        self._record(_COUNTER, name, tags, value)

    def record_gauge(self, name: str, value: float, tags: Tags = None) -> None:
        try:
            gauge = self._gauges[name]
            if value.__class__ in _EXACT and -_I64 <= value < _I64 and (tags is None or plain_tags(tags)):
                gauge.set(value, tags)
                return
        except Exception:
            pass
        self._record(_GAUGE, name, tags, value)

    def record_histogram(self, name: str, value: float, tags: Tags = None) -> None:
        try:
            histogram = self._histograms[name]
            if value.__class__ in _EXACT and 0 <= value < _FMAX and (tags is None or plain_tags(tags)):
                histogram.record(value, tags)
                return
        except Exception:
            pass
        self._record(_HISTOGRAM, name, tags, value)

    def start_timer(self, name: str | None = None) -> float:
        return _perf_counter()

    def record_timer(self, name: str, start: float, tags: Tags = None) -> None:
        end = _perf_counter()
        try:
            timer = self._timers[name]
            value = end - start
            if start.__class__ is float and 0 <= value < end and (tags is None or plain_tags(tags)):
                timer.record(value, tags)
                return
        except Exception:
            pass
        self._record(_TIMER, name, tags, start)

    def _sampled_histogram(self, name: str, value: float, tags: Tags = None) -> None:
        if random.random() < self._rate:
            SdkRecorder.record_histogram(self, name, value, tags)

    def _sampled_timer(self, name: str, start: float, tags: Tags = None) -> None:
        if random.random() < self._rate:
            SdkRecorder.record_timer(self, name, start, tags)

    # --- set-up time ------------------------------------------------------------------------------
    def bind(self, kind: Kind, name: str, tags: Tags, timer: bool = False) -> BoundInstrument:
        """A handle for one series; bad names or tags give a handle that drops (reported once)."""
        clean = None if tags is None else checked_tags(name, tags, self._problems)
        if tags is not None and clean is None:
            return BoundInstrument(DROPPED, None, self._problems, str(name))
        cache = self._by_kind[kind, timer]
        instrument = (cache.get(name) if isinstance(name, str) else None) or self._instrument(kind, name, timer)
        return BoundInstrument(instrument, dict(clean) if clean else None, self._problems, str(name))

    def define(self, kind: Kind, name: str, **settings: Any) -> None:
        """Create the instrument now with explicit unit/description/buckets."""
        spec = self._registry.define(kind, name, **settings)
        self._by_kind[kind, bool(settings.get("timer"))][name] = create_instrument(self._meter, spec)


_COUNTER: tuple[Kind, bool, bool] = ("counter", False, True)  # (kind, timer, non-negative)
_GAUGE: tuple[Kind, bool, bool] = ("gauge", False, False)
_HISTOGRAM: tuple[Kind, bool, bool] = ("histogram", False, True)
_TIMER: tuple[Kind, bool, bool] = ("histogram", True, True)
_RECORD: dict[str, Callable[[Any, Any, Tags], None]] = {
    "counter": lambda instrument, value, tags: instrument.add(value, tags),
    "gauge": lambda instrument, value, tags: instrument.set(value, tags),
    "histogram": lambda instrument, value, tags: instrument.record(value, tags),
}


def _noop(*args: Any, **kwargs: Any) -> None:
    """Monitoring is disabled."""


def _noop_start(*args: Any, **kwargs: Any) -> float:
    return 0.0


class NoopRecorder:
    """What a disabled monitor records with: nothing, as cheaply as a call can be."""

    increment_counter = staticmethod(_noop)
    record_gauge = staticmethod(_noop)
    record_histogram = staticmethod(_noop)
    record_timer = staticmethod(_noop)
    start_timer = staticmethod(_noop_start)

    def bind(self, kind: Kind, name: str, tags: Tags, timer: bool = False) -> BoundInstrument:
        return BoundInstrument(DROPPED, None, Problems(), str(name))

    def define(self, kind: Kind, name: str, **settings: Any) -> None:
        """Nothing to define."""
