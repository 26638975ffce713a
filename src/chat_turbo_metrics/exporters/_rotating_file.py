"""The file exporter's active file: unbuffered appends of whole exports, rotation by size and age, retention."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

_logger = logging.getLogger("chat_turbo_metrics.exporters.file")


# --- rotated file names -------------------------------------------------------------------------


def rotated_files(active: Path) -> list[Path]:
    """Rotated files of ``active``, oldest first (by name: timestamp, then sequence number)."""
    pattern = re.compile(re.escape(active.name) + r"\.(\d{8}T\d{6})(?:\.(\d+))?")
    try:
        names = os.listdir(active.parent)
    except FileNotFoundError:
        return []
    found: list[tuple[str, int, Path]] = []
    for name in names:
        match = pattern.fullmatch(name)
        if match:
            found.append((match.group(1), int(match.group(2) or 0), active.parent / name))
    return [path for _, _, path in sorted(found)]


class RotatingFile:
    """An append-only file that rotates by size and age; callers serialise access."""

    def __init__(
        self, path: Path, max_bytes: int, interval_s: float, retention_s: float, clock: Callable[[], float]
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._interval_s = interval_s
        self._retention_s = retention_s
        self._clock = clock
        self._file: IO[bytes] | None = None
        self._size = 0
        self._opened_at = 0.0
        self._pending = b""

    def write_snapshot(self, lines: bytes) -> None:
        """Append one export's lines whole, or not at all: a failed write is rolled back, then raised."""
        if self._file is None:
            self._open()
        self._rotate_if_due(len(self._pending) + len(lines))
        data = self._pending + lines
        assert self._file is not None  # opened above, reopened by any rotation
        view = memoryview(data)
        try:
            while view:  # a regular file takes it all in one write(); loop only on a short write
                view = view[self._file.write(view) :]
        except BaseException:
            self._roll_back()
            raise
        self._size += len(data)
        self._pending = b""

    def _roll_back(self) -> None:
        """Cut the file back to its size before the failed export (the file is in append mode)."""
        assert self._file is not None
        try:
            os.ftruncate(self._file.fileno(), self._size)
        except OSError as error:
            # Rare (truncating frees space); the lines written stay, and the next export starts a new line.
            _logger.error("could not remove a partly written export from %s: %s", self.path, error)

    def sync(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                os.fsync(file.fileno())
            finally:
                file.close()

    def delete_expired(self) -> None:
        """Delete rotated files older than the retention; housekeeping, so errors are only logged."""
        cutoff = self._clock() - self._retention_s
        try:
            expirable = rotated_files(self.path)
        except OSError as error:
            _logger.warning("could not list rotated metrics files of %s: %s", self.path, error)
            return
        for rotated in expirable:
            try:
                if rotated.stat().st_mtime < cutoff:
                    rotated.unlink()
            except OSError as error:
                _logger.warning("could not delete expired metrics file %s: %s", rotated, error)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: each line reaches the kernel in its own write(), so SIGKILL cannot lose it.
        file = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - kept open until close()
        size = file.seek(0, os.SEEK_END)
        if size:
            file.seek(size - 1)
        # A line torn by a killed writer must not swallow the next one: end it first.
        self._pending = b"\n" if size and file.read(1) != b"\n" else b""
        self._file, self._size, self._opened_at = file, size, self._clock()

    def _rotate_if_due(self, incoming: int) -> None:
        now = self._clock()
        if now - self._opened_at >= self._interval_s:
            if self._size == 0:
                self._opened_at = now  # nothing to rotate; start the interval with the first line
                return
            self._rotate(now)
        elif self._size and self._size + incoming > self._max_bytes:
            self._rotate(now)

    def _rotate(self, now: float) -> None:
        self.close()
        os.rename(self.path, self._rotated_name(now))
        self._open()
        self.delete_expired()

    def _rotated_name(self, now: float) -> Path:
        base = f"{self.path}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}"
        candidate, sequence = Path(base), 0
        while candidate.exists():
            sequence += 1
            candidate = Path(f"{base}.{sequence}")
        return candidate
