"""Bad input while recording: warned about once per cause, counted, dropped; never raised."""

from __future__ import annotations

import logging
import math
import numbers
import operator
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from chat_turbo_metrics._pipeline import forksafe
from chat_turbo_metrics._pipeline.compat import SDK_MEASUREMENT_LOGGERS

_logger = logging.getLogger("chat_turbo_metrics.recording")

MAX_TAG_VALUE_LENGTH = 2048
_MAX_CAUSES = 10_000  # bounded memory even if every bad call has a new cause
_TAG_VALUE_TYPES = (str, bool, int, float)


class Problems:
    """Counts dropped recordings per cause and logs the first occurrence of each cause.

    Example:
        >>> problems = Problems()
        >>> problems.report(("negative", "jobs"), "counter %s got a negative increment", "jobs")
        >>> problems.total
        1
    """

    def __init__(self, logger: logging.Logger = _logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self.counts: Counter[tuple[Any, ...]] = Counter()
        self._causes: Counter[str] = Counter()  # by the self-telemetry's cause label, kept as they come
        forksafe.register(self)

    def after_fork_in_child(self) -> None:
        forksafe.reinit(self._lock)  # another thread of the parent may have been reporting
        # The parent reports what it dropped; the child counts its own (causes already logged stay logged).
        self.counts = Counter(dict.fromkeys(self.counts, 0))
        self._causes = Counter()

    @property
    def total(self) -> int:
        """Recordings dropped so far, all causes together."""
        return sum(self.counts.values())

    def by_cause(self) -> dict[str, int]:
        """Dropped recordings per cause label (:func:`problem_cause`): ``{"not_finite": 2, ...}``."""
        with self._lock:
            return dict(self._causes)

    def report(self, cause: tuple[Any, ...], message: str, *args: Any) -> None:
        """Count one dropped recording; log ``message % args`` the first time ``cause`` is seen.

        Never raises: an unhashable part of the cause (a list given as a name) is keyed by its short repr,
        and arguments are logged as short reprs.
        """
        label = problem_cause(cause)
        try:
            hash(cause)
        except TypeError:
            cause = tuple(short_repr(part) for part in cause)
        args = tuple(_Short(arg) for arg in args)  # messages use %s and %r only
        with self._lock:
            if cause not in self.counts and len(self.counts) >= _MAX_CAUSES:
                cause = ("other",)
            first = cause not in self.counts
            self.counts[cause] += 1
            self._causes[label] += 1
        if first:
            self._logger.warning(message + "; dropped (further occurrences are counted, not logged)", *args)


# Problems keys are (kind, ...) tuples; a bad value's key carries the reason as its third part.
_PROBLEM_CAUSES = {
    "name": "invalid_name",
    "kind": "kind_conflict",
    "tags": "invalid_tags",
    "handle": "wrong_handle_method",
    "internal": "internal_error",
    "metric_limit": "metric_limit",
}
_VALUE_CAUSES = {
    "type": "not_a_number",
    "range": "out_of_range",
    "finite": "not_finite",
    "negative": "negative_value",
    "start": "invalid_timer_start",
    "buckets": "invalid_buckets",
}


def problem_cause(key: tuple[Any, ...]) -> str:
    """The ``cause`` label of a dropped recording, from its :class:`Problems` key.

    Example:
        >>> problem_cause(("value", "jobs", "finite")), problem_cause(("tags", "jobs", "tags must be a dict"))
        ('not_finite', 'invalid_tags')
    """
    kind = key[0] if key else "other"
    if kind == "value":
        reason = key[2] if len(key) > 2 else ""
        return _VALUE_CAUSES.get(reason, "invalid_value") if isinstance(reason, str) else "invalid_value"
    return _PROBLEM_CAUSES.get(kind, "other") if isinstance(kind, str) else "other"


class _Short:
    """Logs as the short repr (for ``%r``) or the short str (for ``%s``) of what it wraps."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return short_repr(self.value)

    def __str__(self) -> str:
        try:
            text = str(self.value)
        except Exception:
            return short_repr(self.value)
        return text if len(text) <= 200 else f"{text[:180]}...({len(text)} characters)"


def bad_tags(tags: object) -> str | None:
    """Why ``tags`` cannot label a series, or None when they can.

    The common case (a dict of short strings and numbers) is decided with type identity checks only, because
    the SDK recording path runs this on every call; anything else takes the explanatory slow path.
    """
    if type(tags) is dict:
        for key, value in tags.items():
            kind = type(value)
            if (
                type(key) is not str
                or not key
                or not (
                    (kind is str and len(value) <= MAX_TAG_VALUE_LENGTH) or kind is int or kind is float or kind is bool
                )
            ):
                return _why_bad_tags(tags)
        return None
    return _why_bad_tags(tags)


def _why_bad_tags(tags: object) -> str | None:
    try:
        return _explain_tags(tags)
    except Exception as error:  # a mapping whose items() raises: the call must not
        return f"tags cannot be read ({type(error).__name__}: {short_repr(str(error))})"


def _explain_tags(tags: object) -> str | None:
    if not isinstance(tags, Mapping):
        return f"tags must be a dict, not {type(tags).__name__}"
    for key, value in tags.items():
        if not isinstance(key, str) or not key:
            return f"tag key {key!r} is not a non-empty string"
        if not isinstance(value, _TAG_VALUE_TYPES):
            return f"tag {key!r} has a value of type {type(value).__name__} (use str, int, float or bool)"
        if isinstance(value, str) and len(value) > MAX_TAG_VALUE_LENGTH:
            return f"tag {key!r} has a value of {len(value)} characters (limit {MAX_TAG_VALUE_LENGTH})"
    return None  # a Mapping subclass or str/int subclasses: acceptable


# The hot paths accept exactly these types within these bounds; anything else takes the slow path to
# number(). Counters and gauges stay inside OTLP's int64 (a float beyond it takes the slow path, still fine).
EXACT_TYPES = frozenset((int, float))
INT64_LIMIT = 2**63
INT64_BOUND = float(INT64_LIMIT)  # as a float, so the hot path compares float to float
FLOAT_MAX = sys.float_info.max


def number(value: object, *, non_negative: bool) -> tuple[int | float, None] | tuple[None, tuple[str, str]]:
    """``value`` as a plain int or float every exporter can encode, or why it cannot be recorded.

    bool counts as 1/0 (as in prometheus_client); int subclasses and integral types (numpy ints) become
    ``int``; ``Decimal``, ``Fraction`` and numpy floats become ``float``; an int outside int64 becomes a
    float (OTLP encodes integers as int64), and one outside float64 (``10**400``) is refused.

    Returns:
        ``(number, None)``, or ``(None, (cause, reason))`` with a short cause for counting and a reason to log.
    """
    kind = type(value)
    converted: int | float
    if kind is float:
        converted = value  # type: ignore[assignment]
    elif kind is int or isinstance(value, bool):
        converted = int(value)  # type: ignore[call-overload]
    elif not isinstance(value, numbers.Number):  # "7" or b"7" would convert; they are not numbers
        return None, ("type", f"value of type {type(value).__name__} is not a number")
    else:
        try:
            converted = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            try:
                converted = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError, OverflowError):
                return None, ("type", f"value of type {type(value).__name__} is not a number")
    if type(converted) is int and not -INT64_LIMIT <= converted < INT64_LIMIT:
        try:
            converted = float(converted)
        except OverflowError:
            return None, ("range", f"value {short_repr(value)} is beyond the range of a float")
    if not -math.inf < converted < math.inf:
        return None, ("finite", f"value {short_repr(value)} is not finite")
    if non_negative and converted < 0:
        return None, ("negative", f"value {short_repr(value)} is negative")
    return converted, None


def timer_seconds(start: object, end: float) -> tuple[float, None] | tuple[None, tuple[str, str]]:
    """Seconds from ``start`` (a :func:`time.perf_counter` reading from ``start_timer()``) to ``end``.

    A bool, a non-number, a negative reading or one after ``end`` is no start token: refused, not recorded
    as a duration of ``perf_counter()`` seconds.
    """
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        return None, ("start", f"start {short_repr(start)} is not a start_timer() token")
    if not 0 < start <= end:
        return None, ("start", f"start {short_repr(start)} is not a start_timer() reading before now")
    return end - float(start), None


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to a length a log line can carry (``10**400`` is 401 digits)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} with a failing repr>"
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} characters)"


class OncePerCauseFilter(logging.Filter):
    """Lets the SDK's own warnings about a bad measurement through once per message and instrument.

    The SDK logs e.g. "Add amount must be non-negative on Counter %s." on every bad call; a service in a
    loop would flood its log. The key ignores numeric arguments (the bad value), keeps string ones (names).
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[Any, ...]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        key = (record.name, record.msg, *(a for a in args if isinstance(a, str)))
        if key in self._seen:
            return False
        if len(self._seen) < _MAX_CAUSES:
            self._seen.add(key)
        return True


_SDK_LOGGERS = (*SDK_MEASUREMENT_LOGGERS, "opentelemetry.attributes")
_filter = OncePerCauseFilter()


def install_sdk_log_filter() -> None:
    """Attach the once-per-cause filter to the SDK loggers that report bad measurements (idempotent)."""
    for name in _SDK_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
