"""HTTP metrics for Django served by an ASGI server (uvicorn, daphne): ``chat_turbo_django_asgi``.

Django under WSGI is ``chat_turbo_wsgi``'s (``BaseHandler.get_response``); under ASGI Django calls
``BaseHandler.get_response_async``, which this instrumentor measures with the same route templates
(``request.resolver_match.route``), the same error names and streaming responses measured to their last chunk.
``instrument()`` does not import Django: ``BaseHandler`` is patched when Django loads it (its ASGI handler does).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics.instrumentation import when_imported
from chat_turbo_metrics_http._metrics import RequestMetrics
from chat_turbo_metrics_http._settings import usable_settings


class DjangoAsgiInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Measures every Django project served through ASGI: entry point ``chat_turbo_django_asgi``.

    Example:
        >>> DjangoAsgiInstrumentor().instrument(excluded_paths=["/health"])
        >>> DjangoAsgiInstrumentor().uninstrument()

    ``instrument()`` takes ``excluded_paths``, ``metric_names`` and ``monitor``; under ``opentelemetry-instrument``
    they come from ``CHAT_TURBO_HTTP_EXCLUDED_PATHS`` and ``CHAT_TURBO_HTTP_METRIC_NAMES``.
    """

    _undo: list[Callable[[], None]] = []  # noqa: RUF012 - what uninstrument() restores

    def instrumentation_dependencies(self) -> Collection[str]:
        """Django (3.2 and later run requests through ``get_response_async`` under ASGI)."""
        return ("django >= 3.2",)

    def _instrument(self, **kwargs: Any) -> None:
        settings = usable_settings(kwargs.get("excluded_paths"), kwargs.get("metric_names"), kwargs.get("environ"))
        if settings is None:  # a bad variable, logged: Django is left as it is
            return
        from chat_turbo_metrics_http._django import HANDLER_MODULE, patch_django_asgi  # not Django

        metrics = RequestMetrics(settings, kwargs.get("monitor"))
        DjangoAsgiInstrumentor._undo.append(when_imported(HANDLER_MODULE, lambda base: patch_django_asgi(metrics)))

    def _uninstrument(self, **kwargs: Any) -> None:
        while DjangoAsgiInstrumentor._undo:
            DjangoAsgiInstrumentor._undo.pop()()
