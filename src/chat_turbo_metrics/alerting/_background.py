"""How alerting rides on the pipeline: evaluation on the export cycle, and the ``alerts_active`` metric."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.metrics import CallbackOptions, MeterProvider, ObservableGauge, Observation
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import SpanProcessor

from chat_turbo_metrics._core.version import __version__

if TYPE_CHECKING:
    from chat_turbo_metrics._core.config import MonitoringConfig
    from chat_turbo_metrics._pipeline.view import PipelineView
    from chat_turbo_metrics.alerting.manager import AlertManager

_log = logging.getLogger("chat_turbo_metrics.alerting")


class Monitored(Protocol):
    """What an alert manager uses of the monitor it is given (a ``PerformanceMonitor``); alerting knows nothing
    else of the monitor. Each follows ``configure()``: the configuration and pipeline are read when needed, the
    providers and subscriptions move with the monitor into every new pipeline."""

    @property
    def config(self) -> MonitoringConfig: ...

    @property
    def pipeline(self) -> PipelineView | None: ...

    @property
    def meter_provider(self) -> MeterProvider: ...

    def subscribe(self, subscriber: MetricExporter | SpanProcessor) -> None: ...

    def unsubscribe(self, subscriber: MetricExporter | SpanProcessor) -> bool: ...


class CycleSubscriber(MetricExporter):
    """Receives the fan-out's cumulative snapshot each export cycle, on its own worker thread, and evaluates.

    Being a cumulative "exporter" gives the alert manager the pipeline's one collection per cycle (fast-path
    cells included) without a second reader, and a slow evaluation delays no exporter. It holds the manager: a
    started manager evaluates until it is stopped (or its pipeline shut down), referenced by the caller or not.
    """

    name = "alerting"

    def __init__(self, evaluate: Callable[[MetricsData | None, float], Any], clock: Callable[[], float]) -> None:
        super().__init__(preferred_temporality=None)  # cumulative for every kind: the snapshot as collected
        self._evaluate = evaluate
        self._clock = clock

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        """Evaluate every rule against this snapshot."""
        try:
            self._evaluate(metrics_data, self._clock())
        except Exception:
            _log.exception("evaluating alert rules failed; trying again next cycle")
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""


class _ActiveGauge:
    """One ``alerts_active`` observable gauge per meter provider, summing over its alert managers."""

    def __init__(self, meter_provider: MeterProvider) -> None:
        self.managers: weakref.WeakSet[AlertManager] = weakref.WeakSet()
        # Kept: a provider that follows configure() re-creates only the instruments still referenced.
        meter = meter_provider.get_meter("chat_turbo_metrics", __version__)
        self.instrument: ObservableGauge = meter.create_observable_gauge(
            "alerts_active",
            callbacks=[self.observe],
            unit="{alert}",
            description="Pending and firing alerts by rule, severity and state (like Prometheus's ALERTS).",
        )

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # Runs inside a collection; reads only the managers' published tuples, never their locks, so an
        # evaluation that collects while holding its lock cannot deadlock here.
        totals: dict[tuple[str, str, str], int] = {}
        for manager in list(self.managers):
            for key, count in manager.active_counts().items():
                totals[key] = totals.get(key, 0) + count
        return [
            Observation(count, {"rule": rule, "severity": severity, "state": state})
            for (rule, severity, state), count in totals.items()
        ]


_gauges: weakref.WeakKeyDictionary[MeterProvider, _ActiveGauge] = weakref.WeakKeyDictionary()


def register_active_gauge(meter_provider: MeterProvider, manager: AlertManager) -> None:
    """Count ``manager``'s alerts in the ``alerts_active`` gauge of ``meter_provider`` (created on first use)."""
    gauge = _gauges.get(meter_provider)
    if gauge is None:
        gauge = _gauges[meter_provider] = _ActiveGauge(meter_provider)
    gauge.managers.add(manager)
