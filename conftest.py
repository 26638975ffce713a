"""Doctest set-up for ``pytest --doctest-modules src``: what every docstring example may assume.

Each example runs with the names below already defined, and with an environment that selects
``configs/test.toml`` (no exporters), so an example that calls ``configure()`` binds no port:

- ``monitor``: a :class:`~chat_turbo_metrics.PerformanceMonitor` on a private pipeline with no exporters and no
  self-telemetry (examples show the metrics they record, not the pipeline's own);
- ``pipeline``, ``config``: its pipeline and configuration;
- ``tmp_path``: an empty directory of the example's own.

Test helpers for ``tests/`` live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.doctest import DoctestItem

_MONITORING_PREFIXES = ("OTEL_", "METRICS_", "PERFORMANCE_", "ALERT_", "CHAT_TURBO_")


@pytest.fixture(autouse=True)
def _doctest_names(
    request: pytest.FixtureRequest, doctest_namespace: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[None]:
    if not isinstance(request.node, DoctestItem):
        yield
        return
    for name in [name for name in os.environ if name.startswith(_MONITORING_PREFIXES)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CHAT_TURBO_ENV", "test")
    from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor

    monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=(), self_telemetry=False))
    # `pipeline`: the pipeline itself (not the public view), for the internal modules' examples.
    pipeline = monitor._runtime.pipeline
    doctest_namespace.update(monitor=monitor, pipeline=pipeline, config=monitor.config, tmp_path=tmp_path)
    yield
    monitor.shutdown()
