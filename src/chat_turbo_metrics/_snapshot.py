"""The seed's ``metrics-collector`` serialization: current values as JSON or Prometheus text."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import Histogram, MetricsData

from chat_turbo_metrics._exposition import metric_kind, to_prometheus_text


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    return value


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: _jsonable(value) for key, value in (attributes or {}).items()}


def metric_records(metrics_data: MetricsData | None) -> Iterator[dict[str, Any]]:
    """One self-describing JSON-able record per data point (the file exporter's line format)."""
    if metrics_data is None:
        return
    for resource_metrics in metrics_data.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                data = metric.data
                temporality = getattr(data, "aggregation_temporality", None)
                head = {
                    "name": metric.name,
                    "kind": metric_kind(metric),
                    "unit": metric.unit or "",
                    "description": metric.description or "",
                    "temporality": temporality.name.lower() if temporality is not None else "",
                    "scope": scope_metrics.scope.name,
                    "resource": resource,
                }
                for point in data.data_points:
                    record = {
                        **head,
                        "attributes": _attributes(point.attributes),
                        "start_time_unix_nano": getattr(point, "start_time_unix_nano", None),
                        "time_unix_nano": point.time_unix_nano,
                    }
                    if isinstance(data, Histogram):
                        record.update(
                            count=point.count,
                            sum=point.sum,
                            min=point.min,
                            max=point.max,
                            bucket_bounds=list(point.explicit_bounds),
                            bucket_counts=list(point.bucket_counts),
                        )
                    else:
                        record["value"] = point.value
                    yield record


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every metric's current (cumulative) value, taken at one instant; no exporter needed.

    Example:
        >>> snapshot = monitor.snapshot()
        >>> snapshot.value("messages_sent", {"channel": "public"})
        3
        >>> print(snapshot.to_prometheus())  # doctest: +SKIP
    """

    data: MetricsData | None

    def records(self) -> list[dict[str, Any]]:
        """One dict per data point (name, kind, unit, attributes, value or histogram fields, times)."""
        return list(metric_records(self.data))

    def to_json(self, indent: int | None = None) -> str:
        """The records as a JSON document ``{"metrics": [...]}``."""
        return json.dumps({"metrics": self.records()}, indent=indent, ensure_ascii=False, default=str)

    def to_prometheus(self) -> str:
        """The Prometheus text exposition a scrape of ``/metrics`` returns."""
        return to_prometheus_text(self.data)

    def value(self, name: str, tags: Mapping[str, Any] | None = None) -> Any:
        """The value of one series: a number for sums and gauges, a record dict for histograms.

        Args:
            name: the instrument name (``messages_sent``, a timer's ``api_request_duration``).
            tags: the exact attribute set of the series; None means no attributes.

        Returns:
            The value, or None when no such series was recorded.
        """
        wanted = _attributes(tags)
        for record in metric_records(self.data):
            if record["name"] == name and record["attributes"] == wanted:
                return record if record["kind"] == "histogram" else record["value"]
        return None

    def names(self) -> set[str]:
        """Names of every metric in the snapshot."""
        return {record["name"] for record in metric_records(self.data)}

