"""OpenTelemetry metrics to Datadog v2 series (encoded JSON), the way Datadog's own OTel mapping does it.

Delta sums become counts (type 1) with an ``interval``; cumulative non-monotonic sums and gauges become gauges (type
3); a histogram becomes ``.count`` and ``.sum`` counts, ``.min`` and ``.max`` gauges and, when asked for,
``.bucket`` counts tagged ``lower_bound``/``upper_bound``. An exponential histogram becomes the same ``.count``,
``.sum``, ``.min`` and ``.max`` (Datadog's mapping also makes a sketch of its buckets, which only the agent's intake
takes, not the v2 series API); like explicit ones they arrive as deltas (the pipeline's delta conversion). The
resource gives the ``service``, ``env`` and ``version`` tags and the host; point attributes become ``key:value``
tags sanitized to Datadog's tag rules. NaN and infinities are never sent.

Each series is written straight to JSON: the tags of a data point are encoded once and shared by every
series made from it (a histogram point makes four or more); about a third cheaper than building a dict per
series and encoding each.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.resources import Resource

from chat_turbo_metrics._collection.walk import walk

_logger = logging.getLogger("chat_turbo_metrics.exporters.datadog")

COUNT, GAUGE = 1, 3
MAX_NAME = 200
MAX_TAG = 200
_NS = 1_000_000_000
_DELTA = AggregationTemporality.DELTA

# Datadog tags: lowercase; Unicode letters, digits and _ - : . / only, every other run becomes one "_";
# a tag starts with a letter and is at most 200 characters. (\w is letters, digits and "_" in Unicode.)
_TAG_INVALID = re.compile(r"[^\w\-:./]+")
_NAME_INVALID = re.compile(r"[^A-Za-z0-9_.]+")

# UCUM units (what OpenTelemetry instruments carry) to the names in Datadog's unit list; others are not sent
# (Datadog lists binary byte multiples only, so a decimal "MBy" goes without a unit rather than a wrong one).
_UNITS = {
    "ns": "nanosecond",
    "us": "microsecond",
    "ms": "millisecond",
    "s": "second",
    "min": "minute",
    "h": "hour",
    "d": "day",
    "wk": "week",
    "bit": "bit",
    "By": "byte",
    "KiBy": "kibibyte",
    "MiBy": "mebibyte",
    "GiBy": "gibibyte",
    "TiBy": "tebibyte",
    "PiBy": "pebibyte",
    "EiBy": "exbibyte",
    "%": "percent",
}

# Resource attribute -> Datadog's reserved tag key (the first attribute found wins).
_RESOURCE_TAGS = (
    ("service", ("service.name",)),
    ("env", ("deployment.environment.name", "deployment.environment")),
    ("version", ("service.version",)),
)

Series = bytes  # one series object, UTF-8 JSON
# One encoder for every call: json.dumps with options builds a new encoder each time.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ExtremeKey = tuple[str, tuple[str, ...]]
Extremes = dict[_ExtremeKey, tuple[float, float]]


@functools.lru_cache(maxsize=4096)  # a few names per instrument, asked for on every point of every export
def metric_name(name: str, suffix: str = "") -> str:
    """A Datadog metric name: ASCII letters, digits, ``_`` and ``.``, starting with a letter, ≤ 200 characters."""
    clean = _NAME_INVALID.sub("_", name)
    if not clean[:1].isalpha():
        clean = "m_" + clean
    return clean[: MAX_NAME - len(suffix)] + suffix


def _clean(text: str) -> str:
    return _TAG_INVALID.sub("_", text.lower())


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(_text(item) for item in value)
    return str(value)


def datadog_tag(key: str, value: object) -> str:
    """One ``key:value`` tag under Datadog's rules.

    A key that does not start with a letter gets the prefix ``attr_`` (nothing of it is lost); an empty
    value becomes ``n/a``, as Datadog's OTel mapping spells it.
    """
    clean_key = _clean(str(key)).replace(":", "_")  # Datadog splits key from value at the first colon
    if not clean_key[:1].isalpha():
        clean_key = "attr_" + clean_key
    # Datadog strips trailing underscores; doing it here keeps what we send equal to what it stores.
    clean_value = _clean(_text(value)).rstrip("_") or "n/a"
    return f"{clean_key}:{clean_value}"[:MAX_TAG]


def user_tag(tag: str) -> str:
    """A tag given whole (``DD_TAGS``): ``key:value`` or a bare ``value``, sanitized the same way."""
    key, sep, value = tag.partition(":")
    if sep:
        return datadog_tag(key, value)
    clean = _clean(tag)
    return (clean if clean[:1].isalpha() else "tag_" + clean)[:MAX_TAG]


def bound_text(bound: float) -> str:
    """Bucket bounds spelled as Datadog's OTel mapping spells them (``inf``, ``-inf``, ``5.0``, ``0.25``)."""
    if math.isinf(bound):
        return "inf" if bound > 0 else "-inf"
    if bound == 0:
        return "0"
    return f"{bound:.1f}" if bound == math.floor(bound) and abs(bound) < 1e16 else repr(bound)


def _finite(value: float | int) -> float | None:
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class MappingOptions:
    """What the exporter's settings add to every series."""

    service: str | None = None
    env: str | None = None
    version: str | None = None
    tags: tuple[str, ...] = ()
    host: str | None = None
    histogram_buckets: bool = False


class SeriesMapper:
    """Maps delta :class:`MetricsData` to v2 series; not thread-safe (one exporter's worker owns it).

    Histogram ``.min``/``.max`` are sent only when exact for the interval: the pipeline's data is
    cumulative, so the interval's extremes are known only when the cumulative minimum or maximum moved
    in it (or on a series' first export). The mapper remembers the extremes it last sent; call
    :meth:`commit` with the pending state once the series were delivered.

    Example:
        >>> mapper = SeriesMapper(MappingOptions(service="chat-api"))
        >>> series, pending = mapper.map(MetricsData(resource_metrics=[]))
        >>> series
        []
    """

    def __init__(self, options: MappingOptions, max_extremes: int = 100_000) -> None:
        """Args:
        options: tags and naming.
        max_extremes: histogram series whose last sent extremes are remembered (the least recently
            active are forgotten first; a forgotten series sends its cumulative min and max once more).
        """
        self._options = options
        self._max_extremes = max_extremes
        self._extra_tags = tuple(user_tag(tag) for tag in options.tags)
        self._tag_cache: dict[tuple[str, type, object], str] = {}
        self._extremes: Extremes = {}
        self.non_finite = 0
        self._warned: set[str] = set()

    def map(self, data: MetricsData) -> tuple[list[Series], Extremes]:
        """Return the series for ``data`` and the histogram extremes to :meth:`commit` on delivery."""
        series: list[Series] = []
        pending: Extremes = {}
        last: Resource | None = None
        base_tags: tuple[str, ...] = ()
        resources: str | None = None
        for found in walk(data):
            if found.resource is not last:  # computed once per resource
                last, (base_tags, resources) = found.resource, self._resource_context(found.resource)
            self._map_metric(found.metric, base_tags, resources, series, pending)
        return series, pending

    def commit(self, pending: Extremes) -> None:
        """Remember the histogram extremes of series that were delivered (bounded: least recently active out)."""
        extremes = self._extremes
        for key, value in pending.items():
            extremes.pop(key, None)  # re-inserted last: dict order is the order of last activity
            extremes[key] = value
        while len(extremes) > self._max_extremes:
            del extremes[next(iter(extremes))]

    # --- per resource and metric -------------------------------------------------------------

    def _resource_context(self, resource: Resource) -> tuple[tuple[str, ...], str | None]:
        attributes = resource.attributes
        options = self._options
        overrides = {"service": options.service, "env": options.env, "version": options.version}
        tags = []
        for tag_key, attribute_names in _RESOURCE_TAGS:
            value = overrides[tag_key] or next(
                (str(attributes[name]) for name in attribute_names if attributes.get(name)), None
            )
            if value:
                tags.append(datadog_tag(tag_key, value))
        host = options.host or attributes.get("host.name")
        resources = _ENCODER.encode([{"type": "host", "name": str(host)}]) if host else None
        return (*tags, *self._extra_tags), resources

    def _map_metric(
        self,
        metric: Metric,
        base_tags: tuple[str, ...],
        resources: str | None,
        out: list[Series],
        pending: Extremes,
    ) -> None:
        data = metric.data
        unit = _UNITS.get(metric.unit or "")
        if isinstance(data, Sum):
            if data.aggregation_temporality == _DELTA:
                kind = COUNT
            elif not data.is_monotonic:
                kind = GAUGE
            else:
                self._warn_once(metric.name, "a cumulative monotonic sum: the exporter prefers delta counters")
                return
            name = metric_name(metric.name)
            for point in data.data_points:
                self._emitter(out, point, base_tags, resources).emit(name, kind, point.value, unit)
        elif isinstance(data, Gauge):
            name = metric_name(metric.name)
            for point in data.data_points:
                self._emitter(out, point, base_tags, resources).emit(name, GAUGE, point.value, unit)
        elif isinstance(data, Histogram) and data.aggregation_temporality == _DELTA:
            for hpoint in data.data_points:
                self._map_histogram(
                    metric.name, hpoint, self._emitter(out, hpoint, base_tags, resources), unit, pending
                )
        elif isinstance(data, ExponentialHistogram) and data.aggregation_temporality == _DELTA:
            for epoint in data.data_points:
                emitter = _Emitter(self, out, epoint, self._tags(base_tags, epoint.attributes), resources)
                self._map_summary(metric.name, epoint, emitter, unit, pending)
        else:
            self._warn_once(metric.name, f"{type(data).__name__} data has no Datadog v2 series mapping")

    def _map_histogram(
        self, name: str, point: HistogramDataPoint, emitter: _Emitter, unit: str | None, pending: Extremes
    ) -> None:
        self._map_summary(name, point, emitter, unit, pending)
        if self._options.histogram_buckets:
            bucket_name = metric_name(name, ".bucket")
            bounds = [-math.inf, *point.explicit_bounds, math.inf]
            for index, count in enumerate(point.bucket_counts):
                bucket_tags = (
                    f"lower_bound:{bound_text(bounds[index])}",
                    f"upper_bound:{bound_text(bounds[index + 1])}",
                )
                emitter.emit(bucket_name, COUNT, count, None, bucket_tags)

    def _map_summary(
        self,
        name: str,
        point: HistogramDataPoint | ExponentialHistogramDataPoint,
        emitter: _Emitter,
        unit: str | None,
        pending: Extremes,
    ) -> None:
        """``.count`` and ``.sum`` counts; ``.min`` and ``.max`` gauges when they are the interval's own."""
        emitter.emit(metric_name(name, ".count"), COUNT, point.count, None)
        emitter.emit(metric_name(name, ".sum"), COUNT, point.sum, unit)
        key = (name, tuple(emitter.tags))
        before = self._extremes.get(key)
        if point.count:
            # Cumulative extremes only move when a new extreme was observed in the interval: then they are
            # the interval's own. Otherwise the interval's extreme is unknown and nothing is sent.
            if before is None or point.min < before[0]:
                emitter.emit(metric_name(name, ".min"), GAUGE, point.min, unit)
            if before is None or point.max > before[1]:
                emitter.emit(metric_name(name, ".max"), GAUGE, point.max, unit)
            pending[key] = (point.min, point.max)

    def _emitter(
        self,
        out: list[Series],
        point: NumberDataPoint | HistogramDataPoint,
        base_tags: tuple[str, ...],
        resources: str | None,
    ) -> _Emitter:
        return _Emitter(self, out, point, self._tags(base_tags, point.attributes), resources)

    def _tags(self, base_tags: tuple[str, ...], attributes: Mapping[str, Any] | None) -> list[str]:
        tags = list(base_tags)
        if attributes:
            cache = self._tag_cache
            for name, value in attributes.items():
                # The type is part of the key: True == 1, but they are the tags "true" and "1".
                kind = type(value)
                key = (name, kind, tuple(value) if kind is list else value)
                tag = cache.get(key)
                if tag is None:
                    if len(cache) > 100_000:  # bounded: attribute values may be high-cardinality
                        cache.clear()
                    tag = cache[key] = datadog_tag(name, value)
                tags.append(tag)
        return tags

    def _warn_once(self, name: str, why: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            _logger.warning("metric %s is not sent to Datadog: %s", name, why)


class _Emitter:
    """Appends the series of one data point: same timestamp, interval, tags and host."""

    __slots__ = ("_interval", "_mapper", "_out", "_resources", "_tags_json", "_timestamp", "tags")

    def __init__(
        self,
        mapper: SeriesMapper,
        out: list[Series],
        point: NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint,
        tags: list[str],
        resources: str | None,
    ) -> None:
        self._mapper = mapper
        self._out = out
        self._resources = f',"resources":{resources}' if resources else ""
        self._tags_json = _ENCODER.encode(tags)
        self._timestamp = point.time_unix_nano // _NS
        start = point.start_time_unix_nano  # None on gauge points; counts always have one
        self._interval = max(1, round((point.time_unix_nano - (start or point.time_unix_nano)) / _NS))
        self.tags = tags

    def emit(self, name: str, kind: int, value: float | int, unit: str | None, more_tags: tuple[str, ...] = ()) -> None:
        number = _finite(value)
        if number is None:
            self._mapper.non_finite += 1
            return
        # The name is ASCII letters, digits, "_" and "." (metric_name) and units come from a fixed table, so
        # neither needs escaping; repr of a finite float is valid JSON.
        tags = _ENCODER.encode([*self.tags, *more_tags]) if more_tags else self._tags_json
        interval = f',"interval":{self._interval}' if kind == COUNT else ""
        unit_json = f',"unit":"{unit}"' if unit else ""
        self._out.append(
            f'{{"metric":"{name}","type":{kind},"points":[{{"timestamp":{self._timestamp},"value":{number!r}}}]'
            f'{interval},"tags":{tags}{self._resources}{unit_json}}}'.encode()
        )
