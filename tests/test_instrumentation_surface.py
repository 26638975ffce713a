"""The instrumentor distributions build on the core's public surface only (``chat_turbo_metrics.instrumentation``).

They are released as their own distributions, so a private core module they imported would tie them to the
core's internal layout. This reads every instrumentor source file and fails on any import of a private
``chat_turbo_metrics`` module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from chat_turbo_metrics import instrumentation

ROOT = Path(__file__).resolve().parents[1]


def _core_imports(source: Path) -> list[str]:
    """The ``chat_turbo_metrics`` modules ``source`` imports, in the order they appear."""
    found = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names if node.module == "chat_turbo_metrics")
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [name for name in found if name == "chat_turbo_metrics" or name.startswith("chat_turbo_metrics.")]


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split(".")[1:])


def test_instrumentors_import_no_private_core_module() -> None:
    sources = sorted(ROOT.glob("instrumentors/*/src/**/*.py"))
    assert len({source.parts[len(ROOT.parts) + 1] for source in sources}) >= 3  # http, database, cache
    imported = {source.relative_to(ROOT).as_posix(): _core_imports(source) for source in sources}
    assert any("chat_turbo_metrics.instrumentation" in names for names in imported.values())
    private = {path: [name for name in names if _private(name)] for path, names in imported.items()}
    assert {path: names for path, names in private.items() if names} == {}


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    source = tmp_path / "hook.py"
    source.write_text(
        "import chat_turbo_metrics\n"
        "from chat_turbo_metrics import _monitor, PerformanceMonitor\n"
        "from chat_turbo_metrics._core.guard import Problems\n"
        "from chat_turbo_metrics.instrumentation import Problems as P\n"
        "from . import sibling\n"
    )
    names = _core_imports(source)
    assert [name for name in names if _private(name)] == [
        "chat_turbo_metrics._monitor",
        "chat_turbo_metrics._core.guard",
    ]
    assert "chat_turbo_metrics.instrumentation" in names


def test_every_shared_name_resolves() -> None:
    assert sorted(instrumentation.__all__) == sorted(set(instrumentation.__all__))
    for name in instrumentation.__all__:
        assert getattr(instrumentation, name) is not None, name
    assert instrumentation.FLOAT_MAX > 1e308
    assert (instrumentation.CACHE_HITS, instrumentation.CACHE_MISSES) == ("cache_hits", "cache_misses")
    assert instrumentation.DATABASE_QUERY_DURATION == "database_query_duration_seconds"
