"""Fixtures of the system instrumentor's tests: private monitors and an instrumentor that is always undone."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_system import SystemInstrumentor


@pytest.fixture(params=["fast", "sdk"])
def monitor(request: pytest.FixtureRequest) -> Iterator[PerformanceMonitor]:
    """A monitor on a private pipeline, for each recording path."""
    made = PerformanceMonitor(MonitoringConfig(metrics_exporters=(), environment="test", recording=request.param))
    yield made
    made.shutdown()


@pytest.fixture
def instrument(monitor: PerformanceMonitor) -> Iterator[Callable[..., None]]:
    """Instruments the process into ``monitor`` with the options given; uninstruments after the test."""

    def start(**options: object) -> None:
        SystemInstrumentor().instrument(monitor=monitor, **options)

    yield start
    SystemInstrumentor().uninstrument()
