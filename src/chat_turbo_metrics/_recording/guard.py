"""Bad input while recording: warned about once per cause, counted, dropped; never raised."""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

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

    @property
    def total(self) -> int:
        """Recordings dropped so far, all causes together."""
        return sum(self.counts.values())

    def report(self, cause: tuple[Any, ...], message: str, *args: Any) -> None:
        """Count one dropped recording; log ``message % args`` the first time ``cause`` is seen."""
        with self._lock:
            if cause not in self.counts and len(self.counts) >= _MAX_CAUSES:
                cause = ("other",)
            first = cause not in self.counts
            self.counts[cause] += 1
        if first:
            self._logger.warning(message + "; dropped (further occurrences are counted, not logged)", *args)


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


def bad_value(value: object, *, non_negative: bool) -> str | None:
    """Why ``value`` cannot be recorded, or None when it can (finite real number, >= 0 if required)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"value of type {type(value).__name__} is not a number"
    if not math.isfinite(value):
        return f"value {value!r} is not finite"
    if non_negative and value < 0:
        return f"value {value!r} is negative"
    return None


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
