"""The multiprocess directory: private to this user, held open, and never reached through another user's link.

The base directory (``METRICS_MULTIPROCESS_DIR``, default ``$TMPDIR/chat-turbo-metrics-<uid>``) is opened one
path component at a time from ``/``: a symbolic link is followed only when root or this user owns it, and
every directory on the way must be owned by root or this user and writable by nobody else, unless it is
sticky (``/tmp``), where nobody else can replace what we own. The base directory itself is created 0700;
it must be a real directory owned by this user that nobody else can write to (its read bits are cleared).
Every later operation goes through the held descriptor (``openat``, ``O_NOFOLLOW``), so swapping a path after
the check changes nothing; a file is read only if it is a regular file owned by this user. Unix sockets are
addressed as ``/proc/self/fd/<descriptor>/<name>``, which is short whatever the directory's path.

Example:
    >>> base = PrivateDirectory.open(str(tmp_path / "mp"))
    >>> group = base.child("127.0.0.1-9464.group-demo")
    >>> group.write("x.state.json", b"{}")
    >>> group.read("x.state.json")
    b'{}'
    >>> oct(os.stat(tmp_path / "mp").st_mode & 0o777)
    '0o700'
    >>> group.close(); base.close()
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Iterator

_logger = logging.getLogger("chat_turbo_metrics.multiprocess")

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_LINKS = 40
_MAX_SOCKET_PATH = 100  # AF_UNIX addresses are limited to 107 bytes on Linux
_PROC_FD = "/proc/self/fd"


class DirectoryRefused(Exception):
    """A multiprocess directory that is not private to this user (or cannot be made so); it is never used."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned and len(_warned) < 100:
        _warned.add(message)
        _logger.warning("%s", message)


def _owner_ok(info: os.stat_result) -> bool:
    return info.st_uid in (0, os.geteuid())


def _check_on_the_way(fd: int, path: str, name: str) -> None:
    """A directory on the way to the base: owned by root or us; if others may write to it, sticky."""
    info = os.fstat(fd)
    if not _owner_ok(info):
        raise DirectoryRefused(path, f"{name!r} on its path is owned by uid {info.st_uid}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise DirectoryRefused(path, f"{name!r} on its path is writable by other users")


def _make_private(fd: int, path: str) -> None:
    """Our own directory, made 0700; refused when another user owns it or may write to it."""
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        raise DirectoryRefused(path, f"owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DirectoryRefused(path, f"writable by other users (mode {stat.S_IMODE(info.st_mode):04o})")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.fchmod(fd, 0o700)


def _open_component(parent: int, name: str, path: str) -> int | str:
    """Open directory ``name`` in ``parent`` without following a link: its descriptor, or the target of a link
    owned by root or this user."""
    try:
        return os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        raise DirectoryRefused(path, f"{name!r} on its path is not a directory")
    if not _owner_ok(info):
        raise DirectoryRefused(path, f"{name!r} on its path is a symbolic link owned by uid {info.st_uid}")
    return os.readlink(name, dir_fd=parent)


def _open_parent(path: str) -> int:
    """The held descriptor of the directory that contains ``path``'s last component."""
    parts = [part for part in os.path.dirname(os.path.abspath(path)).split("/") if part]
    fd = os.open("/", _DIRECTORY)
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            opened = _open_component(fd, name, path)
            if isinstance(opened, str):
                links += 1
                if links > _MAX_LINKS:
                    raise DirectoryRefused(path, "too many symbolic links on its path")
                if opened.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIRECTORY)
                parts[:0] = [part for part in opened.split("/") if part]
                continue
            try:
                _check_on_the_way(opened, path, name)
            except BaseException:
                os.close(opened)
                raise
            os.close(fd)
            fd = opened
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_private(parent: int, name: str, path: str, *, create: bool) -> int:
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
    try:
        fd = os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DirectoryRefused(path, "not a directory (a symbolic link or a file is in its place)") from None
        raise
    try:
        _make_private(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


class PrivateDirectory:
    """A directory only this user can use, held open: every operation is relative to its descriptor."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, path: str) -> PrivateDirectory:
        """Open (create, 0700) the base directory ``path``.

        Raises:
            DirectoryRefused: it, or a directory or link on its path, is not safe to use.
            OSError: it cannot be created or opened (read-only file system, no such parent, ...).
        """
        parent = _open_parent(path)
        try:
            return cls(_open_private(parent, os.path.basename(os.path.abspath(path)), path, create=True), path)
        finally:
            os.close(parent)

    def child(self, name: str, *, create: bool = True) -> PrivateDirectory:
        """The private subdirectory ``name`` (created 0700 unless ``create`` is False)."""
        path = os.path.join(self.path, name)
        return PrivateDirectory(_open_private(self.fd, name, path, create=create), path)

    def names(self) -> list[str]:
        """The names in the directory (through a descriptor of its own: listing from threads is safe)."""
        fd = os.open(".", _DIRECTORY, dir_fd=self.fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def read(self, name: str) -> bytes | None:
        """The content of regular file ``name`` if this user owns it; None if it is missing or not ours."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                _warn_once(f"{self.path}: ignored {name} (not a regular file of this user)")
                return None
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)

    def write(self, name: str, body: bytes) -> None:
        """Replace file ``name`` atomically: readers see the old content or the new, never part of one.

        Raises:
            OSError: the file cannot be written (no space, read-only, ...); the old content stays.
        """
        temporary = f".{name}.{os.getpid()}.tmp"
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.fd
        )
        try:
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            self.unlink(temporary)
            raise

    def unlink(self, name: str) -> None:
        """Remove ``name`` from the directory, if it is there (a link is removed, never followed)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    @contextlib.contextmanager
    def locked(self, name: str = "lock") -> Iterator[None]:
        """Hold an exclusive ``flock`` on file ``name``: one process at a time in the block."""
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def address(self, name: str) -> str:
        """A unix socket address for ``name`` in this directory, reached through the held descriptor.

        Raises:
            OSError: without ``/proc``, the directory's path is too long for a socket address.
        """
        if os.path.isdir(_PROC_FD):
            return f"{_PROC_FD}/{self.fd}/{name}"
        path = os.path.join(self.path, name)
        if len(path) > _MAX_SOCKET_PATH:
            raise OSError(errno.ENAMETOOLONG, f"socket path too long: {path}")
        return path

    def remove(self, name: str) -> None:
        """Remove subdirectory ``name`` and the files in it (a run that has ended); nothing outside it."""
        try:
            child = self.child(name, create=False)
        except (OSError, DirectoryRefused):
            return
        try:
            for entry in child.names():
                with contextlib.suppress(OSError):
                    os.unlink(entry, dir_fd=child.fd)
        finally:
            child.close()
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=self.fd)

    def close(self) -> None:
        """Let the descriptor go (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
