"""Background publication costs nothing when nothing happens, and takes no collection-time readings.

Each process of a pre-fork group copies its state to its file every second, so that a process killed with
SIGKILL loses at most a second of recordings. That copy is made only when something was recorded since the last
one, and without the readings (the collection hooks: system statistics, pool usage), which a scrape takes when
it asks the process. Here one process holds the port and another (a member, in this same process) records.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.multiprocess import _session
from conftest import clean_env, free_port, group_directory, read_json, service_process

PATIENCE_S = 20.0  # a background publication normally comes within about a second

MEMBER = textwrap.dedent(
    """
    import sys
    from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor

    port, directory = int(sys.argv[1]), sys.argv[2]
    monitor = PerformanceMonitor(MonitoringConfig(
        environment="test", metrics_exporters=("prometheus",), prometheus_host="127.0.0.1",
        prometheus_port=port, multiprocess_dir=directory, multiprocess_group="idle",
    ))
    readings = []

    def reading():
        readings.append(1)
        monitor.record_gauge("pool_in_use", len(readings))

    monitor.add_collection_hook(reading)
    (session,) = monitor._runtime.pipeline._memberships
    print(session.role, session.token, flush=True)
    for line in sys.stdin:  # "jobs N": record; "readings": how many were taken; "exit": shut down
        command, *arguments = line.split()
        if command == "jobs":
            monitor.increment_counter("jobs", value=int(arguments[0]))
            print("done", flush=True)
        elif command == "readings":
            print(len(readings), flush=True)
        elif command == "exit":
            monitor.shutdown()
            break
    """
)


class Member:
    """A Python process of the group that does not hold the port: it records what it is told to."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        script = tmp_path / "member.py"
        script.write_text(MEMBER)
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(port), str(tmp_path / "mp")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
        )
        role, _, self.token = self._ask(None).partition(" ")
        assert role == "member", self.process.stderr.read()  # type: ignore[union-attr]
        self.state_file = group_directory(tmp_path / "mp", port) / f"{self.token}.state.json"

    def _ask(self, line: str | None) -> str:
        if line is not None:
            self.process.stdin.write(line + "\n")  # type: ignore[union-attr]
            self.process.stdin.flush()  # type: ignore[union-attr]
        return self.process.stdout.readline().strip()  # type: ignore[union-attr]

    def record(self, jobs: int) -> None:
        assert self._ask(f"jobs {jobs}") == "done"

    def readings(self) -> int:
        return int(self._ask("readings"))

    def state(self) -> dict[str, Any]:
        """What it last published (its ``<token>.state.json``)."""
        state = read_json(self.state_file)
        return state if isinstance(state, dict) else {}

    def wait_for_jobs(self, jobs: int) -> dict[str, Any]:
        deadline = time.monotonic() + PATIENCE_S
        while True:
            state = self.state()
            if published(state, "jobs") == jobs:
                return state
            assert time.monotonic() < deadline, f"the member did not publish {jobs} jobs: {state}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


def published(state: dict[str, Any], name: str) -> float | None:
    for metric in state.get("metrics", ()):
        if metric["name"] == name:
            return float(metric["points"][0][-1])
    return None


@pytest.fixture
def group(tmp_path: Path) -> Iterator[tuple[PerformanceMonitor, Member, int]]:
    port = free_port()
    holder = service_process(tmp_path / "mp", port, multiprocess_group="idle")
    member = Member(tmp_path, port)
    yield holder, member, port
    member.stop()
    holder.shutdown()


def scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode().splitlines()  # type: ignore[no-any-return]


def test_an_idle_process_publishes_nothing_and_a_background_copy_takes_no_reading(
    group: tuple[PerformanceMonitor, Member, int],
) -> None:
    _, member, port = group
    member.record(2)
    first = member.wait_for_jobs(2)  # the background publication, within about a second
    assert member.readings() == 0  # made without the readings

    time.sleep(3 * _session.PUBLISH_INTERVAL_S)  # three ticks of the publisher with nothing recorded
    assert member.state()["seq"] == first["seq"]  # nothing published: no collection, no write
    assert member.readings() == 0

    member.record(1)
    after = member.wait_for_jobs(3)  # something recorded: the next tick publishes it
    assert after["seq"] > first["seq"]
    assert member.readings() == 0

    # A scrape reads: the holder asks the member, whose answer takes the readings.
    lines = scrape(port)
    assert "jobs_total 3" in lines
    assert member.readings() == 1
    assert "pool_in_use 1" in lines
    assert published(member.state(), "pool_in_use") == 1  # published as it answered


def test_a_recording_made_just_after_a_scrape_is_still_published_in_the_background(
    group: tuple[PerformanceMonitor, Member, int],
) -> None:
    _, member, port = group
    member.record(4)
    assert "jobs_total 4" in scrape(port)
    member.record(1)  # after the answer: only the background publication can save it
    member.wait_for_jobs(5)
    assert member.readings() == 1  # the scrape's
