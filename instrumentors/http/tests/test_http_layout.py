"""The distribution's packaging: entry points named apart from contrib's, version in lockstep with the core."""

from importlib.metadata import distribution, entry_points

import chat_turbo_metrics


def test_version_moves_in_lockstep_with_the_core() -> None:
    assert distribution("chat-turbo-metrics-http").version == chat_turbo_metrics.__version__


def test_entry_points_are_registered_under_names_contrib_does_not_use() -> None:
    group = entry_points(group="opentelemetry_instrumentor")
    ours = {ep.name: ep.value for ep in group if ep.dist is not None and ep.dist.name == "chat-turbo-metrics-http"}
    assert ours == {
        "chat_turbo_asgi": "chat_turbo_metrics_http.asgi:AsgiMetricsInstrumentor",
        "chat_turbo_wsgi": "chat_turbo_metrics_http.wsgi:WsgiMetricsInstrumentor",
        "chat_turbo_aiohttp_server": "chat_turbo_metrics_http.aiohttp_server:AiohttpServerInstrumentor",
        "chat_turbo_django_asgi": "chat_turbo_metrics_http.django_asgi:DjangoAsgiInstrumentor",
    }


def test_opentelemetry_instrument_loads_the_distribution_when_any_covered_library_is_installed() -> None:
    from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts

    dist = distribution("chat-turbo-metrics-http")
    declared = [r for r in dist.requires or [] if "instruments-any" in r]
    assert {r.split(";")[0].split(">=")[0].strip() for r in declared} == {"starlette", "flask", "django", "aiohttp"}
    assert get_dist_dependency_conflicts(dist) is None  # all four are installed here
