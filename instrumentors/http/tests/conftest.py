"""Fixtures for the HTTP instrumentor's tests: a private monitor, and series readers.

Helpers are fixtures (not imports): ``conftest`` as a module name belongs to the core's ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_http.asgi import AsgiMetricsInstrumentor
from chat_turbo_metrics_http.wsgi import WsgiMetricsInstrumentor


@pytest.fixture
def http_monitor_factory() -> Iterator[Callable[..., PerformanceMonitor]]:
    """Monitors on private pipelines with no exporters, shut down after the test."""
    made: list[PerformanceMonitor] = []

    def build(**settings: Any) -> PerformanceMonitor:
        settings.setdefault("metrics_exporters", ())
        settings.setdefault("environment", "test")
        monitor = PerformanceMonitor(MonitoringConfig(**settings))
        made.append(monitor)
        return monitor

    yield build
    for monitor in made:
        monitor.shutdown()


@pytest.fixture
def http_monitor(http_monitor_factory: Callable[..., PerformanceMonitor]) -> PerformanceMonitor:
    """A monitor on a private pipeline (the fast path, no exporters)."""
    return http_monitor_factory()


@pytest.fixture
def requests_of() -> Callable[..., Any]:
    """``requests_of(monitor, endpoint, status, method="GET")``: the api_requests_total of one series."""

    def read(monitor: PerformanceMonitor, endpoint: str, status: int, method: str = "GET") -> Any:
        tags = {"method": method, "endpoint": endpoint, "status": status}
        return monitor.snapshot().value("api_requests", tags)

    return read


@pytest.fixture
def duration_of() -> Callable[..., Any]:
    """``duration_of(monitor, endpoint, status, method="GET")``: the duration histogram record of one series."""

    def read(monitor: PerformanceMonitor, endpoint: str, status: int, method: str = "GET") -> Any:
        tags = {"method": method, "endpoint": endpoint, "status": status}
        return monitor.snapshot().value("http_request_duration_seconds", tags)

    return read


@pytest.fixture
def asgi_instrumentor() -> Iterator[AsgiMetricsInstrumentor]:
    """The ASGI instrumentor, uninstrumented after the test whatever happened."""
    instrumentor = AsgiMetricsInstrumentor()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@pytest.fixture
def wsgi_instrumentor() -> Iterator[WsgiMetricsInstrumentor]:
    """The WSGI instrumentor, uninstrumented after the test whatever happened."""
    instrumentor = WsgiMetricsInstrumentor()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
