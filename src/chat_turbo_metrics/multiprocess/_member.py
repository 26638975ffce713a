"""The member side of multiprocess serving: a unix socket in the group's directory that answers the holder
with this process's state, and the holder's side that asks every member in parallel.

The holder accepts an answer only from the process the socket is named after, running as this user
(``SO_PEERCRED``, where the platform has it). See :mod:`chat_turbo_metrics.multiprocess` for the design.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

from chat_turbo_metrics.multiprocess._merge import State

_logger = logging.getLogger("chat_turbo_metrics.multiprocess")

FETCH_TIMEOUT_S = 2.0  # per scrape, all members in parallel
TAKEOVER_INTERVAL_S = 1.0
_HEADER = struct.Struct(">Q")


_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ignored: set[str] = set()  # sockets warned about once


def _peer_is(conn: socket.socket, pid: int) -> bool:
    """True when the process listening on ``conn``'s other end is ``pid``, running as this user."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # no peer credentials here: the directory's privacy is the check
        return True
    peer, uid, _ = _CREDENTIALS.unpack(conn.getsockopt(socket.SOL_SOCKET, option, _CREDENTIALS.size))
    return bool(peer == pid and uid == os.geteuid())


def fetch_state(address: str, pid: int, timeout_s: float) -> State | None:
    """Ask member ``pid`` listening at ``address`` for its state; None if it does not answer in time (or the
    socket is not that process's)."""
    deadline = time.monotonic() + timeout_s
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(address)
            if not _peer_is(conn, pid):
                if address not in _ignored and len(_ignored) < 100:
                    _ignored.add(address)
                    _logger.warning("ignored socket %s: it is not served by process %d of this user", address, pid)
                return None
            conn.sendall(b"C")
            chunks: list[bytes] = []
            expected: int | None = None
            received = 0
            while expected is None or received < expected + _HEADER.size:
                conn.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = conn.recv(1 << 16)
                if not chunk:
                    return None
                chunks.append(chunk)
                received += len(chunk)
                if expected is None and received >= _HEADER.size:
                    expected = _HEADER.unpack(b"".join(chunks)[: _HEADER.size])[0]
            state = json.loads(b"".join(chunks)[_HEADER.size :])
            return state if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


def fetch_states(members: dict[str, tuple[str, int]]) -> dict[str, State | None]:
    """Ask every member (token -> (socket address, pid)) in parallel; None for those that do not answer in time."""
    answers: dict[str, State | None] = {}

    def fetch(token: str) -> None:
        answers[token] = fetch_state(*members[token], FETCH_TIMEOUT_S)

    threads = [threading.Thread(target=fetch, args=(token,), daemon=True) for token in members]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + FETCH_TIMEOUT_S + 0.5
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(answers)


class MemberServer:
    """Answers the holder's requests for this process's state on a unix socket; tries to take the port over."""

    def __init__(
        self, address: str, remove: Callable[[], None], answer: Callable[[], bytes], takeover: Callable[[], bool]
    ) -> None:
        """Args:
        address: the socket address to listen on (in the group's directory).
        remove: removes the socket's file (at :meth:`close`).
        answer: this process's state, JSON-encoded (published to its file before it is sent).
        takeover: tries to bind the Prometheus port; True once this process holds it (the server stops).

        Raises:
            OSError: the socket cannot be made (the directory is full, read-only or gone).
        """
        self._remove = remove
        self._state = answer
        self._takeover = takeover
        remove()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.bind(address)
            self._socket.listen(8)
        except OSError:
            self._socket.close()
            raise
        self._socket.settimeout(TAKEOVER_INTERVAL_S)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="chat-turbo-metrics-member", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                if self._takeover():
                    return
                continue
            except OSError:
                return  # closed
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(FETCH_TIMEOUT_S)
            if conn.recv(1) != b"C":
                return
            body = self._state()
            conn.sendall(_HEADER.pack(len(body)) + body)
        except OSError:
            pass  # the holder gave up waiting; it uses what it last had
        except Exception:
            _logger.exception("collecting this process's metrics for the holder of the Prometheus port failed")

    def close(self) -> None:
        """Stop answering and remove the socket file."""
        self._stopped.set()
        self._socket.close()
        with contextlib.suppress(OSError):
            self._remove()

    def forget(self) -> None:
        """After fork: the socket and its file belong to the parent; close the inherited descriptor only."""
        self._stopped.set()
        self._socket.close()
