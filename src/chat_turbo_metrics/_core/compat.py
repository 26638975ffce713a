"""Every private OpenTelemetry name chat_turbo_metrics relies on, and nothing else.

The SDK and the Prometheus exporter keep some things we need behind underscores: the configurator base class
``opentelemetry-instrument`` loads, the synchronous gauge class, the Prometheus unit mapping, the loggers that
report rejected measurements, the resource a MeterProvider refreshes after a fork, the measurement consumer every
synchronous instrument feeds, an exporter's temporality preference, the OTLP/gRPC exporter's channel, and the
context key and variable that hold the current span (read on the recording hot path for exemplars). Each is
imported or read here only, so an SDK upgrade that moves one breaks this module and ``tests/_core/test_compat.py``,
not a capability somewhere else.

Example:
    >>> from chat_turbo_metrics._core.compat import prometheus_unit_suffix
    >>> prometheus_unit_suffix("By")
    'bytes'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as _otel_context
from opentelemetry.exporter.prometheus._mapping import map_unit
from opentelemetry.metrics import _Gauge as _ApiGauge
from opentelemetry.sdk._configuration import _BaseConfigurator
from opentelemetry.sdk.metrics import Counter, Histogram, UpDownCounter, _Gauge
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace.propagation import _SPAN_KEY

from chat_turbo_metrics._core.forks import reinit

__all__ = [
    "SDK_MEASUREMENT_LOGGERS",
    "SPAN_KEY",
    "ApiGauge",
    "BaseConfigurator",
    "SdkGauge",
    "count_measurements",
    "current_context_reader",
    "exporter_temporality",
    "forget_inherited_sums",
    "keep_grpc_channel",
    "prometheus_unit_suffix",
    "provider_resource",
    "reinit_sdk_metric_locks",
]

BaseConfigurator = _BaseConfigurator
"""What an ``opentelemetry_configurator`` entry point must subclass (``opentelemetry.sdk._configuration``)."""

SdkGauge = _Gauge
"""The SDK's synchronous gauge class, a key of temporality and cardinality preferences."""

ApiGauge = _ApiGauge
"""The API's synchronous gauge base class (``opentelemetry.metrics._Gauge``), for delegating instruments."""

SPAN_KEY = _SPAN_KEY
"""The key of the current span in an OpenTelemetry context (``opentelemetry.trace.propagation``)."""


def current_context_reader() -> Callable[[], Mapping[str, Any]]:
    """The cheapest way to read the current OpenTelemetry context: the default runtime context's context
    variable's ``get`` (one C call), or the public ``get_current`` when another runtime context is configured."""
    runtime = getattr(_otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    getter = getattr(variable, "get", None)
    return getter if callable(getter) else _otel_context.get_current


# The SDK modules whose loggers report a measurement they dropped (named after the modules, ``_internal``).
SDK_MEASUREMENT_LOGGERS = (
    "opentelemetry.sdk.metrics._internal.instrument",
    "opentelemetry.sdk.metrics._internal.measurement",
)


def prometheus_unit_suffix(unit: str) -> str:
    """The Prometheus metric-name suffix ``opentelemetry-exporter-prometheus`` gives a UCUM unit."""
    return str(map_unit(unit))


def provider_resource(meter_provider: object) -> Resource | None:
    """The resource a MeterProvider holds now (the SDK replaces it after a fork), or None if not found."""
    found = getattr(getattr(meter_provider, "_sdk_config", None), "resource", None)
    return found if isinstance(found, Resource) else None


def exporter_temporality(exporter: object) -> Mapping[type, AggregationTemporality]:
    """An exporter's temporality preference by instrument class, as ``MetricExporter.__init__`` stored it.

    Empty when it wants cumulative data for every kind, or when a third-party exporter skipped that ``__init__``.
    """
    preferred = getattr(exporter, "_preferred_temporality", None)
    return preferred if isinstance(preferred, Mapping) else {}


def reinit_sdk_metric_locks(meter_provider: Any) -> None:
    """Free every lock the SDK's metric state holds, in place; for a forked child only.

    The SDK renews its MeterProvider's own locks after a fork but not those of its measurement consumer,
    reader storages, instrument/View matches, aggregations and exemplar reservoirs. A thread recording or
    collecting while another forks leaves them held in the child, whose next measurement then hangs. What
    the interrupted thread was updating (one series' aggregation) may be half-updated in the child.
    """
    consumer = getattr(meter_provider, "_measurement_consumer", None)
    reinit(getattr(consumer, "_lock", None))
    for meter in list(getattr(meter_provider, "_meters", {}).values()):
        reinit(getattr(meter, "_instrument_registration_lock", None))
    for storage in list(getattr(consumer, "_reader_storages", {}).values()):
        reinit(getattr(storage, "_lock", None))
        for matches in list(getattr(storage, "_instrument_view_instrument_matches", {}).values()):
            for match in matches:
                reinit(getattr(match, "_lock", None))
                for aggregation in list(getattr(match, "_attributes_aggregation", {}).values()):
                    reinit(getattr(aggregation, "_lock", None))
                    reinit(getattr(getattr(aggregation, "_reservoir", None), "_lock", None))


def count_measurements(meter_provider: Any) -> Callable[[], int] | None:
    """Count the synchronous measurements ``meter_provider`` consumes; the count, or None when it cannot be seen.

    Every synchronous instrument hands its measurement to the provider's one measurement consumer
    (``_measurement_consumer.consume_measurement``); the consumer is wrapped in place, on the instance, with a
    call that adds one to a counter (a few tens of ns on the SDK's microseconds). Observable instruments are
    read at collection and are not counted.
    """
    consumer: Any = getattr(meter_provider, "_measurement_consumer", None)
    consume = getattr(consumer, "consume_measurement", None)
    if consume is None:
        return None
    count = [0]

    def consume_measurement(measurement: Any, *args: Any, **kwargs: Any) -> None:
        count[0] += 1  # a racing increment may be lost; the count still moves, which is all a reader asks
        consume(measurement, *args, **kwargs)

    consumer.consume_measurement = consume_measurement
    return lambda: count[0]


_SUMMED = (Counter, UpDownCounter, Histogram)  # what a forked child must not report again as its own


def forget_inherited_sums(meter_provider: Any) -> int:
    """Drop the SDK's series of synchronous counters, up-down counters and histograms; for a forked child only.

    The child inherits every series its parent aggregated, and the parent keeps reporting them: the child
    must report only what it records itself. Each dropped series starts again (with a new start time) at
    its next measurement. Gauges keep their last value; observable instruments report what their callbacks
    observe in the child. Returns how many series were dropped.
    """
    dropped = 0
    consumer = getattr(meter_provider, "_measurement_consumer", None)
    for storage in list(getattr(consumer, "_reader_storages", {}).values()):
        for matches in list(getattr(storage, "_instrument_view_instrument_matches", {}).values()):
            for match in matches:
                series = getattr(match, "_attributes_aggregation", None)
                if isinstance(series, dict) and isinstance(getattr(match, "_instrument", None), _SUMMED):
                    dropped += len(series)
                    match._attributes_aggregation = {}
    return dropped


class _KeptChannel:
    """A gRPC channel the OTLP exporter may "close" after an UNAVAILABLE error without it being closed."""

    def __init__(self, channel: Any, exporter: Any) -> None:
        self.channel = channel
        self._exporter = exporter

    def close(self) -> None:
        # The exporter sets ``_shutdown`` before it closes the channel in shutdown(); any other close is its
        # reaction to UNAVAILABLE, which would throw away a channel that reconnects by itself.
        if getattr(self._exporter, "_shutdown", True):
            self.channel.close()


def keep_grpc_channel(exporter: Any) -> bool:
    """Make an OTLP/gRPC exporter keep its channel when an export fails with UNAVAILABLE; True if done.

    The exporter (``OTLPExporterMixin._export``) closes its channel and builds a new one at every such failure,
    so while its endpoint is down or flapping each export starts a fresh channel, connection and backoff state
    in the application's process. A kept channel reconnects by itself, within its reconnect backoff (a channel
    option). Its shutdown still closes the channel. Does nothing (False) when the exporter has no such channel.
    """
    channel = getattr(exporter, "_channel", None)
    if channel is None or not hasattr(exporter, "_initialize_channel_and_stub"):
        return False
    exporter._channel = _KeptChannel(channel, exporter)
    exporter._initialize_channel_and_stub = lambda: None
    return True
