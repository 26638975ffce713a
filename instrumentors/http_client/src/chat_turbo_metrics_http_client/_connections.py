"""Open connections of the clients' pools, read at each collection: nothing is added to a request.

The semantic conventions' ``http.client.open_connections`` {``http.connection.state`` (``idle``/``active``),
``server.address``, ``server.port``}; in the seed's style ``http_client_open_connections`` {``state``,
``server_address``, ``server_port``}. A gauge set at collection time from what each library's pools hold (the
conventions' instrument is an UpDownCounter: both are a gauge in Prometheus, as ``db.client.connection.count``):

- urllib3 (and requests, which sends over urllib3's pools): every connection a pool made, kept weakly from its
  ``_new_conn``; open while it has a socket, idle while it waits in its pool's queue, active otherwise (a request
  in flight, or a streamed response not yet read or released).
- httpx: the connections of every httpcore pool (``httpx.Client``'s and ``AsyncClient``'s transports), kept weakly
  from the pool's creation; each says whether it is idle or closed. One still connecting is not counted.
- aiohttp: every connector's idle connections (kept for reuse) and acquired ones, by host and port.

Pools made before ``instrument()`` are not seen (their connections are read only for urllib3, whose connections
made after it are). A series whose connections all closed reads 0 at the next collection. No library is imported
to follow it: each is patched when the application imports it (at once if it already has).
"""

from __future__ import annotations

import threading
import weakref
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

from chat_turbo_metrics.instrumentation import register_after_fork, when_imported
from chat_turbo_metrics_http_client._metrics import DEFAULT_PORTS, Patches, patched, renew_hooks_lock

Reading = Counter[tuple[str, str, int]]  # (state, server address, server port) -> open connections
IDLE, ACTIVE = "idle", "active"


class Tracked(ABC):
    """One library's pools (or connections), followed while any instrumentor holds this: ``acquire()`` patches the
    library on first use (when the application imports :attr:`module`), ``release()`` puts it back (or cancels the
    patch still waiting) after the last; ``read()`` counts the open connections."""

    module: str  # the module whose classes _patch() replaces: patched when it is imported

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._undo: Callable[[], None] | None = None

    def acquire(self) -> None:
        """One more instrumentor follows the library (the first patches it, when it is imported).

        A library version whose pools cannot be followed is logged once and left as it is (durations only).
        """
        with self._lock:
            if self._holders == 0:
                self._undo = when_imported(self.module, lambda module: patched(lambda p: self._patch(p, module)))
            self._holders += 1

    def release(self) -> None:
        """One instrumentor less (after the last, the library is as it was, or is never patched)."""
        with self._lock:
            self._holders -= 1
            undo = self._undo if self._holders == 0 else None
            if undo is not None:
                self._undo = None
                undo()

    @abstractmethod
    def _patch(self, patches: Patches, module: ModuleType) -> None:
        """Patch ``module`` so that its pools (or connections) are kept, recording what it replaced."""

    @abstractmethod
    def read(self) -> Reading:
        """The open connections now, by state, server address and port."""


class _Objects(Tracked):
    """Objects of a library kept weakly, each with what it was made for."""

    def __init__(self) -> None:
        super().__init__()
        self._known: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._known_lock = threading.Lock()

    def keep(self, thing: Any, about: Any = None) -> None:
        """Follow ``thing`` (weakly) until it is garbage."""
        try:
            with self._known_lock:
                self._known[thing] = about
        except TypeError:  # an object that cannot be weakly referenced: not counted
            pass

    def known(self) -> list[tuple[Any, Any]]:
        """What is followed now, each with what it was kept with."""
        with self._known_lock:
            return list(self._known.items())


def _kept_after(original: Any, tracked: _Objects) -> Any:
    """``__init__``-like ``original`` whose object (``self``) is then kept."""

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        tracked.keep(self)

    return init


class Urllib3Connections(_Objects):
    """Every connection made by a urllib3 pool (``HTTPConnectionPool._new_conn``), with its pool."""

    module = "urllib3.connectionpool"

    def _patch(self, patches: Patches, module: ModuleType) -> None:
        def kept(original: Any) -> Any:
            def new_conn(pool: Any, *args: Any, **kwargs: Any) -> Any:
                connection = original(pool, *args, **kwargs)
                self.keep(connection, weakref.ref(pool))
                return connection

            return new_conn

        for cls in (module.HTTPConnectionPool, module.HTTPSConnectionPool):
            if "_new_conn" in cls.__dict__:
                patches.replace(cls, "_new_conn", kept)

    def read(self) -> Reading:
        found: Reading = Counter()
        idle_in: dict[int, set[int]] = {}
        for connection, pool_ref in self.known():
            if getattr(connection, "sock", None) is None:  # not connected yet, or closed
                continue
            pool = pool_ref() if pool_ref is not None else None
            if pool is None:  # its pool is gone: the application still holds it (a response it reads)
                found[ACTIVE, str(connection.host), int(connection.port or 0)] += 1
                continue
            idle = idle_in.get(id(pool))
            if idle is None:
                queue = getattr(pool, "pool", None)  # None once the pool is closed
                waiting = list(queue.queue) if queue is not None else []
                idle = idle_in[id(pool)] = {id(item) for item in waiting if item is not None}
            port = pool.port or DEFAULT_PORTS.get(pool.scheme, 0)
            found[IDLE if id(connection) in idle else ACTIVE, str(pool.host), int(port)] += 1
        return found


class HttpcorePools(_Objects):
    """Every httpcore connection pool (what ``httpx.Client`` and ``AsyncClient`` send through), sync and async."""

    module = "httpcore"  # httpx imports it when it makes its first transport (a client)

    def _patch(self, patches: Patches, module: ModuleType) -> None:
        for cls in (module.ConnectionPool, module.AsyncConnectionPool):
            patches.replace(cls, "__init__", lambda original: _kept_after(original, self))

    def read(self) -> Reading:
        found: Reading = Counter()
        for pool, _ in self.known():
            for connection in pool.connections:  # a copy, taken by httpcore
                if getattr(connection, "_connection", True) is None or connection.is_closed():
                    continue  # still connecting (or its connect failed), or closed
                origin = getattr(connection, "_origin", None) or getattr(connection, "_remote_origin", None)
                if origin is None:
                    continue
                host = origin.host.decode("ascii", "replace") if isinstance(origin.host, bytes) else str(origin.host)
                found[IDLE if connection.is_idle() else ACTIVE, host, int(origin.port or 0)] += 1
        return found


class AiohttpConnectors(_Objects):
    """Every aiohttp connector (a ``ClientSession``'s), and the server of each connection its ``TCPConnector`` made
    (``_create_connection``: once per connection): idle ones wait in the connector's pool by server; acquired ones
    (a request in flight, a response whose body is not yet read) are in its acquired set."""

    def __init__(self) -> None:
        super().__init__()
        self._servers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # protocol -> its key

    module = "aiohttp.connector"

    def _patch(self, patches: Patches, module: ModuleType) -> None:
        def kept(original: Any) -> Any:
            async def create_connection(connector: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
                protocol = await original(connector, request, *args, **kwargs)
                try:
                    with self._known_lock:
                        self._servers[protocol] = request.connection_key
                except Exception:
                    pass
                return protocol

            return create_connection

        patches.replace(module.BaseConnector, "__init__", lambda original: _kept_after(original, self))
        patches.replace(module.TCPConnector, "_create_connection", kept)  # KeyError: not this version's

    def read(self) -> Reading:
        found: Reading = Counter()
        with self._known_lock:
            servers = dict(self._servers.items())
        for connector, _ in self.known():
            if connector.closed:
                continue
            # Copies of the event loop's containers, each taken in one C call (the loop may be changing them).
            for key, waiting in list(connector._conns.items()):
                _count(found, IDLE, key, [protocol for protocol, _ in list(waiting)])
            for protocol in list(connector._acquired):
                key = servers.get(protocol)  # None: a placeholder for a connection still being made
                if key is not None:
                    _count(found, ACTIVE, key, [protocol])
        return found


def _count(found: Reading, state: str, key: Any, protocols: list[Any]) -> None:
    connected = sum(1 for protocol in protocols if protocol.is_connected())
    if connected:
        found[state, str(key.host), int(key.port or DEFAULT_PORTS["https" if key.is_ssl else "http"])] += connected


URLLIB3 = Urllib3Connections()
HTTPCORE = HttpcorePools()
AIOHTTP = AiohttpConnectors()


def _after_fork_in_child() -> None:
    """A thread of the parent may have held a lock at fork(): the child's copies start free (what they guard, the
    pools and connections the child inherited, stays followed)."""
    for tracked in (URLLIB3, HTTPCORE, AIOHTTP):
        tracked._lock = threading.Lock()
        tracked._known_lock = threading.Lock()
    renew_hooks_lock()


register_after_fork(_after_fork_in_child)
