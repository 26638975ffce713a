"""What the HTTP instrumentors can be told: excluded paths and which metric names to emit.

Read from code (keyword arguments) or from the environment, checked once at set-up time: a bad value raises
:class:`~chat_turbo_metrics.ConfigurationError` naming the setting and the value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from chat_turbo_metrics import ConfigurationError

MetricNames = Literal["seed", "semconv", "both"]
METRIC_NAMES: tuple[MetricNames, ...] = ("seed", "semconv", "both")
EXCLUDED_PATHS_VARIABLE = "CHAT_TURBO_HTTP_EXCLUDED_PATHS"
METRIC_NAMES_VARIABLE = "CHAT_TURBO_HTTP_METRIC_NAMES"


@dataclass(frozen=True)
class HttpMetricsSettings:
    """Excluded paths and metric names of the HTTP instrumentors.

    Example:
        >>> settings = HttpMetricsSettings.from_options(excluded_paths=["/metrics", "/static/*"])
        >>> settings.is_excluded("/static/app.css"), settings.is_excluded("/api")
        (True, False)

    Args:
        exact: paths never measured.
        prefixes: path prefixes never measured (given as ``/prefix/*``).
        metric_names: ``seed`` (``http_request_duration_seconds``, ...), ``semconv``
            (``http.server.request.duration``, ...) or ``both``.
    """

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    metric_names: MetricNames = "seed"

    @classmethod
    def from_options(
        cls,
        excluded_paths: Iterable[str] | str | None = None,
        metric_names: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> HttpMetricsSettings:
        """Settings from keyword arguments, falling back to the environment for what is not given.

        Args:
            excluded_paths: paths (``/health``) or prefixes (``/static/*``); a string is split at commas.
                Default: ``CHAT_TURBO_HTTP_EXCLUDED_PATHS``, else none.
            metric_names: ``seed``, ``semconv`` or ``both``. Default: ``CHAT_TURBO_HTTP_METRIC_NAMES``, else ``seed``.
            environ: the environment to read (default ``os.environ``).

        Returns:
            The checked settings.

        Raises:
            ConfigurationError: a path does not start with ``/``, or ``metric_names`` is not one of the three.
        """
        env = os.environ if environ is None else environ
        source = "excluded_paths"
        if excluded_paths is None:
            excluded_paths, source = env.get(EXCLUDED_PATHS_VARIABLE, ""), EXCLUDED_PATHS_VARIABLE
        if isinstance(excluded_paths, str):
            excluded_paths = excluded_paths.split(",")
        paths = [str(path).strip() for path in excluded_paths]
        paths = [path for path in paths if path]
        for path in paths:
            if not path.startswith("/"):
                raise ConfigurationError(f"{source}: {path!r} is not a path (it must start with '/')")
        names_source = "metric_names"
        if metric_names is None:
            metric_names, names_source = env.get(METRIC_NAMES_VARIABLE, "seed"), METRIC_NAMES_VARIABLE
        names = metric_names.strip().lower()
        if names not in METRIC_NAMES:
            raise ConfigurationError(f"{names_source}: {metric_names!r} is not one of {', '.join(METRIC_NAMES)}")
        return cls(
            exact=frozenset(path for path in paths if not path.endswith("*")),
            prefixes=tuple(path[:-1] for path in paths if path.endswith("*")),
            metric_names=names,
        )

    def is_excluded(self, path: str) -> bool:
        """True when requests to ``path`` are not measured."""
        return path in self.exact or (bool(self.prefixes) and path.startswith(self.prefixes))
