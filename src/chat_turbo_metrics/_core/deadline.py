"""Total deadlines for blocking network calls: when a call's time is up, its socket is shut down.

A socket timeout bounds each read, not the call: a peer that answers one byte a second never lets a per-read
timeout fire, and holds the caller (a notifier's queue, an exporter's worker) for as long as it likes. Here one
process-wide watchdog thread keeps the deadlines of the calls in flight and, when one passes, runs that call's
``abort`` (usually :func:`shutdown_socket`), which wakes the thread blocked in ``recv``/``send`` with an error.
Go's ``http.Client.Timeout`` (what Alertmanager and Prometheus use) is such a total deadline.

Example:
    >>> with abort_after(5.0, lambda: None) as call:
    ...     pass  # the blocking call; ``call.expired`` tells afterwards whether the deadline cut it short
    >>> call.expired
    False
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from chat_turbo_metrics._core import forks


@dataclass(order=True)
class Call:
    """One call in flight: when its time is up, and what ends it."""

    at: float
    order: int
    abort: Callable[[], None] = field(compare=False)
    expired: bool = field(default=False, compare=False)
    done: bool = field(default=False, compare=False)


class _Watchdog:
    """The deadlines of the calls in flight, and the one daemon thread that aborts the late ones."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._calls: list[Call] = []
        self._thread: threading.Thread | None = None
        self._counter = itertools.count()

    def arm(self, seconds: float, abort: Callable[[], None]) -> Call:
        call = Call(time.monotonic() + max(0.0, seconds), next(self._counter), abort)
        with self._cond:
            heapq.heappush(self._calls, call)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chat-turbo-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        return call

    def disarm(self, call: Call) -> None:
        with self._cond:
            call.done = True  # left in the heap; the thread discards it when its time comes

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._calls:
                    self._cond.wait()
                call = self._calls[0]
                wait = call.at - time.monotonic()
                if wait > 0 and not call.done:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._calls)
                if call.done:
                    continue
                call.expired = True
            with contextlib.suppress(Exception):  # the watchdog outlives any abort that fails
                call.abort()


_watchdog = _Watchdog()


@contextlib.contextmanager
def abort_after(seconds: float, abort: Callable[[], None]) -> Iterator[Call]:
    """Run ``abort`` if the ``with`` block is still running after ``seconds``.

    Args:
        seconds: the whole call's time.
        abort: ends the call from another thread (e.g. shuts its socket down); must not block.

    Yields:
        The call; its ``expired`` is True when the deadline aborted it.
    """
    call = _watchdog.arm(seconds, abort)
    try:
        yield call
    finally:
        _watchdog.disarm(call)


def shutdown_socket(sock: socket.socket | None) -> None:
    """Shut ``sock`` down both ways, waking any thread blocked on it; a closed or missing socket is ignored.

    The plain socket's ``shutdown`` is called, also for a TLS socket: ``SSLSocket.shutdown`` would drop the TLS
    state under the feet of the thread reading it.
    """
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _after_fork_in_child() -> None:
    _watchdog._reset()  # the parent's thread and its calls are not the child's


forks.register_function(_after_fork_in_child, forks.Phase.LOCKS)
