"""``chat-turbo-metrics report``: its options (the report itself is :mod:`chat_turbo_metrics._cli.report`)."""

from __future__ import annotations

import argparse
import sys
from importlib.util import find_spec
from typing import Any


def register(commands: Any) -> None:
    """Add the ``report`` sub-command and its options to the ``chat-turbo-metrics`` parser."""
    report = commands.add_parser(
        "report",
        help="rates and percentiles of stored history, as tables and charts",
        description="Read the database exporter's history (SQLite, PostgreSQL) or the file exporter's JSON Lines "
        "and show per-metric rates and percentiles over a window, as tables and terminal charts; --png writes "
        "the same charts as PNG files.",
    )
    report.add_argument("store", help="a database URL, a SQLite file (the demo's chat_turbo_demo.db) or a .jsonl file")
    report.add_argument("--metric", action="append", default=[], help="a metric to report (repeat); default: key ones")
    report.add_argument("--since", default="1h", help="the window, up to the newest point: 90s, 15m, 2h, 7d (1h)")
    report.add_argument("--step", type=float, default=None, help="seconds per chart point (default: window / 40)")
    report.add_argument("--png", default=None, metavar="DIR", help="also write each chart as DIR/<metric>.png")
    report.add_argument("--no-charts", action="store_true", help="tables only in the terminal")


def run(args: argparse.Namespace) -> int:
    """Run the report with the parsed options; returns the exit status."""
    from chat_turbo_metrics._cli.report import run_report

    missing = [module for module in ("rich", "plotext", "matplotlib") if find_spec(module) is None]
    if missing:
        print(f"report: {', '.join(missing)} not installed: pip install 'chat-turbo-metrics[report]'", file=sys.stderr)
        return 2
    if args.step is not None and not args.step > 0:
        raise SystemExit(f"chat-turbo-metrics report: --step={args.step!r}: must be > 0")
    return run_report(args.store, args.metric, args.since, step_s=args.step, png=args.png, charts=not args.no_charts)
