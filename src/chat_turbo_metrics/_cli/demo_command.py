"""``chat-turbo-metrics demo``: its options (the demo itself is :mod:`chat_turbo_metrics._cli.demo`)."""

from __future__ import annotations

import argparse
import sys
from importlib.util import find_spec
from typing import Any
from urllib.parse import urlsplit

from chat_turbo_metrics._core.endpoints import is_loopback


def _refuse(reason: str) -> int:
    print(f"chat-turbo-metrics demo: {reason}", file=sys.stderr)
    return 2


def register(commands: Any) -> None:
    """Add the ``demo`` sub-command and its options to the ``chat-turbo-metrics`` parser."""
    from chat_turbo_metrics._cli.demo import DemoOptions

    defaults = DemoOptions()
    demo = commands.add_parser(
        "demo",
        help="run an instrumented Chat-Turbo service with realistic traffic and an alert's whole life",
        description="A Chat-Turbo service under the distro, traffic, a slow phase that trips the seed's "
        "high-response-time rule (pending, firing, resolved), and a report at the end (or at Ctrl-C).",
    )
    demo.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds to run (0: until Ctrl-C)")
    demo.add_argument("--environment", default=None, help="configs/<environment>.toml to load")
    demo.add_argument("--interval", type=float, default=defaults.interval_s, help="export and evaluation seconds")
    demo.add_argument("--slow-after", type=float, default=defaults.slow_after_s, help="slow phase start (s)")
    demo.add_argument("--slow-for", type=float, default=defaults.slow_for_s, help="slow phase length (s)")
    demo.add_argument("--alert-window", type=float, default=defaults.alert_window_s, help="the rule's p95 window (s)")
    demo.add_argument("--alert-for", type=float, default=defaults.alert_for_s, help="the rule's `for` (s)")
    demo.add_argument("--rate", type=float, default=defaults.rate, help="requests per second")
    demo.add_argument("--history", default=defaults.history, help="SQLite file of the metric history")
    demo.add_argument("--webhook", action="append", default=[], help="another webhook URL to notify (loopback)")


def run(args: argparse.Namespace) -> int:
    """Run the demo with the parsed options; returns the exit status."""
    from chat_turbo_metrics._cli.demo import DemoOptions, run_demo

    for name in ("duration", "interval", "slow_after", "slow_for", "alert_window", "alert_for", "rate"):
        value = getattr(args, name)
        positive = name in ("interval", "rate", "alert_window")
        if not (value > 0 if positive else value >= 0):  # also refuses NaN
            return _refuse(f"--{name.replace('_', '-')}={value!r}: must be {'> 0' if positive else '>= 0'}")
    for url in args.webhook:
        host = urlsplit(url).hostname or ""
        if urlsplit(url).scheme not in ("http", "https") or not is_loopback(host):
            return _refuse(f"--webhook {url!r}: the demo only notifies loopback addresses (127.0.0.1, ::1, localhost)")
    missing = [module for module in ("starlette", "uvicorn", "httpx", "rich") if find_spec(module) is None]
    if missing:
        print(
            f"demo not started: {', '.join(missing)} not installed; `make demo` installs them, "
            "or pip install 'chat-turbo-metrics[demo]' with the http, database and system instrumentors",
            file=sys.stderr,
        )
        return 2
    return run_demo(
        DemoOptions(
            duration_s=args.duration,
            environment=args.environment,
            interval_s=args.interval,
            slow_after_s=args.slow_after,
            slow_for_s=args.slow_for,
            alert_window_s=args.alert_window,
            alert_for_s=args.alert_for,
            rate=args.rate,
            history=args.history,
            webhooks=tuple(args.webhook),
        )
    )
