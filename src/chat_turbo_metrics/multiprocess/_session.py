"""Pre-fork servers: one exact Prometheus scrape for every process of a service.

Under gunicorn or ``uvicorn --workers`` every worker records into a pipeline of its own, and all of them are
configured with the same Prometheus port. The first process that binds the port becomes the *holder*; every
other process of the service (a worker forked from the holder, or one that finds the port held by a sibling)
becomes a *member*: it serves its current cumulative collection, on demand, over a unix socket in the
endpoint's multiprocess directory. At each scrape the holder asks every live member in parallel (short
timeout), adds what they answer to its own collection and to the *retired* totals of members that have
exited (:mod:`chat_turbo_metrics.multiprocess._merge`), and serves the sum. Nothing runs on the recording path:
what is merged is what each pipeline collects anyway, the fast path's pre-aggregated cells included.

Every process of the service publishes its state to a file of its own before any of it is served, and
leaves its final state there when its pipeline shuts down: the holder that takes the port over, or one
that finds a process gone, continues from the files, so the service's counters never go backwards,
whichever process exits, is recycled or is killed. The files, in ``<base>/<host>-<port>/`` (``<base>``:
``METRICS_MULTIPROCESS_DIR``, default ``$TMPDIR/chat-turbo-metrics-<uid>``, created 0700 and exported to the
environment so forked and spawned children find it), are described in :mod:`chat_turbo_metrics.multiprocess._ledger`.

A member tries to bind the port every second, so the port is taken over within a second when its holder
exits. A process that binds the port while no member of the service is alive, and no process of the same
server left totals, starts afresh: what an earlier run left in the directory is removed, so a restarted
service starts its counters at zero.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import multiprocessing.util
import os
import threading
import time
import weakref
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Protocol

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._pipeline import forksafe
from chat_turbo_metrics._pipeline.health import PREFIX as HEALTH_PREFIX
from chat_turbo_metrics.multiprocess._ledger import (
    FINAL,
    HOLDER,
    SOCKET,
    STATE,
    Directory,
    base_directory,
    endpoint_directory,
    private_directory,
    socket_directory,
)
from chat_turbo_metrics.multiprocess._member import (
    MemberServer,
    fetch_states,
    identity,
    is_worker,
    new_token,
    parent_identity,
    pid_alive,
    pid_of,
    read_json,
    write_json,
)
from chat_turbo_metrics.multiprocess._merge import State, encode, fold_vanished, merge, prune

_logger = logging.getLogger("chat_turbo_metrics.multiprocess")

ENV_DIR = "METRICS_MULTIPROCESS_DIR"
DEFAULT_GAUGE_MODE = "sum"
SIBLING_WAIT_S = 2.0  # how long a process that cannot bind looks for the sibling that just bound the port
PUBLISH_INTERVAL_S = 1.0  # how often a process of a multi-process service publishes its state to its file
DECIDE_WAIT_S = 10.0


class _Pipeline(Protocol):
    config: Any

    def collect(self) -> MetricsData | None: ...

    def shutdown(self, timeout_s: float | None = None) -> None: ...


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
        self._files = Directory(directory, self.sockets)
        self._modes = dict(gauge_modes)
        self.role = "starting"
        self.token = new_token()
        self._member: MemberServer | None = None
        self._identity = identity(os.getpid())
        # Series a live process evicts as idle are folded into the retired totals (see merge.vanished): what
        # each process (this one included) reported at the last scrape, to see which series it dropped since.
        self._idle_ns = int(pipeline.config.series_idle_timeout_s * 1e9)
        self._previous: dict[str, State] = {}
        self._scrape_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._decided = threading.Event()
        self._multi = False  # part of a multi-process service: publish this process's state, leave a final one
        self._root = False  # the holder is the parent of its members (the server's master)
        self._closed = False
        self._final: bytes | None = None  # once written, this process's part is its final state
        self._published_at = 0.0
        self._publisher: threading.Thread | None = None
        self._stop = threading.Event()
        _sessions.add(self)

    # --- roles ------------------------------------------------------------------------------------
    def sibling_holds_port(self) -> bool:
        """True when the port is held by this service: its holder, or a member that will take the port over."""
        holder = read_json(self.directory / HOLDER)
        pid = holder.get("pid") if isinstance(holder, dict) else None
        if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
            return True
        return any(pid_of(t) != os.getpid() and pid_alive(pid_of(t)) for t in self._files.tokens(SOCKET))

    def become_holder(self, *, continuing: bool = False) -> None:
        """This process bound the port: continue the service's totals if a sibling left any, else start afresh."""
        try:
            with self._files.locked():
                alive = [t for t in self._files.tokens(SOCKET) if t != self.token and pid_alive(pid_of(t))]
                worker = self._multi or is_worker()
                continuing = continuing or bool(alive) or (worker and self._files.left_totals(parent_identity()))
                if not continuing:
                    self._files.clear_earlier_run()
                write_json(self.directory / HOLDER, {"pid": os.getpid(), "token": self.token})
        finally:
            # Whatever happens here, this process serves the port now: scrapes must merge, not wait.
            self.role = "holder"
            self._decided.set()
        if continuing or worker:
            self._join()

    def become_member(self) -> None:
        """Another process holds the port: answer its requests and stand by to take the port over."""
        self.role = "member"
        self._decided.set()
        self._join()
        self._member = MemberServer(self.sockets / f"{self.token}{SOCKET}", self._answer, self._take_over)

    def _join(self) -> None:
        """From now on this process is one of several: it publishes its state (see :mod:`ledger`)."""
        self._multi = True
        if self._publisher is None and not self._closed:
            publisher = threading.Thread(target=self._publish_loop, name="chat-turbo-metrics-publish", daemon=True)
            self._publisher = publisher
            publisher.start()

    def _take_over(self) -> bool:
        if self._closed:
            return True
        # A scrape that arrives as soon as the port is bound must wait until this process merges as the holder.
        self._decided.clear()
        try:
            self._exporter.attach(self.collect)
        except (OSError, RuntimeError):
            self._decided.set()
            return False
        member, self._member = self._member, None
        self.become_holder(continuing=True)
        if member is not None:
            member.close()
            # A scrape still finishing at the old holder can no longer ask this process: it reads the published
            # state instead, which must not be the background publication of up to a second ago.
            self._publish()
        _logger.info("this process now serves the Prometheus endpoint for the service (its holder exited)")
        return True

    # --- this process's state ---------------------------------------------------------------------
    def _publish(self, *, final: bool = False) -> tuple[State, bytes]:
        """Collect this process's state and publish it to its file, before anyone may serve it.

        Collected and written under one lock, so the file only ever moves forward; once the final state is
        written, it is this process's state for good.
        """
        with self._publish_lock:
            if self._final is not None:
                return json.loads(self._final), self._final
            state = encode(guarded_collect(self._pipeline))
            state["parent"] = parent_identity()  # tells the holder whether it is the server's master
            body = json.dumps(state, separators=(",", ":"), default=str).encode()
            self._files.publish(self.token, body, final=final)
            self._published_at = time.monotonic()
            if final:
                self._final = body
            return state, body

    def _answer(self) -> bytes:
        return self._publish()[1]

    def _publish_loop(self) -> None:
        # A process killed with SIGKILL leaves what it last published: at most PUBLISH_INTERVAL_S is lost.
        stop = self._stop
        while not stop.wait(PUBLISH_INTERVAL_S):
            if time.monotonic() - self._published_at < PUBLISH_INTERVAL_S / 2:
                continue  # an answer or a scrape published it just now
            try:
                self._publish()
            except Exception:
                _logger.exception("publishing this process's metrics for the service's scrape failed")

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
        self._decided.wait(DECIDE_WAIT_S)  # a scrape that arrives between bind and become_holder() must merge too
        if self.role != "holder":
            return guarded_collect(self._pipeline)
        members = self._files.tokens(SOCKET) - {self.token}
        others = members | self._files.tokens(FINAL) | self._files.tokens(STATE)
        others.discard(self.token)
        if not (others or self._multi):
            return guarded_collect(self._pipeline)  # a single process: nothing to merge
        self._join()
        with self._scrape_lock:
            answers = fetch_states({t: self.sockets / f"{t}{SOCKET}" for t in members})
            own, _ = self._publish()
            with self._files.locked():
                ledger = self._files.read_ledger()
                # After this process retired (its final state folded by the holder that took the port over),
                # a scrape still in flight here must not count it twice.
                live = [] if self.token in ledger["folded"] else [(self.token, own)]
                changed = bool(live) and self._fold_idle(ledger, self.token, own, retired=False)
                for token in sorted(others):
                    retired, state = self._files.account(token, answers.get(token), ledger, live)
                    changed |= retired
                    if state is not None:
                        self._root = self._root or state.get("parent") == self._identity
                        changed |= self._fold_idle(ledger, token, state, retired=retired)
                if self._idle_ns:
                    ledger["state"], pruned = prune(ledger["state"], live, time.time_ns(), self._idle_ns)
                    changed |= pruned
                if changed:
                    self._files.write_ledger(ledger, parent_identity())
                # Only now that the ledger holding their totals is written (see Directory.account).
                self._files.forget(others, ledger)
        return merge(live, ledger["state"], self.gauge_mode)

    def _fold_idle(self, ledger: dict[str, Any], token: str, state: State, *, retired: bool) -> bool:
        """Keep in the retired totals the series process ``token`` evicted as idle since the last scrape (or
        before it retired); True if it did."""
        if not self._idle_ns:
            return False
        before = self._previous.pop(token, None) if retired else self._previous.get(token)
        if not retired:
            self._previous[token] = state
        ledger["state"], folded = fold_vanished(ledger["state"], before, state)
        return folded

    # --- life cycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Leave this process's final state for the holder, then stop answering. Idempotent.

        In that order, so that at any moment the holder gets this process's latest state: an answer, or the
        final state (answers after it repeat it).
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._root and self.role == "holder":
            # The server's master is exiting: the service stops here, and a new run starts at zero.
            with self._files.locked():
                self._files.clear_earlier_run()
        elif self._multi:
            self._write_final()
        member, self._member = self._member, None
        if member is not None:
            member.close()
        # holder.json stays: while this process lives (it still holds the port until its exporter stops), a
        # process that cannot bind knows a sibling holds the port, waits as a member and takes it over.

    def _write_final(self) -> None:
        try:
            self._publish(final=True)
        except Exception:
            _logger.exception("writing this process's final metrics for the service's scrape failed")

    def after_fork_in_child(self) -> None:
        """A forked child is a new member: its parent keeps the port, the sockets and the bookkeeping.

        Runs after :mod:`forksafe`'s repairs (imported first, so its hook runs first): the pipeline the child
        serves has already forgotten the sums and histograms it inherited from its parent.
        """
        forksafe.reinit(self._scrape_lock)
        forksafe.reinit(self._publish_lock)
        self._previous = {}
        self._publisher, self._stop, self._final = None, threading.Event(), None
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


def guarded_collect(pipeline: _Pipeline) -> MetricsData | None:
    """``pipeline.collect()``, never overlapping a fork (see :func:`forksafe.outside_fork`)."""
    return forksafe.outside_fork(pipeline.collect)


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
    problem = private_directory(directory) or private_directory(socket_directory(directory))
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
