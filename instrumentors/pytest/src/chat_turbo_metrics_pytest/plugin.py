"""The pytest plugin (``pytest11`` entry point ``chat_turbo_metrics``): fixtures over an isolated monitor.

- ``metrics_monitor``: the process-wide monitor, reconfigured for the test with no exporters (no port bound,
  nothing written or sent) and no self-telemetry, so each test starts from no data. Everything that records
  through ``PerformanceMonitor.get_instance()`` (the application's module-level monitor, the instrumentors)
  records into it. The other settings come from the environment and files as usual (``CHAT_TURBO_ENV``).
- ``sample_value``: :func:`chat_turbo_metrics_pytest.sample_value` on that monitor.
- ``metrics_clock``, ``alert_manager``: a manual clock, and an alert manager on the monitor that reads it.
- ``alert_state``, ``assert_alert``: the helpers of the same names, for use without an import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from chat_turbo_metrics import AlertManager, PerformanceMonitor, configure
from chat_turbo_metrics_pytest import _helpers


def _isolated() -> PerformanceMonitor:
    """The process-wide monitor on a new pipeline: enabled, no exporters, no self-telemetry, no data yet."""
    return configure(enabled=True, metrics_exporters=(), traces_exporters=(), self_telemetry=False)


@pytest.fixture
def metrics_monitor() -> Iterator[PerformanceMonitor]:
    """The process-wide monitor on a new pipeline with no exporters, for this test; again without data after."""
    monitor = _isolated()
    yield monitor
    _isolated()  # what the test recorded goes; no exporter comes back


@pytest.fixture
def sample_value(metrics_monitor: PerformanceMonitor) -> Callable[..., float | None]:
    """``sample_value(name, labels=None)``: one sample of a scrape of ``metrics_monitor``, or None."""

    def read(name: str, labels: Mapping[str, Any] | None = None) -> float | None:
        return _helpers.sample_value(metrics_monitor, name, labels)

    return read


@pytest.fixture
def metrics_clock() -> _helpers.ManualClock:
    """A clock that moves only when the test calls ``advance(seconds)``."""
    return _helpers.ManualClock()


@pytest.fixture
def alert_manager(metrics_monitor: PerformanceMonitor, metrics_clock: _helpers.ManualClock) -> Iterator[AlertManager]:
    """An alert manager on ``metrics_monitor`` timed by ``metrics_clock``; not started (call ``evaluate()``)."""
    manager = AlertManager(metrics_monitor, clock=metrics_clock)
    yield manager
    manager.stop()


@pytest.fixture
def alert_state() -> Callable[..., str]:
    """:func:`chat_turbo_metrics_pytest.alert_state`."""
    return _helpers.alert_state


@pytest.fixture
def assert_alert() -> Callable[..., None]:
    """:func:`chat_turbo_metrics_pytest.assert_alert`."""
    return _helpers.assert_alert
