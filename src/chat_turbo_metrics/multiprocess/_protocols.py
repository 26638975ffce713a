"""The one interface between the multiprocess feature, the pipeline and the Prometheus exporter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._core.config import MonitoringConfig

Collect = Callable[[], MetricsData | None]


class Source(Protocol):
    """What a group needs of a pipeline: its configuration, its collection, and its shutdown."""

    @property
    def config(self) -> MonitoringConfig: ...

    def collect(self) -> MetricsData | None: ...

    def shutdown(self, timeout_s: float | None = None) -> None: ...


@runtime_checkable
class SharedEndpoint(Protocol):
    """A pull endpoint served by one process for its whole group (the Prometheus exporter)."""

    host: str

    @property
    def requested_port(self) -> int:
        """The configured port (0: an ephemeral port, never shared)."""
        ...

    def attach(self, collect: Collect) -> None:
        """Serve what ``collect`` returns; raises ``PortInUseError`` when another process holds the port."""
        ...

    def detach_after_fork(self) -> None:
        """In a forked child: forget the parent's endpoint, so that this process may attach again later."""
        ...


class Membership(Protocol):
    """A pipeline's handle on its place in a group."""

    def health(self) -> Mapping[str, int]:
        """cause -> 1 while this process cannot share its metrics for that cause, 0 once it can again."""
        ...

    def close(self) -> None:
        """Leave the group (final state written) before the endpoint stops."""
        ...
