"""Exemplars of the fast path: the latest sampled observation per histogram bucket, with its trace and span ids.

As the SDK's default ``trace_based`` exemplar filter and its explicit-bucket reservoir do: an observation made
while a sampled span is current is kept as its bucket's exemplar (value, time, trace id, span id), replacing the
one before. Every fast-path histogram update (the recorder's calls, bound handles, bundles) looks for a span the
same way, after releasing the recorder's lock::

    context = current_context()
    if context and (span := context.get(SPAN)) is not None:
        keep_exemplar(cell, index, value, span)

With no span anywhere the context is empty and that is one C call and a truth test (about 12 ns); inside a span
it is one more lookup, the span's context read and one tuple stored.
"""

from __future__ import annotations

import time
from typing import Any

from chat_turbo_metrics._core.compat import SPAN_KEY, current_context_reader

SPAN = SPAN_KEY
current_context = current_context_reader()
_time_ns = time.time_ns


def keep_exemplar(cell: Any, index: int, value: float, span: Any) -> None:
    """Keep ``value`` as bucket ``index``'s exemplar if ``span`` is sampled (one list store: no lock needed)."""
    try:
        context = span.get_span_context()
        if not context.trace_flags & 1:
            return
        kept = cell.exemplars
        if kept is None:
            kept = cell.exemplars = [None] * len(cell.counts)
        kept[index] = (value, _time_ns(), context.trace_id, context.span_id)
    except Exception:  # never raise while recording; an odd span object is no exemplar
        return
