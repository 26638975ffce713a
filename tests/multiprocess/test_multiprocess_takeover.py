"""The port changes hands, processes die: the service's counters carry on, never backwards.

The process holding the Prometheus port is a separate Python process here, started by this one: not one of
its workers, so the two join by a group name they share (``METRICS_MULTIPROCESS_GROUP``), as an operator
joins separate programs. This test process is a member that takes the port over when the holder exits or is
killed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_turbo_metrics.multiprocess import _session
from chat_turbo_metrics.multiprocess._group import is_worker
from conftest import clean_env, free_port, group_directory, read_json, service_process

# Generous bound for waits that normally end in about a second (a takeover, a background publication).
PATIENCE_S = 20.0

HOLDER = textwrap.dedent(
    """
    import sys
    from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor

    port, directory = int(sys.argv[1]), sys.argv[2]
    monitor = PerformanceMonitor(MonitoringConfig(
        environment="test", metrics_exporters=("prometheus",), prometheus_host="127.0.0.1",
        prometheus_port=port, multiprocess_dir=directory, multiprocess_group="takeover",
        prometheus_scope_labels=False,
    ))
    print("bound", flush=True)
    for line in sys.stdin:  # "jobs N": record; "exit": shut down as a recycled worker does
        command, *arguments = line.split()
        if command == "jobs":
            monitor.increment_counter("jobs", value=int(arguments[0]))
            monitor.record_histogram("size_bytes", 3)
            print("done", flush=True)
        elif command == "exit":
            monitor.shutdown()
            break
    """
)


class Holder:
    """A Python process that binds the port first and records what it is told to."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        script = tmp_path / "holder.py"
        script.write_text(HOLDER)
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(port), str(tmp_path / "mp")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
        )
        assert self._read() == "bound", self.process.stderr.read()  # type: ignore[union-attr]

    def _read(self) -> str:
        return self.process.stdout.readline().strip()  # type: ignore[union-attr]

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]

    def record(self, jobs: int) -> None:
        self.send(f"jobs {jobs}")
        assert self._read() == "done"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Holder, int]]:
    port = free_port()
    started = Holder(tmp_path, port)
    yield started, port
    started.stop()


def _scrape_after_takeover(port: int, directory: Path) -> list[str]:
    """Wait until this process holds the port (it says so in holder.json once it has bound it), then scrape."""
    deadline = time.monotonic() + PATIENCE_S
    while (read_json(directory / "holder.json") or {}).get("pid") != os.getpid():
        assert time.monotonic() < deadline, "the port was not taken over"
        time.sleep(0.05)
    return _scrape(port)


def _scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode().splitlines()  # type: ignore[no-any-return]


def test_a_member_takes_the_port_over_from_a_recycled_holder_and_continues_its_totals(
    tmp_path: Path, holder: tuple[Holder, int]
) -> None:
    process, port = holder
    directory = group_directory(tmp_path / "mp", port)
    process.record(5)
    member = service_process(tmp_path / "mp", port, multiprocess_group="takeover")  # the port is held: a member
    try:
        member.increment_counter("jobs", value=2)
        assert "jobs_total 7" in _scrape(port)
        process.send("exit")  # recycled: its final totals stay, a member takes the port over
        process.process.wait(10)

        taken = _scrape_after_takeover(port, directory)

        assert "jobs_total 7" in taken
        assert "size_bytes_count 1" in taken
        member.increment_counter("jobs")
        assert "jobs_total 8" in _scrape(port)
    finally:
        member.shutdown()


def test_a_member_publishes_its_state_as_it_takes_the_port_over(
    tmp_path: Path, holder: tuple[Holder, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scrape still finishing at the old holder can no longer ask this process once it has closed its member
    # socket: it reads the published state, which must include what was recorded up to the take-over.
    monkeypatch.setattr(_session, "PUBLISH_INTERVAL_S", 3600.0)  # no background publication meanwhile
    process, port = holder
    member = service_process(tmp_path / "mp", port, multiprocess_group="takeover")
    directory = group_directory(tmp_path / "mp", port)
    try:
        member.increment_counter("jobs", value=2)
        assert "jobs_total 2" in _scrape(port)  # this process published 2 as it answered the holder
        member.increment_counter("jobs", value=3)  # not published: no scrape, no background publication
        process.send("exit")
        process.process.wait(10)

        _wait_until_published(directory, os.getpid(), jobs=5)  # without scraping this process, now the holder
        assert (read_json(directory / "holder.json") or {}).get("pid") == os.getpid()
    finally:
        member.shutdown()


def test_a_holder_killed_with_sigkill_keeps_what_it_published(tmp_path: Path, holder: tuple[Holder, int]) -> None:
    process, port = holder
    directory = group_directory(tmp_path / "mp", port)
    process.record(5)
    member = service_process(tmp_path / "mp", port, multiprocess_group="takeover")
    try:
        member.increment_counter("jobs", value=2)
        assert "jobs_total 7" in _scrape(port)  # served: the holder published its 5 before it served them
        process.record(4)  # not scraped: only the holder's background publication knows of these
        _wait_until_published(directory, process.process.pid, jobs=9)
        process.process.send_signal(signal.SIGKILL)
        process.process.wait(10)

        taken = _scrape_after_takeover(port, directory)

        assert "jobs_total 11" in taken
        assert "size_bytes_count 2" in taken
    finally:
        member.shutdown()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="the holder is seen blocked through /proc only")
def test_a_holder_that_dies_before_writing_the_ledger_loses_no_retired_totals(
    tmp_path: Path, holder: tuple[Holder, int]
) -> None:
    # A scrape folds a retired member's final totals into the ledger, then writes the ledger. A recycled
    # holder's scrape thread can end there, with its process; the member's files must outlive it. A FIFO in
    # place of the ledger's temporary file stops the holder inside that write, where it is killed.
    process, port = holder
    directory = group_directory(tmp_path / "mp", port)
    retired = Holder(tmp_path, port)  # the port is held: a member, recycled before any scrape
    retired.record(5)
    retired.send("exit")
    retired.process.wait(10)
    process.record(1)
    member = service_process(tmp_path / "mp", port, multiprocess_group="takeover")
    try:
        member.increment_counter("jobs", value=2)
        os.mkfifo(directory / f".retired.json.{process.process.pid}.tmp")
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S) as scrape:
            scrape.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            _wait_until_blocked_on_a_fifo(process.process.pid)
            process.process.send_signal(signal.SIGKILL)
            process.process.wait(10)
        (directory / f".retired.json.{process.process.pid}.tmp").unlink()

        taken = _scrape_after_takeover(port, directory)

        assert "jobs_total 8" in taken  # 5 retired, 1 the killed holder published, 2 this process's
        assert "size_bytes_count 2" in taken
    finally:
        member.shutdown()
        retired.stop()


def _wait_until_blocked_on_a_fifo(pid: int) -> None:
    """Wait until a thread of process ``pid`` waits in open() for the other end of a FIFO."""
    deadline = time.monotonic() + PATIENCE_S
    while not any(
        _read(task / "wchan") in ("wait_for_partner", "fifo_open") for task in Path(f"/proc/{pid}/task").iterdir()
    ):
        assert time.monotonic() < deadline, f"process {pid} never opened the ledger's temporary file"
        time.sleep(0.02)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the thread has just ended
        return ""


def test_a_member_killed_before_any_scrape_keeps_what_it_published(tmp_path: Path) -> None:
    port = free_port()
    holder = service_process(tmp_path / "mp", port)
    directory = group_directory(tmp_path / "mp", port)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a member that records and is killed before the holder ever asked it for its totals
        try:
            holder.increment_counter("jobs", value=6)
            os.write(write_end, b"1")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        os.read(read_end, 1)
        _wait_until_published(directory, pid, jobs=6)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        holder.increment_counter("jobs")

        assert "jobs_total 7" in _scrape(port)
    finally:
        holder.shutdown()


def _wait_until_published(directory: Path, pid: int, *, jobs: int) -> None:
    """Wait until process ``pid`` has published (in the background, within about a second) ``jobs`` jobs."""
    deadline = time.monotonic() + PATIENCE_S
    while _published_jobs(directory, pid) != jobs:
        assert time.monotonic() < deadline, f"process {pid} did not publish {jobs} jobs"
        time.sleep(0.05)


def _published_jobs(directory: Path, pid: int) -> int | None:
    for path in directory.glob(f"{pid}-*.state.json"):
        state = read_json(path)
        for metric in state.get("metrics", ()) if isinstance(state, dict) else ():
            if metric["name"] == "jobs":
                return int(metric["points"][0][3])
    return None


@pytest.mark.skipif(not Path("/proc/self/exe").exists(), reason="recognised from /proc only")
def test_workers_are_told_from_processes_started_by_a_supervisor() -> None:
    # Forked without exec (gunicorn's workers): a worker. Spawned by multiprocessing (uvicorn's): a worker.
    # Started as a program of its own, even by a Python parent (a supervisor, this test): not one.
    pid = os.fork()
    if pid == 0:
        os._exit(0 if is_worker() else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # the function travels by its module's name
        assert pool.apply(is_worker) is True
    started = subprocess.run(
        [sys.executable, "-c", "from chat_turbo_metrics.multiprocess._group import is_worker; print(is_worker())"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    assert started.stdout.strip() == "False"
    assert is_worker() is False  # pytest, started from a shell or make
