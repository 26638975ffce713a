"""What is attached to a pipeline beside its exporters, for readers beside it in the stack to find.

Alerting and the exporters are siblings: neither imports the other. An alert manager made for a pipeline attaches
itself here (:func:`attach`), and the status page of the Prometheus endpoint finds the managers of the pipeline it
serves (:func:`attached`) and reads their public state. Entries are weak: a manager nobody holds any more is gone
from the list too.

Example:
    >>> class Manager: ...
    >>> manager = Manager()
    >>> attach(pipeline, ALERT_MANAGERS, manager)
    >>> attached(pipeline, ALERT_MANAGERS) == (manager,)
    True
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any

ALERT_MANAGERS = "alert_managers"
"""The role alerting's ``AlertManager`` attaches itself under."""

_lock = threading.Lock()
_by_pipeline: weakref.WeakKeyDictionary[Any, dict[str, weakref.WeakSet[Any]]] = weakref.WeakKeyDictionary()
_order = itertools.count()
_rank: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def attach(pipeline: object, role: str, item: object) -> None:
    """Attach ``item`` to ``pipeline`` under ``role`` (held weakly; attaching twice keeps one entry)."""
    with _lock:
        roles = _by_pipeline.setdefault(pipeline, {})
        roles.setdefault(role, weakref.WeakSet()).add(item)
        if item not in _rank:
            _rank[item] = next(_order)


def attached(pipeline: object, role: str) -> tuple[Any, ...]:
    """What is attached to ``pipeline`` under ``role`` and still alive, in the order it was attached."""
    with _lock:
        items = list(_by_pipeline.get(pipeline, {}).get(role, ()))
        return tuple(sorted(items, key=lambda item: _rank.get(item, 0)))
