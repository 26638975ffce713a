"""How a process takes its place at a shared endpoint: the holder, a member of the holder's group, or refused
because a stranger holds the port.

Example:
    >>> membership = serve(pipeline, PrometheusExporter(port=9464))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import tempfile
import time

from chat_turbo_metrics._pipeline.ports import PortInUseError
from chat_turbo_metrics.multiprocess._directory import DirectoryRefused, PrivateDirectory
from chat_turbo_metrics.multiprocess._group import Group, group_for, is_worker, pid_alive, pid_of, run_founder_alive
from chat_turbo_metrics.multiprocess._health import Health
from chat_turbo_metrics.multiprocess._ledger import GroupFiles
from chat_turbo_metrics.multiprocess._protocols import Membership, SharedEndpoint, Source
from chat_turbo_metrics.multiprocess._session import Session

_logger = logging.getLogger("chat_turbo_metrics.multiprocess")

SIBLING_WAIT_S = 2.0  # how long a process that cannot bind looks for the sibling that just bound the port
_TREE_CHECK_S = 0.25  # without a directory, how often the port's holder is looked up in the process tree


def default_base() -> str:
    """``$TMPDIR/chat-turbo-metrics-<uid>``: where groups meet unless ``METRICS_MULTIPROCESS_DIR`` says."""
    return os.path.join(tempfile.gettempdir(), f"chat-turbo-metrics-{os.geteuid()}")


def serve(source: Source, endpoint: SharedEndpoint) -> Membership | None:
    """Attach ``endpoint`` for ``source``'s group: bind its port, or join the group member that holds it.

    Returns:
        The membership (None when the endpoint is not shared: multiprocess off, or an ephemeral port).

    Raises:
        PortInUseError: the port is held by a process outside this group.
        OSError: the endpoint cannot be bound for another reason.
    """
    config = source.config
    if not config.multiprocess or endpoint.requested_port <= 0:
        endpoint.attach(source.collect)
        return None
    group = group_for(config.multiprocess_group)
    health = Health()
    base, files = _open_files(config.multiprocess_dir or default_base(), group, endpoint, health)
    session = Session(source, endpoint, group, files, config.multiprocess_gauges, health=health, base=base)
    try:
        _take_place(session, endpoint, group)
    except BaseException:
        session.discard()
        raise
    if multiprocessing.parent_process() is not None:
        # multiprocessing children (uvicorn --workers) leave through os._exit: atexit hooks never run there.
        multiprocessing.util.Finalize(None, source.shutdown, exitpriority=10)
    return session


def _take_place(session: Session, endpoint: SharedEndpoint, group: Group) -> None:
    deadline = time.monotonic() + SIBLING_WAIT_S
    next_tree_check = 0.0
    while True:
        try:
            endpoint.attach(session.collect)
        except PortInUseError as error:
            if session.sibling_holds_port():
                session.become_member()
                return
            now = time.monotonic()
            if session.files is None and now >= next_tree_check:
                # No directory to meet in: the port's holder is of this service if the process tree says so.
                next_tree_check = now + _TREE_CHECK_S
                if _holder_in_tree(error):
                    session.become_member()
                    return
            if now >= deadline:
                raise
            time.sleep(0.02)  # a sibling binding right now writes holder.json within microseconds
        else:
            session.become_holder()
            return


def _holder_in_tree(error: PortInUseError) -> bool:
    holder = error.holder
    if holder is None:  # cannot be seen here: a worker trusts that its server's port is its sibling's
        return is_worker()
    return group_for().in_tree(holder.pid)


def _open_files(
    path: str, group: Group, endpoint: SharedEndpoint, health: Health
) -> tuple[PrivateDirectory | None, GroupFiles | None]:
    """The base directory and the group's files in it; (None, None) when the directory is refused."""
    base: PrivateDirectory | None = None
    try:
        base = PrivateDirectory.open(path)
        name = group.directory_name(endpoint.host, endpoint.requested_port)
        new = name not in base.names()
        directory = base.child(name)
    except (OSError, DirectoryRefused) as error:
        if base is not None:
            base.close()
        reason = error.reason if isinstance(error, DirectoryRefused) else error.strerror or str(error)
        health.directory_refused(path, reason)
        return None, None
    if new and not group.explicit:
        _sweep(base, name)
    return base, GroupFiles(directory, group.key)


def _sweep(base: PrivateDirectory, keep: str) -> None:
    """Remove the directories of earlier runs whose processes are all gone (a server that was stopped)."""
    for name in base.names():
        if name != keep and run_founder_alive(name) is False and not _anyone_alive(base, name):
            base.remove(name)


def _anyone_alive(base: PrivateDirectory, name: str) -> bool:
    try:
        child = base.child(name, create=False)
    except (OSError, DirectoryRefused):
        return True  # not ours to judge
    try:
        return any(pid_alive(pid_of(entry)) for entry in child.names() if entry[:1].isdigit())
    finally:
        child.close()
