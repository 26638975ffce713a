"""A multiprocess directory that cannot be used or written degrades the scrape; it never takes the service down.

Real ``gunicorn -w 4`` on a directory on a file system made by the test (a small tmpfs, read-only or filled
up; root only). Every scrape answers 200, no worker fails to boot, the cause is logged once per process and
shown by ``chat_turbo_metrics_multiprocess_degraded``; a full directory recovers by itself, without losing
totals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefork_server import GET_INSTANCE, Server, value

from chat_turbo_metrics._pipeline.ports import holder_of
from conftest import require

DIRECTORY_DEGRADED = 'chat_turbo_metrics_multiprocess_degraded{cause="directory"}'
STORAGE_DEGRADED = 'chat_turbo_metrics_multiprocess_degraded{cause="storage"}'


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` for the block (root only; skipped elsewhere, failed under CI)."""
    require(os.geteuid() == 0, "mounting a small file system needs root")
    path.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    mounted = subprocess.run(command, check=False, capture_output=True)
    require(mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr!r}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full."""
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], check=False, capture_output=True)
    assert os.statvfs(directory).f_bavail == 0
    return filler


@pytest.mark.parametrize(
    ("monitor", "instrument"), [("configure", False), ("get_instance", True)], ids=["configure", "instrument"]
)
def test_a_read_only_directory_does_not_stop_the_service(tmp_path: Path, monitor: str, instrument: bool) -> None:
    settings = {} if monitor == "configure" else {"monitor": GET_INSTANCE}
    with tmpfs(tmp_path / "ro", "ro,size=64k") as readonly:
        directory = readonly / "mp"
        server = Server(tmp_path, workers=4, instrument=instrument, METRICS_MULTIPROCESS_DIR=str(directory), **settings)
        try:
            server.load(40)
            scrape = server.scrape()
            holder = holder_of(server.metrics_port)
            assert holder is not None
            if not instrument:  # a worker holds the port: killed, another one serves it within a second or two
                os.kill(holder.pid, signal.SIGKILL)
                time.sleep(1.5)
                after = server.scrape()
                assert value(after, DIRECTORY_DEGRADED) == 1
        finally:
            log = server.stop()

    assert value(scrape, DIRECTORY_DEGRADED) == 1
    assert (value(scrape, "orders_total") or 0) < server.sent  # the holder's own, never more
    for bad in ("Worker failed to boot", "Address already in use", "Traceback"):
        assert bad not in log, log
    refusals = [line for line in log.splitlines() if str(directory) in line and "METRICS_MULTIPROCESS_DIR" in line]
    # Once per process that configured: each worker and the one that replaced the killed holder (forked ones
    # inherit the master's monitor under opentelemetry-instrument).
    assert len(refusals) == (1 if instrument else 5), log


def test_without_a_directory_another_service_on_the_same_port_is_not_taken_for_the_holder(tmp_path: Path) -> None:
    # Two services of one machine on one port, each on its own loopback address. Without a directory, the
    # workers that cannot bind look the port's holder up in the process tree: it must be the one on their
    # address, not the other service (whose pid is lower), else every worker but one fails to boot.
    with socket.socket() as other_service, tmpfs(tmp_path / "ro", "ro,size=64k") as readonly:
        other_service.bind(("127.0.0.3", 0))
        other_service.listen()
        port = other_service.getsockname()[1]
        server = Server(
            tmp_path,
            workers=4,
            metrics_port=port,
            METRICS_MULTIPROCESS_DIR=str(readonly / "mp"),
            OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.2",
        )
        try:
            served = server.load(40)
        finally:
            log = server.stop()

    assert len(served) == 4
    for bad in ("Worker failed to boot", "Address already in use", "Traceback"):
        assert bad not in log, log


def test_a_full_directory_serves_every_scrape_and_recovers_without_losing_totals(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=1m") as small:
        server = Server(tmp_path, workers=4, METRICS_MULTIPROCESS_DIR=str(small / "mp"))
        try:
            server.load(40)
            assert value(server.scrape(), "orders_total") == server.sent
            filler = _fill(small)

            # Full: requests and scrapes at once; every scrape answers, exactly, from the processes' memory.
            loading = threading.Thread(target=server.load, args=(80,))
            loading.start()
            during = []
            while loading.is_alive():
                during.append(value(server.scrape(), "orders_total"))
            loading.join()
            full = server.scrape()
            assert value(full, "orders_total") == server.sent
            assert (value(full, STORAGE_DEGRADED) or 0) >= 1
            # A worker killed while nothing can be written retires with what the last scrape saw of it.
            holder = holder_of(server.metrics_port)
            assert holder is not None
            victim = next(pid for pid in server.load(16) if pid != holder.pid)
            assert value(server.scrape(), "orders_total") == server.sent
            os.kill(victim, signal.SIGKILL)
            time.sleep(0.5)
            assert value(server.scrape(), "orders_total") == server.sent

            filler.unlink()  # space comes back: the files catch up by themselves
            deadline = time.monotonic() + 20
            while value(recovered := server.scrape(), STORAGE_DEGRADED) != 0:
                assert time.monotonic() < deadline, recovered
                time.sleep(0.2)
            # What was recorded while the directory was full is on disk again: a worker killed now loses nothing.
            holder = holder_of(server.metrics_port)
            assert holder is not None
            victim = next(pid for pid in server.load(16) if pid != holder.pid)
            time.sleep(1.5)  # its background publication, after its last request
            os.kill(victim, signal.SIGKILL)
            time.sleep(0.5)
            after = server.scrape()
        finally:
            log = server.stop()

    assert during
    assert during == sorted(during), "a scrape while the directory was full went backwards"
    assert value(after, "orders_total") == server.sent
    assert "Traceback" not in log, log
    warnings = [line for line in log.splitlines() if "cannot write to the multiprocess directory" in line]
    assert 1 <= len(warnings) <= 5, log  # once per process that tried to write while it was full
