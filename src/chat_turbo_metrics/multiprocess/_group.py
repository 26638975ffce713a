"""Who belongs to a service's group: the processes of one server, or the processes an operator names.

A group is, by default, the processes of one *run* of a server: its master and the workers it forks or
spawns. A process that is a worker (:func:`is_worker`) belongs to its parent's run; any other process starts a
run of its own. A run is named by its founder's identity (pid and start time), so no process outside the
server's process tree ever computes the same name: an unrelated program on the same port, or a second run of
the same program, is a stranger. ``METRICS_MULTIPROCESS_GROUP=<name>`` names a group explicitly: every process
of this user configured with that name (and the same endpoint) joins it, whoever started it.

Example:
    >>> group = group_for("billing")
    >>> (group.key, group.explicit)
    ('group-billing', True)
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path


def pid_of(token: str) -> int:
    """The pid a token (``<pid>-<nonce>``) starts with; -1 if none."""
    head = token.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def new_token() -> str:
    """A name for this process's part in a group, unique even when pids are reused."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...); empty without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def identity(pid: int) -> str:
    """A process's identity that survives pid reuse: pid and start time (from /proc where there is one)."""
    fields = _stat_fields(pid)
    return f"{pid}-{fields[19]}" if len(fields) > 19 else str(pid)


def parent_identity() -> str:
    """The identity of this process's parent: workers of one server share it."""
    return identity(os.getppid())


def parent_identity_of(pid: int) -> str | None:
    """The identity of process ``pid``'s parent, or None when it cannot be seen."""
    fields = _stat_fields(pid)
    return identity(int(fields[1])) if len(fields) > 1 else None


def is_worker() -> bool:
    """True for a worker of a pre-fork server: a ``multiprocessing`` child (``uvicorn --workers``), or a process
    forked by its parent without an exec (gunicorn, uWSGI): the same command line as its parent, or a gunicorn
    master for a parent (gunicorn retitles its processes when setproctitle is installed).

    A single process started by a shell, systemd, a container runtime or a Python supervisor is not one.
    """
    # A spawned child that is configured at start-up (opentelemetry-instrument's sitecustomize) runs before
    # multiprocessing knows its parent: its command line says what it is.
    if multiprocessing.parent_process() is not None or _SPAWNED in sys.orig_argv:
        return True
    parent = os.getppid()
    try:
        command = Path(f"/proc/{parent}/cmdline").read_bytes()
        same = command == Path("/proc/self/cmdline").read_bytes()
    except OSError:  # no /proc (macOS): a worker is known once it meets a sibling
        return False
    try:
        if os.readlink(f"/proc/{parent}/exe") != os.readlink("/proc/self/exe"):
            return False
    except PermissionError:
        pass  # a worker that changed its user (gunicorn --user): its command line says enough
    except OSError:
        return False
    return same or b"gunicorn" in command


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (whoever owns it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_SPAWNED = "--multiprocessing-fork"  # the argument multiprocessing's spawn and forkserver children run with


@dataclass(frozen=True)
class Group:
    """The processes that serve one endpoint together: a server's run, or a group named by the operator."""

    key: str  # ``run-<founder identity>`` or ``group-<name>``
    explicit: bool

    @property
    def founder(self) -> str | None:
        """The identity of the process that started the run (None for a named group)."""
        return None if self.explicit else self.key.removeprefix("run-")

    def founded_here(self) -> bool:
        """True when this process started the run (a server's master, or a process of its own)."""
        return self.founder == identity(os.getpid())

    def in_tree(self, pid: int) -> bool:
        """True when process ``pid`` belongs to this run by the process tree: its founder or the founder's child."""
        founder = self.founder
        return founder is not None and founder in (identity(pid), parent_identity_of(pid))

    def directory_name(self, host: str, port: int) -> str:
        """The group's directory for endpoint ``host:port``, inside the multiprocess base directory."""
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
        return f"{safe}-{port}.{self.key}"


def group_for(name: str = "") -> Group:
    """This process's group: the one named ``name``, else the run of the server it is a worker of (or its own)."""
    if name:
        return Group(f"group-{name}", explicit=True)
    founder = parent_identity() if is_worker() else identity(os.getpid())
    return Group(f"run-{founder}", explicit=False)


def run_founder_alive(directory_name: str) -> bool | None:
    """For a run's directory name, whether its founder still runs; None for other names."""
    _, _, key = directory_name.partition(".run-")
    if not key:
        return None
    pid = pid_of(key)
    return pid_alive(pid) and identity(pid) == key
