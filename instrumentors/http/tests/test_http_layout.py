"""The distribution's packaging: entry points named apart from contrib's, version in lockstep with the core."""

import doctest
import importlib
from importlib.metadata import distribution, entry_points

import pytest

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


@pytest.mark.parametrize("module", ["_settings", "_metrics", "asgi", "wsgi", "_django", "django_middleware"])
def test_docstring_examples_run(module: str) -> None:
    imported = importlib.import_module(f"chat_turbo_metrics_http.{module}")
    failed, attempted = doctest.testmod(imported, optionflags=doctest.ELLIPSIS)
    assert failed == 0
    assert attempted > 0 or module == "_django"
