"""The README's settings tables and ``environment_variables.py`` are what the one declaration of settings gives.

``scripts/settings_docs.py`` writes both from the declared settings; these tests fail when either was edited by
hand or the declaration changed without rewriting them (run the script).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

from chat_turbo_metrics import environment_variables
from chat_turbo_metrics._core.config.export import OTLP_HEADERS
from chat_turbo_metrics._core.config.table import OTHER_VARIABLES, SECTIONS, SETTINGS, VARIABLES
from chat_turbo_metrics._core.otlp_headers import HEADER_VARIABLES

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_docs", ROOT / "scripts" / "settings_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs = _script()
README = (ROOT / "README.md").read_text()


def test_the_environment_variables_module_is_the_declared_one() -> None:
    assert Path(environment_variables.__file__).read_text() == docs.render_environment_variables()


def test_the_readme_tables_are_the_declared_ones() -> None:
    assert docs.render_readme(README) == README
    assert docs.main(["--check"]) == 0


def test_each_section_has_one_readme_table() -> None:
    assert sorted(docs.readme_sections(README)) == sorted(section.SECTION for section in SECTIONS)


def test_a_table_edited_by_hand_is_found_and_rewritten() -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `METRICS_PROMETHEUS_PORT`"))
    edited = README.replace(row, row.replace("`9464`", "`9465`"))
    assert edited != README
    assert docs.render_readme(edited) == README
    dropped = README.replace(row + "\n", "")
    assert docs.render_readme(dropped) == README


def test_every_variable_and_setting_is_in_a_readme_table_and_ours_in_the_module() -> None:
    tables = "".join(match["body"] for match in docs.REGION.finditer(README))
    for name in VARIABLES:
        assert f"`{name}`" in tables
    for item in SETTINGS:
        assert f"| `{item.name}` |" in tables
    constants = {key: value for key, value in vars(environment_variables).items() if key.isupper()}
    ours = {name for name in VARIABLES if not name.startswith("OTEL_")}
    ours |= {name for other in OTHER_VARIABLES if other.ours for name in other.names}
    assert constants == {name: name for name in ours}
    assert "CHAT_TURBO_CONFIG_DIR" in constants


def test_the_entry_point_module_imports_nothing() -> None:
    # opentelemetry-instrument loads it at start-up; it holds names, not code.
    tree = ast.parse(Path(environment_variables.__file__).read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def test_the_declared_otlp_header_variables_are_those_the_otlp_check_reads() -> None:
    assert set(OTLP_HEADERS.names) == {name for names in HEADER_VARIABLES.values() for name in names}
