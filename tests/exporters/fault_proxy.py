"""A TCP endpoint on 127.0.0.1 in front of a real receiver, that can be made to fail the way networks do.

Modes, switched at any time from the test:

- ``UP``: every connection is forwarded to the receiver, byte for byte (HTTP, HTTP/2, gRPC, PostgreSQL alike);
- ``DOWN``: the port is closed, so a connect is refused at once, and open connections are cut;
- ``STALL``: connections are accepted and never answered (the peer is alive but hangs), until the mode changes,
  which cuts them.

:meth:`FaultProxy.flap` alternates ``UP`` and ``DOWN`` on the same port until stopped. Nothing here is mocked: the
exporter under test opens real sockets and sees real refusals, resets and silences.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

UP = "up"
DOWN = "down"
STALL = "stall"


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``target`` while up; see the module docstring for the other modes.

    Example:
        proxy = FaultProxy(("127.0.0.1", receiver_port)).start()
        proxy.set(DOWN)       # connection refused
        proxy.set(UP)         # the same port answers again
        with proxy.flapping(0.3): ...
        proxy.stop()
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = DOWN
        self.accepted = 0  # connections accepted so far, in any mode
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        with socket.socket() as probe:  # reserve a port number once; it is re-bound at every UP/STALL
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self, mode: str = UP) -> FaultProxy:
        self.set(mode)
        return self

    def set(self, mode: str) -> None:
        """Switch to ``mode``; connections of the previous mode are cut (a restarted or crashed peer)."""
        assert mode in (UP, DOWN, STALL), mode
        with self._lock:
            previous, self.mode = self.mode, mode
            self._cut_connections()
            if mode == DOWN:
                self._close_listener()
            elif previous == DOWN:
                self._open_listener()

    def stop(self) -> None:
        self.set(DOWN)

    @contextlib.contextmanager
    def flapping(self, period_s: float) -> Iterator[None]:
        """Alternate DOWN and UP every ``period_s`` seconds while the block runs; UP afterwards."""
        stop = threading.Event()

        def flap() -> None:
            mode = DOWN
            while True:
                self.set(mode)
                if stop.wait(period_s):
                    return
                mode = UP if mode == DOWN else DOWN

        thread = threading.Thread(target=flap, name="fault-proxy-flap", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.set(UP)

    # --- internals ------------------------------------------------------------------------------------

    def _open_listener(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self.address)  # the same port every time: clients keep their endpoint
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="fault-proxy-accept", daemon=True).start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
            listener.close()

    def _cut_connections(self) -> None:
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: DOWN
            with self._lock:
                self.accepted += 1
                if self._listener is not listener:
                    client.close()
                    return
                self._open.add(client)
                if self.mode == STALL:
                    continue  # held open, never read, never answered
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._forget(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if client not in self._open:  # cut while connecting
                    upstream.close()
                    continue
                self._open.add(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), name="fault-proxy-pump", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        self._forget(source)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._open:
                self._open.discard(sock)
                sock.close()
