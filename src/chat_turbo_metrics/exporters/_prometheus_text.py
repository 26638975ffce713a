"""Prometheus text exposition (format 0.0.4) and OpenMetrics 1.0 of collected OpenTelemetry metrics.

One serializer for the snapshot API and the ``/metrics`` endpoint, so what a test reads from a snapshot
is byte for byte what Prometheus scrapes. OpenMetrics adds what the text format cannot carry: ``_created``
(the start of a counter's or histogram's cumulation; never on a gauge), exemplars on histogram buckets (the
latest one per bucket: trace id, span id, value, time) and the closing ``# EOF``.

Every sample carries ``otel_scope_name`` and ``otel_scope_version`` (the OTel-Prometheus compatibility spec),
when asked to (``scope_labels=True``: what the exporter and the snapshot pass unless
``METRICS_PROMETHEUS_SCOPE_LABELS=false``).
"""

from __future__ import annotations

import json
import logging
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import ExponentialHistogram, Gauge, Histogram, Metric, MetricsData, Sum
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from chat_turbo_metrics._collection.exponential import explicit_buckets
from chat_turbo_metrics._collection.records import data_kind
from chat_turbo_metrics._collection.walk import resources, walk
from chat_turbo_metrics._core.naming import Kind, is_reserved_label, prometheus_label, prometheus_name

_logger = logging.getLogger("chat_turbo_metrics.exposition")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_TYPES: dict[Kind, str] = {"counter": "counter", "updowncounter": "gauge", "gauge": "gauge", "histogram": "histogram"}


def metric_kind(metric: Metric) -> Kind:
    """The kind of a collected metric, from its data type (a kind Prometheus text has no type for is a gauge;
    an exponential histogram is written as a histogram, its buckets converted)."""
    if isinstance(metric.data, ExponentialHistogram):
        return "histogram"
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


def go_float(value: float) -> str:
    """A bucket bound the way OpenMetrics requires it (canonical, as Go prints it: ``1.0``, ``+Inf``, ``1e+06``)."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


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


def _escape_help(text: str, openmetrics: bool = False) -> str:
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n")
    return escaped.replace('"', '\\"') if openmetrics else escaped


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
    created: dict[str, int] = field(default_factory=dict)  # label text -> start time (ns) of a counter
    histogram_labels: set[str] = field(default_factory=set)

    def render(self, openmetrics: bool) -> Iterable[str]:
        yield from self.lines
        for labels, value in self.values.items():
            yield _sample(self.name, labels, value)
            if openmetrics and labels in self.created:
                yield _sample(self.name[: -len("_total")] + "_created", labels, _seconds(self.created[labels]))


def _seconds(unix_nano: int) -> float:
    return unix_nano / 1e9


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


def _exemplar(exemplar: Any) -> str:
    """`` # {trace_id="..",span_id=".."} value time``: an OpenMetrics exemplar (ids as W3C hex)."""
    labels = []
    if exemplar.trace_id:
        labels.append(f'trace_id="{exemplar.trace_id:032x}"')
    if exemplar.span_id:
        labels.append(f'span_id="{exemplar.span_id:016x}"')
    return f" # {{{','.join(labels)}}} {format_value(exemplar.value)} {_seconds(exemplar.time_unix_nano)!r}"


def _bucket_exemplars(point: Any) -> dict[int, Any]:
    """Bucket index -> the latest exemplar that fell in it (the point's exemplars, any order)."""
    found: dict[int, Any] = {}
    bounds = point.explicit_bounds
    for exemplar in getattr(point, "exemplars", None) or ():
        index = bisect_left(bounds, exemplar.value)
        held = found.get(index)
        if held is None or exemplar.time_unix_nano >= held.time_unix_nano:
            found[index] = exemplar
    return found


def _histogram_lines(family: str, labels: str, point: Any, openmetrics: bool) -> Iterable[str]:
    bounds = point.explicit_bounds
    counts = point.bucket_counts
    prefix = labels + "," if labels else ""
    bound_text = go_float if openmetrics else format_value
    exemplars = _bucket_exemplars(point) if openmetrics else {}
    running = 0
    # bucket_counts has one more entry than bounds: the +Inf bucket, written from the total count below.
    for index, (bound, count) in enumerate(zip(bounds, counts, strict=False)):
        running += count
        line = f'{family}_bucket{{{prefix}le="{bound_text(float(bound))}"}} {running}'
        yield line + _exemplar(exemplars[index]) if index in exemplars else line
    line = f'{family}_bucket{{{prefix}le="+Inf"}} {point.count}'
    yield line + _exemplar(exemplars[len(bounds)]) if len(bounds) in exemplars else line
    if not (openmetrics and bounds and bounds[0] < 0):  # OpenMetrics: no _sum with negative buckets
        yield _sample(f"{family}_sum", labels, point.sum)
    yield _sample(f"{family}_count", labels, point.count)
    if openmetrics and point.start_time_unix_nano:
        yield _sample(f"{family}_created", labels, _seconds(point.start_time_unix_nano))


def scope_label_text(scope: InstrumentationScope | None) -> str:
    """``otel_scope_name="..",otel_scope_version=".."`` (no version label when the scope has none)."""
    if scope is None or not scope.name:
        return ""
    text = f'otel_scope_name="{_escape_label_value(scope.name)}"'
    if scope.version:
        text += f',otel_scope_version="{_escape_label_value(scope.version)}"'
    return text


def _join(labels: str, scope: str) -> str:
    return f"{labels},{scope}" if labels and scope else labels or scope


def _add_metric(families: dict[str, _Family], metric: Metric, scope: str, openmetrics: bool) -> None:
    kind = metric_kind(metric)
    data = metric.data
    monotonic = isinstance(data, Sum) and data.is_monotonic
    name = prometheus_name(metric.name, metric.unit or "", kind, monotonic)
    family = families.get(name)
    if family is None:
        family = families[name] = _Family(name, kind, metric.description or metric.name)
    elif family.kind != kind:
        return  # two metrics of different kinds cannot share one Prometheus family; first one wins
    if isinstance(data, (Histogram, ExponentialHistogram)):
        seen = family.histogram_labels
        convert = isinstance(data, ExponentialHistogram)  # written as the classic histogram it converts to
        for point in data.data_points:
            labels = _join(label_text(point.attributes, name, histogram=True), scope)
            if labels in seen:
                _warn_collision(name, labels)
                continue
            seen.add(labels)
            family.lines.extend(
                _histogram_lines(name, labels, explicit_buckets(point) if convert else point, openmetrics)
            )
    elif isinstance(data, (Sum, Gauge)):
        values = family.values
        counter = kind == "counter"
        for number in data.data_points:
            labels = _join(label_text(number.attributes, name), scope)
            if labels in values:
                _warn_collision(name, labels)
                if counter:
                    values[labels] += number.value
                continue
            values[labels] = number.value
            if counter and getattr(number, "start_time_unix_nano", None):
                family.created[labels] = number.start_time_unix_nano


def _target_info(metrics_data: MetricsData) -> _Family | None:
    for resource in resources(metrics_data):
        attributes = dict(resource.attributes)
        if attributes:
            family = _Family("target_info", "gauge", "Target metadata")
            family.values[label_text(attributes, family.name)] = 1
            return family
    return None


def _type_line(family: _Family, openmetrics: bool) -> tuple[str, str]:
    """The family name the metadata lines use, and its type."""
    if not openmetrics:
        return family.name, _TYPES[family.kind]
    if family.name == "target_info":
        return "target", "info"
    if family.kind == "counter":
        return family.name[: -len("_total")], "counter"
    return family.name, _TYPES[family.kind]


def to_prometheus_text(
    metrics_data: MetricsData | None,
    *,
    target_info: bool = True,
    openmetrics: bool = False,
    scope_labels: bool = False,
) -> str:
    """Render cumulative metrics as Prometheus text or OpenMetrics; delta sums must not be passed here.

    Args:
        metrics_data: what a reader collected, or None for nothing.
        target_info: add a ``target_info`` family carrying the resource attributes.
        openmetrics: OpenMetrics 1.0 (``_created``, exemplars, ``# EOF``) instead of the text format 0.0.4.
        scope_labels: label every sample with its ``otel_scope_name`` and ``otel_scope_version`` (the exporter
            and the snapshot pass their setting, on by default).

    Returns:
        The exposition, ending with a newline (or empty, in the text format, when there is nothing).
    """
    families: dict[str, _Family] = {}
    if metrics_data is not None:
        info = _target_info(metrics_data) if target_info else None
        if info is not None:
            families[info.name] = info
        scopes: dict[int, str] = {}
        for found in walk(metrics_data):
            scope = ""
            if scope_labels:
                scope = scopes.get(id(found.scope)) or scopes.setdefault(id(found.scope), scope_label_text(found.scope))
            _add_metric(families, found.metric, scope, openmetrics)
    out: list[str] = []
    for family in families.values():
        if not family.lines and not family.values:
            continue
        name, kind = _type_line(family, openmetrics)
        out.append(f"# HELP {name} {_escape_help(family.help, openmetrics)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(family.render(openmetrics))
    if openmetrics:
        out.append("# EOF")
    return "\n".join(out) + "\n" if out else ""
