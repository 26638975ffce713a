"""Prometheus text exposition (format 0.0.4) of collected OpenTelemetry metrics.

One serializer for the snapshot API and the ``/metrics`` endpoint, so what a test reads from a snapshot
is byte for byte what Prometheus scrapes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Metric, MetricsData, Sum

from chat_turbo_metrics._collection.records import data_kind
from chat_turbo_metrics._collection.walk import resources, walk
from chat_turbo_metrics._core.naming import Kind, is_reserved_label, prometheus_label, prometheus_name

_logger = logging.getLogger("chat_turbo_metrics.exposition")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TYPES: dict[Kind, str] = {"counter": "counter", "updowncounter": "gauge", "gauge": "gauge", "histogram": "histogram"}


def metric_kind(metric: Metric) -> Kind:
    """The kind of a collected metric, from its data type (a kind Prometheus text has no type for is a gauge)."""
    kind = data_kind(metric.data)
    return kind if kind in _TYPES else "gauge"


def format_value(value: float) -> str:
    """A sample value the way Prometheus parses it (integers without a fraction, ``+Inf``, ``NaN``)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _label_value(value: object) -> str:
    # Non-string attribute values render JSON-style (true, 3, [..]) as the OTel-Prometheus spec asks.
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return json.dumps([v if isinstance(v, (str, bool, int, float)) else str(v) for v in value])
    return str(value)


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def label_text(attributes: Mapping[str, object] | None, family: str = "", *, histogram: bool = False) -> str:
    """``k1="v1",k2="v2"`` for an attribute mapping, keys sanitized and sorted.

    A key Prometheus reserves never reaches it: ``__name__`` and other ``__*`` keys lose their doubled
    ``_`` (:func:`prometheus_label`), and on a histogram a key ``le``, which the bucket lines add, becomes
    ``exported_le`` (Prometheus's own prefix for a scraped label that clashes with one it adds). Either took
    a real Prometheus's whole target down. Each such key is warned about once per ``family``.
    """
    if not attributes:
        return ""
    labels: dict[str, list[str]] = {}
    # Keys that sanitize to the same label (a.b, a_b) keep every value, joined with ";" in key order.
    for key in sorted(attributes):
        label = prometheus_label(key)
        if label[0] == "_" or (histogram and label in _HISTOGRAM_LABELS):
            label = _unreserved(family, key, label, histogram)
        labels.setdefault(label, []).append(_label_value(attributes[key]))
    return ",".join(f'{label}="{_escape_label_value(";".join(labels[label]))}"' for label in sorted(labels))


_HISTOGRAM_LABELS = frozenset({"le"})  # added to a histogram's bucket lines by the exposition
_warned_reserved: set[tuple[str, str]] = set()


def _unreserved(family: str, key: str, label: str, histogram: bool) -> str:
    """``label`` for ``key``, renamed when it is one the exposition adds; warned once per family and key."""
    if histogram and label in _HISTOGRAM_LABELS:
        renamed = "exported_" + label
    elif is_reserved_label(key):
        renamed = label
    else:
        return label
    if (family, key) not in _warned_reserved and len(_warned_reserved) < 1000:
        _warned_reserved.add((family, key))
        _logger.warning(
            "%s: tag key %r is a label name Prometheus reserves; exposed as %r (the series is kept)",
            family,
            key,
            renamed,
        )
    return renamed


@dataclass
class _Family:
    name: str
    kind: Kind
    help: str
    lines: list[str] = field(default_factory=list)  # histogram samples, rendered as they come
    values: dict[str, float] = field(default_factory=dict)  # label text -> value of a counter or gauge
    histogram_labels: set[str] = field(default_factory=set)

    def render(self) -> Iterable[str]:
        yield from self.lines
        yield from (_sample(self.name, labels, value) for labels, value in self.values.items())


def _warn_collision(family: str, labels: str) -> None:
    if (family, labels) not in _collisions and len(_collisions) < 1000:
        _collisions.add((family, labels))
        _logger.warning(
            "%s: two series map to the same Prometheus labels {%s} (tag keys that differ only in characters "
            "Prometheus cannot use); counters are added, for others the first series is kept",
            family,
            labels,
        )


_collisions: set[tuple[str, str]] = set()


def _sample(name: str, labels: str, value: float) -> str:
    return f"{name}{{{labels}}} {format_value(value)}" if labels else f"{name} {format_value(value)}"


def _histogram_lines(family: str, labels: str, point: object) -> Iterable[str]:
    bounds = point.explicit_bounds  # type: ignore[attr-defined]
    counts = point.bucket_counts  # type: ignore[attr-defined]
    prefix = labels + "," if labels else ""
    running = 0
    # bucket_counts has one more entry than bounds: the +Inf bucket, written from the total count below.
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        yield f'{family}_bucket{{{prefix}le="{format_value(float(bound))}"}} {running}'
    yield f'{family}_bucket{{{prefix}le="+Inf"}} {point.count}'  # type: ignore[attr-defined]
    yield _sample(f"{family}_sum", labels, point.sum)  # type: ignore[attr-defined]
    yield _sample(f"{family}_count", labels, point.count)  # type: ignore[attr-defined]


def _add_metric(families: dict[str, _Family], metric: Metric) -> None:
    kind = metric_kind(metric)
    data = metric.data
    monotonic = isinstance(data, Sum) and data.is_monotonic
    name = prometheus_name(metric.name, metric.unit or "", kind, monotonic)
    family = families.get(name)
    if family is None:
        family = families[name] = _Family(name, kind, metric.description or metric.name)
    elif family.kind != kind:
        return  # two metrics of different kinds cannot share one Prometheus family; first one wins
    if isinstance(data, Histogram):
        seen = family.histogram_labels
        for point in data.data_points:
            labels = label_text(point.attributes, name, histogram=True)
            if labels in seen:
                _warn_collision(name, labels)
                continue
            seen.add(labels)
            family.lines.extend(_histogram_lines(name, labels, point))
    elif isinstance(data, (Sum, Gauge)):
        values = family.values
        for number in data.data_points:
            labels = label_text(number.attributes, name)
            if labels in values:
                _warn_collision(name, labels)
                if kind == "counter":
                    values[labels] += number.value
                continue
            values[labels] = number.value


def _target_info(metrics_data: MetricsData) -> _Family | None:
    for resource in resources(metrics_data):
        attributes = dict(resource.attributes)
        if attributes:
            family = _Family("target_info", "gauge", "Target metadata")
            family.values[label_text(attributes, family.name)] = 1
            return family
    return None


def to_prometheus_text(metrics_data: MetricsData | None, *, target_info: bool = True) -> str:
    """Render cumulative metrics as Prometheus text; delta sums must not be passed here.

    Args:
        metrics_data: what a reader collected, or None for nothing.
        target_info: add a ``target_info`` family carrying the resource attributes.

    Returns:
        The exposition, ending with a newline (or empty when there is nothing).
    """
    if metrics_data is None:
        return ""
    families: dict[str, _Family] = {}
    info = _target_info(metrics_data) if target_info else None
    if info is not None:
        families[info.name] = info
    for found in walk(metrics_data):
        _add_metric(families, found.metric)
    out: list[str] = []
    for family in families.values():
        if not family.lines and not family.values:
            continue
        out.append(f"# HELP {family.name} {_escape_help(family.help)}")
        out.append(f"# TYPE {family.name} {_TYPES[family.kind]}")
        out.extend(family.render())
    return "\n".join(out) + "\n" if out else ""
