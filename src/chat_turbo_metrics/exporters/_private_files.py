"""Files in a directory that may be shared: opened without following links, created private, and remembered.

Everything below works through a descriptor of the directory (``dir_fd``), so a name is looked up in the
directory that was checked, not wherever a path resolves to later:

- the directories the exporter creates are made one at a time (0700 by default) and entered with ``O_NOFOLLOW``;
  directories that already exist on the configured path are the user's choice and are used as they are;
- files are opened with ``O_NOFOLLOW`` (a symlink fails the open) and written only if they are regular files
  owned by this process's user; new ones get the configured mode (0600 by default);
- :class:`CreatedFiles` records the inode number of every file the exporter creates, in ``<active>.created``,
  so that retention can tell its own rotated files (renaming keeps the inode) from a file someone else put
  there under a name that looks like one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_FILE_MODE = 0o600
# Flags for every file we open: a link at the name fails (ELOOP), and a FIFO or device cannot block the open.
_NO_LINKS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# link() is not supported here (some network and FAT file systems): rotation falls back to a checked rename.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})


def directory_mode(file_mode: int) -> int:
    """The mode of directories created for files of ``file_mode``: who may read a file may enter its directory."""
    readers = file_mode & 0o044
    return 0o700 | readers | readers >> 2


def open_directory(directory: Path, mode: int) -> int:
    """A descriptor of ``directory``, creating the missing directories (``mode``) without following a link.

    Raises:
        OSError: a directory cannot be created or opened, or one this call created was replaced by a link.
    """
    missing: list[str] = []
    existing = directory
    while True:
        try:
            descriptor = os.open(existing, _DIRECTORY)
            break
        except FileNotFoundError:
            if existing.parent == existing:
                raise
            missing.append(existing.name)
            existing = existing.parent
    try:
        for name in reversed(missing):
            try:
                os.mkdir(name, mode, dir_fd=descriptor)
                created = True
            except FileExistsError:  # made meanwhile by another process: entered (and checked) all the same
                created = False
            child = os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = child
            _check_owned(os.fstat(descriptor), directory, stat.S_ISDIR, "a directory")
            if created:
                os.fchmod(descriptor, mode)  # exactly the mode asked for, whatever the umask
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def open_file(directory: int, name: str, mode: int, flags: int) -> tuple[int, bool]:
    """Open (creating with ``mode`` if missing) the regular file ``name`` of ``directory``, never through a link.

    Returns:
        The descriptor, and whether this call created the file.

    Raises:
        OSError: the name is a link (``ELOOP``), not a regular file, or owned by another user.
    """
    try:
        descriptor = os.open(name, flags | _NO_LINKS | os.O_CREAT | os.O_EXCL, mode, dir_fd=directory)
        created = True
    except FileExistsError:
        descriptor, created = _open_existing(directory, name, flags), False
    try:
        _check_owned(os.fstat(descriptor), name, stat.S_ISREG, "a regular file")
        if created:
            os.fchmod(descriptor, mode)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor, created


def _open_existing(directory: int, name: str, flags: int) -> int:
    try:
        return os.open(name, flags | _NO_LINKS, dir_fd=directory)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, "is a symbolic link; metrics files are never written through a link", name
            ) from None
        raise


def _check_owned(info: os.stat_result, name: object, is_kind: Callable[[int], bool], kind: str) -> None:
    if not is_kind(info.st_mode):
        raise OSError(errno.EPERM, f"is not {kind}", str(name))
    if info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"belongs to user id {info.st_uid}, not to this process's {os.geteuid()}", str(name))


def lstat(directory: int, name: str) -> os.stat_result | None:
    """``name``'s own status (a link is not followed), or None when there is nothing by that name."""
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None


def move_aside(directory: int, name: str, targets: Iterator[str]) -> str:
    """Give file ``name`` the first of ``targets`` that is free, never replacing anything there; returns it."""
    for target in targets:
        try:
            os.link(name, target, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in _NO_HARD_LINKS:
                raise
            if lstat(directory, target) is not None:
                continue
            os.rename(name, target, src_dir_fd=directory, dst_dir_fd=directory)
            return target
        os.unlink(name, dir_fd=directory)
        return target
    raise FileExistsError(errno.EEXIST, "no free name to rotate to", name)


class CreatedFiles:
    """The files created at one path: ``<inode> TAB <name>`` lines in ``<active>.created``, updated under ``flock``.

    A line is added when the exporter creates its active file, and another when it renames that file aside;
    the last line of an inode gives its current name. Retention deletes a rotated file only when both its
    inode and its name match an entry, so a file the exporter did not create is never deleted, even when its
    name looks like a rotated one; an entry whose name no longer holds that inode is dropped at each retention
    pass, so a reused inode number cannot make a stranger's file look like ours later. Without the list
    (deleted, or not a regular file of ours) nothing is deleted.
    """

    def __init__(self, active_name: str, mode: int) -> None:
        self.name = f"{active_name}.created"
        self._mode = mode

    def add(self, directory: int, inode: int, name: str) -> None:
        """Record that this process created ``name`` (inode ``inode``)."""
        descriptor, _ = open_file(directory, self.name, self._mode, os.O_RDWR | os.O_APPEND)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            os.write(descriptor, _line(inode, name))
        finally:
            os.close(descriptor)

    def renamed(self, directory: int, inode: int, name: str) -> None:
        """Record the new name of a file, if it is one this exporter created."""
        with self.kept(directory) as entries:
            if inode in entries:
                entries[inode] = name

    @contextlib.contextmanager
    def kept(self, directory: int) -> Iterator[dict[int, str]]:
        """The entries (inode -> name), locked; what the caller leaves in the mapping is written back."""
        try:
            descriptor = _open_existing(directory, self.name, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            yield {}  # nothing was recorded: nothing here is known to be ours
            return
        try:
            _check_owned(os.fstat(descriptor), self.name, stat.S_ISREG, "a regular file")
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            text = _read_all(descriptor)
            recorded = _entries(text)
            entries = dict(recorded)
            yield entries
            if entries != recorded or text.count(b"\n") != len(recorded):
                os.ftruncate(descriptor, 0)  # O_APPEND: the write below then starts at 0
                os.write(descriptor, b"".join(_line(inode, name) for inode, name in sorted(entries.items())))
        finally:
            os.close(descriptor)


def _line(inode: int, name: str) -> bytes:
    return f"{inode}\t{name}\n".encode("utf-8", "surrogateescape")


def _read_all(descriptor: int) -> bytes:
    os.lseek(descriptor, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(descriptor, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _entries(text: bytes) -> dict[int, str]:
    """inode -> its last recorded name; lines that do not parse are ignored (their files are not ours)."""
    entries: dict[int, str] = {}
    for line in text.decode("utf-8", "surrogateescape").split("\n"):
        inode, tab, name = line.partition("\t")
        if tab and inode.isdigit() and name:
            entries[int(inode)] = name
    return entries
