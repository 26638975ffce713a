"""Pre-fork servers: one exact Prometheus scrape for every process of a service.

Under gunicorn or ``uvicorn --workers`` every worker records into a pipeline of its own, and all of them are
configured with the same Prometheus port. The first process that binds the port becomes the *holder*; every
other process of the service (a worker forked from the holder, or one that finds the port held by a sibling)
becomes a *member*: it serves its current cumulative collection, on demand, over a unix socket in the
endpoint's multiprocess directory. At each scrape the holder asks every live member in parallel (short
timeout), adds what they answer to its own collection and to the *retired* totals of members that have
exited (:mod:`chat_turbo_metrics._exposition.merge`), and serves the sum. Nothing runs on the recording path:
what is merged is what each pipeline collects anyway, the fast path's pre-aggregated cells included.

Files, in ``<base>/<host>-<port>/`` (``<base>``: ``METRICS_MULTIPROCESS_DIR``, default
``$TMPDIR/chat-turbo-metrics-<uid>``, created 0700 and exported to the environment so forked and spawned
children find it):

* ``<pid>-<nonce>.sock``: a member's socket (in ``<base>/sockets-<hash>/`` instead when the directory's path is
  too long for a unix socket address).
* ``<pid>-<nonce>.final.json``: a member's last state, written when its pipeline shuts down (before its socket
  closes, so at any moment a member either answers or has left its final state).
* ``retired.json``: the retired totals and which members they include; updated under ``lock`` (flock) so a
  process that takes the port over continues them.
* ``holder.json``: which process holds the port.

A member that exits without shutting down (SIGKILL) retires with the state the holder last fetched from it.
A member tries to bind the port every second, so the port is taken over within a second when its holder
exits. A process that binds the port while no member of the service is alive starts afresh: what an earlier
run left in the directory is removed, so a restarted service starts its counters at zero.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import multiprocessing
import multiprocessing.util
import os
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Protocol

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._exposition.merge import State, encode, fold_vanished, merge, prune, retire
from chat_turbo_metrics._pipeline.health import PREFIX as HEALTH_PREFIX
from chat_turbo_metrics._pipeline.member import (
    FETCH_TIMEOUT_S,
    MemberServer,
    fetch_state,
    flock,
    identity,
    new_token,
    parent_identity,
    pid_alive,
    pid_of,
    read_json,
    write_json,
)

_logger = logging.getLogger("chat_turbo_metrics.multiprocess")

ENV_DIR = "METRICS_MULTIPROCESS_DIR"
DEFAULT_GAUGE_MODE = "sum"
SIBLING_WAIT_S = 0.5
_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux
_MAX_FOLDED = 10_000


class _Pipeline(Protocol):
    config: Any

    def collect(self) -> MetricsData | None: ...

    def shutdown(self, timeout_s: float | None = None) -> None: ...


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


def _private_directory(path: Path) -> str | None:
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


class Session:
    """This process's part in serving one Prometheus endpoint for every process of the service.

    Example:
        >>> directory = endpoint_directory(base_directory(), "localhost", 9464)
        >>> session = Session(pipeline, exporter, directory, {"*": "max"})  # doctest: +SKIP
        >>> exporter.attach(session.collect)  # doctest: +SKIP
    """

    def __init__(self, pipeline: _Pipeline, exporter: Any, directory: Path, gauge_modes: Mapping[str, str]) -> None:
        """Args:
        pipeline: this process's pipeline (its collection is this process's part).
        exporter: the Prometheus exporter (``attach(collect)`` binds its port or raises ``OSError``).
        directory: the endpoint's multiprocess directory (private, existing).
        gauge_modes: metric name or pattern -> gauge mode; ``"*"`` sets the default.
        """
        self._pipeline = pipeline
        self._exporter = exporter
        self.directory = directory
        self.sockets = socket_directory(directory)
        self._modes = dict(gauge_modes)
        self.role = "starting"
        self.token = new_token()
        self._member: MemberServer | None = None
        self._identity = identity(os.getpid())
        self._cache: dict[str, State] = {}  # what each member answered last
        self._own: State | None = None  # what this process collected at the last scrape
        # Series a live process evicts as idle are folded into the retired totals (see merge.vanished).
        self._idle_ns = int(pipeline.config.series_idle_timeout_s * 1e9)
        self._scrape_lock = threading.Lock()
        self._decided = threading.Event()
        self._multi = False  # part of a multi-process service: leave a final state at exit
        self._root = False  # the holder is the parent of its members (the server's master)
        self._closed = False
        _sessions.add(self)

    # --- roles ------------------------------------------------------------------------------------
    def sibling_holds_port(self) -> bool:
        """True when the port is held by this service: its holder, or a member that will take the port over."""
        holder = read_json(self.directory / "holder.json")
        pid = holder.get("pid") if isinstance(holder, dict) else None
        if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
            return True
        return any(pid_of(t) != os.getpid() and pid_alive(pid_of(t)) for t in self._tokens(".sock"))

    def become_holder(self, *, continuing: bool = False) -> None:
        """This process bound the port: continue the service's totals if a sibling left any, else start afresh."""
        with flock(self.directory / "lock"):
            alive = [t for t in self._tokens(".sock") if t != self.token and pid_alive(pid_of(t))]
            continuing = continuing or bool(alive) or self._siblings_left_totals()
            if not continuing:
                self._clear_earlier_run()
            write_json(self.directory / "holder.json", {"pid": os.getpid(), "token": self.token})
        self._multi = self._multi or continuing
        self.role = "holder"
        self._decided.set()

    def _siblings_left_totals(self) -> bool:
        """Workers of the same server (same parent process) recycled all at once leave finals and the ledger."""
        mine = parent_identity()
        ledger = read_json(self.directory / "retired.json")
        if isinstance(ledger, dict) and ledger.get("parent") == mine:
            return True
        finals = (read_json(self.directory / f"{t}.final.json") for t in self._tokens(".final.json"))
        return any(isinstance(final, dict) and final.get("parent") == mine for final in finals)

    def become_member(self) -> None:
        """Another process holds the port: answer its requests and stand by to take the port over."""
        self._multi = True
        self.role = "member"
        self._decided.set()
        self._member = MemberServer(self.sockets / f"{self.token}.sock", self._collect_own, self._take_over)

    def _take_over(self) -> bool:
        if self._closed:
            return True
        try:
            self._exporter.attach(self.collect)
        except (OSError, RuntimeError):
            return False
        member, self._member = self._member, None
        self.become_holder(continuing=True)
        if member is not None:
            member.close()
        _logger.info("this process now serves the Prometheus endpoint for the service (its holder exited)")
        return True

    def _clear_earlier_run(self) -> None:
        for path in {*self.directory.iterdir(), *self.sockets.iterdir()}:
            token = path.name.split(".", 1)[0]
            earlier = path.name in ("retired.json", "holder.json") or path.name.endswith(".final.json")
            if earlier or (path.name.endswith(".sock") and not pid_alive(pid_of(token))):
                path.unlink(missing_ok=True)

    def _tokens(self, suffix: str) -> set[str]:
        try:
            names = os.listdir(self.sockets if suffix == ".sock" else self.directory)
        except OSError:
            return set()
        return {name[: -len(suffix)] for name in names if name.endswith(suffix) and not name.startswith(".")}

    # --- the scrape -------------------------------------------------------------------------------
    def gauge_mode(self, name: str) -> str:
        """The gauge mode for metric ``name``: an exact entry, else the first matching pattern, else ``*``."""
        mode = self._modes.get(name)
        if mode is not None:
            return mode
        for pattern, found in self._modes.items():
            if pattern != "*" and fnmatchcase(name, pattern):
                return found
        if name.startswith(HEALTH_PREFIX):
            return "sum"  # the service's queue depths and series are its workers' together, whatever "*" says
        return self._modes.get("*", DEFAULT_GAUGE_MODE)

    def collect(self) -> MetricsData | None:
        """What the Prometheus endpoint serves: this process's collection, plus every member's when holding."""
        self._decided.wait(5.0)  # a scrape that arrives between bind and become_holder() must merge too
        own = guarded_collect(self._pipeline)
        if self.role != "holder":
            return own
        members = self._tokens(".sock") - {self.token}
        finals = self._tokens(".final.json") - {self.token}
        if not (members or finals or self._cache or self._multi):
            return own  # a single process: nothing to merge
        with self._scrape_lock:
            answers = self._fetch_all(members)
            live: list[tuple[str, State]] = [(self.token, encode(own))]
            with flock(self.directory / "lock"):
                ledger = read_json(self.directory / "retired.json") or {"folded": [], "state": None}
                changed = self._fold_idle(ledger, self._own, live[0][1])
                self._own = live[0][1]
                for token in sorted(members | finals | set(self._cache)):
                    changed |= self._account(token, answers.get(token), ledger, live)
                if self._idle_ns:
                    ledger["state"], pruned = prune(ledger["state"], live, time.time_ns(), self._idle_ns)
                    changed |= pruned
                if changed:
                    ledger["folded"], ledger["parent"] = ledger["folded"][-_MAX_FOLDED:], parent_identity()
                    write_json(self.directory / "retired.json", ledger)
            self._multi = True
        return merge(live, ledger["state"], self.gauge_mode)

    def _account(self, token: str, answer: State | None, ledger: dict[str, Any], live: list[Any]) -> bool:
        """Add one member to this scrape: live, or retired (its final state, else what it last answered)."""
        final_path = self.directory / f"{token}.final.json"
        if token in ledger["folded"]:
            self._forget(token, final_path)
            return False
        final = read_json(final_path)
        if final is None and answer is not None:
            self._root = self._root or answer.get("parent") == self._identity
            folded = self._fold_idle(ledger, self._cache.get(token), answer)
            self._cache[token] = answer
            live.append((token, answer))
            return folded
        if final is None and pid_alive(pid_of(token)):
            if token in self._cache:  # busy or slow: its last answer keeps its counters from going backwards
                live.append((token, self._cache[token]))
            return False
        if isinstance(final, dict):
            self._root = self._root or final.get("parent") == self._identity
        last = final if isinstance(final, dict) else self._cache.get(token)
        if last is not None:
            ledger["state"] = retire(ledger["state"], last)
        ledger["folded"].append(token)
        self._forget(token, final_path)
        return True

    def _fold_idle(self, ledger: dict[str, Any], before: State | None, after: State) -> bool:
        """Keep in the retired totals what a live process evicted since ``before``; True if it did."""
        if not self._idle_ns:
            return False
        ledger["state"], folded = fold_vanished(ledger["state"], before, after)
        return folded

    def _forget(self, token: str, final_path: Path) -> None:
        self._cache.pop(token, None)
        final_path.unlink(missing_ok=True)
        if not pid_alive(pid_of(token)):  # a member that exits removes its own socket file
            (self.sockets / f"{token}.sock").unlink(missing_ok=True)

    def _fetch_all(self, tokens: set[str]) -> dict[str, State | None]:
        answers: dict[str, State | None] = {}

        def fetch(token: str) -> None:
            answers[token] = fetch_state(self.sockets / f"{token}.sock", FETCH_TIMEOUT_S)

        threads = [threading.Thread(target=fetch, args=(t,), daemon=True) for t in tokens]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + FETCH_TIMEOUT_S + 0.5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return dict(answers)

    # --- life cycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Leave this process's final state for the holder, then stop answering. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._root and self.role == "holder":
            # The server's master is exiting: the service stops here, and a new run starts at zero.
            with flock(self.directory / "lock"):
                self._clear_earlier_run()
        elif self._multi:
            self._write_final()
        member, self._member = self._member, None
        if member is not None:
            member.close()
        # holder.json stays: while this process lives (it still holds the port until its exporter stops), a
        # process that cannot bind knows a sibling holds the port, waits as a member and takes it over.

    def _collect_own(self) -> MetricsData | None:
        return guarded_collect(self._pipeline)

    def _write_final(self) -> None:
        try:
            final = encode(guarded_collect(self._pipeline))
            final["parent"] = parent_identity()
            write_json(self.directory / f"{self.token}.final.json", final)
        except Exception:
            _logger.exception("writing this process's final metrics for the service's scrape failed")

    def after_fork_in_child(self) -> None:
        """A forked child is a new member: its parent keeps the port, the sockets and the bookkeeping."""
        self._scrape_lock = threading.Lock()
        self._cache = {}
        self._own = None
        member, self._member = self._member, None
        if member is not None:
            member.forget()
        if self._closed or self.role not in ("holder", "member"):
            return
        if self.role == "holder":
            release = getattr(self._exporter, "release_after_fork", None)
            if release is not None:
                release()
        self.token = new_token()
        self._identity = identity(os.getpid())
        self._root = False
        try:
            self.become_member()
        except OSError as error:
            _logger.warning("forked process cannot serve its metrics to the Prometheus endpoint: %s", error)


# A collection must not be in flight in another thread when this process forks: the child would inherit the
# pipeline reader's lock held by a thread it does not have, and every collection there (the holder's requests,
# the final state at exit) would wait forever. Held across fork(); registered at the first collection, so that
# it runs before the recorders' own fork hooks (before-fork hooks run last-registered first).
_collect_guard = threading.Lock()
_guard_state = {"registered": False, "held": False}


def guarded_collect(pipeline: _Pipeline) -> MetricsData | None:
    """``pipeline.collect()``, never overlapping a fork."""
    if not _guard_state["registered"] and hasattr(os, "register_at_fork"):
        _guard_state["registered"] = True
        os.register_at_fork(before=_hold_guard, after_in_parent=_release_guard, after_in_child=_release_guard)
    with _collect_guard:
        return pipeline.collect()


def _hold_guard() -> None:
    # Bounded: a collection waiting for a lock the forking thread holds must not stop the fork.
    _guard_state["held"] = _collect_guard.acquire(timeout=1.0)


def _release_guard() -> None:
    if _guard_state["held"]:
        _guard_state["held"] = False
        _collect_guard.release()


_sessions: weakref.WeakSet[Session] = weakref.WeakSet()
_by_pipeline: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def _after_fork_in_child() -> None:
    for session in list(_sessions):
        session.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _shareable(pipeline: _Pipeline, exporter: Any) -> bool:
    port = getattr(exporter, "port", None)
    return bool(pipeline.config.multiprocess) and isinstance(port, int) and port > 0 and hasattr(exporter, "host")


def attach_pull(pipeline: _Pipeline, exporter: Any) -> None:
    """Attach a pull exporter; a Prometheus port held by a sibling process makes this process a member.

    Raises:
        OSError: the port is held by a process that is not part of this service (as without multiprocess).
    """
    if not _shareable(pipeline, exporter):
        exporter.attach(pipeline.collect)
        return
    base = base_directory(pipeline.config.multiprocess_dir)
    directory = endpoint_directory(base, str(exporter.host), int(exporter.port))
    problem = _private_directory(directory) or _private_directory(socket_directory(directory))
    if problem is not None:
        _logger.warning("multiprocess directory %s unusable (%s); serving this process's metrics only", base, problem)
        exporter.attach(pipeline.collect)
        return
    if not pipeline.config.multiprocess_dir:
        # Forked and spawned children find the same directory even if their TMPDIR differs.
        os.environ.setdefault(ENV_DIR, str(base))
    session = Session(pipeline, exporter, directory, pipeline.config.multiprocess_gauges)
    deadline = time.monotonic() + SIBLING_WAIT_S
    while True:
        try:
            exporter.attach(session.collect)
        except OSError as error:
            if error.errno == errno.EADDRINUSE and session.sibling_holds_port():
                session.become_member()
                break
            if error.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                _sessions.discard(session)
                raise
            time.sleep(0.02)  # a sibling binding right now writes holder.json within microseconds
        else:
            session.become_holder()
            break
    _by_pipeline[pipeline] = session
    if multiprocessing.parent_process() is not None:
        # multiprocessing children (uvicorn --workers) leave through os._exit: atexit hooks never run there.
        multiprocessing.util.Finalize(None, pipeline.shutdown, exitpriority=10)


def close(pipeline: _Pipeline) -> None:
    """At pipeline shutdown, before the exporters stop: leave the final state, stop answering."""
    session = _by_pipeline.pop(pipeline, None)
    if session is not None:
        session.close()
