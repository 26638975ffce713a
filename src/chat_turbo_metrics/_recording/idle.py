"""Idle-series eviction: series nobody records leave memory, at collection time, never on the hot path.

With ``series_idle_timeout_s`` set, each collection looks at every cell of every stream before folding it
(:func:`sweep`). A cell is *in use* when a recording reached it since the last collection: a counter's
``delta`` or a histogram's ``min`` moved, or the slow path found it (:meth:`Stream.cell` resets
``active_ns``). The hot path cannot be watched without costing it, so eviction takes two steps:

1. A cell not seen in use for ``timeout`` is *demoted*: every hot-path cache key that leads to it is removed
   (under the recorder's lock), so from now on any recording for its tag set takes the slow path, which finds
   the cell and marks it in use again. A gauge's ``set()`` of the hot path is seen only this way.
2. A demoted cell still not seen in use ``timeout`` later is *evicted*: removed from its stream (its
   cardinality slot is free for a new tag set) and marked :data:`GONE`, so a slow path that still holds it
   never puts it back into a cache.

So a series recorded at least once per ``timeout`` is never evicted, one not recorded for a timeout may be,
and one not recorded for twice the timeout is gone at the next collection. Nothing accepted is lost: a
counter or histogram cell is evicted only when its delta was folded and exported at an earlier collection
and nothing was added since; a recording that raced with demotion lands in the cell before it can be
evicted (the hot path holds the cell only between its cache lookup and its update, a timeout is at least a
second). Exempt: cells held by bound handles (:data:`PINNED`: a handle keeps its cell for life) and the
overflow series (one per stream).

Example:
    >>> from chat_turbo_metrics._recording.streams import Stream, stream_specs
    >>> from chat_turbo_metrics._recording.instruments import InstrumentSpec
    >>> stream = Stream(stream_specs(InstrumentSpec("jobs", "counter", "", "Jobs."), ())[0], limit=10)
    >>> cell, _ = stream.cell({"queue": "a"})  # a new cell counts as in use
    >>> minute = 60 * 10**9
    >>> for now in (1, 1 + minute, 1 + 2 * minute):  # three collections, nothing recorded in between
    ...     removed = sweep(stream, now, timeout_ns=minute)
    ...     print(cell.mark, len(stream.series))
    0 1
    1 1
    3 0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from chat_turbo_metrics._recording.streams import _OVERFLOW_KEY, Stream

LIVE = 0  # cached by the hot path (if it may be); evicted once idle
DEMOTED = 1  # out of the hot-path caches; evicted unless the slow path finds it in use
PINNED = 2  # held by a bound handle: never evicted
GONE = 3  # evicted: must never be cached again

_INF = math.inf

# Whether a recording reached a cell through the hot path since the last fold (read before the fold).
_USED: dict[str, Callable[[Any], bool]] = {
    "sum": lambda cell: cell.delta != 0,
    "histogram": lambda cell: cell.min != _INF or bool(cell.pending),
    "gauge": lambda cell: False,  # a store leaves no trace; demotion routes the next set() to the slow path
}


def sweep(stream: Stream, now: int, timeout_ns: int) -> int:
    """Demote and evict the idle cells of ``stream`` at collection time ``now``; the cache keys removed.

    Call with the recorder's lock held, before the stream folds its cells. A cell seen in use less than
    ``timeout_ns`` ago is skipped at the cost of one comparison: whether it was used since is asked only
    once it has aged, so a counter used between two such checks may be demoted early (its next recording
    then takes the slow path once), never evicted early.
    """
    used = _USED[stream.spec.aggregation]
    series = stream.series
    overflow = series.get(_OVERFLOW_KEY)
    horizon = now - timeout_ns
    evicted = []
    removed = 0
    for key, cell in series.items():
        active = cell.active_ns
        if (active > horizon and active != 0) or cell.mark == PINNED or cell is overflow:
            continue
        if active == 0 or used(cell):
            cell.active_ns, cell.mark = now, LIVE
            continue
        removed += forget_keys(cell)
        if cell.mark == LIVE:
            cell.active_ns, cell.mark = now, DEMOTED
        else:
            evicted.append(key)
    for key in evicted:
        series.pop(key).mark = GONE
    return removed


def forget_keys(cell: Any) -> int:
    """Remove every hot-path cache entry that leads to ``cell``; how many were removed. Locked."""
    keys, cell.keys = cell.keys, None
    removed = 0
    for cache, key in keys or ():
        if cache.get(key) is cell:
            del cache[key]
            removed += 1
    return removed
