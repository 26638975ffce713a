"""``opentelemetry-instrument`` integration: the distro and configurator entry points.

OpenTelemetry's private configurator base class comes from :mod:`chat_turbo_metrics._pipeline.compat`. The
configurator builds exactly the pipeline that :func:`chat_turbo_metrics.configure` builds: it
calls it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]

from chat_turbo_metrics._config import ConfigurationError
from chat_turbo_metrics._pipeline.compat import BaseConfigurator

_logger = logging.getLogger("chat_turbo_metrics.distro")


class ChatTurboDistro(BaseDistro):  # type: ignore[misc]
    """Selects the chat_turbo_metrics configurator unless the user picked another one."""

    def _configure(self, **kwargs: Any) -> None:
        # Upstream picks "the first configurator found" otherwise, which depends on install order.
        os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", "chat_turbo_metrics")


class ChatTurboConfigurator(BaseConfigurator):
    """Builds the process-wide pipeline from the environment, like ``chat_turbo_metrics.configure()``."""

    def _configure(self, **kwargs: Any) -> None:
        from chat_turbo_metrics._monitor import configure

        try:
            # Not strict: an unknown or uninstalled exporter is reported and the rest still starts.
            configure(strict=False)
        except ConfigurationError as error:
            _logger.error("chat_turbo_metrics not started: %s", error)
