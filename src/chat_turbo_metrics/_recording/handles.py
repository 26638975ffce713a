"""Bound handles of the fast path: one series each, its cell found on first use, then updated directly.

A handle skips the tag lookup of :mod:`chat_turbo_metrics._recording.fast`; like the recorder's hot path it
takes only plain ``int``/``float`` values in range (two identity tests and one chained comparison) and sends
anything else to the recorder's slow path, which normalises or refuses it before touching the cell. A histogram
handle keeps exemplars as the recorder does (:mod:`chat_turbo_metrics._recording.exemplars`); outside a span it
only appends the value to its cell's pending list, which the next collection folds into the buckets
(:func:`~chat_turbo_metrics._recording.streams.fold_pending`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chat_turbo_metrics._core.guard import FLOAT_MAX, INT64_BOUND, INT64_LIMIT
from chat_turbo_metrics._recording.exemplars import SPAN, current_context, keep_exemplar
from chat_turbo_metrics._recording.sdk import BoundInstrument
from chat_turbo_metrics._recording.streams import FOLD_AT, fold_pending

if TYPE_CHECKING:
    from chat_turbo_metrics._recording.fast import FastRecorder

_I64 = INT64_BOUND
_I64_INT = INT64_LIMIT  # counter increments are usually the int 1: keep that comparison int-to-int
_FMAX = FLOAT_MAX
_FOLD_AT = FOLD_AT
_int = int
_float = float
_EMPTY: Mapping[str, Any] = {}


class _Handle(BoundInstrument):
    """A bound series: the cell is looked up on first use, then updated without hashing tags."""

    __slots__ = ("_cell", "_lock", "_recorder")
    _method = "inc"

    def __init__(self, recorder: FastRecorder, instrument: Any, tags: dict[str, Any], name: str) -> None:
        super().__init__(instrument, tags, recorder._problems, name)
        self._recorder = recorder
        self._lock = recorder._lock
        self._cell: Any = None  # a SumCell, GaugeCell or HistogramCell after the first call

    def _miss(self, value: Any) -> None:
        try:
            # Not the overflow cell: each measurement there is counted on the slow path, like the recorder's,
            # and a freed slot (idle eviction) can still give this tag set a series of its own later.
            cell, own = self._recorder._record(self._instrument, self.name, self._tags or _EMPTY, value)
            if cell is not None and own and self._recorder._pin(cell):  # a handle's cell is never evicted
                self._cell = cell
        except Exception as error:  # never raise while recording
            self._problems.report(("internal", type(error)), "%s: recording failed: %r", self.name, error)

    def _wrong(self, method: str) -> None:
        self._problems.report(
            ("handle", self.name, method), "%s: this handle has no %s(); use %s()", self.name, method, self._method
        )

    def inc(self, value: float = 1) -> None:
        self._wrong("inc")

    def observe(self, value: float) -> None:
        self._wrong("observe")

    def set(self, value: float) -> None:
        self._wrong("set")


class _CounterHandle(_Handle):
    __slots__ = ()

    def inc(self, value: float = 1) -> None:
        """Add ``value`` (default 1)."""
        try:
            if ((kind := value.__class__) is _int or kind is _float) and 0 <= value < _I64_INT:
                lock = self._lock
                lock.acquire()
                try:
                    self._cell.delta += value
                finally:
                    lock.release()
                return
        except Exception:
            pass
        self._miss(value)


class _HistogramHandle(_Handle):
    __slots__ = ()
    _method = "observe"

    def observe(self, value: float) -> None:
        """Record one observation.

        Outside a span it is appended to the cell's pending list, folded into the buckets when something reads
        the cell (:func:`~chat_turbo_metrics._recording.streams.fold_pending`) or when the list reaches
        ``FOLD_AT``; inside one the cell is updated now, keeping the exemplar of its bucket.
        """
        try:
            if ((kind := value.__class__) is _float or kind is _int) and 0 <= value < _FMAX:
                context = current_context()
                if not context or context.get(SPAN) is None:  # an empty context: no span, no exemplar to keep
                    pending = self._cell.pending
                    pending.append(value)
                    if len(pending) >= _FOLD_AT:
                        self._fold()
                    return
                cell = self._cell
                index = bisect_left(cell.bounds, value)
                lock = self._lock
                lock.acquire()
                try:
                    cell.counts[index] += 1
                    cell.sum += value
                    if value < cell.min:  # noqa: PLR1730 - an if is ~2x cheaper than min() on the hot path
                        cell.min = value
                    if value > cell.max:  # noqa: PLR1730
                        cell.max = value
                finally:
                    lock.release()
                keep_exemplar(cell, index, value, context.get(SPAN))
                return
        except Exception:
            pass
        self._miss(value)

    def _fold(self) -> None:
        """Fold the cell's pending values; never raises (the value is in the list already: a raise here would send
        it to :meth:`_miss`, which would record it a second time)."""
        lock = self._lock
        try:
            lock.acquire()
            try:
                fold_pending(self._cell)
            finally:
                lock.release()
        except Exception as error:
            self._problems.report(("internal", type(error)), "%s: folding failed: %r", self.name, error)

    def inc(self, value: float = 1) -> None:
        """Record ``value`` (default 1) as one observation."""
        self.observe(value)


class _GaugeHandle(_Handle):
    __slots__ = ()
    _method = "set"

    def set(self, value: float) -> None:
        """Set the gauge."""
        try:
            if ((kind := value.__class__) is _float or kind is _int) and -_I64 <= value < _I64:
                self._cell.value = value
                return
        except Exception:
            pass
        self._miss(value)


HANDLES: dict[str, type[_Handle]] = {
    "counter": _CounterHandle,
    "gauge": _GaugeHandle,
    "histogram": _HistogramHandle,
}
