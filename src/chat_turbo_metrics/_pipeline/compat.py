"""Every private OpenTelemetry name chat_turbo_metrics relies on, and nothing else.

The SDK and the Prometheus exporter keep some things we need behind underscores: the configurator base class
``opentelemetry-instrument`` loads, the synchronous gauge class, the Prometheus unit mapping, the loggers that
report rejected measurements, the resource a MeterProvider refreshes after a fork and an exporter's temporality
preference. Each is imported or read here only, so an SDK upgrade that moves one breaks this module and
``tests/test_compat.py``, not a capability somewhere else.

Example:
    >>> from chat_turbo_metrics._pipeline.compat import prometheus_unit_suffix
    >>> prometheus_unit_suffix("By")
    'bytes'
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.exporter.prometheus._mapping import map_unit
from opentelemetry.sdk._configuration import _BaseConfigurator
from opentelemetry.sdk.metrics import _Gauge
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.resources import Resource

__all__ = [
    "SDK_MEASUREMENT_LOGGERS",
    "BaseConfigurator",
    "SdkGauge",
    "exporter_temporality",
    "prometheus_unit_suffix",
    "provider_resource",
]

BaseConfigurator = _BaseConfigurator
"""What an ``opentelemetry_configurator`` entry point must subclass (``opentelemetry.sdk._configuration``)."""

SdkGauge = _Gauge
"""The SDK's synchronous gauge class, a key of temporality and cardinality preferences."""

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
