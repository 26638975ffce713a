"""Layers that only point down: every import in ``src/`` goes to its own layer or to one below it.

Each top-level module or package of ``chat_turbo_metrics`` belongs to one *unit*, and the units are stacked in
:data:`LAYERS`, bottom first (``docs/architecture.md`` draws the same stack). Every import is read from the
source with :mod:`ast`: at module level, inside functions, under ``if TYPE_CHECKING:``, relative ones, and
``importlib.import_module("...")`` with a literal name. An import from one unit into another must point down;
units on the same line of :data:`LAYERS` are siblings and import neither each other. The test fails naming
each arrow that points up or sideways, and each cycle between units, and on a module that belongs to no unit.
The detector itself is tried on a small synthetic package, so that the check cannot pass by seeing nothing.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import chat_turbo_metrics

PACKAGE = "chat_turbo_metrics"
SRC = Path(chat_turbo_metrics.__file__).resolve().parent

# Bottom first. Units on one line are siblings: neither may import the other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),  # configuration, naming, value guards, fork registry, OpenTelemetry compat, secrets
    ("recording",),  # the fast path, the SDK path, handles
    ("collection",),  # producers -> one post-processing pass -> one walker
    ("pipeline",),  # provider, reader, fan-out, self-telemetry, exporter registry
    ("multiprocess",),  # the pre-fork merge, behind one interface to the endpoint it shares
    ("exporters", "alerting"),  # what reads collected data
    ("facade",),  # PerformanceMonitor, configure(), the helpers, the instrumentors' surface
    ("cli",),  # chat-turbo-metrics config | doctor | rules | demo
)
# The unit of each top-level module or package of chat_turbo_metrics ("__init__": the package itself).
UNITS: dict[str, str] = {
    "_core": "core",
    "environment_variables": "core",
    "_recording": "recording",
    "_collection": "collection",
    "_pipeline": "pipeline",
    "multiprocess": "multiprocess",
    "exporters": "exporters",
    "alerting": "alerting",
    "__init__": "facade",
    "_monitor": "facade",
    "_cache": "facade",
    "_database": "facade",
    "_snapshot": "facade",
    "_distro": "facade",
    "instrumentation": "facade",
    "_cli": "cli",
    "__main__": "cli",
}


@dataclass(frozen=True)
class Import:
    """One import statement: the importing module, its line, the module imported."""

    source: str
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def module_name(path: Path, root: Path, package: str) -> str:
    """The dotted name of ``path`` inside ``package`` (whose directory is ``root``)."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def _exists(module: str, root: Path, package: str) -> bool:
    relative = Path(*module.split(".")[1:]) if module != package else Path()
    return (root / relative).with_suffix(".py").is_file() or (root / relative / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(path: Path, root: Path, package: str) -> Iterator[Import]:
    """Every import of ``package``'s own modules in one file, wherever it stands in the file."""
    module = module_name(path, root, package)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            # ``from package import submodule`` imports the submodule; ``from package import name``, the package.
            targets = [
                f"{base}.{alias.name}" if _exists(f"{base}.{alias.name}", root, package) else base
                for alias in node.names
            ]
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                targets = [first.value]
        for target in targets:
            if target == package or target.startswith(package + "."):
                yield Import(module, node.lineno, target)


def _is_import_module(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def all_imports(root: Path, package: str) -> list[Import]:
    """Every import of the package's own modules, in every file of the package."""
    return [found for path in sorted(root.rglob("*.py")) for found in imports_of(path, root, package)]


def unit_of(module: str, package: str, units: Mapping[str, str]) -> str | None:
    """The unit a module belongs to (None: it belongs to none)."""
    top = module.split(".")[1] if "." in module else "__init__"
    return units.get(top)


def unplaced(root: Path, package: str, units: Mapping[str, str]) -> list[str]:
    """Modules of the package that belong to no unit."""
    names = [module_name(path, root, package) for path in sorted(root.rglob("*.py"))]
    return [name for name in names if unit_of(name, package, units) is None]


def wrong_arrows(
    found: Sequence[Import], package: str, units: Mapping[str, str], layers: Sequence[Sequence[str]]
) -> list[str]:
    """Each import from one unit into another that does not point down, said as the arrow it draws."""
    rank = {unit: level for level, line in enumerate(layers) for unit in line}
    wrong = []
    for each in found:
        source, target = unit_of(each.source, package, units), unit_of(each.target, package, units)
        if source is None or target is None or source == target:
            continue
        if rank[target] > rank[source]:
            wrong.append(f"{each}: {source} -> {target} points up")
        elif rank[target] == rank[source]:
            wrong.append(f"{each}: {source} -> {target} are siblings (neither imports the other)")
    return wrong


def cycles(found: Sequence[Import], package: str, units: Mapping[str, str]) -> list[str]:
    """Each group of units that import each other round in a circle, with the imports that close it."""
    edges: dict[str, dict[str, Import]] = {}
    for each in found:
        source, target = unit_of(each.source, package, units), unit_of(each.target, package, units)
        if source is not None and target is not None and source != target:
            edges.setdefault(source, {}).setdefault(target, each)
    groups = _strongly_connected(sorted(set(edges) | {t for targets in edges.values() for t in targets}), edges)
    said = []
    for group in groups:
        if len(group) > 1:
            members = sorted(group)
            closing = [str(edges[a][b]) for a in members for b in members if b in edges.get(a, {})]
            said.append(f"cycle between {' <-> '.join(members)}: " + "; ".join(closing))
    return said


def _strongly_connected(nodes: Sequence[str], edges: Mapping[str, Mapping[str, Import]]) -> list[set[str]]:
    """Tarjan's strongly connected components (the graphs here have a dozen nodes: recursion is fine)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in nodes:
        if node not in index:
            visit(node)
    return groups


# --- the package ------------------------------------------------------------------------------------


def test_every_module_belongs_to_a_layer() -> None:
    assert unplaced(SRC, PACKAGE, UNITS) == []
    assert set(UNITS.values()) == {unit for line in LAYERS for unit in line}


def test_every_import_points_down() -> None:
    assert wrong_arrows(all_imports(SRC, PACKAGE), PACKAGE, UNITS, LAYERS) == []


def test_no_cycle_between_units() -> None:
    assert cycles(all_imports(SRC, PACKAGE), PACKAGE, UNITS) == []


# --- the detector, on a synthetic package -----------------------------------------------------------

SYNTHETIC_UNITS = {"low": "low", "high": "high", "side": "side", "__init__": "top"}
SYNTHETIC_LAYERS = (("low",), ("high", "side"), ("top",))


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_detector_sees_every_kind_of_import(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "from pkg.high import thing\n",
            "low/__init__.py": "",
            "low/base.py": """\
                from __future__ import annotations
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from pkg.high.thing import Thing
                def late():
                    from ..high import thing
                    import importlib
                    importlib.import_module("pkg.side.other")
                    return thing
                """,
            "low/fine.py": "from . import base\nimport os\nfrom pkg.low.base import late\n",
            "high/__init__.py": "",
            "high/thing.py": "from pkg import low\nfrom pkg.low.base import late\nimport pkg.side.other\n",
            "side/__init__.py": "",
            "side/other.py": "X = 1\n",
            "stray.py": "",
        },
    )
    found = all_imports(root, "pkg")
    assert unplaced(root, "pkg", SYNTHETIC_UNITS) == ["pkg.stray"]
    assert wrong_arrows(found, "pkg", SYNTHETIC_UNITS, SYNTHETIC_LAYERS) == [
        "pkg.high.thing:3 imports pkg.side.other: high -> side are siblings (neither imports the other)",
        "pkg.low.base:4 imports pkg.high.thing: low -> high points up",  # under TYPE_CHECKING
        "pkg.low.base:6 imports pkg.high.thing: low -> high points up",  # relative, inside a function
        "pkg.low.base:8 imports pkg.side.other: low -> side points up",  # importlib with a literal name
    ]
    assert cycles(found, "pkg", SYNTHETIC_UNITS) == [
        "cycle between high <-> low: pkg.high.thing:1 imports pkg.low; pkg.low.base:4 imports pkg.high.thing"
    ]


def test_the_detector_passes_a_package_that_only_points_down(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "from pkg.high.thing import THING\nfrom pkg.side import other\n",
            "low/__init__.py": "from pkg.low.base import BASE\n",
            "low/base.py": "BASE = 1\n",
            "high/__init__.py": "",
            "high/thing.py": "from ..low import BASE\nTHING = BASE\n",
            "side/__init__.py": "",
            "side/other.py": "def f():\n    from pkg.low import base\n    return base\n",
        },
    )
    found = all_imports(root, "pkg")
    assert len(found) == 5
    assert unplaced(root, "pkg", SYNTHETIC_UNITS) == []
    assert wrong_arrows(found, "pkg", SYNTHETIC_UNITS, SYNTHETIC_LAYERS) == []
    assert cycles(found, "pkg", SYNTHETIC_UNITS) == []
