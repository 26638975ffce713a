"""Process statistics read at collection time: a table of metric specs and the state that derives rates."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from chat_turbo_metrics import PerformanceMonitor

Pairs = Iterable[tuple[float, dict[str, Any] | None]]
_MIB = 1024 * 1024


@dataclass(frozen=True)
class ProcessSample:
    """One reading of the operating system's statistics for this process."""

    pid: int
    cpu_seconds: float
    rss_bytes: int
    threads: int
    open_fds: int | None
    connections: int | None
    # For the semantic conventions' process.* metrics; None where the platform (or a stand-in) does not tell.
    cpu_user: float | None = None
    cpu_system: float | None = None
    virtual_bytes: int | None = None
    context_switches: tuple[int, int] | None = None  # (voluntary, involuntary)
    started: float | None = None  # creation time, seconds since the epoch


def psutil_sampler() -> Callable[[], ProcessSample]:
    """Reads this process, and only this process: psutil for CPU, memory and threads (``/proc/self`` on Linux),
    the process's own descriptors for its open files and TCP connections (:func:`own_descriptors`).

    Nothing machine-wide is read: psutil's connection list on Linux parses the whole machine's socket tables
    (``/proc/net/tcp*``), whose size is every socket on the host, so it is used only where psutil asks the
    process itself (macOS); elsewhere, without ``/proc/self/fd``, connections are not reported. The handle is
    re-made when the pid changes (after ``fork()``).
    """
    import psutil

    handle: list[Any] = []
    descriptors = own_descriptors if _getsockopt is not None else None
    per_process_connections = bool(psutil.MACOS)

    def sample() -> ProcessSample:
        pid = os.getpid()
        if not handle or handle[0].pid != pid:
            handle[:] = [psutil.Process(pid)]
        process = handle[0]
        with process.oneshot():
            times = process.cpu_times()
            fds: int | None
            established: int | None = None
            if descriptors is not None:
                fds, established = descriptors()
            else:
                fds = process.num_fds() if hasattr(process, "num_fds") else None
                if per_process_connections:
                    try:
                        established = sum(
                            1 for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED
                        )
                    except psutil.AccessDenied:
                        established = None
            memory = process.memory_info()
            switches = process.num_ctx_switches()
            return ProcessSample(
                pid=pid,
                cpu_seconds=times.user + times.system,
                rss_bytes=memory.rss,
                threads=process.num_threads(),
                open_fds=fds,
                connections=established,
                cpu_user=times.user,
                cpu_system=times.system,
                virtual_bytes=memory.vms,
                context_switches=(switches.voluntary, switches.involuntary),
                started=process.create_time(),
            )

    return sample


_PROC_FD = "/proc/self/fd"
_TCP_ESTABLISHED = 1  # tcpi_state, the first byte of struct tcp_info (Linux's TCP_ESTABLISHED)


def _libc_getsockopt() -> Callable[..., int] | None:
    """libc's ``getsockopt(2)``, called on a bare descriptor: a Python socket object made on the application's
    descriptor could change it (under ``socket.setdefaulttimeout()`` it makes the socket non-blocking)."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        call = ctypes.CDLL(None).getsockopt
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    call.restype = ctypes.c_int
    return call


_getsockopt = _libc_getsockopt() if os.path.isdir(_PROC_FD) else None


def own_descriptors() -> tuple[int | None, int | None]:
    """This process's open descriptors and its established TCP connections, from its own descriptors (Linux).

    Lists ``/proc/self/fd`` (the count psutil's ``num_fds()`` gives) and asks each descriptor its TCP state
    (``getsockopt(TCP_INFO)``, which only a TCP socket answers), without changing it. The cost grows with this
    process's descriptors (a few µs each), never with the host's sockets. ``(None, None)`` where there is no
    ``/proc/self/fd`` or no ``TCP_INFO``.

    Example:
        >>> import socket
        >>> server = socket.create_server(("127.0.0.1", 0))
        >>> before = own_descriptors()[1]
        >>> client = socket.create_connection(server.getsockname())
        >>> accepted, _ = server.accept()
        >>> own_descriptors()[1] - before  # both ends are this process's
        2
        >>> for each in (client, accepted, server):
        ...     each.close()
    """
    getsockopt = _getsockopt
    if getsockopt is None:
        return None, None
    try:
        names = os.listdir(_PROC_FD)
    except OSError:
        return None, None
    state = ctypes.create_string_buffer(1)
    size = ctypes.c_uint32(1)
    length = ctypes.byref(size)
    established = 0
    for name in names:
        size.value = 1
        # Anything but a TCP socket (a file, a pipe, a UDP or unix socket, a descriptor closed meanwhile) fails.
        if getsockopt(int(name), _TCP, _TCP_INFO, state, length) == 0 and state.raw[0] == _TCP_ESTABLISHED:
            established += 1
    return len(names), established


_TCP = socket.IPPROTO_TCP
_TCP_INFO: int = getattr(socket, "TCP_INFO", 0)


@dataclass
class Reading:
    """What one collection derives from a sample: the values every spec reads from."""

    sample: ProcessSample
    cpu_percent: float
    gc_collections: dict[int, int]
    gc_pause_s: dict[int, float]
    loop_lag_s: float | None
    # Growth since the previous collection of cumulative process totals (CPU seconds by mode, context switches).
    totals: dict[str, float] = field(default_factory=dict)
    now: float = 0.0  # wall-clock seconds since the epoch, for the uptime


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name, unit, kind and how to read its values (with tags) from a :class:`Reading`."""

    name: str
    unit: str
    kind: Literal["gauge", "counter"]
    read: Callable[[Reading], Pairs]
    description: str


def _one(value: float | None) -> Pairs:
    return [] if value is None else [(value, None)]


def _per_generation(values: dict[int, Any]) -> Pairs:
    return [(value, {"generation": str(generation)}) for generation, value in values.items() if value]


def _totals(reading: Reading, label: str, keys: tuple[tuple[str, str], ...]) -> Pairs:
    return [(reading.totals[key], {label: value}) for key, value in keys if reading.totals.get(key)]


def _uptime(reading: Reading) -> Pairs:
    started = reading.sample.started
    return [] if started is None else [(max(0.0, reading.now - started), None)]


_CPU_MODES = (("cpu.user", "user"), ("cpu.system", "system"))
_SWITCH_TYPES = (("switches.voluntary", "voluntary"), ("switches.involuntary", "involuntary"))

# The semantic conventions' process metrics, beside the seed's names (Prometheus: process_cpu_time_seconds_total,
# process_memory_usage_bytes, process_thread_count, process_open_file_descriptor_count, ...).
SEMCONV_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("process.cpu.time", "s", "counter", lambda r: _totals(r, "cpu.mode", _CPU_MODES),
               "Total CPU seconds broken down by different CPU modes."),
    MetricSpec("process.memory.usage", "By", "gauge", lambda r: _one(r.sample.rss_bytes),
               "The amount of physical memory in use."),
    MetricSpec("process.memory.virtual", "By", "gauge", lambda r: _one(r.sample.virtual_bytes),
               "The amount of committed virtual memory."),
    MetricSpec("process.thread.count", "{thread}", "gauge", lambda r: _one(r.sample.threads),
               "Process threads count."),
    MetricSpec("process.open_file_descriptor.count", "{file_descriptor}", "gauge", lambda r: _one(r.sample.open_fds),
               "Number of file descriptors in use by the process."),
    MetricSpec("process.context_switches", "{context_switch}", "counter",
               lambda r: _totals(r, "process.context_switch_type", _SWITCH_TYPES),
               "Number of times the process has been context switched."),
    MetricSpec("process.uptime", "s", "gauge", _uptime, "The time the process has been running."),
)  # fmt: skip


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("cpu_usage_percent", "%", "gauge", lambda r: _one(r.cpu_percent),
               "CPU used by the process since the previous collection, in percent of one core."),
    MetricSpec("memory_usage_mb", "MBy", "gauge", lambda r: _one(r.sample.rss_bytes / _MIB),
               "Resident memory of the process in megabytes."),
    MetricSpec("process_threads", "", "gauge", lambda r: _one(r.sample.threads), "OS threads of the process."),
    MetricSpec("process_open_fds", "", "gauge", lambda r: _one(r.sample.open_fds),
               "File descriptors the process has open."),
    MetricSpec("active_connections", "", "gauge",
               lambda r: [] if r.sample.connections is None else [(r.sample.connections, {"source": "process"})],
               "Connections currently open."),
    MetricSpec("python_gc_collections", "", "counter", lambda r: _per_generation(r.gc_collections),
               "Garbage collections, by generation."),
    MetricSpec("python_gc_pause_seconds", "s", "counter", lambda r: _per_generation(r.gc_pause_s),
               "Time spent in garbage collection, by generation."),
    MetricSpec("event_loop_lag_seconds", "s", "gauge", lambda r: _one(r.loop_lag_s),
               "How late the watched asyncio event loop ran a callback scheduled at the previous collection."),
    *SEMCONV_SPECS,
)  # fmt: skip


class ProcessReadings:
    """Derives rates and deltas between collections and records every spec through a monitor.

    Example:
        >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
        >>> monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))
        >>> readings = ProcessReadings(monitor, sample=psutil_sampler())
        >>> monitor.add_collection_hook(readings.collect)  # what SystemInstrumentor does
        >>> monitor.snapshot().value("process_threads") >= 1
        True
    """

    def __init__(
        self,
        monitor: PerformanceMonitor,
        *,
        sample: Callable[[], ProcessSample],
        clock: Callable[[], float] = time.monotonic,
        gc_stats: Callable[[], list[dict[str, Any]]] = gc.get_stats,
        specs: tuple[MetricSpec, ...] = SPECS,
    ) -> None:
        """Args:
        monitor: the monitor to record into (its methods are looked up at each collection).
        sample: reads the OS statistics (injected in tests; :func:`psutil_sampler` by default).
        clock: monotonic seconds, for the CPU rate and the event-loop probe.
        gc_stats: :func:`gc.get_stats` or a stand-in.
        specs: the metrics to record.
        """
        self._monitor = monitor
        self._sample, self._clock, self._gc_stats, self._specs = sample, clock, gc_stats, specs
        self._lock = threading.Lock()
        self._baseline: tuple[int, float, float] | None = None  # (pid, cpu seconds, clock)
        self._gc_seen: dict[int, int] = {}
        # Every generation present from the start: the GC callback never grows the dict a collection copies.
        self._pause_total: dict[int, float] = dict.fromkeys(range(len(gc_stats())), 0.0)
        self._pause_seen: dict[int, float] = {}
        self._totals_seen: dict[str, float] = {}
        self._totals_pid = 0
        self._gc_start = 0.0
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._lag: float | None = None
        self._probe_pending = False
        self._probe_sent = 0.0

    # --- between collections: only the garbage collector's callback runs ----------------------------
    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """A :data:`gc.callbacks` entry: adds up time spent per generation (two clock reads per collection)."""
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            generation = info.get("generation", 0)
            self._pause_total[generation] = (
                self._pause_total.get(generation, 0.0) + time.perf_counter() - self._gc_start
            )

    def after_fork_in_child(self) -> None:
        """The child's CPU time starts at zero: measure its rate from the fork, not from the parent's baseline."""
        # A collecting thread of the parent (the export ticker) may have held the lock at the fork.
        self._lock = threading.Lock()
        self._baseline = (os.getpid(), 0.0, self._clock())
        self._loop, self._lag, self._probe_pending = None, None, False

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Measure this loop's lag: a probe is scheduled on it at each collection."""
        self._loop, self._lag, self._probe_pending = weakref.ref(loop), None, False

    def watch_if_none(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch ``loop`` unless a live loop is watched already (the first loop to run wins)."""
        current = self._loop() if self._loop is not None else None
        if current is None or current.is_closed():
            self.watch(loop)

    # --- at collection ------------------------------------------------------------------------
    def collect(self) -> None:
        """Read once, derive, record every spec (the collection hook)."""
        with self._lock:
            reading = self._read()
        monitor = self._monitor
        for spec in self._specs:
            record = monitor.record_gauge if spec.kind == "gauge" else None
            for value, tags in spec.read(reading):
                if record is not None:
                    record(spec.name, value, tags)
                else:
                    monitor.increment_counter(spec.name, tags, value)

    def _read(self) -> Reading:
        sample, now = self._sample(), self._clock()
        baseline = self._baseline
        if baseline is None or baseline[0] != sample.pid:  # first reading, or forked without the hook
            baseline = (sample.pid, sample.cpu_seconds, now)
        elapsed = now - baseline[2]
        percent = max(0.0, 100.0 * (sample.cpu_seconds - baseline[1]) / elapsed) if elapsed > 0 else 0.0
        self._baseline = (sample.pid, sample.cpu_seconds, now)
        reading = Reading(sample, percent, self._gc_deltas(), self._pause_deltas(), self._probe_loop(now))
        reading.totals, reading.now = self._total_deltas(sample), time.time()
        return reading

    def _total_deltas(self, sample: ProcessSample) -> dict[str, float]:
        """Growth of the process's cumulative totals since the previous collection; the first collection (and
        the first in a forked child, whose totals restart at zero) reports the whole total."""
        totals: dict[str, float | None] = {
            "cpu.user": sample.cpu_user,
            "cpu.system": sample.cpu_system,
            "switches.voluntary": None if sample.context_switches is None else sample.context_switches[0],
            "switches.involuntary": None if sample.context_switches is None else sample.context_switches[1],
        }
        if self._totals_pid != sample.pid:
            self._totals_seen, self._totals_pid = {}, sample.pid
        deltas = {}
        for key, total in totals.items():
            if total is not None:
                deltas[key] = max(0.0, total - self._totals_seen.get(key, 0.0))
                self._totals_seen[key] = total
        return deltas

    def _gc_deltas(self) -> dict[int, int]:
        deltas = {}
        for generation, stats in enumerate(self._gc_stats()):
            total = int(stats.get("collections", 0))
            deltas[generation] = max(0, total - self._gc_seen.get(generation, 0))
            self._gc_seen[generation] = total
        return deltas

    def _pause_deltas(self) -> dict[int, float]:
        deltas = {}
        for generation, total in list(self._pause_total.items()):
            deltas[generation] = max(0.0, total - self._pause_seen.get(generation, 0.0))
            self._pause_seen[generation] = total
        return deltas

    def _probe_loop(self, now: float) -> float | None:
        loop = self._loop() if self._loop is not None else None
        if loop is None or loop.is_closed():
            return None
        if self._probe_pending:
            # The last probe has not run yet: the loop is blocked at least this long.
            return max(self._lag or 0.0, now - self._probe_sent)
        try:
            loop.call_soon_threadsafe(self._landed, now)
        except RuntimeError:  # the loop closed since the check: nothing to measure any more
            self._loop = None
            return None
        self._probe_pending, self._probe_sent = True, now
        return self._lag

    def _landed(self, scheduled: float) -> None:
        self._lag, self._probe_pending = max(0.0, self._clock() - scheduled), False
