"""This process's part in one Prometheus endpoint served for every process of its group.

The process that binds the port is the *holder*; every other process of the group is a *member* that answers
the holder's requests for its state over a unix socket in the group's directory, publishes that state to a
file of its own, and stands by to take the port over. See :mod:`chat_turbo_metrics.multiprocess` for the
design and :mod:`._ledger` for the files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._core import forks
from chat_turbo_metrics.multiprocess._directory import PrivateDirectory
from chat_turbo_metrics.multiprocess._group import (
    Group,
    identity,
    is_worker,
    new_token,
    parent_identity,
    pid_alive,
    pid_of,
)
from chat_turbo_metrics.multiprocess._health import CAUSES, Health
from chat_turbo_metrics.multiprocess._ledger import FINAL, SOCKET, STATE, GroupFiles, Ledger, dumps
from chat_turbo_metrics.multiprocess._member import TAKEOVER_INTERVAL_S, MemberServer, fetch_states
from chat_turbo_metrics.multiprocess._merge import State, encode, fold_vanished, gauge_modes, merge, prune
from chat_turbo_metrics.multiprocess._protocols import SharedEndpoint, Source

_logger = logging.getLogger("chat_turbo_metrics.multiprocess")

PUBLISH_INTERVAL_S = 1.0  # how often a process of a multi-process service publishes its state to its file
DECIDE_WAIT_S = 10.0


class Session:
    """This process's part in serving one Prometheus endpoint for every process of its group.

    Example:
        >>> session = Session(pipeline, exporter, group, files, {"*": "max"})  # doctest: +SKIP
        >>> exporter.attach(session.collect)  # doctest: +SKIP
    """

    def __init__(
        self,
        source: Source,
        endpoint: SharedEndpoint | None,
        group: Group,
        files: GroupFiles | None,
        gauge_mode: Mapping[str, str],
        *,
        health: Health | None = None,
        base: PrivateDirectory | None = None,
    ) -> None:
        """Args:
        source: this process's pipeline (its collection is this process's part).
        endpoint: the shared endpoint (``attach(collect)`` binds its port or raises ``OSError``).
        group: the group this process belongs to.
        files: the group's directory; None when it cannot be used (each process serves its own data).
        gauge_mode: metric name or pattern -> gauge mode; ``"*"`` sets the default.
        health: where failures to share are reported (a new one by default).
        base: the base directory, to remove the run's directory when the run ends.
        """
        self._source = source
        self._endpoint = endpoint
        self.group = group
        self.files = files
        self._base = base
        self.gauge_mode = gauge_modes(gauge_mode)
        self._health = health or Health()
        self.role = "starting"
        self.token = new_token()
        self._member: MemberServer | None = None
        self._identity = identity(os.getpid())
        # Series a live process evicts as idle are folded into the retired totals (see merge.vanished): what
        # each process (this one included) reported at the last scrape, to see which series it dropped since.
        self._idle_ns = int(source.config.series_idle_timeout_s * 1e9)
        self._previous: dict[str, State] = {}
        self._scrape_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._decided = threading.Event()
        self._multi = False  # part of a multi-process service: publish this process's state, leave a final one
        self._root = False  # (named groups) the holder is the parent of its members (the server's master)
        self._closed = False
        self._final: bytes | None = None  # once written, this process's part is its final state
        self._published_at = 0.0
        self._mark = -1  # the collection the last publication made (see Source.quiet_since)
        self._seq = 0  # publications of this process: the holder tells a newer state from an older one
        # The newest state of each member that could not write it (a full directory), seen in its answers.
        self._unstored: dict[str, State] = {}
        self._publisher: threading.Thread | None = None
        self._stop = threading.Event()
        self._failed_merge: set[type] = set()
        if files is not None:  # the descriptors live as long as the session: a late scrape still merges
            weakref.finalize(self, files.directory.close)
        if base is not None:
            weakref.finalize(self, base.close)
        _sessions.add(self)
        forks.register(self, forks.Phase.SESSIONS)

    # --- roles ------------------------------------------------------------------------------------
    def sibling_holds_port(self) -> bool:
        """True when the port is held by this group: its holder, or a member that will take the port over."""
        if self.files is None:
            return False
        holder = self.files.holder()
        pid = holder.get("pid") if holder is not None else None
        if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
            return True
        (sockets,) = self.files.tokens(SOCKET)
        return any(pid_of(t) != os.getpid() and pid_alive(pid_of(t)) for t in sockets)

    def become_holder(self, *, continuing: bool = False) -> None:
        """This process bound the port: continue the group's totals (a named group: if a sibling left any)."""
        files = self.files
        worker = self._multi or (is_worker() if self.group.explicit else not self.group.founded_here())
        try:
            if files is not None:
                with files.locked():
                    if self.group.explicit:
                        (sockets,) = files.tokens(SOCKET)
                        alive = [t for t in sockets if t != self.token and pid_alive(pid_of(t))]
                        continuing = continuing or bool(alive) or (worker and files.left_totals(parent_identity()))
                        if not continuing:
                            files.clear_earlier_run()
                    files.set_holder(os.getpid(), self.token)
                self._storage_ok("holder")
        except OSError as error:
            self._storage_failed("holder", error)
        finally:
            # Whatever happens here, this process serves the port now: scrapes must merge, not wait.
            self.role = "holder"
            self._decided.set()
        if files is not None and (continuing or worker):
            self._join()

    def become_member(self) -> None:
        """Another process of the group holds the port: answer its requests and stand by to take the port over."""
        self.role = "member"
        self._decided.set()
        files = self.files
        if files is not None:
            self._join()
            token = self.token
            try:
                address = files.socket_address(token)
                self._member = MemberServer(address, lambda: files.remove_socket(token), self._answer, self._take_over)
                self._storage_ok("socket")
                return
            except OSError as error:
                self._storage_failed("socket", error)
        threading.Thread(target=self._stand_by, name="chat-turbo-metrics-standby", daemon=True).start()

    def _stand_by(self) -> None:
        """Without a socket the holder could ask: try to take the port over every second."""
        stop = self._stop
        while not stop.wait(TAKEOVER_INTERVAL_S):
            if self._take_over():
                return

    def _join(self) -> None:
        """From now on this process is one of several: it publishes its state (see :mod:`._ledger`)."""
        self._multi = True
        if self._publisher is None and not self._closed:
            publisher = threading.Thread(target=self._publish_loop, name="chat-turbo-metrics-publish", daemon=True)
            self._publisher = publisher
            publisher.start()

    def _take_over(self) -> bool:
        if self._closed:
            return True
        if self._endpoint is None:
            return False
        # A scrape that arrives as soon as the port is bound must wait until this process merges as the holder.
        self._decided.clear()
        try:
            self._endpoint.attach(self.collect)
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

    # --- health -------------------------------------------------------------------------------------
    def health(self) -> Mapping[str, int]:
        """cause -> 1 while this process cannot share its metrics for that cause (none while it serves alone)."""
        causes = self._health.causes
        if not (self._multi or causes):
            return {}
        return {cause: causes.get(cause, 0) for cause in CAUSES}

    def _storage_failed(self, operation: str, error: OSError) -> None:
        self._health.storage_failed(self._path, operation, error)

    def _storage_ok(self, operation: str) -> None:
        self._health.storage_ok(self._path, operation)

    # --- this process's state ---------------------------------------------------------------------
    def _publish(self, *, final: bool = False, readings: bool = True) -> tuple[State, bytes]:
        """Collect this process's state and publish it to its file, before anyone may serve it.

        Collected and written under one lock, so the file only ever moves forward; once the final state is
        taken, it is this process's state for good. A write that fails leaves the state in memory only.

        Args:
            final: this process's last state (it shuts down).
            readings: take the collection-time readings (for a reader: a scrape, the final state); False for
                a background copy of what was recorded.
        """
        with self._publish_lock:
            if self._final is not None:
                return json.loads(self._final), self._final
            mark = self._source.collections + 1
            state = encode(guarded_collect(self._source, readings=readings))
            self._mark = mark
            state["parent"] = parent_identity()  # tells the holder of a named group whether it is the master
            state["group"] = self.group.key
            self._seq += 1
            state["seq"] = self._seq
            body = dumps(state)
            if self.files is not None:
                try:
                    self.files.publish(self.token, body, final=final)
                except OSError as error:
                    self._storage_failed("publish", error)
                    state["stored"] = False  # the holder keeps it: the file is older
                    body = dumps(state)
                else:
                    self._storage_ok("publish")
            self._published_at = time.monotonic()
            if final:
                self._final = body
            return state, body

    def _answer(self) -> bytes:
        return self._publish()[1]

    def _publish_loop(self) -> None:
        # A process killed with SIGKILL leaves what it last published: at most PUBLISH_INTERVAL_S of recordings is
        # lost. Nothing recorded since the last publication: nothing to do (not even a collection). Something
        # recorded: a copy of the recorded data, without the collection-time readings (a scrape takes them).
        stop = self._stop
        while not stop.wait(PUBLISH_INTERVAL_S):
            if time.monotonic() - self._published_at < PUBLISH_INTERVAL_S / 2:
                continue  # an answer or a scrape published it just now
            try:
                if not self._source.quiet_since(self._mark):
                    self._publish(readings=False)
            except Exception:
                _logger.exception("publishing this process's metrics for the service's scrape failed")

    # --- the scrape -------------------------------------------------------------------------------
    def collect(self) -> MetricsData | None:
        """What the Prometheus endpoint serves: this process's collection, plus every member's when holding."""
        self._decided.wait(DECIDE_WAIT_S)  # a scrape that arrives between bind and become_holder() must merge too
        files = self.files
        if self.role != "holder" or files is None:
            return guarded_collect(self._source)
        try:
            return self._collect_group(files)
        except Exception as error:  # never a failed scrape for the group's own trouble: this process's data
            if type(error) not in self._failed_merge:
                self._failed_merge.add(type(error))
                _logger.exception("merging the service's processes failed; serving this process's metrics only")
            return guarded_collect(self._source)

    def _collect_group(self, files: GroupFiles) -> MetricsData | None:
        sockets, finals, states = files.tokens(SOCKET, FINAL, STATE)
        members = sockets - {self.token}
        others = members | finals | states
        others.discard(self.token)
        if not (others or self._multi):
            return guarded_collect(self._source)  # a single process: nothing to merge
        self._join()
        with self._scrape_lock:
            answers = fetch_states({t: (files.socket_address(t), pid_of(t)) for t in members})
            own, _ = self._publish()
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(files.locked())
                    locked = True
                except OSError as error:  # read-only or full: account in memory, change nothing on disk
                    self._storage_failed("lock", error)
                    locked = False
                ledger = files.read_ledger()
                # After this process retired (its final state folded by the holder that took the port over),
                # a scrape still in flight here must not count it twice.
                live = [] if self.token in ledger["folded"] else [(self.token, own)]
                changed = bool(live) and self._fold_idle(ledger, self.token, own, retired=False)
                for token in sorted(others):
                    retired, state = files.account(token, answers.get(token), ledger, live, self._unstored.get(token))
                    self._remember_unstored(token, state)
                    changed |= retired
                    if state is not None:
                        self._root = self._root or state.get("parent") == self._identity
                        changed |= self._fold_idle(ledger, token, state, retired=retired)
                if self._idle_ns:
                    ledger["state"], pruned = prune(ledger["state"], live, time.time_ns(), self._idle_ns)
                    changed |= pruned
                # A retired process's files go only once the ledger holding its totals is written.
                if not changed or (locked and self._write_ledger(files, ledger)):
                    files.forget(others, ledger)
                    for token in set(self._unstored).intersection(ledger["folded"]):
                        del self._unstored[token]  # its totals are in the ledger on disk now
        return merge(live, ledger["state"], self.gauge_mode)

    def _remember_unstored(self, token: str, state: State | None) -> None:
        """Keep a member's state that is newer than its file until the ledger holding it is written."""
        if state is not None and state.get("stored", True):
            self._unstored.pop(token, None)
        elif state is not None:
            self._unstored[token] = state

    def _write_ledger(self, files: GroupFiles, ledger: Ledger) -> bool:
        try:
            files.write_ledger(ledger, parent_identity())
        except OSError as error:
            self._storage_failed("ledger", error)
            return False
        self._storage_ok("ledger")
        return True

    def _fold_idle(self, ledger: Ledger, token: str, state: State, *, retired: bool) -> bool:
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
        final state (answers after it repeat it). The founder of a run that holds the port at exit ends the run:
        its directory goes.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self.files is not None and self.role == "holder" and self._ends_the_run():
            self._end_run(self.files)
        elif self._multi:
            self._write_final()
        member, self._member = self._member, None
        if member is not None:
            member.close()
        # holder.json stays: while this process lives (it still holds the port until its exporter stops), a
        # process that cannot bind knows a sibling holds the port, waits as a member and takes it over.

    def _ends_the_run(self) -> bool:
        master = self._root if self.group.explicit else self.group.founded_here()
        # configure() again in this process: the new pipeline carries on with the same directory.
        others = [s for s in list(_sessions) if s is not self and not s._closed and s.group == self.group]
        return master and not any(s.files is not None and s.files.directory.path == self._path for s in others)

    @property
    def _path(self) -> str:
        return self.files.directory.path if self.files is not None else ""

    def _end_run(self, files: GroupFiles) -> None:
        """The server's master is exiting: the service stops here, and a new run starts at zero."""
        try:
            with files.locked():
                files.clear_earlier_run()
        except OSError:
            pass  # nothing more to do: the next run has a directory of its own (a named group: see left_totals)
        if self._base is not None and not self.group.explicit:
            self._base.remove(os.path.basename(files.directory.path))

    def _write_final(self) -> None:
        try:
            self._publish(final=True)
        except Exception:
            _logger.exception("writing this process's final metrics for the service's scrape failed")

    def discard(self) -> None:
        """This process did not join (the port is a stranger's): forget the session and its empty directory."""
        self._closed = True
        _sessions.discard(self)
        files = self.files
        if files is not None and self._base is not None and not files.directory.names():
            with contextlib.suppress(OSError):
                os.rmdir(os.path.basename(files.directory.path), dir_fd=self._base.fd)

    def after_fork_in_child(self) -> None:
        """A forked child is a new member: its parent keeps the port, the sockets and the bookkeeping.

        Runs in the fork registry's sessions phase, after the pipeline's repairs: the pipeline the child
        serves has already forgotten the sums and histograms it inherited from its parent.
        """
        forks.reinit(self._scrape_lock)
        forks.reinit(self._publish_lock)
        self._health.after_fork_in_child()
        self._previous, self._unstored, self._seq, self._mark = {}, {}, 0, -1
        self._publisher, self._stop, self._final = None, threading.Event(), None
        member, self._member = self._member, None
        if member is not None:
            member.forget()
        if self._closed or self.role not in ("holder", "member"):
            return
        if self.role == "holder" and self._endpoint is not None:
            self._endpoint.detach_after_fork()
        self.token = new_token()
        self._identity = identity(os.getpid())
        self._root = False
        self.become_member()


def guarded_collect(source: Source, *, readings: bool = True) -> MetricsData | None:
    """``source.collect()``, never overlapping a fork (see :func:`forks.outside_fork`)."""
    return forks.outside_fork(functools.partial(source.collect, readings=readings))


_sessions: weakref.WeakSet[Session] = weakref.WeakSet()
