"""What the HTTP instrumentors can be told: excluded paths and which metric names to emit.

Read from code (keyword arguments) or from the environment, checked once at set-up time. A bad keyword argument
raises :class:`~chat_turbo_metrics.ConfigurationError` naming the setting and the value: the code calling is
wrong. A bad variable never stops the application (:func:`usable_settings`): it is logged once, naming the
variable, the value and the fix, and requests pass through unmeasured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chat_turbo_metrics import ConfigurationError
from chat_turbo_metrics_http import environment_variables
from chat_turbo_metrics_http.environment_variables import MetricNames, checked_paths, parse_metric_names

EXCLUDED_PATHS_VARIABLE = environment_variables.CHAT_TURBO_HTTP_EXCLUDED_PATHS
METRIC_NAMES_VARIABLE = environment_variables.CHAT_TURBO_HTTP_METRIC_NAMES
_logger = logging.getLogger("chat_turbo_metrics_http")
# Bad variables already logged: the ASGI and WSGI instrumentors (and any middleware) read the same ones.
_reported: set[str] = set()


class VariableError(ConfigurationError):
    """A variable of the environment (not an argument of the code) has a bad value."""


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
            (``http.server.request.duration``, ...) or ``both``; None: what
            :func:`chat_turbo_metrics.instrumentation.semconv_mode` says for ``http`` when the middleware binds
            to its monitor (``OTEL_SEMCONV_STABILITY_OPT_IN``, a config file or ``configure()``).
    """

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    metric_names: MetricNames | None = None

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
            metric_names: ``seed``, ``semconv`` or ``both``. Default: ``CHAT_TURBO_HTTP_METRIC_NAMES``, else the
                monitor's ``semconv_stability_opt_in`` (``OTEL_SEMCONV_STABILITY_OPT_IN``), asked when binding.
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
        try:
            paths = checked_paths(excluded_paths)
        except ValueError as error:
            raise _error(source, f"{source}: {error}") from None
        names_source = "metric_names"
        if metric_names is None:
            metric_names, names_source = env.get(METRIC_NAMES_VARIABLE, ""), METRIC_NAMES_VARIABLE
        try:
            names = parse_metric_names(metric_names)
        except ValueError as error:
            raise _error(names_source, f"{names_source}: {error}") from None
        return cls(
            exact=frozenset(path for path in paths if not path.endswith("*")),
            prefixes=tuple(path[:-1] for path in paths if path.endswith("*")),
            metric_names=names,
        )

    def is_excluded(self, path: str) -> bool:
        """True when requests to ``path`` are not measured."""
        return path in self.exact or (bool(self.prefixes) and path.startswith(self.prefixes))


# A request to any path is excluded: what a middleware measures when its variables are bad.
MEASURE_NOTHING = HttpMetricsSettings(prefixes=("",))


def _error(source: str, message: str) -> ConfigurationError:
    variable = source in (EXCLUDED_PATHS_VARIABLE, METRIC_NAMES_VARIABLE)
    return VariableError(message) if variable else ConfigurationError(message)


def usable_settings(
    excluded_paths: Iterable[str] | str | None, metric_names: str | None, environ: Mapping[str, str] | None
) -> HttpMetricsSettings | None:
    """:meth:`HttpMetricsSettings.from_options`, or None when a variable is bad (one error per process).

    Raises:
        ConfigurationError: a keyword argument is bad.
    """
    try:
        return HttpMetricsSettings.from_options(excluded_paths, metric_names, environ)
    except VariableError as error:
        if str(error) not in _reported:
            _reported.add(str(error))
            _logger.error(
                "chat_turbo_metrics_http not measuring: %s. Requests pass through unmeasured until the variable "
                "is fixed (or unset) and the process restarted.",
                error,
            )
        return None
