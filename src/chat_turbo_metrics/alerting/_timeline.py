"""Scheduling time for notifications: the evaluations' clock, except that it never runs backwards.

Notifications are scheduled on the time each evaluation passes in (so a test or a replay drives them with
``evaluate(now=...)``), but a wall clock can step back: NTP, a VM resumed, an operator's ``date -s``. Scheduling on
it would hold every group's next flush, and with it a resolution, for as long as the step. Alertmanager and
Prometheus schedule on Go's monotonic clock readings. Here a step backwards is measured on the monotonic clock
instead, so a timeline advances by the callers' time while that moves forward and by real elapsed time while it
does not. (A step forwards can only bring a notification forward, never hold one back.)
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Timeline:
    """Turns the callers' times into scheduling times that never decrease.

    Example:
        >>> timeline = Timeline(monotonic=lambda: 0.0)
        >>> timeline.at(1000.0), timeline.at(1060.0), timeline.at(-2540.0)  # the third: the clock went back 1 h
        (1000.0, 1060.0, 1060.0)
        >>> timeline.at(-2480.0)  # and moves on from there
        1120.0
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._last: tuple[float, float, float] | None = None  # (caller's time, scheduling time, monotonic)

    def at(self, now: float) -> float:
        """The scheduling time of an event at the caller's time ``now``."""
        mono = self._monotonic()
        if self._last is None:
            tick = now
        else:
            last_now, last_tick, last_mono = self._last
            step = now - last_now
            if step < 0:  # the caller's clock went back: this step is what really elapsed
                step = max(0.0, mono - last_mono)
            tick = last_tick + step
        self._last = (now, tick, mono)
        return tick
