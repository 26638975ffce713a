"""Metric names: the seed's names, OpenTelemetry instrument names and units, Prometheus names.

The user's name is the instrument name (``http_request_duration_seconds`` stays that in OTLP and Datadog);
the unit is inferred from a documented suffix. A timer ``api_request`` becomes the histogram
``api_request_duration`` with unit ``s``. Prometheus adds the unit suffix and ``_total`` only when the
name does not already end with them, so every seed name shows up in a scrape exactly as documented.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from chat_turbo_metrics._core.compat import prometheus_unit_suffix

Kind = Literal["counter", "updowncounter", "gauge", "histogram"]

# OTel instrument name syntax (API spec): a letter, then up to 254 of [A-Za-z0-9_.-/].
_INSTRUMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/]{0,254}\Z")
_PROM_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_LABEL_UNDERSCORES = re.compile(r"__+")

# (name suffix, UCUM unit): the suffixes the seed's metric names use.
_SUFFIX_UNITS: tuple[tuple[str, str], ...] = (
    ("_seconds", "s"),
    ("_milliseconds", "ms"),
    ("_ms", "ms"),
    ("_bytes", "By"),
    ("_mb", "MBy"),
    ("_percent", "%"),
)
# UCUM unit -> Prometheus suffix. "MBy" keeps the seed's short "_mb" rather than upstream's "megabytes".
_PROM_UNITS: dict[str, str] = {
    "s": "seconds",
    "ms": "milliseconds",
    "By": "bytes",
    "MBy": "mb",
    "%": "percent",
    "1": "",
}

# Semantic-convention bucket advice (HTTP server and database client duration histograms).
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DB_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
# Cache commands answer in well under a millisecond; the DB buckets would put them all in the first one.
CACHE_DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


@dataclass(frozen=True)
class KnownMetric:
    """What the seed documents about one of its metric names."""

    kind: Kind
    description: str
    buckets: tuple[float, ...] | None = None


# The seed's "Metrics Types" section, with HELP texts and bucket advice.
KNOWN_METRICS: dict[str, KnownMetric] = {
    "messages_sent": KnownMetric("counter", "Messages sent, by channel."),
    "api_requests": KnownMetric("counter", "API requests handled."),
    "errors": KnownMetric("counter", "Errors raised while handling work."),
    "active_connections": KnownMetric("gauge", "Connections currently open."),
    "memory_usage_mb": KnownMetric("gauge", "Resident memory of the process in megabytes."),
    "cpu_usage_percent": KnownMetric("gauge", "CPU used by the process, in percent of one core."),
    "http_request_duration_seconds": KnownMetric(
        "histogram", "Duration of HTTP requests handled by the server.", HTTP_DURATION_BUCKETS
    ),
    "database_query_duration_seconds": KnownMetric("histogram", "Duration of database queries.", DB_DURATION_BUCKETS),
    # Recorded by the datastore instrumentors (instrumentors/database, instrumentors/cache).
    "cache_hits": KnownMetric("counter", "Cache lookups that found their entry, by cache."),
    "cache_misses": KnownMetric("counter", "Cache lookups that did not find their entry, by cache."),
    "database_connections": KnownMetric("gauge", "Connections of a database pool, in use or idle."),
    "redis_command_duration_seconds": KnownMetric(
        "histogram", "Duration of Redis commands sent by redis-py.", CACHE_DURATION_BUCKETS
    ),
    "message_processing_time_seconds": KnownMetric(
        "histogram", "Time taken to process one message.", HTTP_DURATION_BUCKETS
    ),
    # The seed's examples: its custom histogram and its request timer (recordTimer('api_request', ...)).
    "message_size": KnownMetric("histogram", "Size of messages sent, in characters."),
    "api_request_duration": KnownMetric("histogram", "Duration of API requests, timed by the application."),
}


def is_valid_instrument_name(name: object) -> bool:
    """True when ``name`` is a string OpenTelemetry accepts as an instrument name."""
    return isinstance(name, str) and _INSTRUMENT_NAME.match(name) is not None


def counter_name(name: str) -> str:
    """Instrument name of a counter: a trailing ``_total`` is Prometheus's to add, not ours."""
    return name[: -len("_total")] if name.endswith("_total") and len(name) > len("_total") else name


def timer_name(name: str) -> str:
    """Instrument name of a timer: ``api_request`` -> ``api_request_duration`` (unit ``s``)."""
    if name.endswith(("_seconds", "_duration", "_time")):
        return name
    return f"{name}_duration"


def infer_unit(name: str) -> str:
    """The UCUM unit a documented name suffix implies, or ``""``."""
    for suffix, unit in _SUFFIX_UNITS:
        if name.endswith(suffix):
            return unit
    return ""


def describe(name: str, kind: Kind, unit: str) -> str:
    """A HELP text for an instrument nobody described."""
    known = KNOWN_METRICS.get(name)
    if known is not None:
        return known.description
    words = name.replace("_", " ").replace(".", " ")
    return f"{kind.capitalize()} {words}" + (f" ({unit})" if unit else "") + "."


def default_buckets(name: str, unit: str) -> tuple[float, ...] | None:
    """Bucket advice for a histogram: the seed's table, else semantic-convention advice for seconds."""
    known = KNOWN_METRICS.get(name)
    if known is not None and known.buckets is not None:
        return known.buckets
    if unit == "s":
        return DB_DURATION_BUCKETS if name.startswith(("db", "database")) else HTTP_DURATION_BUCKETS
    return None


def prometheus_name(name: str, unit: str, kind: Kind, monotonic: bool = True) -> str:
    """The Prometheus metric family name of an OTel metric (without ``_bucket``/``_sum`` sample suffixes)."""
    base = _PROM_INVALID.sub("_", name)
    if base[:1].isdigit():
        base = "_" + base
    is_counter = kind == "counter" and monotonic
    if is_counter and base.endswith("_total"):
        base = base[: -len("_total")]
    suffix = _PROM_UNITS[unit] if unit in _PROM_UNITS else prometheus_unit_suffix(unit)
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    return f"{base}_total" if is_counter else base


@functools.lru_cache(maxsize=4096)  # a few keys per metric, asked for on every series of every scrape
def prometheus_label(key: str) -> str:
    """A valid Prometheus label name for an attribute key, as OpenTelemetry's Prometheus compatibility spec
    maps it: each character Prometheus does not allow becomes ``_``, and a run of ``_`` becomes one.

    So no key becomes a label Prometheus reserves (``__name__`` -> ``_name_``); a leading digit gets a ``_``.

    Example:
        >>> prometheus_label("http.route"), prometheus_label("__name__"), prometheus_label("2xx")
        ('http_route', '_name_', '_2xx')
    """
    label = _LABEL_UNDERSCORES.sub("_", _LABEL_INVALID.sub("_", key))
    return "_" + label if label[:1].isdigit() or not label else label


def is_reserved_label(key: str) -> bool:
    """True when ``key``, with invalid characters made ``_``, would be a label Prometheus reserves (``__*``)."""
    return _LABEL_INVALID.sub("_", key[:2]).startswith("__")
