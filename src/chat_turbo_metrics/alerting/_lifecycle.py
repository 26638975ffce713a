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
