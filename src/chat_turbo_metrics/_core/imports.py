"""Patch a library when the application imports it, not before: an instrumentor costs nothing for a library unused.

``opentelemetry-instrument`` runs every installed instrumentor at start-up. An instrumentor that imported its
library there would load aiohttp, asyncpg, Celery, Django, httpx, psycopg and SQLAlchemy into a Flask service
that uses none of them: about 1,200 modules, 80 MB of memory and a second of start-up in every process, and a
slower request in every worker (a larger heap to walk). :func:`when_imported` defers the patch to the import
(with wrapt's post-import hooks, which OpenTelemetry's instrumentation already depends on), and runs it at once
when the library is already there.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType

from wrapt import register_post_import_hook

from chat_turbo_metrics._core.guard import Problems

_problems = Problems(logging.getLogger("chat_turbo_metrics.instrumentation"))

Undo = Callable[[], None]


class _Deferred:
    """One patch waiting for its module, then applied until :meth:`undo`; applied at most once."""

    __slots__ = ("_lock", "_module", "_patch", "_undo", "cancelled")

    def __init__(self, module: str, patch: Callable[[ModuleType], Undo | None]) -> None:
        self._module = module
        self._patch = patch
        self._undo: Undo | None = None
        self._lock = threading.Lock()
        self.cancelled = False

    def __call__(self, module: ModuleType) -> None:
        """The post-import hook: inside the application's import, so it never raises."""
        with self._lock:
            if self.cancelled or self._undo is not None:
                return
            try:
                self._undo = self._patch(module) or _nothing
            except Exception as error:  # a version we cannot patch: the library works, unmeasured
                self.cancelled = True
                _problems.report(("patch", self._module, type(error)), "cannot instrument %s: %r", self._module, error)

    def undo(self) -> None:
        """Restore what the patch replaced, or make sure it never runs if the module has not come yet."""
        with self._lock:
            self.cancelled = True
            undo, self._undo = self._undo, None
        if undo is not None:
            undo()


def _nothing() -> None:
    return None


def when_imported(module: str, patch: Callable[[ModuleType], Undo | None]) -> Undo:
    """Call ``patch(module)`` when ``module`` is imported (now, if it already is); return the undo.

    The undo restores what ``patch`` replaced (the function ``patch`` returned) or, if the module never came,
    cancels the patch. An exception from ``patch`` is logged once and leaves the library unpatched: it is raised
    inside the application's own ``import``, where it must not land.

    Example:
        >>> import json
        >>> undo = when_imported("json", lambda module: print("patching", module.__name__))
        patching json
        >>> undo()

    Args:
        module: the module's full name (``"psycopg2"``, ``"urllib3.connectionpool"``).
        patch: patches the module given, returning the function that restores it (or None: nothing to restore).
    """
    deferred = _Deferred(module, patch)
    present = sys.modules.get(module)
    if present is not None and getattr(getattr(present, "__spec__", None), "_initializing", False):
        # Half-imported: wrapt would patch it at once, before the names the patch replaces exist. Another
        # thread's import holds the module's lock: wait for it (in this thread's own import cycle this returns
        # the module as it is, at once). If that import fails, this one tries again, as any importer waiting on it
        # would; its failure is the application's to see, not instrument()'s: the patch waits for the next import.
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    register_post_import_hook(deferred, module)
    return deferred.undo
