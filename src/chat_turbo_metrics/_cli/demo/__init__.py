"""The demo (``make demo``): a small Chat-Turbo service under the distro, realistic traffic, an alert's whole life.

The instrumentors are loaded from their ``opentelemetry_instrumentor`` entry points, as ``opentelemetry-instrument``
loads them; the pipeline is built by ``configure()`` (strict), so a taken Prometheus port stops the demo with one
line naming its holder instead of running unmeasured.

Everything runs on 127.0.0.1: the service (Starlette under uvicorn, a free port), its traffic, a webhook
receiver (a free port) and the Prometheus endpoint of the configured environment (``development``:
http://localhost:9464/metrics; ``METRICS_PROMETHEUS_PORT`` moves it). Metrics are kept as history in a SQLite
file that ``chat-turbo-metrics report`` reads back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chat_turbo_metrics._cli.demo.alerts import ALERT_LOGGER, WebhookReceiver, start_alerting
from chat_turbo_metrics._cli.demo.display import AlertLog, LiveView, print_report, route_stats
from chat_turbo_metrics._cli.demo.service import (
    FAILING_ROUTE,
    SLOW_ROUTE,
    SlowPhase,
    build_app,
    create_store,
    load_instrumentors,
)
from chat_turbo_metrics._cli.demo.traffic import ClientStats, drive
from chat_turbo_metrics._monitor import PerformanceMonitor, configure
from chat_turbo_metrics._pipeline.ports import PortInUseError


@dataclass(frozen=True)
class DemoOptions:
    """How long the demo runs and its (shortened) alert timings; the command line's options.

    Attributes:
        duration_s: seconds to run; 0 runs until Ctrl-C.
        environment: the ``configs/<environment>.toml`` to load (default: ``$CHAT_TURBO_ENV``, then development).
        interval_s: export and alert evaluation interval.
        slow_after_s: when the slow phase starts, from the start.
        slow_for_s: how long it lasts.
        alert_window_s: the window of the rule's p95 (the seed's: 5 minutes).
        alert_for_s: how long p95 must stay above 2 s before the alert fires (the seed's: 5 minutes).
        rate: requests per second.
        history: the SQLite file the database exporter writes.
        webhooks: more webhook URLs (loopback) to notify, beside the demo's own receiver.
    """

    duration_s: float = 0.0
    environment: str | None = None
    interval_s: float = 1.0
    slow_after_s: float = 10.0
    slow_for_s: float = 15.0
    alert_window_s: float = 20.0
    alert_for_s: float = 8.0
    rate: float = 25.0
    history: str = "chat_turbo_demo.db"
    webhooks: tuple[str, ...] = ()


def _start(options: DemoOptions, history_url: str) -> PerformanceMonitor | None:
    """The configured monitor, or None after printing why the demo cannot start."""
    overrides: dict[str, Any] = {
        "export_interval_s": options.interval_s,
        "metrics_exporters": ("prometheus", "chat_turbo_database"),
        "database_url": history_url,
    }
    if options.environment:
        overrides["environment"] = options.environment
    try:
        return configure(**overrides)
    except PortInUseError as error:
        # Most often a second demo (or another program) holds the Prometheus port; the message says which.
        print(f"demo not started: {error}.", file=sys.stderr)
        return None
    except OSError as error:
        print(
            f"demo not started: {error.strerror or error}. "
            "Free the port or choose another with METRICS_PROMETHEUS_PORT=<port>.",
            file=sys.stderr,
        )
        return None


class _Server:
    """uvicorn serving the app on 127.0.0.1 (a free port) on a thread of its own (no signal handlers there)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._socket])), name="demo-service", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def _console() -> Any:
    from rich.console import Console

    # Piped output (a log file, a test) gets whole lines wide enough for the report's table.
    return Console() if sys.stdout.isatty() else Console(width=120, no_color=True, soft_wrap=True)


async def _run(options: DemoOptions, base_url: str, stats: ClientStats, view: LiveView, console: Any) -> None:
    from rich.live import Live

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    traffic = asyncio.create_task(drive(base_url, stats, stop, rate=options.rate))
    deadline = None if options.duration_s <= 0 else time.monotonic() + options.duration_s
    with Live(view, console=console, refresh_per_second=4, transient=not console.is_terminal):
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.25)
        stop.set()
        await traffic
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)


def run_demo(options: DemoOptions | None = None) -> int:
    """Run the demo until ``options.duration_s`` has passed or Ctrl-C; print the report.

    Returns:
        The exit status: 0, or 1 when the monitor could not start (e.g. its Prometheus port is taken).
    """
    options = options or DemoOptions()
    try:
        return _run_demo(options)
    except KeyboardInterrupt:  # before the demo's own handler was installed (start-up) or after it (shutdown)
        print("demo interrupted", file=sys.stderr)
        return 130


def _run_demo(options: DemoOptions) -> int:
    history = Path(options.history).resolve()
    monitor = _start(options, f"sqlite:///{history}")
    if monitor is None:
        return 1
    console = _console()
    _route_alert_log(console)
    instrumentors, missing = load_instrumentors()
    origin, started = time.monotonic(), time.time()
    log = AlertLog(console, started)
    receiver = WebhookReceiver(on_delivery=log.receiver("demo"))
    alerting = start_alerting(
        monitor, [receiver.url, *options.webhooks], options.alert_window_s, options.alert_for_s, log.on_transition
    )
    slow = SlowPhase(origin, options.slow_after_s, options.slow_for_s)
    server = _Server(build_app(monitor, create_store(), slow))
    metrics_urls = [str(getattr(e, "url", e)) for e in (monitor.pipeline.pull_exporters if monitor.pipeline else ())]
    _print_header(
        console,
        options=options,
        port=server.port,
        metrics_urls=metrics_urls,
        receiver_url=receiver.url,
        history=history,
        missing=missing,
    )
    stats = ClientStats()
    view = LiveView(stats, alerting.alerts, origin, options.duration_s, slow.active)
    try:
        asyncio.run(_run(options, f"http://127.0.0.1:{server.port}", stats, view, console))
    finally:
        server.stop()
        alerting.flush(timeout_s=5)
        alerting.stop()
        routes = route_stats(monitor.snapshot().records())
        receiver.close()
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
        monitor.shutdown()  # the last export reaches the history
    print_report(
        console,
        seconds=time.monotonic() - origin,
        routes=routes,
        log=log,
        history=f"sqlite:///{history}",
        receiver_url=receiver.url,
    )
    return 0


def _route_alert_log(console: Any) -> None:
    """LogNotifier's records go to the terminal, above the live panel."""
    from rich.logging import RichHandler

    class FirstLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:  # the title; the JSON payload went to the webhook
            return f"log {record.name}: {record.getMessage().split(' {', 1)[0]}"

    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False, highlighter=None)
    handler.setFormatter(FirstLine())
    logger = logging.getLogger(ALERT_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _print_header(
    console: Any,
    *,
    options: DemoOptions,
    port: int,
    metrics_urls: list[str],
    receiver_url: str,
    history: Path,
    missing: list[str],
) -> None:
    print_ = console.print
    print_(f"Chat-Turbo demo service on http://127.0.0.1:{port} (Starlette under uvicorn)", highlight=False)
    for url in metrics_urls:
        print_(f"Prometheus metrics: {url}", highlight=False)
        print_(f"status page: {url.rsplit('/', 1)[0]}/status", highlight=False)
    print_(f"webhook receiver: {receiver_url}", highlight=False)
    print_(f"history: sqlite:///{history} (read it back: chat-turbo-metrics report {history})", highlight=False)
    for extra in missing:
        print_(f"note: the {extra} instrumentor is not installed (pip install -e instrumentors/{extra})")
    print_(
        f"{FAILING_ROUTE} fails on purpose (503), about 5% of the traffic: those are the only errors.\n"
        f"At +{options.slow_after_s:g} s, GET {SLOW_ROUTE} turns slow for {options.slow_for_s:g} s: the seed rule "
        f"high-response-time (p95 over {options.alert_window_s:g} s > 2 s for {options.alert_for_s:g} s; the seed "
        "says 5 minutes for both) goes pending, fires and resolves, to the log and the webhook receiver.",
        highlight=False,
    )
