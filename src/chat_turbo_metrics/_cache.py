"""Cache hit/miss accounting: explicit calls and a memoising decorator, sync and async.

Hits and misses are the counters ``cache_hits`` and ``cache_misses`` (Prometheus ``cache_hits_total``,
``cache_misses_total``) tagged ``{"cache": name}``; the ``cache_hit_ratio`` gauge is derived from them when
metrics are collected (:mod:`chat_turbo_metrics._collection.ratio`), so a lookup costs one counter increment.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from chat_turbo_metrics._collection.ratio import HITS, MISSES
from chat_turbo_metrics._monitor import PerformanceMonitor

F = TypeVar("F", bound=Callable[..., Any])
_MISSING = object()


def process_monitor() -> PerformanceMonitor:
    """The process-wide monitor, without taking its lock once it exists."""
    return PerformanceMonitor._instance or PerformanceMonitor.get_instance()


def record_cache_hit(cache: str, monitor: PerformanceMonitor | None = None) -> None:
    """Count one lookup in ``cache`` that found its entry.

    Args:
        cache: the cache's name, a low-cardinality label (``"user_profiles"``, not a key).
        monitor: record into this monitor instead of the process-wide one.
    """
    # Looked up on the monitor at call time: configure() rebinds the process-wide monitor's methods.
    (monitor or process_monitor()).increment_counter(HITS, {"cache": cache})


def record_cache_miss(cache: str, monitor: PerformanceMonitor | None = None) -> None:
    """Count one lookup in ``cache`` that did not find its entry.

    Args:
        cache: the cache's name, a low-cardinality label.
        monitor: record into this monitor instead of the process-wide one.
    """
    (monitor or process_monitor()).increment_counter(MISSES, {"cache": cache})


class _LruStore:
    """A bounded least-recently-used mapping, safe across threads."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._data: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is not _MISSING:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self._maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def _key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    return (args, tuple(sorted(kwargs.items()))) if kwargs else args


def cached(cache: str, *, maxsize: int = 128, monitor: PerformanceMonitor | None = None) -> Callable[[F], F]:
    """Memoise a function (sync or async) in a bounded LRU and count each call as a hit or a miss.

    Arguments must be hashable, as for :func:`functools.lru_cache`. Async functions cache the awaited
    result; an exception is never cached. ``wrapped.cache_clear()`` empties the cache.

    Example:
        >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
        >>> monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))
        >>> @cached("squares", maxsize=2, monitor=monitor)
        ... def square(x):
        ...     return x * x
        >>> square(3), square(3)
        (9, 9)

    Args:
        cache: the cache's name (the ``cache`` label of the hit/miss counters and the ratio).
        maxsize: entries kept; the least recently used goes first.
        monitor: record into this monitor instead of the process-wide one.

    Returns:
        A decorator.

    Raises:
        ValueError: ``maxsize`` is not a positive int.
    """
    if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize <= 0:
        raise ValueError(f"cached({cache!r}): maxsize={maxsize!r} must be a positive int")
    tags = {"cache": cache}

    def recorder() -> PerformanceMonitor:
        return monitor or process_monitor()

    def decorate(func: F) -> F:
        store = _LruStore(maxsize)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def memoised_async(*args: Any, **kwargs: Any) -> Any:
                key = _key(args, kwargs)
                value = store.get(key)
                if value is not _MISSING:
                    recorder().increment_counter(HITS, tags)
                    return value
                recorder().increment_counter(MISSES, tags)
                value = await func(*args, **kwargs)
                store.put(key, value)
                return value

            memoised_async.cache_clear = store.clear  # type: ignore[attr-defined]
            return memoised_async  # type: ignore[return-value]

        @functools.wraps(func)
        def memoised(*args: Any, **kwargs: Any) -> Any:
            key = _key(args, kwargs)
            value = store.get(key)
            if value is not _MISSING:
                recorder().increment_counter(HITS, tags)
                return value
            recorder().increment_counter(MISSES, tags)
            value = func(*args, **kwargs)
            store.put(key, value)
            return value

        memoised.cache_clear = store.clear  # type: ignore[attr-defined]
        return memoised  # type: ignore[return-value]

    return decorate
