"""The member side of multiprocess serving: a unix socket that answers with this process's state, and the
small file helpers the holder and the members share (atomic JSON, flock, pid liveness).

See :mod:`chat_turbo_metrics.multiprocess._session` for the design.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chat_turbo_metrics.multiprocess._merge import State

_logger = logging.getLogger("chat_turbo_metrics.multiprocess")

FETCH_TIMEOUT_S = 2.0  # per scrape, all members in parallel
TAKEOVER_INTERVAL_S = 1.0
_HEADER = struct.Struct(">Q")


def pid_of(token: str) -> int:
    head = token.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def identity(pid: int) -> str:
    """A process's identity that survives pid reuse: pid and start time (from /proc where there is one)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return f"{pid}:{fields[19]}"
    except (OSError, IndexError):
        return str(pid)


def parent_identity() -> str:
    """The identity of this process's parent: workers of one server share it."""
    return identity(os.getppid())


def is_worker() -> bool:
    """True for a worker of a pre-fork server: a ``multiprocessing`` child (``uvicorn --workers``), or a process
    forked by its parent without an exec (gunicorn, uWSGI): same program, and the same command line or a
    gunicorn master for a parent (gunicorn retitles its processes when setproctitle is installed).

    A worker may be recycled before any sibling has joined the service, so it always leaves its totals; a
    single process started by a shell, systemd, a container runtime or a Python supervisor does not, and
    restarts at zero.
    """
    if multiprocessing.parent_process() is not None:
        return True
    parent = os.getppid()
    try:
        if os.readlink(f"/proc/{parent}/exe") != os.readlink("/proc/self/exe"):
            return False
        command = Path(f"/proc/{parent}/cmdline").read_bytes()
        return command == Path("/proc/self/cmdline").read_bytes() or b"gunicorn" in command
    except OSError:  # no /proc (macOS): a worker is known once it meets a sibling
        return False


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def write_json(path: Path, value: Any) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, separators=(",", ":"), default=str), encoding="utf-8")
    os.replace(temporary, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def fetch_state(path: Path, timeout_s: float) -> State | None:
    """Ask the member listening at ``path`` for its state; None if it does not answer in time."""
    deadline = time.monotonic() + timeout_s
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(str(path))
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


def fetch_states(paths: dict[str, Path]) -> dict[str, State | None]:
    """Ask every member (token -> socket path) in parallel; None for those that do not answer in time."""
    answers: dict[str, State | None] = {}

    def fetch(token: str) -> None:
        answers[token] = fetch_state(paths[token], FETCH_TIMEOUT_S)

    threads = [threading.Thread(target=fetch, args=(token,), daemon=True) for token in paths]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + FETCH_TIMEOUT_S + 0.5
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(answers)


class MemberServer:
    """Answers the holder's requests for this process's state on a unix socket; tries to take the port over."""

    def __init__(self, path: Path, answer: Callable[[], bytes], takeover: Callable[[], bool]) -> None:
        """Args:
        path: the socket file to listen on.
        answer: this process's state, JSON-encoded (published to its file before it is sent).
        takeover: tries to bind the Prometheus port; True once this process holds it (the server stops).
        """
        self.path = path
        self._state = answer
        self._takeover = takeover
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.bind(str(path))
        self._socket.listen(8)
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
            self.path.unlink()

    def forget(self) -> None:
        """After fork: the socket and its file belong to the parent; close the inherited descriptor only."""
        self._stopped.set()
        self._socket.close()
