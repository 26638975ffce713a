"""Every ```python block of README.md and of each instrumentor's README runs as written, so the documentation
cannot drift from the code.

Each block runs on its own in a fresh interpreter, in an empty working directory, with the environment a
test run gets: ``CHAT_TURBO_ENV=test`` (``configs/test.toml``: no exporters, so nothing binds port 9464)
and no other monitoring variables. That is the whole prelude; a block defines everything else it uses.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INSTRUMENTOR_READMES = sorted((ROOT / "instrumentors").glob("*/README.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(readme: Path = README) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block of ``readme``."""
    text = readme.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start()) + 2, match.group(1)) for match in BLOCK.finditer(text)]


BLOCKS = [(readme, line, code) for readme in (README, *INSTRUMENTOR_READMES) for line, code in python_blocks(readme)]


def test_readme_has_python_blocks() -> None:
    # The parametrized test below would pass vacuously if the pattern stopped matching.
    assert len(python_blocks()) >= 2


def test_every_instrumentor_readme_has_a_python_block() -> None:
    found = {path.parent.name for path in INSTRUMENTOR_READMES}
    assert found == {"cache", "celery", "database", "http", "http_client", "pytest", "system"}
    assert {readme for readme, _, _ in BLOCKS} >= set(INSTRUMENTOR_READMES)


@pytest.mark.parametrize(
    ("readme", "line", "code"),
    BLOCKS,
    ids=[f"{readme.relative_to(ROOT).parent}:line{line}" for readme, line, _ in BLOCKS],
)
def test_readme_python_block_runs(readme: Path, line: int, code: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(CHAT_TURBO_ENV="test"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{readme.relative_to(ROOT)} line {line}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
