"""What users do to alerts besides evaluating them: silences, and the bounded history of transitions."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from chat_turbo_metrics.alerting._model import AlertTransition

_ids = itertools.count(1)


@dataclass(frozen=True)
class Silence:
    """Mutes alerts whose labels equal every matcher, from ``starts_at`` until ``ends_at`` (clock seconds).

    Example:
        >>> silence = Silence({"severity": "low"}, starts_at=0, ends_at=3600)
        >>> silence.matches({"alertname": "Disk", "severity": "low"}, now=10)
        True
    """

    matchers: Mapping[str, str]
    starts_at: float
    ends_at: float
    comment: str = ""
    id: str = field(default_factory=lambda: f"silence-{next(_ids)}")

    def matches(self, labels: Mapping[str, str], now: float) -> bool:
        """True while active and every matcher equals the label of the same name."""
        if not self.starts_at <= now < self.ends_at:
            return False
        return all(labels.get(name) == value for name, value in self.matchers.items())


class Silences:
    """The silences not yet ended; which labels they mute. Guarded by the alert manager's lock.

    Example:
        >>> silences = Silences()
        >>> _ = silences.add(Silence({"severity": "low"}, starts_at=0, ends_at=60))
        >>> silences.mutes({"severity": "low"}, now=30), silences.mutes({"severity": "low"}, now=60)
        (True, False)
    """

    def __init__(self) -> None:
        self._items: dict[str, Silence] = {}
        self._flag_once_more = False  # after the last silence ends, one more pass clears the flags

    def add(self, silence: Silence) -> Silence:
        """Keep a silence."""
        self._items[silence.id] = silence
        return silence

    def expire(self, silence_id: str) -> None:
        """End a silence now (unknown ids are ignored)."""
        self._items.pop(silence_id, None)

    def active(self, now: float) -> tuple[Silence, ...]:
        """The silences that have not ended, after forgetting ended ones (so they never pile up)."""
        for key in [k for k, s in self._items.items() if s.ends_at <= now]:
            del self._items[key]
        return tuple(self._items.values())

    def needs_flagging(self, now: float) -> bool:
        """Whether alerts' ``silenced`` flags may need changing at ``now``."""
        active = bool(self.active(now))
        needed, self._flag_once_more = active or self._flag_once_more, active
        return needed

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        """True when an active silence matches ``labels``."""
        return any(s.matches(labels, now) for s in self._items.values())


class History:
    """The last ``size`` transitions, oldest first; safe to query from any thread.

    Example:
        >>> history = History(size=2)
        >>> history.query()
        []
    """

    def __init__(self, size: int = 1000) -> None:
        self._lock = threading.Lock()
        self._items: deque[AlertTransition] = deque(maxlen=size)

    def after_fork_in_child(self) -> None:
        """A fresh lock: one held by another thread at fork() would stay held."""
        self._lock = threading.Lock()

    def record(self, transition: AlertTransition) -> None:
        """Keep one transition (the oldest falls out when full)."""
        with self._lock:
            self._items.append(transition)

    def query(
        self,
        *,
        rule_id: str | None = None,
        fingerprint: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[AlertTransition]:
        """Transitions, oldest first, filtered by rule, alert fingerprint and time; the newest ``limit``.

        Args:
            rule_id: only this rule's.
            fingerprint: only this alert instance's.
            since: only transitions at or after this time.
            limit: at most this many (the newest).

        Returns:
            The matching transitions.
        """
        with self._lock:
            items = list(self._items)
        found = [
            t
            for t in items
            if (rule_id is None or t.alert.rule_id == rule_id)
            and (fingerprint is None or t.alert.fingerprint == fingerprint)
            and (since is None or t.at >= since)
        ]
        return found[-limit:] if limit is not None else found
