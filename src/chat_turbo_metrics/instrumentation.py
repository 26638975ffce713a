"""What an instrumentor distribution builds on: the names and helpers the core shares with its instrumentors.

The instrumentors under ``instrumentors/`` (HTTP, database, cache) are distributions of their own that record
through the monitor's front end. What they need beyond :class:`~chat_turbo_metrics.PerformanceMonitor`'s public
methods is here, and only here, so that the core can reorganise its private modules without breaking them
(``tests/test_instrumentation_surface.py`` checks that no instrumentor imports a private core module). The
instrumentors are released with the core at the same version; a name here changes only with a changelog entry.

- :class:`Problems`: counts dropped recordings per cause and logs the first of each cause, for an instrumentor's
  own checks (a hook that fails, a value it cannot use), so that they show in ``monitor.dropped`` like the core's.
- :func:`bundle_produced`: one call that records one event into several bound handles, for values the
  instrumentor produced itself and knows to be valid (a ``perf_counter`` difference, a ``len()`` sum); use
  :meth:`~chat_turbo_metrics.PerformanceMonitor.bundle` for any other value.
- :data:`FLOAT_MAX`: the bound below which such a value must stay.
- :data:`CACHE_HITS`, :data:`CACHE_MISSES`: the counters the cache hit ratio is derived from at collection.
- :data:`DATABASE_QUERY_DURATION`: the histogram of database query durations.
- :func:`strip_literals`, :class:`StatementClassifier`: SQL text without its literal values, and the bounded
  operation/table labels of a statement.
- :class:`EnvironmentVariable`: a variable the instrumentor reads, declared (as a constant of its
  ``opentelemetry_environment_variables`` module) with the check of its value, so that
  ``chat-turbo-metrics config`` shows and checks it with the core's settings.
- :func:`semconv_mode`, :class:`SemconvMode`: which names an instrumentor emits for a signal (``http``,
  ``database``): the seed's, the semantic conventions' or both, from ``OTEL_SEMCONV_STABILITY_OPT_IN`` (read as
  OpenTelemetry's instrumentations read it) or the ``semconv_stability_opt_in`` setting of the monitor's
  configuration. Every instrumentor asks here; none parses the variable itself.
- :class:`MetricDefinition`, :func:`define_metrics`: semantic-convention metrics whose names carry no unit
  (:data:`DB_CLIENT_OPERATION_DURATION`, :data:`DB_CLIENT_CONNECTION_COUNT`, :data:`HTTP_CLIENT_REQUEST_DURATION`),
  declared on a monitor with their unit, description and the conventions' buckets before first use.
- :func:`prometheus_label`: the Prometheus label name of an attribute key (``http.route`` -> ``http_route``), as
  the OpenTelemetry-Prometheus compatibility specification maps it.
- :func:`when_imported`: patch a library when the application imports it (at once if it already has), so that
  ``opentelemetry-instrument`` loads no library the application does not use; returns the undo.
- :func:`register_after_fork`: repair an instrumentor's own state in a forked child, in the core's one fork
  registry (never ``os.register_at_fork`` directly: ``tests/_core/test_forks.py`` checks it).

Example:
    >>> from chat_turbo_metrics.instrumentation import StatementClassifier, strip_literals
    >>> strip_literals("SELECT * FROM users WHERE email = 'a@example.com' AND id = 42")
    'SELECT * FROM users WHERE email = ? AND id = ?'
    >>> StatementClassifier().classify("UPDATE orders SET paid = true WHERE id = 7")
    ('update', 'orders')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from chat_turbo_metrics._collection.ratio import HITS as CACHE_HITS
from chat_turbo_metrics._collection.ratio import MISSES as CACHE_MISSES
from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.config.instrumentor_variables import EnvironmentVariable
from chat_turbo_metrics._core.guard import FLOAT_MAX, Problems
from chat_turbo_metrics._core.imports import when_imported
from chat_turbo_metrics._core.naming import prometheus_label
from chat_turbo_metrics._core.semconv import (
    DB_CLIENT_CONNECTION_COUNT,
    DB_CLIENT_OPERATION_DURATION,
    HTTP_CLIENT_REQUEST_DURATION,
    SEMCONV_STABILITY_OPT_IN,
    MetricDefinition,
    SemconvMode,
    Signal,
    opt_in_mode,
    parse_opt_in,
)
from chat_turbo_metrics._core.sql import StatementClassifier, strip_literals
from chat_turbo_metrics._database import QUERY_DURATION as DATABASE_QUERY_DURATION
from chat_turbo_metrics._monitor import PerformanceMonitor
from chat_turbo_metrics._recording.bundle import bundle_produced

__all__ = [
    "CACHE_HITS",
    "CACHE_MISSES",
    "DATABASE_QUERY_DURATION",
    "DB_CLIENT_CONNECTION_COUNT",
    "DB_CLIENT_OPERATION_DURATION",
    "FLOAT_MAX",
    "HTTP_CLIENT_REQUEST_DURATION",
    "SEMCONV_STABILITY_OPT_IN",
    "EnvironmentVariable",
    "MetricDefinition",
    "Problems",
    "SemconvMode",
    "StatementClassifier",
    "bundle_produced",
    "define_metrics",
    "prometheus_label",
    "register_after_fork",
    "semconv_mode",
    "strip_literals",
    "when_imported",
]


def register_after_fork(repair: Callable[[], None]) -> None:
    """Call ``repair()`` in every child forked from now on, with the pipeline's own repairs (kept for good).

    It runs after the core has freed the locks a thread of the parent held and before the child's threads
    restart; an exception from it is logged and the other repairs still run.

    Args:
        repair: a function with no arguments, e.g. one that resets an instrumentor's readings.
    """
    forks.register_function(repair, forks.Phase.PIPELINE)


def semconv_mode(
    signal: Signal, monitor: PerformanceMonitor | None = None, *, environ: Mapping[str, str] | None = None
) -> SemconvMode:
    """The names an instrumentor emits for ``signal``: the seed's, the semantic conventions' or both.

    With a monitor, its configuration decides (``semconv_stability_opt_in``: from ``OTEL_SEMCONV_STABILITY_OPT_IN``,
    a ``configs/*.toml`` file or ``configure()``); ask when the instrumentor binds to the monitor it records
    into, and again when ``configure()`` replaces that monitor's recorder. Without one, the environment
    (``environ``, default ``os.environ``) decides, read the same way. Unknown tokens never raise: the variable
    is shared with OpenTelemetry's own instrumentations, which read tokens of their own from it.

    Args:
        signal: ``"http"`` or ``"database"`` (a cache client is a database client: Redis uses ``"database"``).
        monitor: the monitor the instrumentor records into.
        environ: the environment to read when no monitor is given.

    Returns:
        :class:`SemconvMode`: ``.seed`` and ``.semconv`` say which sets to emit.

    Example:
        >>> semconv_mode("http", environ={"OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup,database"})
        <SemconvMode.BOTH: 'both'>
        >>> semconv_mode("database", environ={"OTEL_SEMCONV_STABILITY_OPT_IN": "database"}).semconv
        True
        >>> semconv_mode("database", environ={})
        <SemconvMode.SEED: 'seed'>
    """
    if monitor is not None:
        return opt_in_mode(monitor.config.semconv_stability_opt_in, signal)
    env = os.environ if environ is None else environ
    return opt_in_mode(parse_opt_in(env.get(SEMCONV_STABILITY_OPT_IN, "")), signal)


_logger = logging.getLogger("chat_turbo_metrics.instrumentation")


def define_metrics(monitor: PerformanceMonitor, *definitions: MetricDefinition) -> None:
    """Declare ``definitions`` on ``monitor`` (unit, description, buckets); call it again when ``configure()``
    gives the monitor a new recorder. A metric the application declared its own way first keeps its definition.

    Example:
        >>> define_metrics(monitor, DB_CLIENT_OPERATION_DURATION)
        >>> monitor.record_histogram("db.client.operation.duration", 0.003, {"db.system.name": "sqlite"})
        >>> [(r["name"], r["unit"]) for r in monitor.snapshot().records()]
        [('db.client.operation.duration', 's')]
    """
    for item in definitions:
        try:
            monitor.define(item.name, item.kind, unit=item.unit, description=item.description, buckets=item.buckets)
        except ValueError as error:  # the application defined it its own way first: keep theirs
            _logger.debug("keeping the application's definition of %s: %s", item.name, error)
