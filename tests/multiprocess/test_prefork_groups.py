"""Who shares a pre-fork scrape: the processes of one server, or processes named into one group; never a
stranger that happens to use the same port.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefork_server import GET_INSTANCE, Server, monitored_env, scrape, value

from conftest import free_port

STRANGER = textwrap.dedent(
    """
    import json, sys
    import chat_turbo_metrics

    if sys.argv[1] == "configure":
        try:
            chat_turbo_metrics.configure()
        except OSError as error:
            print(json.dumps({"errno": error.errno, "message": str(error)}))
            sys.exit(3)
        print(json.dumps({"joined": True}))
    else:  # implicit creation, as a library would do it
        monitor = chat_turbo_metrics.PerformanceMonitor.get_instance()
        monitor.increment_counter("jobs", {"queue": "email"}, value=75)
        print(json.dumps({"recorded": True}))
    """
)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts; each is stopped at the end."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _run_stranger(tmp_path: Path, mode: str, port: int, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "stranger.py").write_text(STRANGER)
    return subprocess.run(
        [sys.executable, str(tmp_path / "stranger.py"), mode],
        env=monitored_env(port, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unrelated_program_on_a_services_port_is_refused_and_merges_nothing(
    tmp_path: Path, servers: list[Server]
) -> None:
    # Service A under opentelemetry-instrument (its master holds the port); then a script of the same user, with
    # the same default directory, configures monitoring on the same port.
    shared = {"TMPDIR": str(tmp_path)}
    server = Server(tmp_path, workers=2, monitor=GET_INSTANCE, instrument=True, **shared)
    servers.append(server)
    server.load(5)

    configured = _run_stranger(tmp_path, "configure", server.metrics_port, **shared)
    implicit = _run_stranger(tmp_path, "get_instance", server.metrics_port, **shared)
    scrape = server.scrape()

    assert configured.returncode == 3, configured.stdout + configured.stderr
    refusal = json.loads(configured.stdout)
    assert refusal["errno"] == errno.EADDRINUSE
    assert f"127.0.0.1:{server.metrics_port}" in refusal["message"]
    assert f"pid {server.process.pid}" in refusal["message"]  # the holder: gunicorn's master
    assert "METRICS_PROMETHEUS_PORT" in refusal["message"]
    # Implicit creation runs on without the endpoint, saying so once.
    assert implicit.returncode == 0, implicit.stderr
    assert json.loads(implicit.stdout) == {"recorded": True}
    (line,) = [line for line in implicit.stderr.splitlines() if str(server.metrics_port) in line]
    assert "METRICS_PROMETHEUS_PORT" in line
    assert "[Errno" not in line
    # Nothing of the stranger's in the service's scrape, during or after its run.
    assert value(scrape, "orders_total") == server.sent
    assert "jobs_total" not in scrape
    assert "jobs_total" not in server.scrape()


def test_processes_named_into_one_group_share_a_scrape_and_others_do_not(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import chat_turbo_metrics

            monitor = chat_turbo_metrics.configure()
            monitor.increment_counter("jobs", value=int(sys.argv[1]))
            print("ready", flush=True)
            sys.stdin.readline()  # until the test is done
            """
        )
    )

    def start(jobs: int, **env: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, str(script), str(jobs)],
            env=monitored_env(port, METRICS_MULTIPROCESS_DIR=str(tmp_path / "mp"), **env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        return process

    processes: list[subprocess.Popen[str]] = []
    try:
        first = start(3, METRICS_MULTIPROCESS_GROUP="batch")
        assert first.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        second = start(4, METRICS_MULTIPROCESS_GROUP="batch")
        assert second.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        stranger = start(100)  # the same port and directory, no group name
        _, refused = stranger.communicate(timeout=60)

        merged = scrape(port)

        assert value(merged, "jobs_total") == 7
        assert stranger.returncode != 0
        assert f"127.0.0.1:{port}" in refused
        assert f"pid {first.pid}" in refused
    finally:
        for process in processes:
            if process.poll() is None:
                process.communicate("done\n", timeout=30)


def test_a_restarted_server_starts_at_zero_and_its_stopped_runs_directory_goes(
    tmp_path: Path, servers: list[Server]
) -> None:
    settings = {"METRICS_MULTIPROCESS_DIR": str(tmp_path / "mp")}
    first = Server(tmp_path, workers=2, **settings)
    servers.append(first)
    first.load(10)
    assert value(first.scrape(), "orders_total") == first.sent
    first.stop()
    left = sorted(path.name for path in (tmp_path / "mp").iterdir())
    assert len(left) == 1  # the stopped run's directory (its workers' final totals)

    second = Server(tmp_path, workers=2, metrics_port=first.metrics_port, **settings)
    servers.append(second)
    second.load(3)

    assert value(second.scrape(), "orders_total") == second.sent
    runs = sorted(path.name for path in (tmp_path / "mp").iterdir())
    assert len(runs) == 1
    assert runs != left
