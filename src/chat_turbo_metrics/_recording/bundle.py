"""Bundles: one call that records one event into several bound series, under one lock acquisition.

A web request records a duration, a count and two sizes: four handle calls, four frames, four lock
acquisitions and four value checks. Inside a framework's request (tens of µs of other code that has just
evicted ours from the CPU caches) each of those costs several times what a micro-benchmark shows, so a
bundle does them in one frame: every value checked first (nothing is touched when one is refused), then
every cell updated under the recorder's lock. The function is generated once per bundle shape (from a template
into which only integers are formatted), because a loop over the cells costs much of what bundling saves: written
as a plain loop, the HTTP instrumentor's bundle took 600 ns a call against 480 ns (1,010 against 820 ns with its
semantic-convention histograms too), and ``bench/bench_http.py`` showed it as 0.38 µs more per ASGI request (2.57
against 2.19 µs added by the middleware, three interleaved runs each; measured for issue 21).

Handles that are not fast-path handles of one recorder (the SDK path, a disabled monitor, a handle that
drops), and handles whose instrument has no single cell to update (several Views), are called one by one:
same data, ordinary cost.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from chat_turbo_metrics._core.guard import FLOAT_MAX
from chat_turbo_metrics._recording.exemplars import SPAN, current_context, keep_exemplar
from chat_turbo_metrics._recording.handles import _CounterHandle, _HistogramHandle
from chat_turbo_metrics._recording.sdk import BoundInstrument

Record = Callable[..., None]

_INDEX = "        x{j} = _bisect(c{j}.bounds, v{i})\n"
_OBSERVE = """\
            c{j}.counts[x{j}] += 1
            c{j}.sum += v{i}
            if v{i} < c{j}.min:
                c{j}.min = v{i}
            if v{i} > c{j}.max:
                c{j}.max = v{i}
"""
# (position of each histogram, counters, values checked) -> code
_shapes: dict[tuple[tuple[int, ...], int, bool], Any] = {}


def bundle(observe: Sequence[Sequence[BoundInstrument]], increment: Sequence[BoundInstrument] = ()) -> Record:
    """``record(v0, v1, ...)``: ``v0`` observed into every histogram handle of ``observe[0]``, ``v1`` into
    those of ``observe[1]``, ..., and 1 added to every counter handle of ``increment``.

    Args:
        observe: per argument position, the histogram handles that observe it.
        increment: counter handles incremented by 1 on every call.

    Returns:
        The recording function; like a handle it never raises for a bad value (checked, warned once, dropped).
    """
    return _bundle(observe, increment, checked=True)


def bundle_produced(observe: Sequence[Sequence[BoundInstrument]], increment: Sequence[BoundInstrument] = ()) -> Record:
    """:func:`bundle` for values its caller produced itself and knows to be valid, so they are not checked again:
    exact ``float`` or ``int``, ``0 <= value < FLOAT_MAX`` (a ``perf_counter`` difference, a ``len()`` sum).

    For our instrumentors only: inside a framework's request, the checks of three values cost about a tenth of the
    whole middleware (``bench/bench_http.py``). Until every handle has found its cell, and on the SDK path, the
    handles record one by one with their own checks, as for :func:`bundle`.
    """
    return _bundle(observe, increment, checked=False)


def _bundle(
    observe: Sequence[Sequence[BoundInstrument]], increment: Sequence[BoundInstrument], *, checked: bool
) -> Record:
    histograms = [(position, handle) for position, group in enumerate(observe) for handle in group]
    counters = list(increment)
    one_by_one = _one_by_one(len(observe), histograms, counters)
    locks = {id(getattr(handle, "_lock", None)) for _, handle in histograms} | {
        id(getattr(handle, "_lock", None)) for handle in counters
    }
    fast = all(type(handle) is _HistogramHandle for _, handle in histograms) and all(
        type(handle) is _CounterHandle for handle in counters
    )
    if not fast or len(locks) != 1 or not (histograms or counters):
        return one_by_one
    shape = (tuple(position for position, _ in histograms), len(counters), checked)
    code = _shapes.get(shape)
    if code is None:
        code = _shapes[shape] = compile(_source(len(observe), *shape), f"<bundle {shape}>", "exec")
    handles: list[Any] = [handle for _, handle in histograms] + counters
    names = [f"c{j}" for j in range(len(histograms))] + [f"n{m}" for m in range(len(counters))]
    # The function's globals: the cells are put here once every handle has found its own, so a call reads
    # them directly instead of through their handles.
    namespace: dict[str, Any] = dict.fromkeys(names)
    lock = handles[0]._lock
    namespace.update(
        _bisect=bisect_left,
        _float=float,
        _int=int,
        _FMAX=FLOAT_MAX,
        _acquire=lock.acquire,
        _release=lock.release,
        _context=current_context,
        _SPAN=SPAN,
        _keep=keep_exemplar,
        ready=False,
    )

    def slow(*values: Any) -> None:
        one_by_one(*values)
        if not namespace["ready"]:
            cells = [handle._cell for handle in handles]
            if all(cell is not None for cell in cells):
                namespace.update(zip(names, cells, strict=True), ready=True)

    namespace["_slow"] = slow
    exec(code, namespace)  # our own template: only integers are formatted into it
    record: Record = namespace["record"]
    return record


def _source(arity: int, positions: tuple[int, ...], counters: int, checked: bool) -> str:
    """The text of ``record`` for one shape: values checked (if ``checked``), then every cell updated under one lock."""
    values = ", ".join(f"v{i}" for i in range(arity))
    # Until every handle has found its cell on a first call (never, for an instrument with several streams),
    # the handles record one by one.
    checks = ["ready"]
    if checked:
        check = "((t := v{i}.__class__) is _float or t is _int) and 0 <= v{i} < _FMAX"
        checks += [check.format(i=i) for i in sorted(set(positions))]
    indexes = [_INDEX.format(i=i, j=j) for j, i in enumerate(positions)]
    updates = [_OBSERVE.format(i=i, j=j) for j, i in enumerate(positions)]
    updates += [f"            n{m}.delta += 1\n" for m in range(counters)]
    # After the lock, as on every fast-path histogram update: the latest sampled observation per bucket.
    exemplars = [f"            _keep(c{j}, x{j}, v{i}, span)\n" for j, i in enumerate(positions)]
    look = (
        "        context = _context()\n"
        "        if context and (span := context.get(_SPAN)) is not None:\n"
        f"{''.join(exemplars)}"
        if exemplars
        else ""
    )
    return (
        f"def record({values}):\n"
        "    try:\n"
        f"        ok = {' and '.join(checks)}\n"
        "    except Exception:\n"
        "        ok = False\n"
        "    if ok:\n"
        f"{''.join(indexes)}"
        "        _acquire()\n"
        "        try:\n"
        f"{''.join(updates)}"
        "        finally:\n"
        "            _release()\n"
        f"{look}"
        "        return\n"
        f"    _slow({values})\n"
    )


def _one_by_one(arity: int, histograms: list[tuple[int, BoundInstrument]], counters: list[BoundInstrument]) -> Record:
    """Each handle called in turn: its own checks, slow path and warnings."""
    observers = [(position, handle.observe) for position, handle in histograms]
    increments = [handle.inc for handle in counters]

    def record(*values: Any) -> None:
        if len(values) != arity:
            raise TypeError(f"record() takes {arity} values ({len(values)} given)")
        for position, observe in observers:
            observe(values[position])
        for inc in increments:
            inc()

    return record
