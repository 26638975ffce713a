"""Pre-fork servers: one exact Prometheus scrape for every process of a service.

Under gunicorn or ``uvicorn --workers`` every worker records into a pipeline of its own, and all of them are
configured with the same Prometheus port. Who belongs together is decided by identity, never by the port
alone (:mod:`._group`): the processes of one server's run (its master and the workers it forks or spawns),
or the processes an operator names with ``METRICS_MULTIPROCESS_GROUP``. The first process of the group that
binds the port becomes the *holder*; every other one becomes a *member*: it serves its current cumulative
collection, on demand, over a unix socket in the group's private directory (:mod:`._directory`). At each
scrape the holder asks every live member in parallel (short timeout), adds what they answer to its own
collection and to the *retired* totals of members that have exited (:mod:`._merge`), and serves the sum.
Nothing runs on the recording path. A process outside the group that finds the port held gets
:class:`~chat_turbo_metrics._pipeline.ports.PortInUseError`, as any program would.

Every process of the group publishes its state to a file of its own before any of it is served, and leaves
its final state there when its pipeline shuts down (:mod:`._ledger`). It also copies its state there every second,
but only when something was recorded since its last publication (asked without collecting:
``Source.quiet_since``), and without the collection-time readings, which are taken when a scrape reads them: an
idle process does no collection work. The holder that takes the port over,
or one that finds a process gone, continues from the files, so the service's counters never go backwards,
whichever process exits, is recycled or is killed. A member tries to bind the port every second, so the port
is taken over within a second when its holder exits.

Degraded, never down: a directory that is not private is refused (one error naming it and
``METRICS_MULTIPROCESS_DIR``) and each process keeps its own data, the holder serving its own; a directory
that cannot be written (full, read-only) is warned about once and the scrape is merged from memory until
writes work again. ``chat_turbo_metrics_multiprocess_degraded`` {cause} shows either state.

The Prometheus exporter is this package's one way in: its ``serve(pipeline)`` calls :func:`serve` with itself
as the :class:`SharedEndpoint`; the pipeline is a :class:`Source` and keeps the :class:`Membership` it gets back
(both the pipeline's protocols for any serving exporter). The pipeline knows nothing of this package.
"""

from chat_turbo_metrics.multiprocess._endpoint import serve
from chat_turbo_metrics.multiprocess._protocols import Membership, SharedEndpoint, Source

__all__ = ["Membership", "SharedEndpoint", "Source", "serve"]
