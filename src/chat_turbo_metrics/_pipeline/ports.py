"""A TCP port another process holds: which process (from Linux's ``/proc``, when this user may see it), and the
error that says so. Only listeners that conflict with the address asked for count: on one machine, services on
``127.0.0.2:9464`` and ``127.0.0.3:9464`` hold different endpoints.

Example:
    >>> error = PortInUseError("127.0.0.1", 9464)
    >>> error.errno == errno.EADDRINUSE
    True
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

PORT_SETTING = "METRICS_PROMETHEUS_PORT"
_LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp
_MAX_COMMAND = 120


@dataclass(frozen=True)
class PortHolder:
    """A process listening on a port: its pid and command line."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


class PortInUseError(OSError):
    """``EADDRINUSE`` for an endpoint: names the address, the process holding it when known, and the setting that
    chooses another port. The holder is looked up only when the message is read (it scans ``/proc``)."""

    def __init__(self, host: str, port: int, what: str = "Prometheus exporter") -> None:
        super().__init__(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        self.host = host
        self.port = port
        self.what = what
        self._holder: PortHolder | None = None
        self._looked_up = False

    @property
    def holder(self) -> PortHolder | None:
        """The process listening on the port, when this process may see it (None elsewhere)."""
        if not self._looked_up:
            self._looked_up = True
            self._holder = holder_of(self.port, self.host)
        return self._holder

    def __str__(self) -> str:
        holder = self.holder
        by = f" by {holder}" if holder is not None else " by another process"
        return (
            f"{self.what} cannot listen on {self.host}:{self.port}: the address is already in use{by}. "
            f"Free the port or choose another with {PORT_SETTING}=<port>"
        )


def holder_of(port: int, host: str | None = None) -> PortHolder | None:
    """The process (lowest pid) with a socket listening on TCP ``port``, or None when unknown here.

    Args:
        port: the TCP port.
        host: the address a bind was refused for: only listeners on it (or on every address) count. None, an
            empty host or a name that does not resolve: a listener on any address counts.
    """
    inodes = _listening_inodes(port, _addresses(host))
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        pids = sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    except OSError:
        return None
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or another user's process we may not look into
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{descriptor}") in wanted:
                    return PortHolder(pid, _command(pid))
            except OSError:
                continue
    return None


_WILDCARDS = frozenset({"0.0.0.0", "::"})


def _addresses(host: str | None) -> frozenset[str] | None:
    """The addresses whose listeners conflict with a bind to ``host`` (None: every address)."""
    if not host or host in _WILDCARDS:
        return None
    try:
        resolved = {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return None
    return frozenset(resolved | _WILDCARDS)


def _local_address(field: str) -> str:
    """The address of a ``/proc/net/tcp{,6}`` local-address field (hex words in host byte order)."""
    words = bytes.fromhex(field)
    packed = b"".join(struct.pack("=I", int.from_bytes(words[i : i + 4], "big")) for i in range(0, len(words), 4))
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    if packed[:12] == b"\0" * 10 + b"\xff\xff":  # an IPv4 address on a dual-stack socket
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


def _listening_inodes(port: int, addresses: frozenset[str] | None) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) <= 9 or fields[3] != _LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and (addresses is None or _local_address(address) in addresses):
                inodes.add(fields[9])
    return inodes


def _command(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    command = " ".join(word.decode("utf-8", "replace") for word in words)
    return command if len(command) <= _MAX_COMMAND else command[: _MAX_COMMAND - 3] + "..."
