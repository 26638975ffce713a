"""The seed's ``metrics-collector`` serialization: current values as JSON or Prometheus text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._collection.records import metric_records
from chat_turbo_metrics.exporters._prometheus_text import to_prometheus_text


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every metric's current (cumulative) value, taken at one instant; no exporter needed.

    Example:
        >>> monitor.increment_counter("messages_sent", {"channel": "public"}, value=3)
        >>> snapshot = monitor.snapshot()
        >>> snapshot.value("messages_sent", {"channel": "public"})
        3
        >>> print(snapshot.to_prometheus())  # doctest: +SKIP
    """

    data: MetricsData | None
    scope_labels: bool = True

    def records(self) -> list[dict[str, Any]]:
        """One dict per data point (name, kind, unit, attributes, value or histogram fields, times)."""
        return list(metric_records(self.data))

    def to_json(self, indent: int | None = None) -> str:
        """The records as a JSON document ``{"metrics": [...]}``."""
        return json.dumps({"metrics": self.records()}, indent=indent, ensure_ascii=False, default=str)

    def to_prometheus(self, *, openmetrics: bool = False) -> str:
        """The exposition a scrape of ``/metrics`` returns: the text format, or OpenMetrics 1.0 if asked for."""
        return to_prometheus_text(self.data, openmetrics=openmetrics, scope_labels=self.scope_labels)

    def value(self, name: str, tags: Mapping[str, Any] | None = None) -> Any:
        """The value of one series: a number for sums and gauges, a record dict for histograms (exponential too).

        Args:
            name: the instrument name (``messages_sent``, a timer's ``api_request_duration``).
            tags: the exact attribute set of the series; None means no attributes.

        Returns:
            The value, or None when no such series was recorded.
        """
        wanted = dict(tags or {})
        for record in metric_records(self.data):
            if record["name"] == name and record["attributes"] == wanted:
                return record.get("value", record)  # histograms of either kind: the whole record
        return None

    def names(self) -> set[str]:
        """Names of every metric in the snapshot."""
        return {record["name"] for record in metric_records(self.data)}
