"""The one fork registry: what must be repaired in a forked child, in explicit phases, in a fixed order.

After ``fork()`` only the forking thread exists in the child. A lock another thread held at that moment stays held
for ever, threads (servers, exporters) are gone, and the child must not report again what its parent reports.
Everything that owns such state registers here (never with :func:`os.register_at_fork` itself:
``tests/_core/test_forks.py`` fails on any other call of it), and this module's one process-wide hook repairs it in
the child, before any user code runs there, phase by phase:

1. :attr:`Phase.LOCKS`: free the locks a thread of the parent may have held, forget the parent's endpoints;
2. :attr:`Phase.PIPELINE`: pipeline state: the SDK's and the recorders' inherited sums, counters, exporters' state;
3. :attr:`Phase.SESSIONS`: pre-fork sessions: the child becomes a member of its parent's group (its pipeline
   already reports only what the child records);
4. :attr:`Phase.THREADS`: restart the threads the child needs (the periodic export).

Within a phase, repairs run in the order they were registered. Objects are held weakly: registering costs nothing
after they are gone. Separately, a few locks are *held across* the fork (:func:`hold`): taken just before it, so
that no thread is half-way through the state they guard, and released just after it, in parent and child (in the
child, after every phase). :func:`outside_fork` keeps a whole collection from overlapping a fork.

Example:
    >>> class Cache:
    ...     def __init__(self) -> None:
    ...         self.lock = threading.Lock()
    ...         register(self, Phase.LOCKS)
    ...     def after_fork_in_child(self) -> None:
    ...         reinit(self.lock)
    >>> cache = Cache()
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol, TypeVar

_logger = logging.getLogger("chat_turbo_metrics.fork")


class Phase(enum.IntEnum):
    """When a repair runs in a forked child; lower phases first."""

    LOCKS = 1
    PIPELINE = 2
    SESSIONS = 3
    THREADS = 4


class ForkAware(Protocol):
    """Repairs its own state in a forked child."""

    def after_fork_in_child(self) -> None: ...


class HeldAcrossFork(Protocol):
    """Holds its lock while this process forks (see :func:`hold`)."""

    def hold_for_fork(self) -> None: ...

    def release_after_fork(self) -> None: ...


_order = itertools.count()  # registration order, kept within each phase
_repairs: dict[Phase, weakref.WeakValueDictionary[int, ForkAware]] = {
    phase: weakref.WeakValueDictionary() for phase in Phase
}
_functions: dict[Phase, dict[int, Callable[[], None]]] = {phase: {} for phase in Phase}
_held: weakref.WeakValueDictionary[int, HeldAcrossFork] = weakref.WeakValueDictionary()


def register(obj: ForkAware, phase: Phase) -> None:
    """Call ``obj.after_fork_in_child()`` in every child forked from now on, in ``phase``, while ``obj`` lives."""
    _repairs[phase][next(_order)] = obj


def register_function(function: Callable[[], None], phase: Phase) -> None:
    """Call ``function()`` (module state: kept for good) in every child forked from now on, in ``phase``."""
    _functions[phase][next(_order)] = function


def hold(obj: HeldAcrossFork) -> None:
    """Call ``obj.hold_for_fork()`` just before every fork, ``obj.release_after_fork()`` just after it (in the parent,
    and in the child after every repair), while ``obj`` lives. Held in registration order, released in reverse."""
    _held[next(_order)] = obj


def reinit(lock: object) -> None:
    """Free a lock (Lock, RLock, Condition, Event) in place, so every object holding a reference sees it free."""
    at_fork_reinit = getattr(lock, "_at_fork_reinit", None)
    if at_fork_reinit is not None:
        at_fork_reinit()


# A collection must not be in flight in another thread when this process forks: the child would inherit the
# pipeline reader's lock held by a thread it does not have, and every collection there (the holder's requests,
# the final state at exit) would wait forever. Taken first before a fork, before the locks held across it (a
# collection takes those), and released last.
_outside_fork = threading.Lock()
_guard_held = [False]
_T = TypeVar("_T")


def outside_fork(call: Callable[[], _T]) -> _T:
    """``call()``, never overlapping a ``fork()`` of this process (a fork waits up to 1 s for it)."""
    with _outside_fork:
        return call()


def _before() -> None:
    # Bounded: a collection waiting for a lock the forking thread holds must not stop the fork.
    _guard_held[0] = _outside_fork.acquire(timeout=1.0)
    for obj in list(_held.values()):
        try:
            obj.hold_for_fork()
        except Exception:
            _logger.exception("holding %r across a fork failed", obj)


def _release() -> None:
    for obj in reversed(list(_held.values())):
        try:
            obj.release_after_fork()
        except Exception:
            _logger.exception("releasing %r after a fork failed", obj)
    if _guard_held[0]:
        _guard_held[0] = False
        _outside_fork.release()


def _after_in_child() -> None:
    for phase in Phase:
        repairs = [(order, obj.after_fork_in_child) for order, obj in list(_repairs[phase].items())]
        for _, repair in sorted([*_functions[phase].items(), *repairs], key=lambda item: item[0]):
            try:
                repair()
            except Exception:  # a broken repair must not stop the others, nor the child
                _logger.exception("repairing %r after fork failed", repair)
    _release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before, after_in_parent=_release, after_in_child=_after_in_child)
