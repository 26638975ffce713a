"""The one interface between the multiprocess feature and the endpoint it shares (the Prometheus exporter).

The pipeline is a :class:`Source` and keeps the :class:`Membership` it gets back; both are the pipeline's own
protocols for any serving exporter (:mod:`chat_turbo_metrics._pipeline.pull`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from chat_turbo_metrics._pipeline.pull import Collect, Membership, Source

__all__ = ["Collect", "Membership", "SharedEndpoint", "Source"]


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
