"""Environment variables read by the HTTP instrumentors (the ``opentelemetry_environment_variables`` entry point).

Each is declared with the check of its value, so ``chat-turbo-metrics config`` refuses a bad one as it refuses a
bad core setting. In the application a bad value never stops anything: one error per process names the variable
and the value, and requests pass through unmeasured.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from chat_turbo_metrics.instrumentation import EnvironmentVariable

MetricNames = Literal["seed", "semconv", "both"]
METRIC_NAMES: tuple[MetricNames, ...] = ("seed", "semconv", "both")


def checked_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """Paths and ``/prefix/*`` patterns, blanks dropped; ValueError for one that does not start with ``/``."""
    found = tuple(path for path in (str(item).strip() for item in paths) if path)
    for path in found:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not a path (it must start with '/')")
    return found


def parse_metric_names(text: str) -> MetricNames | None:
    """``seed``, ``semconv`` or ``both`` (any case, blanks around ignored); None for blank (not chosen here)."""
    if not text.strip():
        return None
    for names in METRIC_NAMES:
        if text.strip().lower() == names:
            return names
    raise ValueError(f"{text!r} is not one of {', '.join(METRIC_NAMES)}")


CHAT_TURBO_HTTP_EXCLUDED_PATHS = EnvironmentVariable(
    "CHAT_TURBO_HTTP_EXCLUDED_PATHS",
    parse=lambda text: checked_paths(text.split(",")),
)
"""Comma-separated paths (``/health``) or prefixes (``/static/*``) never measured."""

CHAT_TURBO_HTTP_METRIC_NAMES = EnvironmentVariable(
    "CHAT_TURBO_HTTP_METRIC_NAMES",
    parse=parse_metric_names,
)
"""``seed``, ``semconv`` or ``both``: which metric names the HTTP instrumentors emit. An alias of
``OTEL_SEMCONV_STABILITY_OPT_IN``'s HTTP part (``semconv`` is ``http``, ``both`` is ``http/dup``) that wins over
it when set; unset, the monitor's ``semconv_stability_opt_in`` decides (the seed's names unless opted in)."""
