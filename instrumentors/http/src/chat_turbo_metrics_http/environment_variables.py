"""Environment variables read by the HTTP instrumentors (also ``opentelemetry-instrument --flags``).

A bad value never stops the application: one error per process names the variable and the value, and requests
pass through unmeasured.
"""

CHAT_TURBO_HTTP_EXCLUDED_PATHS = "CHAT_TURBO_HTTP_EXCLUDED_PATHS"
"""Comma-separated paths (``/health``) or prefixes (``/static/*``) never measured."""

CHAT_TURBO_HTTP_METRIC_NAMES = "CHAT_TURBO_HTTP_METRIC_NAMES"
"""``seed`` (default), ``semconv`` or ``both``: which metric names the HTTP instrumentors emit."""
