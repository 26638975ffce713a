"""The checks settings declare: bounds, choices, durations. Each takes a typed value and returns the problem or None.

Values are refused here when they would be accepted and then fail later, while recording or exporting: past
the bounds below a duration means nothing, and it overflows what it feeds long before it is infinite (a
thread's wait overflows past time_t, a timedelta, a nanosecond count in a database column).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from chat_turbo_metrics._core.config.declaration import Check

LONGEST_S = 10 * 365 * 86400.0  # ten years
LONGEST_RETENTION_DAYS = 36500.0  # a hundred years
SHORTEST_EXPORT_S = 0.001  # one millisecond, the unit of OTEL_METRIC_EXPORT_INTERVAL/_TIMEOUT
AT_MOST = f"at most {LONGEST_S:.0f} s (ten years)"


def holds(predicate: Callable[[Any], bool], why: str) -> Check:
    """A check that refuses a value ``predicate`` is false for, saying ``why``.

    Example:
        >>> holds(lambda n: n > 0, "must be > 0")(0)
        'must be > 0'
    """
    return lambda value: None if predicate(value) else why


def one_of(*choices: str) -> Check:
    """A value among ``choices``."""
    shown = [repr(choice) for choice in choices]
    return holds(lambda value: value in choices, f"must be {', '.join(shown[:-1])} or {shown[-1]}")


POSITIVE = holds(lambda value: value > 0, "must be > 0")
NOT_EMPTY = holds(bool, "must not be empty")
DURATION = holds(lambda seconds: 0 < seconds <= LONGEST_S, f"must be > 0 and {AT_MOST}")
EXPORT_DURATION = holds(
    lambda seconds: SHORTEST_EXPORT_S <= seconds <= LONGEST_S, f"must be at least 1 ms and {AT_MOST}"
)


def port(lowest: int) -> Check:
    """A TCP port from ``lowest`` (0: any free port) to 65535."""
    return holds(lambda value: lowest <= value <= 65535, f"must be a TCP port ({lowest}-65535)")


def increasing(buckets: tuple[float, ...] | None) -> bool:
    """Finite numbers, strictly increasing (or no buckets): what the SDK needs not to drop every value."""
    if buckets is None:
        return True
    try:
        bounds = [float(bound) for bound in buckets if not isinstance(bound, bool)]
    except (TypeError, ValueError):
        return False
    finite = len(bounds) == len(buckets) and all(-math.inf < bound < math.inf for bound in bounds)
    return finite and all(low < high for low, high in itertools.pairwise(bounds))
