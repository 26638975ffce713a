"""The bookkeeping of a multiprocess endpoint directory: who is live, who has retired, and the retired totals.

Every process of the service publishes its state to a file of its own before anyone serves that state
(``<token>.state.json``, rewritten at each answer, at each scrape it serves and every second), and leaves
``<token>.final.json`` when it shuts down (answers after that repeat the final state). So whatever a scrape
ever showed of a process, its files hold as much or more, whichever process serves the next scrape. The holder accounts
for each process at each scrape (:meth:`Directory.account`): its final state is retired; else its answer
counts live; else its published state counts, live while it runs, retired once it is dead (SIGKILL). Retired
states are added up in the *ledger* (``retired.json``: the totals and which processes they include), which
any holder, the one that takes the port over included, continues under ``lock``. A retired process's files are
removed only after the ledger that includes it is written: a holder that dies in between loses nothing.

Files:

* ``<pid>-<nonce>.sock``: a member's socket (in ``<base>/sockets-<hash>/`` instead when the directory's path is
  too long for a unix socket address).
* ``<pid>-<nonce>.state.json``: a process's published state.
* ``<pid>-<nonce>.final.json``: a process's last state, written when its pipeline shuts down.
* ``retired.json``: the retired totals and which processes they include.
* ``holder.json``: which process holds the port.
* ``lock``: the flock every holder takes to read and update ``retired.json``.

Example:
    >>> directory = Directory(tmp_path, tmp_path)
    >>> directory.publish("123-ab", {"metrics": []}, final=True)
    >>> sorted(directory.tokens(FINAL))
    ['123-ab']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from chat_turbo_metrics.multiprocess._member import flock, pid_alive, pid_of, read_json, write_json
from chat_turbo_metrics.multiprocess._merge import State, retire

STATE = ".state.json"
FINAL = ".final.json"
SOCKET = ".sock"
LEDGER = "retired.json"
HOLDER = "holder.json"
_MAX_FOLDED = 10_000  # tokens remembered as retired; older ones have left no files behind

_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux

Ledger = dict[str, Any]


def base_directory(configured: str = "") -> Path:
    """The multiprocess base directory: the configured one, else ``$TMPDIR/chat-turbo-metrics-<uid>``."""
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"chat-turbo-metrics-{os.getuid()}"


def endpoint_directory(base: Path, host: str, port: int) -> Path:
    """The directory shared by every process serving ``host:port``."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return base / f"{safe}-{port}"


def socket_directory(directory: Path) -> Path:
    """Where the members' sockets live: ``directory``, or a short one derived from it when its path is too long."""
    if len(str(directory)) + 24 <= _MAX_SOCKET_PATH:
        return directory
    digest = hashlib.sha256(str(directory.absolute()).encode()).hexdigest()[:16]
    return base_directory() / f"sockets-{digest}"


def private_directory(path: Path) -> str | None:
    """Create ``path`` (0700) if needed; why it cannot be used, or None when it is ours and private."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as error:
        return str(error)
    if not stat.S_ISDIR(info.st_mode):
        return "not a directory"
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        return "owned by another user or writable by others"
    return None


class Directory:
    """One endpoint's shared directory (and the directory of its sockets, when that has to be shorter)."""

    def __init__(self, path: Path, sockets: Path) -> None:
        self.path = path
        self.sockets = sockets

    def tokens(self, suffix: str) -> set[str]:
        """The tokens (``<pid>-<nonce>``) that have a file ending in ``suffix``."""
        try:
            names = os.listdir(self.sockets if suffix == SOCKET else self.path)
        except OSError:
            return set()
        return {name[: -len(suffix)] for name in names if name.endswith(suffix) and not name.startswith(".")}

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock (flock): one process at a time reads and updates the ledger."""
        with flock(self.path / "lock"):
            yield

    def publish(self, token: str, state: State | bytes, *, final: bool) -> None:
        """Write a process's state (atomically); the final one replaces the published one."""
        body = state if isinstance(state, bytes) else json.dumps(state, separators=(",", ":"), default=str).encode()
        target = self.path / f"{token}{FINAL if final else STATE}"
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_bytes(body)
        os.replace(temporary, target)
        if final:
            (self.path / f"{token}{STATE}").unlink(missing_ok=True)

    def read_ledger(self) -> Ledger:
        ledger = read_json(self.path / LEDGER)
        if not isinstance(ledger, dict) or not isinstance(ledger.get("folded"), list):
            return {"folded": [], "state": None}
        return ledger

    def write_ledger(self, ledger: Ledger, parent: str) -> None:
        ledger["folded"], ledger["parent"] = ledger["folded"][-_MAX_FOLDED:], parent
        write_json(self.path / LEDGER, ledger)

    def account(
        self, token: str, answer: State | None, ledger: Ledger, live: list[tuple[str, State]]
    ) -> tuple[bool, State | None]:
        """Add process ``token`` to a scrape: live (into ``live``), or retired (into ``ledger``). Under the lock.

        Removes no file: a retired process's files go only once the ledger that holds its totals is written
        (:meth:`forget`), so a holder that fails or dies in between (a recycled worker's scrape thread, ended
        with its process) leaves them for the next scrape instead of losing them.

        Returns:
            Whether the ledger changed (the process retired), and the state that counted (None: nothing did).
        """
        if token in ledger["folded"]:
            return False, None
        alive = pid_alive(pid_of(token))  # before reading the final: a process that was dead has written its last
        final = read_json(self.path / f"{token}{FINAL}")
        last: State | None = final if isinstance(final, dict) else answer if alive else None
        if last is None:  # busy, slow or killed: what it published covers everything it answered
            published = read_json(self.path / f"{token}{STATE}")
            last = published if isinstance(published, dict) else answer
        if final is None and alive:
            if last is not None:
                live.append((token, last))
            return False, last
        if last is not None:
            ledger["state"] = retire(ledger["state"], last)
        ledger["folded"].append(token)
        return True, last

    def forget(self, tokens: Iterable[str], ledger: Ledger) -> None:
        """Remove the files of the processes among ``tokens`` that ``ledger`` (as written) holds as retired."""
        folded = set(ledger["folded"])
        for token in tokens:
            if token not in folded:
                continue
            (self.path / f"{token}{FINAL}").unlink(missing_ok=True)
            if not pid_alive(pid_of(token)):  # a live process still owns its files
                (self.path / f"{token}{STATE}").unlink(missing_ok=True)
                (self.sockets / f"{token}{SOCKET}").unlink(missing_ok=True)

    def left_totals(self, parent: str) -> bool:
        """True when processes of the same server (same parent process) left totals: a recycle, not a restart."""
        ledger = read_json(self.path / LEDGER)
        if isinstance(ledger, dict) and ledger.get("parent") == parent:
            return True
        for suffix in (FINAL, STATE):
            for token in self.tokens(suffix):
                state = read_json(self.path / f"{token}{suffix}")
                if isinstance(state, dict) and state.get("parent") == parent:
                    return True
        return False

    def clear_earlier_run(self) -> None:
        """Remove what an earlier run of the service left (its ledger, states and dead sockets)."""
        for path in {*self.path.iterdir(), *self.sockets.iterdir()}:
            token = path.name.split(".", 1)[0]
            earlier = path.name in (LEDGER, HOLDER) or path.name.endswith((FINAL, STATE))
            if earlier or (path.name.endswith(SOCKET) and not pid_alive(pid_of(token))):
                path.unlink(missing_ok=True)
