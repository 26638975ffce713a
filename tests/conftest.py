"""Shared fixtures: monitors on private pipelines, and real external tools that skip locally / fail in CI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip when a real peer is missing here; under CI=true a missing peer is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


def require_tool(name: str) -> str:
    """Path of an executable the test needs (prometheus, promtool, ...)."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (scripts/ensure-tools installs it)")
    assert path is not None
    return path


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now at ``host`` (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Variables that configure monitoring; a child process must not inherit the developer's or CI's.
MONITORING_ENV_PREFIXES = ("OTEL_", "METRICS_", "PERFORMANCE_", "ALERT_", "CHAT_TURBO_")


# contrib's instrumentations (SQLAlchemy's, Redis's) are installed here for the tests of coexistence with them and
# for the benchmarks. Under opentelemetry-instrument they import their libraries at start-up: 0.6 s of CPU in every
# instrumented interpreter, half of its start. A service running ours has them only if it chose them, so a test's
# subprocess runs without them (OTEL_PYTHON_DISABLED_INSTRUMENTATIONS) unless the test is about them and says so.
WITHOUT_CONTRIB = {
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(
        sorted(
            point.name
            for point in entry_points(group="opentelemetry_instrumentor")
            if not point.value.startswith("chat_turbo_metrics")
        )
    )
}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without monitoring variables, plus ``extra``: for subprocesses.

    contrib's instrumentations are off (:data:`WITHOUT_CONTRIB`) unless ``extra`` names what to disable itself.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(MONITORING_ENV_PREFIXES)}
    env["METRICS_PROMETHEUS_SCOPE_LABELS"] = "false"  # as make_config(): expected lines are written without them
    env.update(WITHOUT_CONTRIB)
    env.update(extra)
    return env


def make_config(**settings: object) -> MonitoringConfig:
    """A test configuration: no exporters unless asked for."""
    settings.setdefault("metrics_exporters", ())
    settings.setdefault("environment", "test")
    # Expected expositions are written without the otel_scope_* labels; tests/exporters/test_openmetrics.py
    # covers them (on by default).
    settings.setdefault("prometheus_scope_labels", False)
    return MonitoringConfig(**settings)  # type: ignore[arg-type]


def service_process(directory: object, port: int, **settings: object) -> PerformanceMonitor:
    """One process of a multi-process service sharing ``directory``, serving Prometheus on 127.0.0.1:``port``.

    The first such process binds the port and holds it; the others become its members.
    """
    return PerformanceMonitor(
        make_config(
            metrics_exporters=("prometheus",),
            prometheus_host="127.0.0.1",
            prometheus_port=port,
            multiprocess_dir=str(directory),
            **settings,
        )
    )


def group_directory(base: Path, port: int) -> Path:
    """The directory of the one group serving 127.0.0.1:``port`` in the multiprocess base directory ``base``."""
    found = sorted(base.glob(f"127.0.0.1-{port}.*"))
    assert len(found) == 1, found
    return found[0]


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if it is missing or not (yet) JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.fixture
def monitor_factory() -> Iterator[object]:
    """Builds monitors on private pipelines and shuts them all down after the test."""
    made: list[PerformanceMonitor] = []

    def build(**settings: object) -> PerformanceMonitor:
        monitor = PerformanceMonitor(make_config(**settings))
        made.append(monitor)
        return monitor

    yield build
    for monitor in made:
        monitor.shutdown()


@pytest.fixture(params=["sdk", "fast"])
def recording(request: pytest.FixtureRequest) -> str:
    """Both recording front ends: every behaviour of the seed's API must hold on each."""
    return str(request.param)


@pytest.fixture
def monitor(monitor_factory: object, recording: str) -> PerformanceMonitor:
    """A monitor on a private pipeline with no exporters, for each recording path."""
    return monitor_factory(recording=recording)  # type: ignore[operator, no-any-return]


def old_file_history(directory: Path, rotations: int = 3, age_days: float = 8.0) -> dict[str, tuple[int, int]]:
    """A service's file history in ``directory``: ``metrics.jsonl`` and ``rotations`` rotated files the exporter
    made (30 days retention), aged ``age_days``. Returns every file's name -> (mtime_ns, size), to compare."""
    from chat_turbo_metrics.exporters.file import FileExporter

    now = [time.time() - age_days * 86400 - 600]
    exporter = FileExporter(
        directory / "metrics.jsonl", rotation_interval_s=60, retention_days=30, clock=lambda: now[0]
    )
    provider = MeterProvider(metric_readers=[reader := InMemoryMetricReader()])
    provider.get_meter("history").create_counter("jobs").add(1)
    for _ in range(rotations + 1):
        data = reader.get_metrics_data()
        assert data is not None
        exporter.export(data)
        now[0] += 60
    exporter.shutdown()
    provider.shutdown()
    for file in directory.iterdir():
        os.utime(file, (now[0], now[0]))
    return directory_listing(directory)


def directory_listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file in ``directory``: name -> (mtime_ns, size)."""
    return {file.name: (file.stat().st_mtime_ns, file.stat().st_size) for file in directory.iterdir()}
