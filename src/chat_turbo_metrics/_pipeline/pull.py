"""What the pipeline asks of a pull exporter (one that is asked for data instead of being sent it).

A plain pull exporter is handed the pipeline's ``collect`` (:class:`PullExporter`). One that takes its place
itself (:class:`ServingExporter`: the Prometheus exporter, alone or for its whole pre-fork group) is handed the
pipeline as a :class:`Source` and returns its :class:`Membership`, which the pipeline keeps: it reports its health
and closes it before the exporter stops. The pipeline knows no exporter and no pre-fork group; they find it here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._core.config import MonitoringConfig

Collect = Callable[[], MetricsData | None]


@runtime_checkable
class PullExporter(Protocol):
    """An exporter that is asked for data (a scrape) instead of being sent it."""

    name: str

    def attach(self, collect: Collect) -> None: ...

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None: ...


class Source(Protocol):
    """What a serving exporter may use of the pipeline: its configuration, its collection (with or without the
    collection-time readings), whether anything was recorded since a collection, its shutdown."""

    @property
    def config(self) -> MonitoringConfig: ...

    def collect(self, *, readings: bool = True) -> MetricsData | None: ...

    @property
    def collections(self) -> int:
        """Collections started so far."""
        ...

    def quiet_since(self, mark: int) -> bool:
        """True when nothing was recorded since collection number ``mark`` (``collections + 1`` read just
        before it), and no other collection ran since."""
        ...

    def shutdown(self, timeout_s: float | None = None) -> None: ...


class Membership(Protocol):
    """A pipeline's handle on the place a serving exporter took for it (e.g. in a pre-fork group)."""

    def health(self) -> Mapping[str, int]:
        """cause -> 1 while this process cannot share its metrics for that cause, 0 once it can again."""
        ...

    def close(self) -> None:
        """Leave (final state written) before the endpoint stops."""
        ...


@runtime_checkable
class ServingExporter(Protocol):
    """A pull exporter that takes its place itself, given the pipeline."""

    def serve(self, source: Source) -> Membership | None:
        """Start serving ``source``; the membership to keep, or None when there is nothing to keep."""
        ...
