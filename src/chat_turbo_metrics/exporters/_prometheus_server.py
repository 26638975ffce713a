"""The ``/metrics`` HTTP endpoint: a small server that survives hostile clients and hands over on reconfigure.

- Idle and slow clients are cut after ``client_timeout_s`` of silence; at most ``max_connections`` are
  served at once, and at most ``max_connections_per_peer`` from one address, so a peer holding connections
  cannot use up the application's file descriptors or threads. When the limit is reached, a new connection
  takes the place of the one that has been idle longest (connected, no complete request yet): connections
  held open by an attacker cannot lock the scraper out. Only when every slot is busy answering does a new
  connection get a quick 503.
- No ``Server`` header: the Python version is nobody's business.
- A failing ``accept()`` (EMFILE, ENFILE, ENOBUFS) backs off instead of spinning the CPU.
- ``stop()`` is immediate: the serve loop waits on the listening socket and a wake-up pipe, not a poll.
- One endpoint per ``host:port`` in a process. An exporter attached to a port this process already serves
  takes the endpoint over (the newest attached exporter answers scrapes); when it is shut down, the
  previous one answers again. ``configure()`` therefore never fights its own old pipeline for the port.
- In a forked child the endpoint does not exist: its thread lives in the parent. The child closes its
  copy of the listening socket and never waits for that thread.

Example:
    >>> endpoint = acquire("127.0.0.1", 0, owner)   # doctest: +SKIP
    >>> endpoint.port                               # doctest: +SKIP
    40123
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from chat_turbo_metrics._core import forks
from chat_turbo_metrics.exporters._prometheus_http import respond

_logger = logging.getLogger("chat_turbo_metrics.exporters.prometheus")

CLIENT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 16
MAX_CONNECTIONS_PER_PEER = 8
_MAX_BACKOFF_S = 1.0
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Renderer(Protocol):
    """What an endpoint asks for the exposition text (``openmetrics=True`` is passed only when negotiated)."""

    def render(self) -> str: ...


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.client_timeout_s  # type: ignore[misc]  # per server; idle or stalled is cut
        super().setup()

    def handle_one_request(self) -> None:
        self.server.connections.mark(self.connection, idle=True)  # waiting for a request: may be replaced
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        # Busy from the moment a whole request (line and headers) is in: only then is it being served.
        self.server.connections.mark(self.connection, idle=False)
        return parsed

    def send_response(self, code: int, message: str | None = None) -> None:
        """The base class's, without its ``Server: BaseHTTP/0.6 Python/3.x.y`` header."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def _respond(self, *, with_body: bool) -> None:
        # Every page, the negotiation and the compression are the exposition layer's (shared with the apps).
        response = respond(
            self.server.owner(),
            self.path,
            self.headers.get("Accept", ""),
            self.headers.get("Accept-Encoding", ""),
        )
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if response.status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if with_body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are routine; keep them out of the application's log."""


class _Connections:
    """The connections being served, least recently active first, and which one a newcomer may replace."""

    def __init__(self, limit: int, per_peer: int) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._per_peer = per_peer
        self._open: dict[socket.socket, tuple[str, bool]] = {}  # connection -> (peer, idle); oldest first

    def admit(self, connection: socket.socket, peer: str) -> bool:
        """Take ``connection`` in, closing the longest idle one if a limit is reached; False if all are busy."""
        with self._lock:
            # The connections the newcomer competes with: its peer's at the peer limit, else all at the limit.
            rivals = [c for c, (p, _) in self._open.items() if p == peer]
            if len(rivals) < self._per_peer:
                rivals = list(self._open) if len(self._open) >= self._limit else []
            victim = next((c for c in rivals if self._open[c][1]), None)
            if rivals and victim is None:
                return False
            if victim is not None:
                del self._open[victim]
            self._open[connection] = (peer, True)
        if victim is not None:
            # Its handler thread sees the end of input and finishes; the descriptor is closed there.
            with contextlib.suppress(OSError):
                victim.shutdown(socket.SHUT_RDWR)
        return True

    def mark(self, connection: socket.socket, *, idle: bool) -> None:
        """Record that ``connection`` waits for a request (idle) or is being answered; a replaced one is ignored."""
        with self._lock:
            state = self._open.pop(connection, None)
            if state is not None:
                self._open[connection] = (state[0], idle)  # most recently active last

    def remove(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.pop(connection, None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close() must not wait for client threads

    def __init__(
        self,
        address: tuple[str, int],
        owner: Callable[[], Any],
        connections: _Connections,
        client_timeout_s: float,
    ) -> None:
        super().__init__(address, _Handler)
        self.owner = owner
        self.connections = connections
        self.client_timeout_s = client_timeout_s

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.admit(request, str(client_address[0])):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # e.g. no thread can be started: free the slot, drop the client
            self.connections.remove(request)
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.remove(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that broke its connection: routine for a server anyone may reach; not printed to stderr."""
        _logger.debug("a /metrics connection from %s failed", client_address, exc_info=True)


class Endpoint:
    """A listening socket and its serve thread; answers with the newest owner's exposition."""

    def __init__(
        self,
        host: str,
        port: int,
        max_connections: int = MAX_CONNECTIONS,
        client_timeout_s: float = CLIENT_TIMEOUT_S,
        max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER,
    ) -> None:
        self.key = (host, port)
        self.owners: list[Renderer] = []
        connections = _Connections(max_connections, min(max_connections, max_connections_per_peer))
        self._server = _Server((host, port), self._owner, connections, client_timeout_s)
        self._server.socket.setblocking(False)  # another process sharing it may take the connection first
        self._wake_r, self._wake_w = socket.socketpair()
        # Made here, not in the thread: if descriptors run out, binding fails loudly at set-up instead of a
        # serving thread dying later with nobody told and the port held but never answered.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server.socket, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stopping = threading.Event()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._serve, name="chat-turbo-metrics-prometheus", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        """The bound interface address (``127.0.0.1`` for ``localhost``)."""
        return str(self._server.server_address[0])

    def _owner(self) -> Renderer | None:
        owners = self.owners
        return owners[-1] if owners else None

    def _serve(self) -> None:
        backoff = 0.0
        with self._selector as selector:
            while not self._stopping.is_set():
                selector.select()
                if self._stopping.is_set():
                    break
                try:
                    request, address = self._server.socket.accept()
                except BlockingIOError:
                    continue
                except OSError as error:
                    # Out of descriptors or buffers: the socket stays readable, so retrying at once would
                    # spin. Wait, longer each time, until accept() works again (or stop() is called).
                    backoff = min(_MAX_BACKOFF_S, backoff * 2 or 0.01)
                    if backoff == _MAX_BACKOFF_S:
                        _logger.warning("Prometheus endpoint cannot accept connections: %s", error)
                    self._stopping.wait(backoff)
                    continue
                backoff = 0.0
                try:
                    self._server.process_request(request, address)
                except Exception:
                    _logger.exception("serving a scrape failed")

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop accepting and close the socket at once; in a forked child, just close the copy."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if os.getpid() == self._pid:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            if self._thread is not threading.current_thread():
                self._thread.join(timeout_s)
        self._close()

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.server_close()
        for end in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                end.close()

    def after_fork_in_child(self) -> None:
        # The serve thread is the parent's. Close our copy of the socket so the port is the parent's alone.
        forks.reinit(self._stopping)  # the parent's thread may have been inside wait()
        self._stopping.set()
        self._close()
        with contextlib.suppress(OSError):
            self._selector.close()  # the parent's thread owns the original; this is the child's copy


class _Endpoints:
    """The endpoints this process serves, by (host, port); port 0 endpoints are never shared."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[tuple[str, int], Endpoint] = {}
        forks.register(self, forks.Phase.LOCKS)

    def after_fork_in_child(self) -> None:
        # Each endpoint closes its own copy (it is registered itself); none is this child's to share.
        self.lock = threading.Lock()
        self.by_key.clear()


_endpoints = _Endpoints()


def acquire(host: str, port: int, owner: Renderer) -> Endpoint:
    """The endpoint on ``host:port`` with ``owner`` answering its scrapes (taken over if this process serves it).

    Raises:
        OSError: the port cannot be bound (another process has it, or the address is bad).
    """
    with _endpoints.lock:
        endpoint = _endpoints.by_key.get((host, port)) if port else None
        if endpoint is None:
            endpoint = Endpoint(host, port)
            forks.register(endpoint, forks.Phase.LOCKS)
            if port:
                _endpoints.by_key[host, port] = endpoint
        endpoint.owners = [*endpoint.owners, owner]
        return endpoint


def release(endpoint: Endpoint, owner: Renderer, timeout_s: float = 1.0) -> None:
    """``owner`` stops answering; the previous owner answers again, or the endpoint stops if none is left."""
    with _endpoints.lock:
        endpoint.owners = [o for o in endpoint.owners if o is not owner]
        if endpoint.owners:
            return
        if _endpoints.by_key.get(endpoint.key) is endpoint:
            del _endpoints.by_key[endpoint.key]
    endpoint.stop(timeout_s)
