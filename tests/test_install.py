"""The README's install line, ``pip install '<checkout>[http]'``, in a clean virtual environment and offline.

The environment is new and holds none of our distributions; the third-party dependencies come from this test
environment's own copies (seen through a path file, so nothing is downloaded), and pip is told to use no index
and no configuration. What the extras name must therefore come from the checkout itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("chat_turbo_metrics", "pytest_chat_turbo_metrics", "_editable_impl_", "__editable__")


@pytest.fixture
def clean_venv(tmp_path: Path) -> Path:
    """A new virtual environment whose third-party packages are this one's, and none of ours."""
    pytest.importorskip("hatchling", reason="the test extra installs hatchling, to build without an index")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    dependencies = tmp_path / "dependencies"
    dependencies.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OURS) and entry.suffix != ".pth" and entry.name != "__pycache__":
            (dependencies / entry.name).symlink_to(entry)
    (Path(purelib) / "dependencies.pth").write_text(f"{dependencies}\n")
    return python


def pip_install(python: Path, requirement: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index, find-links or constraints from this machine's configuration
    offline = ["--no-index", "--no-build-isolation", "--no-cache-dir", "--disable-pip-version-check", "--quiet"]
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", *offline, requirement],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ("requirement", "distributions"),
    [
        # The two forms the README gives: a path on the command line, a direct reference in requirements.txt.
        (f"{ROOT}[http]", ["chat-turbo-metrics-http"]),
        (
            f"chat-turbo-metrics[all] @ {ROOT.as_uri()}",
            [f"chat-turbo-metrics-{name}" for name in ("http", "database", "cache", "system")],
        ),
    ],
    ids=["path-http", "reference-all"],
)
def test_the_checkout_installs_with_its_instrumentor_extras_offline(
    clean_venv: Path, requirement: str, distributions: list[str]
) -> None:
    done = pip_install(clean_venv, requirement)

    assert done.returncode == 0, done.stderr[-3000:]
    report = subprocess.run(
        [
            str(clean_venv),
            "-c",
            "import json, sys, importlib.metadata as m\n"
            "names = sys.argv[1:]\n"
            "found = {n: (m.version(n), str(m.distribution(n).locate_file(''))) for n in names}\n"
            "points = sorted(e.name for e in m.entry_points(group='opentelemetry_instrumentor'))\n"
            "print(json.dumps({'found': found, 'points': points, 'prefix': sys.prefix}))",
            "chat-turbo-metrics",
            *distributions,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    installed = json.loads(report.stdout)
    assert {name: version for name, (version, _) in installed["found"].items()} == dict.fromkeys(
        ["chat-turbo-metrics", *distributions], "0.1.0"
    )
    for _, where in installed["found"].values():  # installed into the new environment, not linked to the checkout
        assert where.startswith(installed["prefix"])
    assert {"chat_turbo_asgi", "chat_turbo_wsgi"} <= set(installed["points"])


def pytest_plugins_of(python: Path) -> list[list[str]]:
    """(name, value, distribution) of every ``pytest11`` entry point in the environment of ``python``."""
    report = subprocess.run(
        [
            str(python),
            "-c",
            "import json, importlib.metadata as m\n"
            "print(json.dumps(sorted([e.name, e.value, e.dist.name] for e in m.entry_points(group='pytest11'))))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [item for item in json.loads(report.stdout) if "chat" in item[0] or "chat" in item[1]]


def test_the_pytest_plugin_is_on_only_with_its_extra(clean_venv: Path) -> None:
    from importlib.metadata import distribution

    # The core declares no pytest plugin: installed alone, pytest sees nothing of ours.
    assert [point for point in distribution("chat-turbo-metrics").entry_points if point.group == "pytest11"] == []
    assert pytest_plugins_of(clean_venv) == []
    extra = pip_install(clean_venv, f"{ROOT}[pytest]")
    assert extra.returncode == 0, extra.stderr[-3000:]
    assert pytest_plugins_of(clean_venv) == [
        ["chat_turbo_metrics", "chat_turbo_metrics_pytest.plugin", "pytest-chat-turbo-metrics"]
    ]
