"""The file exporter's active file: unbuffered appends of whole exports, rotation by size and age, retention."""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from chat_turbo_metrics.exporters._private_files import (
    DEFAULT_FILE_MODE,
    CreatedFiles,
    directory_mode,
    lstat,
    move_aside,
    open_directory,
    open_file,
)

_logger = logging.getLogger("chat_turbo_metrics.exporters.file")
_RETENTION_EVERY_S = 3600.0


# --- rotated file names -------------------------------------------------------------------------


def rotated_name_pattern(active_name: str) -> re.Pattern[str]:
    """The names of the files rotated from ``active_name``: ``<name>.<YYYYmmddTHHMMSS>[.<n>]``."""
    return re.compile(re.escape(active_name) + r"\.(\d{8}T\d{6})(?:\.(\d+))?")


def rotated_files(active: Path) -> list[Path]:
    """Rotated files of ``active``, oldest first (by name: timestamp, then sequence number)."""
    pattern = rotated_name_pattern(active.name)
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
    """An append-only file that rotates by size and age; callers serialise access.

    The file, its rotated files and the list of files it created (see :mod:`._private_files`) are reached
    through a descriptor of their directory, held while the file is open; nothing is followed through a link.
    Retention runs on the thread that writes: after the first write, after each rotation, and at most once an
    hour in between. It deletes expired rotated files this exporter created, and nothing else.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        interval_s: float,
        retention_s: float,
        clock: Callable[[], float],
        *,
        mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._interval_s = interval_s
        self._retention_s = retention_s
        self._clock = clock
        self._mode = mode
        self._created = CreatedFiles(path.name, mode)
        self._pattern = rotated_name_pattern(path.name)
        self._directory: int | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        self._opened_at = 0.0
        self._pending = b""
        self._next_retention = -math.inf

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
        if self._clock() >= self._next_retention:
            self.delete_expired()

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
        directory, self._directory = self._directory, None
        try:
            self._close_file()
        finally:
            if directory is not None:
                os.close(directory)

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                os.fsync(file.fileno())
            finally:
                file.close()

    def delete_expired(self) -> None:
        """Delete expired rotated files this exporter created; housekeeping, so errors are only logged."""
        if self._directory is None:
            return
        now = self._clock()
        self._next_retention = now + _RETENTION_EVERY_S
        try:
            names = [name for name in os.listdir(self._directory) if self._pattern.fullmatch(name)]
            with self._created.kept(self._directory) as ours:
                self._delete_expired(names, ours, now - self._retention_s)
                for inode, name in list(ours.items()):  # forget files gone or renamed by someone else
                    info = lstat(self._directory, name)
                    if info is None or info.st_ino != inode:
                        del ours[inode]
        except OSError as error:
            _logger.warning("retention of the metrics files of %s skipped: %s", self.path, error)

    def _delete_expired(self, names: list[str], ours: dict[int, str], cutoff: float) -> None:
        """Delete the expired files among ``names`` that ``ours`` lists under that inode and name."""
        assert self._directory is not None
        for name in names:
            info = lstat(self._directory, name)
            if info is None or ours.get(info.st_ino) != name or not stat.S_ISREG(info.st_mode):
                continue  # gone, or not a file this exporter created: never touched
            if info.st_uid == os.geteuid() and info.st_mtime < cutoff:
                try:
                    os.unlink(name, dir_fd=self._directory)
                except OSError as error:
                    _logger.warning("could not delete expired metrics file %s: %s", self.path.parent / name, error)

    def _open(self) -> None:
        if self._directory is None:
            self._directory = open_directory(self.path.parent, directory_mode(self._mode))
        descriptor, created = open_file(self._directory, self.path.name, self._mode, os.O_RDWR | os.O_APPEND)
        # Unbuffered: each line reaches the kernel in its own write(), so SIGKILL cannot lose it.
        file = open(descriptor, "a+b", buffering=0)  # noqa: SIM115 - kept open until close()
        if created:
            self._record(self._created.add, os.fstat(descriptor).st_ino, self.path.name)
        size = file.seek(0, os.SEEK_END)
        if size:
            file.seek(size - 1)
        # A line torn by a killed writer must not swallow the next one: end it first.
        self._pending = b"\n" if size and file.read(1) != b"\n" else b""
        self._file, self._size, self._opened_at = file, size, self._clock()

    def _record(self, update: Callable[[int, int, str], None], inode: int, name: str) -> None:
        assert self._directory is not None
        try:
            update(self._directory, inode, name)
        except OSError as error:  # the file is still written; retention will leave it in place
            _logger.warning("could not record %s as created by this exporter (retention will keep it): %s", name, error)

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
        assert self._file is not None
        assert self._directory is not None
        inode = os.fstat(self._file.fileno()).st_ino
        self._close_file()
        active = lstat(self._directory, self.path.name)
        # Another process writing the same path may have rotated it already: then only the new file is opened.
        if active is not None and active.st_ino == inode:
            target = move_aside(self._directory, self.path.name, self._rotated_names(now))
            self._record(self._created.renamed, inode, target)
        self._open()
        self.delete_expired()

    def _rotated_names(self, now: float) -> Iterator[str]:
        base = f"{self.path.name}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}"
        yield base
        for sequence in itertools.count(1):
            yield f"{base}.{sequence}"
