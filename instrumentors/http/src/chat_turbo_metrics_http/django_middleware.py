"""A Django middleware for those who add the measurement by hand instead of calling ``instrument()``.

Put it first in ``MIDDLEWARE`` so it sees every request and the time the others take::

    MIDDLEWARE = ["chat_turbo_metrics_http.django_middleware.DjangoMetricsMiddleware", ...]

Settings come from ``settings.CHAT_TURBO_HTTP`` (``{"excluded_paths": [...], "metric_names": "seed"}``), else
from ``CHAT_TURBO_HTTP_EXCLUDED_PATHS`` / ``CHAT_TURBO_HTTP_METRIC_NAMES``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chat_turbo_metrics_http._django import connect_errors, measure
from chat_turbo_metrics_http._metrics import RequestMetrics
from chat_turbo_metrics_http._settings import MEASURE_NOTHING, usable_settings


class DjangoMetricsMiddleware:
    """Measures every request of a Django project, with the route template Django resolved.

    Records what :class:`~chat_turbo_metrics_http.wsgi.WsgiMetricsMiddleware` records; requests are counted once
    even when ``WsgiMetricsInstrumentor`` is active too.

    Example:
        >>> middleware = DjangoMetricsMiddleware(lambda request: None)  # Django builds it from MIDDLEWARE
    """

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from django.conf import settings

        options = getattr(settings, "CHAT_TURBO_HTTP", {}) if settings.configured else {}
        self.get_response = get_response
        settings = usable_settings(options.get("excluded_paths"), options.get("metric_names"), None)
        self._metrics = RequestMetrics(settings or MEASURE_NOTHING, options.get("monitor"))  # None: bad variable
        connect_errors("chat_turbo_metrics_http.middleware")

    def __call__(self, request: Any) -> Any:
        return measure(self._metrics, self.get_response, request)
