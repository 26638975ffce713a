"""The multiprocess directory is private to this user: created 0700, refused when another user could change it,
reached through no other user's link, and nothing in it is read unless this user wrote it.

The cases with a second user run as root and use ``nobody`` (``runuser``), as an attacker on a shared host.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, get_monitoring_config
from chat_turbo_metrics.multiprocess._directory import DirectoryRefused, PrivateDirectory
from chat_turbo_metrics.multiprocess._group import group_for
from chat_turbo_metrics.multiprocess._ledger import FINAL, GroupFiles
from chat_turbo_metrics.multiprocess._member import MemberServer, fetch_state
from conftest import require

NOBODY = 65534


def as_nobody(*command: str) -> None:
    """Run ``command`` as user ``nobody`` (the other local user of these tests)."""
    require(os.geteuid() == 0 and shutil.which("runuser") is not None, "needs root and runuser for a second user")
    subprocess.run(["runuser", "-u", "nobody", "--", *command], check=True, capture_output=True, timeout=30)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A sticky, world-writable directory like /tmp, that ``nobody`` can reach."""
    path = Path(tempfile.mkdtemp(prefix="ctm-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_base_directory_is_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        PrivateDirectory.open(str(tmp_path / "mp")).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "mp").stat().st_mode) == 0o700


def test_an_own_directory_readable_by_others_is_made_private(tmp_path: Path) -> None:
    (tmp_path / "mp").mkdir(mode=0o755)  # as earlier versions created it
    (tmp_path / "mp").chmod(0o755)
    PrivateDirectory.open(str(tmp_path / "mp")).close()
    assert stat.S_IMODE((tmp_path / "mp").stat().st_mode) == 0o700


def test_an_own_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mp").mkdir()
    (tmp_path / "mp").chmod(0o777)
    with pytest.raises(DirectoryRefused) as refused:
        PrivateDirectory.open(str(tmp_path / "mp"))
    assert refused.value.path == str(tmp_path / "mp")


def test_a_base_directory_made_by_another_user_is_refused(shared_tmp: Path) -> None:
    as_nobody("mkdir", "-m", "0700", str(shared_tmp / "mp"))
    with pytest.raises(DirectoryRefused):
        PrivateDirectory.open(str(shared_tmp / "mp"))


def test_a_link_of_another_user_in_place_of_the_directory_is_not_followed(shared_tmp: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    as_nobody("ln", "-s", str(secret), str(shared_tmp / "mp"))
    with pytest.raises(DirectoryRefused):
        PrivateDirectory.open(str(shared_tmp / "mp"))
    with pytest.raises(DirectoryRefused):
        PrivateDirectory.open(str(shared_tmp / "mp" / "below"))  # a link on the way is refused too
    assert list(secret.iterdir()) == []


def test_a_link_of_this_user_or_root_on_the_way_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    PrivateDirectory.open(str(tmp_path / "link" / "mp")).close()
    assert (tmp_path / "real" / "mp").is_dir()


def test_a_directory_on_the_way_that_others_may_change_is_refused(shared_tmp: Path) -> None:
    require(os.geteuid() == 0, "needs root to make a directory of another user")
    open_dir = shared_tmp / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # not sticky: anyone could replace what we create in it
    with pytest.raises(DirectoryRefused):
        PrivateDirectory.open(str(open_dir / "mp"))
    assert not (open_dir / "mp").exists()
    PrivateDirectory.open(str(shared_tmp / "mp")).close()  # sticky, like /tmp: nobody can replace our entry


def test_only_regular_files_of_this_user_are_read(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root to give a file to another user")
    group = group_for("files")
    base = PrivateDirectory.open(str(tmp_path / "mp"))
    files = GroupFiles(base.child("x"), group.key)
    directory = tmp_path / "mp" / "x"
    forged = b'{"group": "%s", "metrics": []}' % group.key.encode()
    (directory / f"1-a{FINAL}").write_bytes(forged)
    os.chown(directory / f"1-a{FINAL}", NOBODY, NOBODY)  # another user's file
    (tmp_path / "elsewhere").write_bytes(forged)
    (directory / f"1-b{FINAL}").symlink_to(tmp_path / "elsewhere")  # a link to a file outside
    os.mkfifo(directory / f"1-c{FINAL}")  # would block a plain open()
    (directory / f"1-d{FINAL}").write_bytes(b'{"group": "another-run", "metrics": []}')  # not this group's
    (directory / f"1-e{FINAL}").write_bytes(forged)  # ours

    read = {token: files.read_state(token, FINAL) for token in ("1-a", "1-b", "1-c", "1-d", "1-e")}

    assert read == {"1-a": None, "1-b": None, "1-c": None, "1-d": None, "1-e": {"group": group.key, "metrics": []}}
    base.close()


def test_nothing_outside_the_directory_is_removed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    base = PrivateDirectory.open(str(tmp_path / "mp"))
    group = base.child("run")
    (tmp_path / "mp" / "run" / "1-x.sock").symlink_to(outside)
    group.unlink("1-x.sock")
    base.remove("run")
    assert outside.read_text() == "keep"
    assert not (tmp_path / "mp" / "run").exists()
    base.close()


def test_sockets_work_whatever_the_length_of_the_directory_path(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 6)
    deep.parent.mkdir(parents=True)
    base = PrivateDirectory.open(str(deep))
    assert len(str(deep)) > 120  # longer than a unix socket address may be
    server = MemberServer(base.address(f"{os.getpid()}-x.sock"), lambda: base.unlink("x"), lambda: b"{}", lambda: False)
    try:
        assert fetch_state(base.address(f"{os.getpid()}-x.sock"), os.getpid(), 5.0) == {}
        # A socket named after another process is not that process's: its answer is not taken.
        assert fetch_state(base.address(f"{os.getpid()}-x.sock"), os.getpid() + 1, 5.0) is None
    finally:
        server.close()
        base.close()


ANSWERING = """
import os, socket, struct, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print(os.getpid(), flush=True)
while True:
    conn, _ = server.accept()
    conn.recv(1)
    body = b'{"group": "x", "metrics": []}'
    conn.sendall(struct.pack(">Q", len(body)) + body)
    conn.close()
"""


def test_a_socket_served_by_another_user_is_not_taken(shared_tmp: Path) -> None:
    require(os.geteuid() == 0 and shutil.which("runuser") is not None, "needs root and runuser for a second user")
    python = "/usr/bin/python3"  # the system's: the test's own interpreter may be in a directory of root's
    require(os.access(python, os.X_OK), "needs the system python3 for the other user")
    path = shared_tmp / "1-x.sock"
    server = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", python, "-c", ANSWERING, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(server.stdout.readline())  # type: ignore[union-attr]
        # The right pid, the wrong user: a process of another user is never asked for a member's state.
        assert fetch_state(str(path), pid, 5.0) is None
    finally:
        server.kill()
        server.wait(10)


def test_a_group_name_is_checked_when_configured() -> None:
    assert get_monitoring_config("test", env={"METRICS_MULTIPROCESS_GROUP": "billing-api"}).multiprocess_group == (
        "billing-api"
    )
    with pytest.raises(ConfigurationError, match="METRICS_MULTIPROCESS_GROUP"):
        get_monitoring_config("test", env={"METRICS_MULTIPROCESS_GROUP": "../etc"})
    with pytest.raises(ConfigurationError, match="multiprocess_group"):
        MonitoringConfig(multiprocess_group="a b")
