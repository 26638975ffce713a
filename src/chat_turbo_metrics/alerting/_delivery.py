"""Delivery: one bounded queue and one worker thread per notifier, retries with backoff and jitter to a deadline.

A notifier that stalls or fails holds up only its own queue. Nothing here runs on the caller's thread except
:meth:`Channel.submit`, which appends to a deque. When a queue is full the oldest waiting notification is dropped
(the newest state of a group matters most), counted and warned about. Outcomes (``sent``, ``failed``,
``dropped``) and retries are counted per notifier, both in :class:`DeliveryStats` and as OpenTelemetry counters.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics

from chat_turbo_metrics._pipeline import health

_logger = logging.getLogger("chat_turbo_metrics.alerting")

OUTCOMES = ("sent", "failed", "dropped")


class DeliveryError(Exception):
    """A notifier could not deliver; says whether trying again can help and how long the peer asked to wait.

    Example:
        >>> error = DeliveryError("HTTP 429 from https://hooks.slack.com/***", retry_after_s=2.0)
        >>> error.retryable, error.retry_after_s
        (True, 2.0)
    """

    def __init__(self, message: str, *, retryable: bool = True, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a notification is retried.

    Example:
        >>> RetryPolicy(deadline_s=30.0).backoff_max_s
        30.0

    Attributes:
        deadline_s: give up this long after the first attempt started.
        backoff_base_s: the first retry waits up to this long; each further retry doubles the bound.
        backoff_max_s: the bound stops growing here. The wait is uniform in [0, bound] ("full jitter"), but at
            least what the peer asked for with ``Retry-After``.
    """

    deadline_s: float = 120.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("deadline_s", "backoff_base_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be > 0")


class DeliveryStats:
    """Counts of delivery outcomes per notifier, mirrored to OpenTelemetry counters.

    The counters are ``alert_notifications`` (attributes ``notifier``, ``outcome``: sent, failed, dropped) and
    ``alert_notification_retries`` (attribute ``notifier``).

    Example:
        >>> stats = DeliveryStats()
        >>> stats.count("slack", "sent")
        >>> stats.snapshot()["slack"]["sent"]
        1
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter("chat_turbo_metrics.alerting", meter_provider=meter_provider)
        self._outcomes = meter.create_counter(
            "alert_notifications", description="Alert notifications by notifier and outcome (sent, failed, dropped)"
        )
        self._retries = meter.create_counter("alert_notification_retries", description="Retried delivery attempts")
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {}

    def count(self, notifier: str, outcome: str, amount: int = 1) -> None:
        """Add ``amount`` to ``outcome`` (one of :data:`OUTCOMES` or ``retries``) for ``notifier``."""
        with self._lock:
            row = self._counts.setdefault(notifier, dict.fromkeys((*OUTCOMES, "retries"), 0))
            row[outcome] += amount
        if outcome == "retries":
            self._retries.add(amount, {"notifier": notifier})
        else:
            self._outcomes.add(amount, {"notifier": notifier, "outcome": outcome})

    def after_fork(self) -> None:
        """In a forked child: a lock held by the parent's threads at the fork is not the child's."""
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, dict[str, int]]:
        """A copy: notifier -> outcome -> count."""
        with self._lock:
            return {name: dict(row) for name, row in self._counts.items()}


@dataclass
class Job:
    """One notification for one notifier; ``on_done(delivered)`` runs on the worker thread afterwards."""

    item: Any
    on_done: Callable[[bool], None]


Sender = Callable[[Any], "Awaitable[None] | None"]


class Channel:
    """The queue and worker thread of one notifier. The thread starts with the first job (and again after fork).

    Example:
        >>> delivered = []
        >>> channel = Channel("log", delivered.append, RetryPolicy(), 10, DeliveryStats())
        >>> channel.submit(Job("hello", on_done=lambda ok: None))
        >>> channel.wait_idle(time.monotonic() + 5), delivered
        (True, ['hello'])
        >>> channel.close(time.monotonic() + 5)
        True
    """

    def __init__(
        self,
        name: str,
        send: Sender,
        policy: RetryPolicy,
        queue_size: int,
        stats: DeliveryStats,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size={queue_size!r}: must be >= 1")
        self.name = name
        self._send = send
        self._policy = policy
        self._queue_size = queue_size
        self._stats = stats
        self._rng = rng
        self._reset()
        health.register_queue(self)

    def health_queue(self) -> tuple[str, str, int]:
        """The self-telemetry's view: notifications waiting for this notifier."""
        return "alert_notifications", self.name, len(self._queue)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._busy = False
        self._closing = False
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned_full = False
        self._failing = False  # warn when a notifier starts failing, not at every failure of a dead peer

    def after_fork(self) -> None:
        """In a forked child: the parent's queue and thread are the parent's; start empty."""
        self._reset()

    def submit(self, job: Job) -> None:
        """Queue ``job``; if the queue is full, drop (and count) the oldest waiting job."""
        dropped: Job | None = None
        with self._cond:
            if self._closing:
                dropped = job
            else:
                if len(self._queue) >= self._queue_size:
                    dropped = self._queue.popleft()
                self._queue.append(job)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"alert-notify-{self.name}", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
        if dropped is not None:
            self._drop(dropped, "closed" if self._closing else "full")

    def _drop(self, job: Job, why: str) -> None:
        if not self._warned_full:
            self._warned_full = True
            _logger.warning("alert notifier %s: queue %s, dropping a notification (counted as dropped)", self.name, why)
        self._stats.count(self.name, "dropped")
        job.on_done(False)

    def wait_idle(self, deadline: float) -> bool:
        """Wait until nothing is queued or being delivered, or until ``deadline`` (monotonic). True when idle."""
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, deadline: float) -> bool:
        """Deliver what is queued until ``deadline``, then give up on the rest (counted as dropped)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        idle = self.wait_idle(deadline)
        if not idle:
            self._abort.set()
            with self._cond:
                left = list(self._queue)
                self._queue.clear()
                self._cond.notify_all()
            for job in left:
                self._stats.count(self.name, "dropped")
                job.on_done(False)
        return idle

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._busy = True
            delivered = False
            try:
                delivered = self._deliver(job.item)
            finally:
                try:
                    job.on_done(delivered)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()

    def _deliver(self, item: Any) -> bool:
        deadline = time.monotonic() + self._policy.deadline_s
        attempt = 0
        while True:
            try:
                self._call(item)
            except Exception as error:  # a notifier's failure must never end the worker
                wait = self._retry_wait(error, attempt, deadline)
                if wait is None:
                    self._stats.count(self.name, "failed")
                    _logger.log(
                        logging.DEBUG if self._failing else logging.WARNING,
                        "alert notifier %s: giving up after %d attempt(s): %s (further failures are counted in "
                        "alert_notifications{outcome=failed} and logged at DEBUG until one succeeds)",
                        self.name,
                        attempt + 1,
                        _describe(error),
                    )
                    self._failing = True
                    return False
                self._stats.count(self.name, "retries")
                if self._abort.wait(wait):
                    self._stats.count(self.name, "dropped")
                    return False
                attempt += 1
            else:
                self._stats.count(self.name, "sent")
                if self._failing:
                    self._failing = False
                    _logger.warning("alert notifier %s: delivering again", self.name)
                return True

    def _retry_wait(self, error: Exception, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next attempt, or None when it is no use (or no time) to retry."""
        if isinstance(error, DeliveryError) and not error.retryable:
            return None
        bound = min(self._policy.backoff_max_s, self._policy.backoff_base_s * 2.0**attempt)
        wait = self._rng() * bound
        if isinstance(error, DeliveryError) and error.retry_after_s is not None:
            wait = max(wait, error.retry_after_s)
        if self._abort.is_set() or time.monotonic() + wait >= deadline:
            return None
        return wait

    def _call(self, item: Any) -> None:
        result = self._send(item)
        if inspect.isawaitable(result):
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            # an async handler that never finishes would hold its queue forever: bound it by the deadline
            self._loop.run_until_complete(asyncio.wait_for(_awaited(result), self._policy.deadline_s))


async def _awaited(result: Awaitable[None]) -> None:
    await result


def _describe(error: Exception) -> str:
    """The error's type and message; our notifiers' messages carry masked URLs only."""
    return f"{type(error).__name__}: {error}"
