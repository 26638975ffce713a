"""The bookkeeping of a group's directory: who is live, who has retired, and the retired totals.

Every process of the group publishes its state to a file of its own before anyone serves that state
(``<token>.state.json``, rewritten at each answer, at each scrape it serves and every second while it records;
a background copy takes no collection-time readings), and leaves
``<token>.final.json`` when it shuts down (answers after that repeat the final state). So whatever a scrape
ever showed of a process, its files hold as much or more, whichever process serves the next scrape. The holder
accounts for each process at each scrape (:meth:`GroupFiles.account`): its final state is retired; else its
answer counts live; else its published state counts, live while it runs, retired once it is dead (SIGKILL).
Retired states are added up in the *ledger* (``retired.json``: the totals and which processes they include),
which any holder, the one that takes the port over included, continues under ``lock``. A retired process's
files are removed only after the ledger that includes it is written: a holder that dies in between loses
nothing. Every state and the ledger carry the group's key; a file without it is never read into a scrape.

Files (all in the group's private directory, :mod:`._directory`):

* ``<pid>-<nonce>.sock``: a member's socket.
* ``<pid>-<nonce>.state.json``: a process's published state.
* ``<pid>-<nonce>.final.json``: a process's last state, written when its pipeline shuts down.
* ``retired.json``: the retired totals and which processes they include.
* ``holder.json``: which process holds the port.
* ``lock``: the flock every holder takes to read and update ``retired.json``.

Example:
    >>> files = GroupFiles(PrivateDirectory.open(str(tmp_path / "mp")), "group-demo")
    >>> files.publish("123-ab", b'{"group": "group-demo", "metrics": []}', final=True)
    >>> files.tokens(FINAL, STATE)
    [{'123-ab'}, set()]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from chat_turbo_metrics.multiprocess._directory import PrivateDirectory
from chat_turbo_metrics.multiprocess._group import pid_alive, pid_of
from chat_turbo_metrics.multiprocess._merge import State, retire

STATE = ".state.json"
FINAL = ".final.json"
SOCKET = ".sock"
LEDGER = "retired.json"
HOLDER = "holder.json"
_MAX_FOLDED = 10_000  # tokens remembered as retired; older ones have left no files behind

Ledger = dict[str, Any]


def dumps(value: Any) -> bytes:
    """Compact JSON, as every file of the directory is written."""
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def newest(state: State, other: State | None) -> State:
    """The later of two states of one process (by the sequence number each publication carries)."""
    return other if other is not None and other.get("seq", 0) > state.get("seq", 0) else state


class GroupFiles:
    """One group's directory for one endpoint: the states, the ledger, the holder and the sockets."""

    def __init__(self, directory: PrivateDirectory, group: str) -> None:
        self.directory = directory
        self.group = group

    def tokens(self, *suffixes: str) -> list[set[str]]:
        """For each of ``suffixes``, the tokens (``<pid>-<nonce>``) that have a file ending in it (one listing)."""
        try:
            names = self.directory.names()
        except OSError:
            names = []
        names = [name for name in names if not name.startswith(".")]
        return [{name[: -len(suffix)] for name in names if name.endswith(suffix)} for suffix in suffixes]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock (flock): one process at a time reads and updates the ledger."""
        with self.directory.locked():
            yield

    def _read(self, name: str) -> dict[str, Any] | None:
        """A JSON object this group wrote (its ``group`` key says so), or None."""
        body = self.directory.read(name)
        try:
            value = json.loads(body) if body is not None else None
        except ValueError:
            return None
        return value if isinstance(value, dict) and value.get("group") == self.group else None

    def read_state(self, token: str, suffix: str) -> State | None:
        """Process ``token``'s published (``STATE``) or final (``FINAL``) state, if the group wrote it."""
        return self._read(f"{token}{suffix}")

    def publish(self, token: str, body: bytes, *, final: bool) -> None:
        """Write a process's state (atomically); the final one replaces the published one.

        Raises:
            OSError: it cannot be written (the directory is full or read-only); nothing changed.
        """
        self.directory.write(f"{token}{FINAL if final else STATE}", body)
        if final:
            self.directory.unlink(f"{token}{STATE}")

    def holder(self) -> dict[str, Any] | None:
        """What ``holder.json`` says: the pid and token of the process holding the port."""
        return self._read(HOLDER)

    def set_holder(self, pid: int, token: str) -> None:
        self.directory.write(HOLDER, dumps({"pid": pid, "token": token, "group": self.group}))

    def socket_address(self, token: str) -> str:
        return self.directory.address(f"{token}{SOCKET}")

    def remove_socket(self, token: str) -> None:
        self.directory.unlink(f"{token}{SOCKET}")

    def read_ledger(self) -> Ledger:
        ledger = self._read(LEDGER)
        if ledger is None or not isinstance(ledger.get("folded"), list):
            return {"folded": [], "state": None, "group": self.group}
        return ledger

    def write_ledger(self, ledger: Ledger, parent: str) -> None:
        ledger["folded"], ledger["parent"] = ledger["folded"][-_MAX_FOLDED:], parent
        self.directory.write(LEDGER, dumps(ledger))

    def account(
        self,
        token: str,
        answer: State | None,
        ledger: Ledger,
        live: list[tuple[str, State]],
        unstored: State | None = None,
    ) -> tuple[bool, State | None]:
        """Add process ``token`` to a scrape: live (into ``live``), or retired (into ``ledger``). Under the lock.

        Removes no file: a retired process's files go only once the ledger that holds its totals is written
        (:meth:`forget`), so a holder that fails or dies in between (a recycled worker's scrape thread, ended
        with its process) leaves them for the next scrape instead of losing them.

        Args:
            unstored: the newest state of this process the holder saw that it could not write (directory
                full): it counts when it is newer than what the files hold.

        Returns:
            Whether the ledger changed (the process retired), and the state that counted (None: nothing did).
        """
        if token in ledger["folded"]:
            return False, None
        alive = pid_alive(pid_of(token))  # before reading the final: a process that was dead has written its last
        final = self.read_state(token, FINAL)
        last: State | None = final if final is not None else answer if alive else None
        if last is None:  # busy, slow or killed: what it published covers everything it answered
            published = self.read_state(token, STATE)
            last = newest(published, unstored) if published is not None else answer or unstored
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
            self.directory.unlink(f"{token}{FINAL}")
            if not pid_alive(pid_of(token)):  # a live process still owns its files
                self.directory.unlink(f"{token}{STATE}")
                self.directory.unlink(f"{token}{SOCKET}")

    def left_totals(self, parent: str) -> bool:
        """True when processes of the same server (same parent process) left totals: a recycle, not a restart."""
        ledger = self._read(LEDGER)
        if ledger is not None and ledger.get("parent") == parent:
            return True
        for suffix, tokens in zip((FINAL, STATE), self.tokens(FINAL, STATE), strict=True):
            for token in tokens:
                state = self.read_state(token, suffix)
                if state is not None and state.get("parent") == parent:
                    return True
        return False

    def clear_earlier_run(self) -> None:
        """Remove what an earlier run of the group left (its ledger, states and dead sockets)."""
        for name in self.directory.names():
            token = name.split(".", 1)[0]
            earlier = name in (LEDGER, HOLDER) or name.endswith((FINAL, STATE))
            if earlier or (name.endswith(SOCKET) and not pid_alive(pid_of(token))):
                self.directory.unlink(name)
