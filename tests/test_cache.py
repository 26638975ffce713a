"""Cache hit/miss accounting: explicit calls, the memoising decorator, and the ratio derived at collection."""

from __future__ import annotations

import asyncio

import pytest

from chat_turbo_metrics import PerformanceMonitor, cached, record_cache_hit, record_cache_miss


def test_ratio_is_hits_over_lookups_per_cache(monitor: PerformanceMonitor) -> None:
    for _ in range(3):
        record_cache_hit("profiles", monitor)
    record_cache_miss("profiles", monitor)
    record_cache_miss("sessions", monitor)
    snapshot = monitor.snapshot()
    assert snapshot.value("cache_hits", {"cache": "profiles"}) == 3
    assert snapshot.value("cache_misses", {"cache": "profiles"}) == 1
    assert snapshot.value("cache_hit_ratio", {"cache": "profiles"}) == 0.75
    assert snapshot.value("cache_hit_ratio", {"cache": "sessions"}) == 0.0
    text = snapshot.to_prometheus()
    assert 'cache_hits_total{cache="profiles"} 3' in text
    assert 'cache_hit_ratio{cache="profiles"} 0.75' in text


def test_ratio_follows_later_lookups(monitor: PerformanceMonitor) -> None:
    record_cache_miss("c", monitor)
    assert monitor.snapshot().value("cache_hit_ratio", {"cache": "c"}) == 0.0
    record_cache_hit("c", monitor)
    assert monitor.snapshot().value("cache_hit_ratio", {"cache": "c"}) == 0.5


def test_no_lookups_no_ratio(monitor: PerformanceMonitor) -> None:
    monitor.increment_counter("jobs")
    assert "cache_hit_ratio" not in monitor.snapshot().names()


def test_cached_counts_a_miss_then_hits_and_evicts_least_recently_used(monitor: PerformanceMonitor) -> None:
    calls: list[int] = []

    @cached("squares", maxsize=2, monitor=monitor)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert [square(2), square(2), square(3), square(2), square(4), square(3)] == [4, 4, 9, 4, 16, 9]
    assert calls == [2, 3, 4, 3]  # 3 was evicted by 4 (2 was used more recently)
    snapshot = monitor.snapshot()
    assert snapshot.value("cache_hits", {"cache": "squares"}) == 2
    assert snapshot.value("cache_misses", {"cache": "squares"}) == 4
    square.cache_clear()  # type: ignore[attr-defined]
    square(2)
    assert calls[-1] == 2


def test_cached_keyword_arguments_are_part_of_the_key(monitor: PerformanceMonitor) -> None:
    @cached("greet", monitor=monitor)
    def greet(name: str, *, polite: bool = False) -> str:
        return ("Dear " if polite else "") + name

    assert greet("a", polite=True) == "Dear a"
    assert greet("a") == "a"
    assert monitor.snapshot().value("cache_misses", {"cache": "greet"}) == 2


def test_cached_async_caches_the_awaited_result_and_never_an_exception(monitor: PerformanceMonitor) -> None:
    attempts: list[int] = []

    @cached("remote", monitor=monitor)
    async def fetch(key: int) -> int:
        attempts.append(key)
        if len(attempts) == 1:
            raise ConnectionError("first try fails")
        return key + 100

    async def main() -> list[int]:
        with pytest.raises(ConnectionError):
            await fetch(1)
        return [await fetch(1), await fetch(1)]

    assert asyncio.run(main()) == [101, 101]
    assert attempts == [1, 1]
    snapshot = monitor.snapshot()
    assert snapshot.value("cache_misses", {"cache": "remote"}) == 2
    assert snapshot.value("cache_hits", {"cache": "remote"}) == 1


@pytest.mark.parametrize("maxsize", [0, -1, True, 1.5])
def test_cached_rejects_a_bad_maxsize_naming_it(maxsize: object) -> None:
    with pytest.raises(ValueError, match=r"maxsize=") as error:
        cached("c", maxsize=maxsize)  # type: ignore[arg-type]
    assert repr(maxsize) in str(error.value)


def test_unhashable_arguments_raise_like_lru_cache(monitor: PerformanceMonitor) -> None:
    @cached("lists", monitor=monitor)
    def total(values: list[int]) -> int:
        return sum(values)

    with pytest.raises(TypeError):
        total([1, 2])


def test_cached_counts_every_call_exactly_under_threads(monitor: PerformanceMonitor) -> None:
    import threading

    @cached("shared", maxsize=16, monitor=monitor)
    def double(x: int) -> int:
        return 2 * x

    def work() -> None:
        for i in range(500):
            double(i % 8)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = monitor.snapshot()
    hits = snapshot.value("cache_hits", {"cache": "shared"})
    misses = snapshot.value("cache_misses", {"cache": "shared"})
    assert hits + misses == 2000
    assert 8 <= misses <= 32  # each key misses once per thread at most, never after it is cached


def test_disabled_monitoring_makes_cache_calls_no_ops() -> None:
    from chat_turbo_metrics import MonitoringConfig

    disabled = PerformanceMonitor(MonitoringConfig(enabled=False))
    record_cache_hit("c", disabled)
    record_cache_miss("c", disabled)

    @cached("c", monitor=disabled)
    def one() -> int:
        return 1

    assert [one(), one()] == [1, 1]
    assert disabled.snapshot().records() == []
