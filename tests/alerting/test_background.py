"""Background evaluation on a real pipeline's export cycle: its own thread, start/stop, shutdown."""

from __future__ import annotations

import gc
import logging
import threading

import pytest

from chat_turbo_metrics.alerting import AlertManager, AlertTransition
from chat_turbo_metrics.alerting._background import CycleSubscriber

PATIENCE_S = 10.0  # generous bound for waits that normally end in milliseconds
RULE = {"id": "mem", "name": "High Memory", "metric": "memory_usage_mb", "condition": "gt", "threshold": 100}


def test_start_evaluates_on_the_export_cycle_off_the_application_thread(monitor_factory) -> None:
    monitor = monitor_factory(export_interval_s=0.05)
    manager = AlertManager(monitor)
    manager.add_rule(RULE)
    fired = threading.Event()
    threads: list[str] = []

    def listen(transition: AlertTransition) -> None:
        threads.append(threading.current_thread().name)
        if transition.current == "firing":
            fired.set()

    manager.add_listener(listen)
    monitor.record_gauge("memory_usage_mb", 512)
    manager.start()
    manager.start()  # idempotent
    assert fired.wait(PATIENCE_S)
    assert set(threads) == {"chat-turbo-metrics-fanout-alerting"}
    assert [a.value for a in manager.alerts()] == [512]
    assert sum(isinstance(e, CycleSubscriber) for e in monitor.pipeline.exporters) == 1
    manager.stop()


def test_a_started_manager_keeps_evaluating_when_the_caller_drops_its_reference(monitor_factory) -> None:
    # A service starts alerting in a function at import (AlertManager().start()) and keeps no reference: the
    # evaluation runs until stop(), like a thread, instead of stopping silently at the next garbage collection.
    monitor = monitor_factory(export_interval_s=3600)
    fired: list[str] = []

    def start() -> None:
        manager = AlertManager(monitor)
        manager.add_rule(RULE)
        manager.add_listener(lambda transition: fired.append(transition.current))
        manager.start()

    start()
    gc.collect()
    monitor.record_gauge("memory_usage_mb", 512)
    assert monitor.force_flush()
    assert fired == ["pending", "firing"]  # both at the first evaluation (no duration)


def test_stop_ends_background_evaluation_and_start_resumes_it(monitor_factory) -> None:
    monitor = monitor_factory(export_interval_s=3600)  # cycles only when the test asks for one
    manager = AlertManager(monitor)
    manager.add_rule(RULE)
    evaluations: list[float] = []
    manager.add_evaluation_hook(lambda now, alerts: evaluations.append(now))
    manager.start()
    assert monitor.force_flush()
    assert len(evaluations) == 1
    manager.stop()
    assert monitor.force_flush()
    assert len(evaluations) == 1
    assert not any(isinstance(e, CycleSubscriber) for e in monitor.pipeline.exporters)
    manager.start()
    assert monitor.force_flush()
    assert len(evaluations) == 2


def test_a_failing_evaluation_is_logged_and_the_next_cycle_runs(monitor_factory, caplog) -> None:
    monitor = monitor_factory(export_interval_s=3600)
    manager = AlertManager(monitor)
    manager.add_rule(RULE)
    calls: list[int] = []

    def hook(now: float, alerts: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("hook bug")

    manager.add_evaluation_hook(hook)
    manager.start()
    monitor.record_gauge("memory_usage_mb", 512)
    with caplog.at_level(logging.ERROR, logger="chat_turbo_metrics.alerting"):
        assert monitor.force_flush()
        assert monitor.force_flush()
    assert len(calls) == 2
    assert [a.state for a in manager.alerts()] == ["firing"]
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)


def test_pipeline_shutdown_with_a_running_manager_evaluates_once_more_and_returns(monitor_factory) -> None:
    monitor = monitor_factory(export_interval_s=3600)
    manager = AlertManager(monitor)
    manager.add_rule(RULE)
    evaluations: list[float] = []
    manager.add_evaluation_hook(lambda now, alerts: evaluations.append(now))
    manager.start()
    monitor.record_gauge("memory_usage_mb", 512)
    monitor.shutdown(timeout_s=PATIENCE_S)
    assert len(evaluations) == 1
    manager.stop()  # after shutdown: harmless


def test_disabled_monitoring_evaluates_nothing_and_start_only_warns(monitor_factory, caplog) -> None:
    monitor = monitor_factory(enabled=False)
    manager = AlertManager(monitor)
    manager.add_rule(RULE)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.alerting"):
        manager.start()
    assert len(caplog.records) == 1
    assert manager.evaluate(now=0) == ()
    manager.stop()


@pytest.mark.parametrize("interval", [0, -1, float("nan")])
def test_bad_evaluation_interval(monitor_factory, interval: float) -> None:
    with pytest.raises(ValueError, match="evaluation_interval_s"):
        AlertManager(monitor_factory(), evaluation_interval_s=interval)


def test_start_warns_when_the_export_cycle_is_not_the_evaluation_interval(monitor_factory, caplog) -> None:
    monitor = monitor_factory(export_interval_s=3600)
    manager = AlertManager(monitor, evaluation_interval_s=15)
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.alerting"):
        manager.start()
    manager.stop()
    (record,) = caplog.records
    assert record.args == (3600, 15)
