"""The settings that bound memory: the idle-series timeout and the metric limit, from every source."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor, get_monitoring_config
from chat_turbo_metrics._recording.instruments import InstrumentRegistry
from chat_turbo_metrics.instrumentation import Problems
from conftest import make_config


def test_idle_timeout_is_off_by_default_and_set_from_each_source(tmp_path: Path) -> None:
    assert get_monitoring_config("test").series_idle_timeout_s == 0
    from_env = get_monitoring_config("test", env={"METRICS_SERIES_IDLE_TIMEOUT": "900"})
    assert (from_env.series_idle_timeout_s, from_env.source("series_idle_timeout_s")) == (
        900.0,
        "METRICS_SERIES_IDLE_TIMEOUT",
    )
    assert get_monitoring_config("test", series_idle_timeout_s=Decimal("1.5")).series_idle_timeout_s == 1.5
    (tmp_path / "svc.toml").write_text("series_idle_timeout_s = 3600\nmetric_limit = 50\n")
    from chat_turbo_metrics import load_config_file

    loaded = load_config_file(tmp_path / "svc.toml")
    assert (loaded.series_idle_timeout_s, loaded.metric_limit) == (3600.0, 50)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("METRICS_SERIES_IDLE_TIMEOUT", "-1"),
        ("METRICS_SERIES_IDLE_TIMEOUT", "0.5"),  # shorter than a second: every busy series would churn
        ("METRICS_SERIES_IDLE_TIMEOUT", "inf"),
        ("METRICS_SERIES_IDLE_TIMEOUT", "nan"),
        ("METRICS_SERIES_IDLE_TIMEOUT", "an hour"),
        ("METRICS_METRIC_LIMIT", "0"),
        ("METRICS_METRIC_LIMIT", "1e3"),
    ],
)
def test_bad_value_error_names_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("test", env={variable: value})
    assert str(caught.value).startswith(f"{variable}={value!r}: ")


@pytest.mark.parametrize("value", [True, -5, 0.25])
def test_bad_idle_timeout_in_code_names_the_setting(value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("test", series_idle_timeout_s=value)
    assert f"series_idle_timeout_s={value!r}" in str(caught.value)
    with pytest.raises(ConfigurationError, match="series_idle_timeout_s"):
        MonitoringConfig(series_idle_timeout_s=-1)


def test_sdk_recording_warns_that_idle_timeout_has_no_effect(caplog: pytest.LogCaptureFixture) -> None:
    monitor = PerformanceMonitor(make_config(recording="sdk", series_idle_timeout_s=120))
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [m for m in warnings if "series_idle_timeout_s=120" in m and "'sdk'" in m] != []
    finally:
        monitor.shutdown()


def test_metric_names_past_the_limit_are_dropped_with_one_warning_naming_the_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    problems = Problems()
    registry = InstrumentRegistry(problems, limit=3)
    kept = [registry.resolve("counter", f"user_{n}_logins") for n in range(3)]
    dropped = [registry.resolve("counter", f"user_{n}_logins") for n in range(3, 10)]
    assert [spec.name for spec in kept if spec is not None] == ["user_0_logins", "user_1_logins", "user_2_logins"]
    assert dropped == [None] * 7
    assert registry.resolve("counter", "user_1_logins") is kept[1]  # known names still resolve
    assert problems.counts[("metric_limit",)] == 7
    warnings = [r.getMessage() for r in caplog.records if "metric_limit=3" in r.getMessage()]
    assert len(warnings) == 1
    assert "user_3_logins" in warnings[0]
    with pytest.raises(ValueError, match="user_99_logins"):
        registry.define("counter", "user_99_logins", description="one too many")


def test_monitor_drops_metrics_past_its_limit_on_both_paths(recording: str) -> None:
    monitor = PerformanceMonitor(make_config(recording=recording, metric_limit=2))
    try:
        for n in range(5):
            monitor.increment_counter(f"job_{n}")
        snapshot = monitor.snapshot()
        health = {"chat_turbo_metrics_series", "chat_turbo_metrics_dropped_total"}
        assert snapshot.names() - health == {"job_0", "job_1"}
        assert snapshot.value("chat_turbo_metrics_dropped_total", {"cause": "metric_limit"}) == 3
    finally:
        monitor.shutdown()
