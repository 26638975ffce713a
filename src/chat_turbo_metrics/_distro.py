"""``opentelemetry-instrument`` integration: the distro and configurator entry points.

OpenTelemetry's private configurator base class comes from :mod:`chat_turbo_metrics._core.compat`. The
configurator builds exactly the pipeline that :func:`chat_turbo_metrics.configure` builds: it
calls it.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]

from chat_turbo_metrics._core.compat import BaseConfigurator


class ChatTurboDistro(BaseDistro):  # type: ignore[misc]
    """Selects the chat_turbo_metrics configurator unless the user picked another one."""

    def _configure(self, **kwargs: Any) -> None:
        # Upstream picks "the first configurator found" otherwise, which depends on install order.
        os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", "chat_turbo_metrics")


class ChatTurboConfigurator(BaseConfigurator):
    """Builds the process-wide pipeline from the environment, like ``chat_turbo_metrics.configure()``."""

    def _configure(self, **kwargs: Any) -> None:
        from chat_turbo_metrics._monitor import start_from_environment

        # Not strict: an unknown or uninstalled exporter is reported and the rest still starts. A bad setting
        # is logged once and leaves monitoring off; the instrumentors then pass requests through unmeasured.
        start_from_environment()
