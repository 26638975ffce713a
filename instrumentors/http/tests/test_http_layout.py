"""The distribution's packaging: entry points named apart from contrib's, version in lockstep with the core."""

import os
import re
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

import chat_turbo_metrics


def test_version_moves_in_lockstep_with_the_core() -> None:
    assert distribution("chat-turbo-metrics-http").version == chat_turbo_metrics.__version__


def test_entry_points_are_registered_under_names_contrib_does_not_use() -> None:
    group = entry_points(group="opentelemetry_instrumentor")
    ours = {ep.name: ep.value for ep in group if ep.dist is not None and ep.dist.name == "chat-turbo-metrics-http"}
    assert ours == {
        "chat_turbo_asgi": "chat_turbo_metrics_http.asgi:AsgiMetricsInstrumentor",
        "chat_turbo_wsgi": "chat_turbo_metrics_http.wsgi:WsgiMetricsInstrumentor",
    }


def test_readme_python_blocks_run(tmp_path: Path) -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"^```python\n(.*?)^```", readme.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert blocks  # would pass vacuously if the pattern stopped matching
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "CHAT_"))}
    for code in blocks:
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "CHAT_TURBO_ENV": "test"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_opentelemetry_instrument_loads_the_distribution_when_any_covered_library_is_installed() -> None:
    from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts

    dist = distribution("chat-turbo-metrics-http")
    declared = [r for r in dist.requires or [] if "instruments-any" in r]
    assert {r.split(";")[0].split(">=")[0].strip() for r in declared} == {"starlette", "flask", "django"}
    assert get_dist_dependency_conflicts(dist) is None  # all three are installed here
