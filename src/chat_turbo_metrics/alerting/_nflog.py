"""What each receiver was last told about each group, optionally kept on disk so a restart does not resend it.

An entry holds the fingerprints of the firing and resolved alerts of the last notification for one
(receiver, group) and when it was decided. Deduplication and ``repeat_interval`` compare against it, as
Alertmanager's notification log does. The file is JSON, replaced atomically; entries older than the retention are
forgotten. A missing file is an empty log; an unreadable one is logged once and ignored (the worst outcome is a
repeated message, never a lost one).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

_logger = logging.getLogger("chat_turbo_metrics.alerting")

_FORMAT = 1


@dataclass(frozen=True)
class LogEntry:
    """The last notification decided for one (receiver, group)."""

    firing: frozenset[str]
    resolved: frozenset[str]
    at: float  # the evaluation's time (kept in the file: a restart compares with it)
    tick: float | None = None  # its scheduling time in this process (see _timeline); None when read from the file


class NotificationLog:
    """In-memory entries keyed by (receiver, group key), saved to ``path`` when one is given.

    Example:
        >>> log = NotificationLog()
        >>> log.set(("ops", "{}:{}"), LogEntry(frozenset({"a1"}), frozenset(), at=100.0))
        >>> log.get(("ops", "{}:{}")).firing
        frozenset({'a1'})
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, retention_s: float = 5 * 86400.0) -> None:
        self._path = Path(path) if path is not None else None
        self._retention_s = retention_s
        self._entries: dict[tuple[str, str], LogEntry] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dirty = False
        if self._path is not None:
            self._entries = _read(self._path)

    def after_fork(self) -> None:
        """In a forked child: locks held by the parent's threads at the fork are not the child's."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> LogEntry | None:
        """The entry for ``key``, or None if this receiver was never told about this group."""
        with self._lock:
            return self._entries.get(key)

    def set(self, key: tuple[str, str], entry: LogEntry | None) -> None:
        """Record (or with None, forget) the entry for ``key``; saved by the next :meth:`save`."""
        with self._lock:
            if entry is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = entry
            self._dirty = True

    def restore(self, key: tuple[str, str], expected: LogEntry, previous: LogEntry | None) -> None:
        """Undo a :meth:`set` whose notification was not delivered, unless a later decision replaced it."""
        with self._lock:
            if self._entries.get(key) is expected:
                if previous is None:
                    self._entries.pop(key, None)
                else:
                    self._entries[key] = previous
                self._dirty = True

    def save(self, now: float) -> None:
        """Forget entries older than the retention; write the rest to the file, if there is one, when changed."""
        with self._write_lock:  # one writer at a time, so an older snapshot never replaces a newer file
            self._save(now)

    def _save(self, now: float) -> None:
        with self._lock:
            if not self._dirty:
                return
            cutoff = now - self._retention_s
            self._entries = {key: entry for key, entry in self._entries.items() if entry.at >= cutoff}
            if self._path is None:
                self._dirty = False
                return
            rows = [
                {
                    "receiver": receiver,
                    "group": group,
                    "firing": sorted(entry.firing),
                    "resolved": sorted(entry.resolved),
                    "at": entry.at,
                }
                for (receiver, group), entry in self._entries.items()
            ]
            self._dirty = False
        text = json.dumps({"format": _FORMAT, "entries": rows}, separators=(",", ":"))
        temporary = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self._path)
        except OSError as error:
            _logger.warning("cannot save the notification log to %s: %s", self._path, error)
            with self._lock:
                self._dirty = True


def _read(path: Path) -> dict[tuple[str, str], LogEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        _logger.warning("ignoring the unreadable notification log %s: %s", path, error)
        return {}
    entries: dict[tuple[str, str], LogEntry] = {}
    try:
        for row in data["entries"]:
            key = (str(row["receiver"]), str(row["group"]))
            entries[key] = LogEntry(frozenset(row["firing"]), frozenset(row["resolved"]), float(row["at"]))
    except (KeyError, TypeError, ValueError) as error:
        _logger.warning("ignoring the malformed notification log %s: %s", path, error)
        return {}
    return entries
