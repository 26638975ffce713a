"""One collection: the readings' hooks, the SDK's data, then one post-processing pass whose order is declared here.

Whoever owns a step adds it to its place in :data:`STEPS` (the pipeline: the overflow watch and the exportable
values; the monitor: its recorder's metrics, the hit ratios and the self-telemetry), never "first" or "last" in a
list: the order is this table's, and ``tests/_collection/test_collector.py`` checks it. Each step takes what the
steps before it made and returns it, changed or not (see :mod:`.walk`).

Collection-time *readings* (the hooks: system statistics, pool usage) are separate from the *recorded* data: a
collection made for someone who reads it (a scrape, a push export) takes them, a background copy of what was
recorded (the pre-fork publication) does not (``collect(readings=False)``). Whether anything was recorded since a
collection is answered without collecting (:meth:`Collector.quiet_since`), from what each recorder watches
(:meth:`Collector.watch`), so that a process where nothing happens does no collection work at all.

Example:
    >>> collector = Collector(lambda: None)
    >>> collector.add("hit_ratios", lambda data: data)
    >>> [name for name, _ in collector.steps()]
    ['hit_ratios']
    >>> collector.watch(lambda: False)  # a recorder holding nothing new
    >>> mark = collector.collections + 1  # the number the next collection takes, if no other runs meanwhile
    >>> collector.collect(readings=False)
    >>> collector.quiet_since(mark)  # nothing recorded since, no other collection
    True
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.metrics.export import Metric, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics._collection.walk import add_metrics
from chat_turbo_metrics._core import forks

_logger = logging.getLogger("chat_turbo_metrics.pipeline")

Step = Callable[[MetricsData | None], MetricsData | None]

# The post-processing pass, in the order it runs, and why each step stands where it does.
STEPS: tuple[tuple[str, str], ...] = (
    ("overflow", "finds the SDK's overflow series before a recorder adds metrics that count their own at the call"),
    ("recorder", "the fast path's metrics join the SDK's, in the chat_turbo_metrics scope"),
    ("hit_ratios", "cache_hit_ratio from the cache_hits and cache_misses counters, whichever path recorded them"),
    ("self_telemetry", "the pipeline's own health; its series gauge counts what the steps before made"),
    ("exportable", "a point or attribute no exporter can encode is made plain or dropped, whoever made it"),
)
STEP_NAMES = tuple(name for name, _ in STEPS)


class Collector:
    """Runs one collection: every hook, then the SDK's collection, then each step in :data:`STEPS` order."""

    def __init__(self, collect: Callable[[], MetricsData | None]) -> None:
        """Args:
        collect: the SDK's collection (the pipeline's reader).
        """
        self._collect = collect
        # Called before every collection: collection-time readings (system statistics, pool usage) record through
        # the monitor's front end here, so they cost nothing between collections.
        self.hooks: list[Callable[[], None]] = []
        self._steps: dict[str, tuple[Step, ...]] = dict.fromkeys(STEP_NAMES, ())
        self._failed_hooks: set[tuple[str, type]] = set()
        self._recorded: tuple[Callable[[], bool], ...] = ()
        self.collections = 0  # collections started so far (a mark for quiet_since)
        self._counting = threading.Lock()  # two collections at once must both count
        forks.register(self, forks.Phase.LOCKS)

    def after_fork_in_child(self) -> None:
        # A thread of the parent may have been counting its collection at the fork.
        forks.reinit(self._counting)

    def add(self, name: str, step: Step) -> None:
        """Run ``step`` at its place ``name`` in the pass (after the steps already at that place).

        Raises:
            ValueError: ``name`` is not a step of :data:`STEPS`.
        """
        if name not in self._steps:
            raise ValueError(f"{name!r} is not a collection step; the steps are {', '.join(STEP_NAMES)}")
        self._steps[name] = (*self._steps[name], step)  # replaced, never mutated: a collection may be running

    def remove(self, name: str, step: Step) -> None:
        """Stop running ``step`` (added at ``name``); an unknown step is ignored."""
        self._steps[name] = tuple(each for each in self._steps.get(name, ()) if each is not step)

    def steps(self) -> list[tuple[str, Step]]:
        """``(place, step)`` in the order a collection runs them."""
        return [(name, step) for name in STEP_NAMES for step in self._steps[name]]

    def watch(self, recorded: Callable[[], bool]) -> None:
        """Ask ``recorded()`` in :meth:`quiet_since`: True when its recorder holds data that no collection read
        yet (a recorder that cannot tell must not be watched: without a watch, quiet_since is always False)."""
        self._recorded = (*self._recorded, recorded)

    def quiet_since(self, mark: int) -> bool:
        """True when collection number ``mark`` was the last one and nothing was recorded since it read the data.

        ``mark`` is :attr:`collections` + 1 read just before a collection: when another collection ran in between
        (or overlapped) the answer is False, so a caller that skips work on True never misses a recording.
        """
        if mark != self.collections or not self._recorded:
            return False
        return not any(recorded() for recorded in self._recorded)

    def collect(self, *, readings: bool = True) -> MetricsData | None:
        """Collect now: hooks (unless ``readings`` is False), the SDK's data, then every step; safe from any thread."""
        with self._counting:
            self.collections += 1
        for hook in list(self.hooks) if readings else ():
            try:
                hook()
            except Exception as error:  # a broken reading must not cost the scrape or the other readings
                self._report_hook(hook, error)
        data = self._collect()
        for name in STEP_NAMES:
            for step in self._steps[name]:
                data = step(data)
        return data

    def _report_hook(self, hook: Callable[[], None], error: Exception) -> None:
        key = (getattr(hook, "__qualname__", repr(hook)), type(error))
        if key not in self._failed_hooks:  # once per cause: a scrape every few seconds must not flood the log
            self._failed_hooks.add(key)
            _logger.error("collection-time reading %r failed: %r (further failures are not logged)", hook, error)


class Producer:
    """A step that adds metrics made at collection time (a recorder's, the self-telemetry's) in their own scope.

    Example:
        >>> from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        >>> produce = Producer(lambda now_ns: [], lambda: pipeline.resource, InstrumentationScope("mine"))
        >>> produce(None) is None  # nothing made, nothing added
        True
    """

    def __init__(
        self,
        metrics: Callable[[int], Sequence[Metric]],
        resource: Callable[[], Resource],
        scope: InstrumentationScope,
    ) -> None:
        """Args:
        metrics: the metrics at a collection time (ns since the epoch).
        resource: the pipeline's current resource (it changes after a fork).
        scope: the instrumentation scope the metrics belong to.
        """
        self._metrics = metrics
        self._resource = resource
        self._scope = scope

    def __call__(self, data: MetricsData | None) -> MetricsData | None:
        return add_metrics(data, self._metrics(time.time_ns()), self._scope, self._resource)
