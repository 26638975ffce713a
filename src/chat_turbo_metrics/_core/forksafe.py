"""State that must be repaired in a forked child: one process-wide hook, objects registered weakly.

After ``fork()`` only the forking thread exists in the child. A lock another thread held at that moment
stays held forever, and threads (servers, exporters) are gone. Objects that own such state register here
and get ``after_fork_in_child()`` called in the child, before any user code runs there.

Example:
    >>> class Cache:
    ...     def after_fork_in_child(self) -> None:
    ...         self.lock = threading.Lock()
    >>> cache = Cache()
    >>> register(cache)
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol, TypeVar

_logger = logging.getLogger("chat_turbo_metrics.fork")


class ForkAware(Protocol):
    """Repairs its own state in a forked child."""

    def after_fork_in_child(self) -> None: ...


_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_lock = threading.Lock()


def register(obj: ForkAware) -> None:
    """Call ``obj.after_fork_in_child()`` in every child forked from now on, while ``obj`` lives."""
    with _lock:
        _objects.add(obj)


def reinit(lock: object) -> None:
    """Free a lock (Lock, RLock, Condition) in place, so every object holding a reference sees it free."""
    at_fork_reinit = getattr(lock, "_at_fork_reinit", None)
    if at_fork_reinit is not None:
        at_fork_reinit()


# A collection must not be in flight in another thread when this process forks: the child would inherit the
# pipeline reader's lock held by a thread it does not have, and every collection there (the holder's requests,
# the final state at exit) would wait forever. Held across fork(); registered at the first use, so that it
# runs before the recorders' own fork hooks (before-fork hooks run last-registered first).
_outside_fork = threading.Lock()
_guard_state = {"registered": False, "held": False}
_T = TypeVar("_T")


def outside_fork(call: Callable[[], _T]) -> _T:
    """``call()``, never overlapping a ``fork()`` of this process (a fork waits up to 1 s for it)."""
    if not _guard_state["registered"] and hasattr(os, "register_at_fork"):
        _guard_state["registered"] = True
        os.register_at_fork(before=_hold_guard, after_in_parent=_release_guard, after_in_child=_release_guard)
    with _outside_fork:
        return call()


def _hold_guard() -> None:
    # Bounded: a collection waiting for a lock the forking thread holds must not stop the fork.
    _guard_state["held"] = _outside_fork.acquire(timeout=1.0)


def _release_guard() -> None:
    if _guard_state["held"]:
        _guard_state["held"] = False
        _outside_fork.release()


def _after_in_child() -> None:
    reinit(_lock)
    for obj in list(_objects):
        try:
            obj.after_fork_in_child()
        except Exception:  # a broken repair must not stop the others, nor the child
            _logger.exception("repairing %r after fork failed", obj)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_in_child)
