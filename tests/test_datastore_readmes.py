"""Every ```python block of the database, cache and system instrumentors' READMEs runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "instrumentors" / name / "README.md" for name in ("database", "cache", "system")]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
BLOCKS = [(readme, match.group(1)) for readme in READMES for match in BLOCK.finditer(readme.read_text("utf-8"))]


def test_every_readme_has_a_python_block() -> None:
    assert {readme for readme, _ in BLOCKS} == set(READMES)


@pytest.mark.parametrize(("readme", "code"), BLOCKS, ids=[readme.parent.name for readme, _ in BLOCKS])
def test_readme_python_block_runs(readme: Path, code: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(CHAT_TURBO_ENV="test"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{readme}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
