"""Why a process cannot share its metrics with its group, as the degraded-state gauge and one log line per episode.

Example:
    >>> health = Health()
    >>> health.fail("storage", "publish", logging.DEBUG, "cannot write")
    >>> health.causes
    {'storage': 1}
    >>> health.ok("storage", "publish", "writable again")
    >>> health.causes
    {'storage': 0}
"""

from __future__ import annotations

import logging
import threading
import time

from chat_turbo_metrics._core import forks

_logger = logging.getLogger("chat_turbo_metrics.multiprocess")

DIRECTORY_SETTING = "METRICS_MULTIPROCESS_DIR"
CAUSES = ("directory", "storage")
WARN_AGAIN_S = 600.0  # a cause that keeps coming back is warned about again after this long


class Health:
    """Why this process cannot share its metrics with its group; each cause is logged once when it starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.causes: dict[str, int] = {}
        self._failing: dict[str, set[str]] = {}
        self._warned_at: dict[str, float] = {}

    def fail(self, cause: str, operation: str, level: int, message: str, *args: object) -> None:
        """``operation`` failed for ``cause``; the first failure of an episode is logged (at most every 10 min)."""
        with self._lock:
            failing = self._failing.setdefault(cause, set())
            starts = not failing
            failing.add(operation)
            self.causes[cause] = 1
            now = time.monotonic()
            log = starts and now - self._warned_at.get(cause, -WARN_AGAIN_S) >= WARN_AGAIN_S
            if log:
                self._warned_at[cause] = now
        if log:
            _logger.log(level, message, *args)

    def ok(self, cause: str, operation: str, message: str, *args: object) -> None:
        """``operation`` worked; the cause ends once every failing operation has worked again."""
        with self._lock:
            failing = self._failing.get(cause)
            if not failing or operation not in failing:
                return
            failing.discard(operation)
            if failing:
                return
            self.causes[cause] = 0
        _logger.info(message, *args)

    def after_fork_in_child(self) -> None:
        forks.reinit(self._lock)

    def directory_refused(self, path: str, reason: str) -> None:
        """The group's directory cannot be used: each process keeps its own data."""
        self.fail(
            "directory",
            "open",
            logging.ERROR,
            "multiprocess directory %s refused: %s. The processes of this service cannot share one scrape: each "
            "keeps its own metrics, and the Prometheus endpoint serves only those of the process holding the "
            "port. Choose a private directory with %s=<path>",
            path,
            reason,
            DIRECTORY_SETTING,
        )

    def storage_failed(self, path: str, operation: str, error: OSError) -> None:
        """Writing to the group's directory failed (``operation``): scrapes are merged from memory."""
        self.fail(
            "storage",
            operation,
            logging.WARNING,
            "cannot write to the multiprocess directory %s (%s): scrapes are merged from the processes' memory, "
            "and a process that exits or is killed meanwhile keeps only what the last scrape saw of it. Free "
            "space there, or choose another directory with %s=<path>",
            path,
            error.strerror or error,
            DIRECTORY_SETTING,
        )

    def storage_ok(self, path: str, operation: str) -> None:
        """Writing ``operation`` worked again."""
        self.ok("storage", operation, "the multiprocess directory %s is writable again", path)
