"""Another local user cannot inject into a pre-fork scrape, make the service touch files elsewhere, or stop it.

Each case is an attack that worked before the multiprocess directory became private: ``nobody`` prepares the
default directory in a shared sticky temporary directory (as ``/tmp`` is) before a root ``gunicorn -w 4``
starts, whose workers call ``configure()`` at import; once the service runs, ``nobody`` plants a forged
final state where the service's run would keep its files. The service must boot, serve, show nothing
forged, create nothing in the attacker's tree and touch nothing a link points to.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefork_server import Server, value

from conftest import require

NOBODY = 65534
FORGED = '{"group": "%s", "parent": "", "resource": {}, "metrics": [%s]}'
FORGED_METRIC = (
    '{"scope": ["chat_turbo_metrics", ""], "name": "%s", "description": "", "unit": "", "type": "sum", '
    '"monotonic": true, "points": [[{}, 1, 2, %d]]}'
)


def as_nobody(*command: str) -> None:
    subprocess.run(["runuser", "-u", "nobody", "--", *command], check=True, capture_output=True, timeout=30)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A sticky, world-writable directory like /tmp, used as the service's TMPDIR."""
    require(os.geteuid() == 0 and shutil.which("runuser") is not None, "needs root and runuser for a second user")
    path = Path(tempfile.mkdtemp(prefix="ctm-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _forge(directory: Path, group: str) -> None:
    """As nobody: a directory holding a forged final state that would add to the service's counters."""
    metrics = ",".join((FORGED_METRIC % ("orders", 1_000_000), FORGED_METRIC % ("injected_by_nobody", 42)))
    as_nobody("mkdir", "-p", "-m", "0777", str(directory))
    as_nobody("sh", "-c", f"printf '%s' '{FORGED % (group, metrics)}' > {directory}/1-forged.final.json")


def _run_name(port: int, master: int) -> str:
    """The directory name the service's run would have (what an attacker can compute from /proc)."""
    start = Path(f"/proc/{master}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return f"127.0.0.1-{port}.run-{master}-{start}"


ATTACKS = ["base-made-0777", "base-made-0777-with-endpoint", "base-is-a-link", "endpoint-is-a-link"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_another_user_cannot_inject_redirect_or_stop_the_service(shared_tmp: Path, tmp_path: Path, attack: str) -> None:
    base = shared_tmp / f"chat-turbo-metrics-{os.geteuid()}"
    secret = tmp_path / "secret"  # a root-only directory an attacker would like the service to write or delete in
    secret.mkdir(mode=0o700)
    (secret / "keep.txt").write_text("root's")
    if attack == "base-is-a-link":
        as_nobody("ln", "-s", str(secret), str(base))
    else:
        as_nobody("mkdir", "-m", "0777", str(base))
        as_nobody("chmod", "0777", str(base))
    server = Server(tmp_path, workers=4, TMPDIR=str(shared_tmp))
    try:
        if attack == "base-made-0777-with-endpoint":  # the directory earlier versions used, and this run's
            _forge(base / f"127.0.0.1-{server.metrics_port}", "")
            run = _run_name(server.metrics_port, server.process.pid)
            _forge(base / run, run[run.index(".run-") + 1 :])
        elif attack == "endpoint-is-a-link":
            as_nobody("ln", "-s", str(secret), str(base / f"127.0.0.1-{server.metrics_port}"))
            as_nobody("ln", "-s", str(secret), str(base / _run_name(server.metrics_port, server.process.pid)))
        server.load(40)
        scrape = server.scrape()
        server.load(10)
        scrape_after = server.scrape()
    finally:
        log = server.stop()

    # The service booted and served with every worker (Server waits for all four); monitoring said once per
    # process what was wrong.
    for bad in ("Worker failed to boot", "Address already in use", "Traceback"):
        assert bad not in log, log
    refusals = [line for line in log.splitlines() if str(base) in line and "METRICS_MULTIPROCESS_DIR" in line]
    assert len(refusals) == 4, log  # one per worker
    # Nothing forged in the scrape; the holder serves its own data and says the group cannot share.
    for text in (scrape, scrape_after):
        assert "injected_by_nobody" not in text
        assert (value(text, "orders_total") or 0) < server.sent  # the holder's own requests, no more
        assert value(text, 'chat_turbo_metrics_multiprocess_degraded{cause="directory"}') == 1
    # Nothing created in the attacker's tree, nothing touched where a link points.
    if base.is_dir() and not base.is_symlink():
        for root, directories, files in os.walk(base):
            for name in [*directories, *files]:
                assert os.lstat(os.path.join(root, name)).st_uid == NOBODY, (root, name)
    assert sorted(path.name for path in secret.iterdir()) == ["keep.txt"]
    assert (secret / "keep.txt").read_text() == "root's"


def test_the_default_directory_is_created_private_and_serves_the_whole_service(
    shared_tmp: Path, tmp_path: Path
) -> None:
    server = Server(tmp_path, workers=4, TMPDIR=str(shared_tmp))
    try:
        server.load(20)
        scrape = server.scrape()
    finally:
        log = server.stop()
    base = shared_tmp / f"chat-turbo-metrics-{os.geteuid()}"
    assert oct(base.stat().st_mode & 0o777) == "0o700"
    assert value(scrape, "orders_total") == server.sent  # every worker's requests
    assert not re.search(r"refused|Traceback", log), log
