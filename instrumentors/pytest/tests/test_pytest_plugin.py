"""The pytest plugin: its fixtures used as a user would, a user's test file run through pytest with and without
the plugin, and the entry point that only this distribution registers."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pytest

from chat_turbo_metrics import AlertManager, MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics_pytest import ManualClock, alert_state, assert_alert
from chat_turbo_metrics_pytest import sample_value as read_sample

pytest_plugins = ["pytester"]


def test_the_monitor_is_the_process_wide_one_without_exporters(metrics_monitor: PerformanceMonitor) -> None:
    assert PerformanceMonitor.get_instance() is metrics_monitor
    assert metrics_monitor.config.metrics_exporters == ()
    assert metrics_monitor.config.self_telemetry is False
    PerformanceMonitor.get_instance().increment_counter("orders", {"shop": "a"})
    assert metrics_monitor.snapshot().value("orders", {"shop": "a"}) == 1


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_starts_without_data(
    metrics_monitor: PerformanceMonitor, sample_value: Callable[..., Any], round_: int
) -> None:
    assert sample_value("visits_total") is None  # the other round's recording is gone
    metrics_monitor.increment_counter("visits")
    assert sample_value("visits_total") == 1.0


def test_sample_value_reads_samples_as_scraped(
    metrics_monitor: PerformanceMonitor, sample_value: Callable[..., Any]
) -> None:
    metrics_monitor.increment_counter("api_requests", {"method": "GET", "status": 200}, 3)
    metrics_monitor.define("http.server.request.duration", "histogram", unit="s", buckets=(0.1, 0.5, 1.0))
    tags = {"http.route": "/a", "http.response.status_code": 200}
    for seconds in (0.05, 0.3, 0.3, 2.0):
        metrics_monitor.record_histogram("http.server.request.duration", seconds, tags)
    metrics_monitor.record_gauge("queue_depth", 7)
    assert sample_value("api_requests_total", {"method": "GET", "status": 200}) == 3.0
    assert sample_value("api_requests_total", {"method": "GET", "status": "200"}) == 3.0
    assert sample_value("api_requests_total", {"method": "GET"}) is None  # labels must match exactly
    assert sample_value("api_requests", {"method": "GET", "status": 200}) is None  # a sample name, as scraped
    name = "http_server_request_duration_seconds"
    scraped = {"http_route": "/a", "http_response_status_code": "200"}
    assert sample_value(f"{name}_count", tags) == 4.0  # attribute keys or scraped label names alike
    assert sample_value(f"{name}_count", scraped) == 4.0
    assert sample_value(f"{name}_sum", tags) == pytest.approx(2.65)
    assert sample_value(f"{name}_bucket", {**tags, "le": 0.5}) == 3.0
    assert sample_value(f"{name}_bucket", {**tags, "le": ".5"}) == 3.0
    assert sample_value(f"{name}_bucket", {**tags, "le": "+Inf"}) == 4.0
    assert sample_value(f"{name}_bucket", {**tags, "le": float("inf")}) == 4.0
    assert sample_value("queue_depth") == 7.0


def test_sample_value_of_a_private_monitor() -> None:
    monitor = PerformanceMonitor(MonitoringConfig(environment="test", metrics_exporters=()))
    try:
        monitor.increment_counter("jobs", {"done": True})
        assert read_sample(monitor, "jobs_total", {"done": True}) == 1.0
        assert read_sample(monitor, "jobs_total", {"done": "true"}) == 1.0
    finally:
        monitor.shutdown()


def test_scope_labels_count_only_when_named() -> None:
    # Every scraped sample carries otel_scope_name/version (METRICS_PROMETHEUS_SCOPE_LABELS, on by default).
    config = MonitoringConfig(environment="test", metrics_exporters=(), prometheus_scope_labels=True)
    monitor = PerformanceMonitor(config)
    try:
        monitor.increment_counter("jobs", {"queue": "email"}, 4)
        assert 'otel_scope_name="chat_turbo_metrics"' in monitor.snapshot().to_prometheus()
        assert read_sample(monitor, "jobs_total", {"queue": "email"}) == 4.0
        assert read_sample(monitor, "jobs_total", {"queue": "email", "otel_scope_name": "chat_turbo_metrics"}) == 4.0
        assert read_sample(monitor, "jobs_total", {"queue": "email", "otel_scope_name": "other"}) is None
        assert read_sample(monitor, "jobs_total", {"queue": "sms"}) is None
    finally:
        monitor.shutdown()


RULE = {
    "id": "slow",
    "name": "Slow queue",
    "metric": "queue_depth",
    "condition": "gt",
    "threshold": 10,
    "duration": 300,
}


def test_an_alert_steps_from_inactive_to_firing_and_back(
    metrics_monitor: PerformanceMonitor, alert_manager: AlertManager, metrics_clock: ManualClock
) -> None:
    alert_manager.add_rule(RULE)
    metrics_monitor.record_gauge("queue_depth", 50, {"queue": "mail"})
    metrics_monitor.record_gauge("queue_depth", 1, {"queue": "sms"})
    alert_manager.evaluate()
    assert_alert(alert_manager, "slow", "pending", {"queue": "mail"})
    assert_alert(alert_manager, "Slow queue", "inactive", {"queue": "sms"})  # by name too
    metrics_clock.advance(301)
    alert_manager.evaluate()
    assert alert_state(alert_manager, "slow", {"queue": "mail"}) == "firing"
    metrics_monitor.record_gauge("queue_depth", 2, {"queue": "mail"})
    metrics_clock.advance(60)
    alert_manager.evaluate()
    assert alert_state(alert_manager, "slow", {"queue": "mail"}) == "resolved"
    assert alert_state(alert_manager, "slow", {"queue": "sms"}) == "inactive"  # never active
    metrics_monitor.record_gauge("queue_depth", 30, {"queue": "mail"})
    metrics_clock.advance(60)
    alert_manager.evaluate()
    assert_alert(alert_manager, "slow", "pending", {"queue": "mail"})  # active again: pending, not resolved


def test_a_pending_alert_dropped_is_inactive(
    metrics_monitor: PerformanceMonitor, alert_manager: AlertManager, metrics_clock: ManualClock
) -> None:
    alert_manager.add_rule(RULE)
    metrics_monitor.record_gauge("queue_depth", 50, {"queue": "mail"})
    alert_manager.evaluate()
    metrics_monitor.record_gauge("queue_depth", 0, {"queue": "mail"})
    metrics_clock.advance(30)
    alert_manager.evaluate()
    assert_alert(alert_manager, "slow", "inactive", {"queue": "mail"})


def test_assert_alert_names_every_alert_of_the_rule(
    metrics_monitor: PerformanceMonitor, alert_manager: AlertManager
) -> None:
    alert_manager.add_rule(RULE)
    metrics_monitor.record_gauge("queue_depth", 42, {"queue": "mail"})
    alert_manager.evaluate()
    with pytest.raises(AssertionError) as caught:
        assert_alert(alert_manager, "slow", "firing", {"queue": "mail"})
    message = str(caught.value)
    assert "is pending, expected firing" in message
    assert "'queue': 'mail'" in message
    assert "value=42" in message


def test_a_rule_that_is_not_there_or_labels_that_are_not_enough(
    metrics_monitor: PerformanceMonitor, alert_manager: AlertManager
) -> None:
    alert_manager.add_rule(RULE)
    metrics_monitor.record_gauge("queue_depth", 50, {"queue": "mail"})
    metrics_monitor.record_gauge("queue_depth", 60, {"queue": "push"})
    alert_manager.evaluate()
    with pytest.raises(LookupError, match="'typo'"):
        alert_state(alert_manager, "typo")
    with pytest.raises(LookupError, match="2 alerts"):
        alert_state(alert_manager, "slow")  # two label sets: which one?
    assert alert_state(alert_manager, "slow", {"queue": "push"}) == "pending"


def test_only_this_distribution_registers_the_plugin() -> None:
    found = [
        (point.name, point.value, point.dist.name if point.dist else None) for point in entry_points(group="pytest11")
    ]
    ours = [item for item in found if "chat_turbo" in item[1] or (item[2] or "").startswith("chat-turbo-metrics")]
    assert ours == [("chat_turbo_metrics", "chat_turbo_metrics_pytest.plugin", "pytest-chat-turbo-metrics")]


USER_TEST = """
    from chat_turbo_metrics import PerformanceMonitor

    monitor = PerformanceMonitor.get_instance()  # the application's module-level monitor


    def checkout(total):
        monitor.increment_counter("orders", {"status": "paid"})
        monitor.record_histogram("order_total", total)


    def test_checkout_is_counted(sample_value):
        checkout(12.5)
        checkout(7.5)
        assert sample_value("orders_total", {"status": "paid"}) == 2
        assert sample_value("order_total_sum") == 20.0


    def test_the_next_test_starts_clean(sample_value):
        assert sample_value("orders_total", {"status": "paid"}) is None
"""


def test_a_users_test_file_runs_with_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=textwrap.dedent(USER_TEST))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-n", "0")
    result.assert_outcomes(passed=2)


def test_without_the_plugin_the_fixtures_are_not_there(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=textwrap.dedent(USER_TEST))
    result = pytester.runpytest_subprocess("-p", "no:chat_turbo_metrics", "-p", "no:cacheprovider", "-q", "-n", "0")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*fixture 'sample_value' not found*"])


def test_the_environment_cannot_turn_the_monitor_off_or_add_exporters(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFORMANCE_MONITORING_ENABLED", "false")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus,otlp")
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "database")  # other settings still come from it
    pytester.makepyfile(
        test_env=textwrap.dedent(
            """
            from chat_turbo_metrics.instrumentation import semconv_mode


            def test_isolated(metrics_monitor, sample_value):
                assert metrics_monitor.config.enabled is True
                assert metrics_monitor.config.metrics_exporters == ()
                assert semconv_mode("database", metrics_monitor).semconv
                metrics_monitor.increment_counter("runs")
                assert sample_value("runs_total") == 1
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-n", "0")
    result.assert_outcomes(passed=1)
