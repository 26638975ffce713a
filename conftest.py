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


# The longest tests, longest first (from `pytest -n 2 --durations=80`): `make test` runs them before the rest, so
# that under pytest-xdist (`--dist loadgroup`, which hands out tests a few at a time in this order) the last minutes
# are short tests spread over every worker rather than one worker finishing a long one alone. A prefix matches
# every test (and parameter) under it; add a new test here when it takes more than a few seconds.
# The scale-out scenario (about 40 s) runs once, for the first of its tests, and the others read its record. Under
# `make test` its module is one unit of work (``SHARED``, below); run otherwise (`-n 2` alone), one of its tests
# goes first and the rest last (``LAST``), so that no worker waits for the scenario on another.
LONGEST_FIRST = (
    "tests/test_scale_out.py::test_each_host_serves_its_own_requests_on_the_same_port_of_another_address",
    "tests/multiprocess/test_prefork_scrape.py::test_counters_survive_max_requests_recycling",
    "tests/_cli/test_demo.py::",
    "tests/test_memory_bound.py::",
    "tests/multiprocess/test_prefork_scrape.py::test_one_scrape_counts_every_request_of_every_worker",
    "tests/test_dashboards.py::",
    "tests/test_fork_safety.py::test_forks_during_concurrent_collection_never_deadlock_the_child",
    "tests/exporters/test_endpoint_faults.py::test_a_long_outage_keeps_no_growing_buffer",
    "tests/exporters/test_prometheus.py::",
    "tests/multiprocess/test_prefork_degraded.py::",
    "tests/multiprocess/test_prefork_groups.py::",
    "tests/test_distro.py::",
    "tests/multiprocess/test_prefork.py::",
    "tests/_cli/test_doctor.py::",
    "tests/exporters/test_hostile_tags.py::",
    "instrumentors/http/tests/test_http_bad_settings_served.py::",
    "tests/test_startup_and_exit.py::",
    "tests/alerting/test_rules_promtool_property.py::",
    "tests/test_instrument_datastores.py::",
    "tests/multiprocess/test_prefork_scrape.py::",
    "tests/test_install.py::",
    "tests/exporters/test_endpoint_faults.py::",
    "tests/exporters/test_exit_signals.py::",
    "tests/exporters/test_datadog_delivery.py::",
    "tests/_pipeline/test_self_telemetry.py::",
    "tests/multiprocess/",
    "instrumentors/http/tests/",
)
LAST = ("tests/test_scale_out.py::",)
# Modules whose tests share a module-scoped fixture that takes seconds (a deployment, a demo run, a real Prometheus
# scraping a service): under `make test` each is one unit of work, run by one worker, so the fixture runs once per
# run instead of once per worker that happens to get one of its tests.
SHARED = (
    "tests/test_scale_out.py",
    "tests/_cli/test_demo.py",
    "tests/test_dashboards.py",
    "tests/exporters/test_prometheus.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest tests first (``LONGEST_FIRST``), then the others in their usual order, then ``LAST``."""

    def rank(item: pytest.Item) -> int:
        first = next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), None)
        if first is not None:
            return first
        return len(LONGEST_FIRST) + item.nodeid.startswith(LAST)

    items.sort(key=rank)  # stable: within a rank, the collection order


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: the tests in the order above, each a unit of work but a ``SHARED`` module's, which is one.

    (pytest-xdist's own ``xdist_group`` marks would not do: pytest-xdist 3.8 cannot rename the tests of pytest 9,
    so its groups are ignored.) A unit's place in the queue is its first test's; units are not reordered by size.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED else nodeid

    config.option.loadscopereorder = False  # keep the longest-first order: a big unit is not a long one
    return Scheduler(config, log)
