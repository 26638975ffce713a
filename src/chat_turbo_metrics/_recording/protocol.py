"""The contract every recording front end keeps: the fast path, the SDK path and the disabled no-op.

Each of the monitor's five recording methods delegates to its recorder in one call, so a recorder is
nearly all that a call costs.

Example:
    >>> from chat_turbo_metrics._recording.sdk import NoopRecorder
    >>> recorder: Recorder = NoopRecorder()
    >>> recorder.increment_counter("jobs")
"""

from __future__ import annotations

from typing import Any, Protocol

from chat_turbo_metrics._core.naming import Kind
from chat_turbo_metrics._recording.sdk import BoundInstrument, Tags


class Recorder(Protocol):
    """Records the seed's API calls; never raises, never blocks on I/O (bad input: warned once, counted, dropped)."""

    def increment_counter(self, name: str, tags: Tags = None, value: float = 1) -> None: ...

    def record_gauge(self, name: str, value: float, tags: Tags = None) -> None: ...

    def record_histogram(self, name: str, value: float, tags: Tags = None) -> None: ...

    def start_timer(self, name: str | None = None) -> float: ...

    def record_timer(self, name: str, start: float, tags: Tags = None) -> None: ...

    def bind(self, kind: Kind, name: str, tags: Tags, timer: bool = False) -> BoundInstrument: ...

    def define(self, kind: Kind, name: str, **settings: Any) -> None: ...
