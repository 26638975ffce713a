"""fork() while another thread is inside alerting code: the child must not inherit a held lock."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from opentelemetry.sdk.trace import TracerProvider

from chat_turbo_metrics.alerting import AlertingSpanProcessor, AlertManager, SpanSelector

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # 3.12+ warns about forking a threaded process
]
PATIENCE_S = 10.0


def fork_and_run(child, held: threading.Event, release: threading.Event) -> int:
    """Fork while a helper thread holds a lock; returns the child's exit code (2: it hung)."""
    assert held.wait(PATIENCE_S)
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)  # a child that deadlocks is killed and reported instead of hanging the suite
        try:
            os._exit(0 if child() else 1)
        except BaseException:
            os._exit(3)
    release.set()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_child_ends_spans_while_the_parent_held_the_aggregate_lock() -> None:
    provider = TracerProvider()
    processor = AlertingSpanProcessor()
    provider.add_span_processor(processor)
    processor.track(SpanSelector(name="work"))
    (aggregate,) = processor._aggregates
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with aggregate.lock:
            held.set()
            release.wait(PATIENCE_S)

    thread = threading.Thread(target=hold)
    thread.start()

    def child() -> bool:
        with provider.get_tracer("t").start_as_current_span("work"):
            pass
        return next(iter(processor.points().values())).count == 1

    code = fork_and_run(child, held, release)
    thread.join()
    assert code == 0, "1: wrong count, 3: raised, -14: deadlocked (SIGALRM)"


def test_child_evaluates_while_the_parent_was_evaluating(monitor_factory) -> None:
    monitor = monitor_factory()
    manager = AlertManager(monitor)
    manager.add_rule({"id": "mem", "name": "Mem", "metric": "memory_usage_mb", "condition": "gt", "threshold": 1})
    monitor.record_gauge("memory_usage_mb", 5)
    held, release = threading.Event(), threading.Event()

    def slow_listener(transition) -> None:
        if threading.current_thread() is not threading.main_thread():
            held.set()
            release.wait(PATIENCE_S)

    manager.add_listener(slow_listener)
    thread = threading.Thread(target=manager.evaluate, kwargs={"now": 0})
    thread.start()

    def child() -> bool:
        return [a.state for a in manager.evaluate(now=60)] == ["firing"]

    code = fork_and_run(child, held, release)
    thread.join()
    assert code == 0, "1: wrong state, 3: raised, -14: deadlocked (SIGALRM)"


def test_a_forked_child_does_not_wait_for_the_parents_deliveries() -> None:
    """A group whose notification was on its way at the fork is not held in the child for ever."""
    import dataclasses

    from notify_peers import alert

    from chat_turbo_metrics.alerting import Dispatcher

    release, parent = threading.Event(), os.getpid()
    dispatcher = Dispatcher()
    slow_in_parent = lambda n: release.wait(10) if os.getpid() == parent else None  # noqa: E731
    dispatcher.add_route(slow_in_parent, group_wait_s=0, group_interval_s=60, name="slow")
    t0 = 1_800_000_000.0
    firing = alert(at=t0)
    dispatcher.on_evaluated(t0, (firing,))
    pid = os.fork()
    if pid == 0:
        try:
            dispatcher.on_evaluated(t0 + 60, ())  # no alert fires any more; the parent still delivers the first
            resolved = dataclasses.replace(firing, state="resolved", resolved_at=t0 + 60)
            dispatcher.on_evaluated(t0 + 61, (resolved,))
            dispatcher.on_evaluated(t0 + 200, ())
            ok = dispatcher.flush(5.0) and dispatcher._groups == {}
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    release.set()
    dispatcher.shutdown(5.0)
    assert os.waitstatus_to_exitcode(status) == 0
