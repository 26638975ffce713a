"""Bad input while recording: warned about once per cause, counted, dropped; never raised."""

from __future__ import annotations

import logging
import math
import numbers
import operator
import re
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.compat import SDK_MEASUREMENT_LOGGERS

_logger = logging.getLogger("chat_turbo_metrics.recording")

MAX_TAG_VALUE_LENGTH = 2048
MAX_TAG_KEY_LENGTH = 255  # as long as an instrument name may be
MAX_TAGS = 128  # keys in one tag set: OpenTelemetry's default attribute count limit
_MAX_CAUSES = 10_000  # bounded memory even if every bad call has a new cause


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
        self._noticed: set[tuple[Any, ...]] = set()  # causes of changed (not dropped) recordings, logged once
        forks.register(self, forks.Phase.PIPELINE)

    def after_fork_in_child(self) -> None:
        forks.reinit(self._lock)  # another thread of the parent may have been reporting
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

    def notice(self, cause: tuple[Any, ...], message: str, *args: Any) -> None:
        """Log ``message % args`` the first time ``cause`` is seen: something was recorded, changed (not dropped).

        ``cause`` must be hashable; after ``_MAX_CAUSES`` distinct causes nothing more is logged.
        """
        with self._lock:
            if cause in self._noticed or len(self._noticed) >= _MAX_CAUSES:
                return
            self._noticed.add(cause)
        self._logger.warning(message + " (further occurrences are not logged)", *(_Short(arg) for arg in args))


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


def plain_tags(tags: object) -> bool:
    """True when ``tags`` can label a series exactly as given: the common case, decided cheaply.

    A dict of at most :data:`MAX_TAGS` short keys, with str values of valid text (no lone surrogate) within
    :data:`MAX_TAG_VALUE_LENGTH`, bools, int64 ints or finite floats. Type identity checks only, and
    ``isascii()`` (a flag read) before any search for surrogates, because the SDK recording path runs this on
    every call. Anything else goes to :func:`checked_tags`, which normalises it or explains the refusal.
    """
    if type(tags) is not dict or len(tags) > MAX_TAGS:
        return False
    for key, value in tags.items():
        kind = type(value)
        if not (
            type(key) is str
            and 0 < len(key) <= MAX_TAG_KEY_LENGTH
            and (key.isascii() or _surrogate(key) is None)
            and (
                (kind is str and len(value) <= MAX_TAG_VALUE_LENGTH and (value.isascii() or _surrogate(value) is None))
                or kind is bool
                or (kind is int and -INT64_LIMIT <= value < INT64_LIMIT)
                or (kind is float and value - value == 0)
            )
        ):
            return False
    return True


def checked_tags(name: object, tags: object, problems: Problems) -> Mapping[str, Any] | None:
    """The tags to record ``name`` with, normalised so every exporter encodes the same valid text.

    Runs where a tag set is first seen (the fast path's slow path, the SDK path's slow path, ``bind()``):
    lone surrogates (``json.loads`` of ``"\\udce9"``, bytes decoded with ``surrogateescape``) become U+FFFD
    in keys and values, a str/int/float subclass (an enum) its plain value, and an int beyond int64 or a
    non-finite float its text; each such change is warned about once per metric and key (an invalid key:
    once per metric). Tags that cannot label a series (see :func:`plain_tags`) are refused: counted and
    warned once per cause.

    Returns:
        ``tags`` itself when nothing needed a change, a normalised copy, or None when they are refused.

    Example:
        >>> problems = Problems()
        >>> checked_tags("jobs", {"channel": "caf\\udce9"}, problems)
        {'channel': 'caf\ufffd'}
        >>> checked_tags("jobs", {"k" * 300: "x"}, problems) is None, problems.total
        (True, 1)
    """
    if plain_tags(tags):
        return tags  # type: ignore[return-value]
    try:
        cleaned, changes = _normalised_tags(tags)
    except _Refused as refused:
        problems.report(("tags", name, refused.cause), "%s: %s", name, refused.reason)
        return None
    except Exception as error:  # a mapping whose items() raises: the call must not
        why = f"tags cannot be read ({type(error).__name__}: {short_repr(str(error))})"
        problems.report(("tags", name, "unreadable"), "%s: %s", name, why)
        return None
    for cause, message in changes:
        problems.notice(("tag text", name, cause), "%s: %s", name, message)
    return cleaned


class _Refused(Exception):
    """Tags that cannot label a series: a short cause (the key under which it is counted) and the reason."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason


def _normalised_tags(tags: object) -> tuple[dict[str, Any], list[tuple[Any, str]]]:
    """Normalised tags and the changes made (cause, message); raises :class:`_Refused`."""
    if not isinstance(tags, Mapping):
        raise _Refused("type", f"tags must be a dict, not {type(tags).__name__}")
    items = list(tags.items())
    if len(items) > MAX_TAGS:
        raise _Refused("count", f"{len(items)} tags in one tag set (limit {MAX_TAGS})")
    cleaned: dict[str, Any] = {}
    changes: list[tuple[Any, str]] = []
    for key, value in items:
        if not isinstance(key, str) or not key:
            raise _Refused("key", f"tag key {short_repr(key)} is not a non-empty string")
        if len(key) > MAX_TAG_KEY_LENGTH:
            raise _Refused("key_length", f"a tag key of {len(key)} characters (limit {MAX_TAG_KEY_LENGTH})")
        text = valid_text(str.__str__(key))
        if text != key:
            changes.append(("key", f"tag key {short_repr(key)} is not valid text: recorded as {text!r}"))
        plain, change = _plain_tag_value(text, value)
        if change is not None:
            changes.append(((text, change), f"tag {text!r}: {change}: {short_repr(value)} recorded as {plain!r}"))
        cleaned.setdefault(text, plain)  # two keys that normalise alike: the first one's value is kept
    return cleaned, changes


def _plain_tag_value(key: str, value: object) -> tuple[str | bool | int | float, str | None]:
    """``value`` as the plain type every exporter encodes the same way, and what was changed (None: nothing)."""
    if isinstance(value, str):
        plain = str.__str__(value)  # a StrEnum member or other str subclass: its plain text
        if len(plain) > MAX_TAG_VALUE_LENGTH:
            raise _Refused(
                "value_length", f"tag {key!r} has a value of {len(plain)} characters (limit {MAX_TAG_VALUE_LENGTH})"
            )
        text = valid_text(plain)
        return text, (None if text == plain else "lone surrogates replaced with U+FFFD")
    if isinstance(value, bool):
        return bool(value), None
    if isinstance(value, int):
        number = int.__index__(value)  # an IntEnum member: its plain int
        if -INT64_LIMIT <= number < INT64_LIMIT:
            return number, None
        if number.bit_length() > _MAX_TEXT_INT_BITS:
            raise _Refused("value_length", f"tag {key!r} has an int of {number.bit_length()} bits as its value")
        return str(number), "an int beyond int64 (OTLP cannot encode it)"
    if isinstance(value, float):
        number_f = float(value)
        if math.isfinite(number_f):
            return number_f, None
        return _NON_FINITE_TEXT.get(number_f, "NaN"), "a float that is not finite"
    raise _Refused(
        "value_type", f"tag {key!r} has a value of type {type(value).__name__} (use str, int, float or bool)"
    )


_MAX_TEXT_INT_BITS = 6000  # about 1,800 digits: an int whose text is within the value length limit
_NON_FINITE_TEXT = {math.inf: "+Inf", -math.inf: "-Inf"}
_SURROGATES = re.compile("[\ud800-\udfff]")
_surrogate = _SURROGATES.search


def valid_text(text: str) -> str:
    """``text`` with each lone surrogate (no UTF-8 encoder accepts one) replaced by U+FFFD.

    Example:
        >>> valid_text(b"caf\\xe9".decode("utf-8", "surrogateescape"))
        'caf\ufffd'
    """
    return text if text.isascii() or _surrogate(text) is None else _SURROGATES.sub("\ufffd", text)


def configured_tags_problem(tags: Mapping[Any, Any]) -> str | None:
    """Why attributes given in configuration (resource attributes) cannot be used as given; None if they can.

    The limits of recorded tags apply. Text that is not valid (a lone surrogate: an environment variable
    holding bytes that are not UTF-8) is an error here, where recording would replace it.

    Example:
        >>> configured_tags_problem({"team": "chat"}) is None, configured_tags_problem({"k" * 300: "x"})
        (True, 'a key of 300 characters (limit 255)')
    """
    if len(tags) > MAX_TAGS:
        return f"{len(tags)} attributes (limit {MAX_TAGS})"
    for key, value in tags.items():
        if not isinstance(key, str) or not key:
            return f"key {short_repr(key)} is not a non-empty string"
        if len(key) > MAX_TAG_KEY_LENGTH:
            return f"a key of {len(key)} characters (limit {MAX_TAG_KEY_LENGTH})"
        text = value if isinstance(value, str) else ""
        if len(text) > MAX_TAG_VALUE_LENGTH:
            return f"{short_repr(key)} has a value of {len(text)} characters (limit {MAX_TAG_VALUE_LENGTH})"
        if valid_text(key) != key or valid_text(text) != text:
            return f"{short_repr(key)}: not valid UTF-8 text (it holds a lone surrogate)"
    return None


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
