"""The README's pytest-plugin example is a test module: run through pytest with the plugin, its tests pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import clean_env
from test_readme import python_blocks


def test_the_readme_test_module_passes_under_pytest(tmp_path: Path) -> None:
    (block,) = [code for _, code in python_blocks() if code.startswith("# test_orders.py")]
    (tmp_path / "test_orders.py").write_text(block, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "test_orders.py"],
        env=clean_env(CHAT_TURBO_ENV="test"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
