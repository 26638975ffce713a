"""``chat-turbo-metrics rules check FILE`` and ``rules export --format prometheus FILE``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chat_turbo_metrics.alerting._files import load_rules
from chat_turbo_metrics.alerting.promql import export_rule, prometheus_rules


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``rules`` sub-command to the CLI's parser."""
    rules = commands.add_parser("rules", help="check alert rule files, export them to Prometheus")
    actions = rules.add_subparsers(dest="rules_command", required=True)
    check = actions.add_parser("check", help="validate a TOML or YAML alert rule file")
    check.add_argument("file", type=Path)
    export = actions.add_parser("export", help="write equivalent Prometheus alerting rules")
    export.add_argument("file", type=Path, help="the TOML or YAML alert rule file")
    export.add_argument("--format", choices=["prometheus"], default="prometheus")
    export.add_argument("--output", "-o", type=Path, default=None, help="write here instead of stdout")
    export.add_argument("--interval", type=float, default=60.0, help="evaluation interval in seconds (60)")


def run(args: argparse.Namespace) -> int:
    """Run ``rules check`` or ``rules export``; ConfigurationError propagates to the CLI's handler."""
    rules = load_rules(args.file)
    if args.rules_command == "check":
        for rule in rules:
            try:
                export_rule(rule)
                note = ""
            except ValueError as reason:
                note = f" (not exportable to Prometheus: {reason})"
            state = "enabled" if rule.enabled else "disabled"
            print(f"{rule.id}: ok, {state}{note}")
        print(f"{args.file}: {len(rules)} rule(s) valid")
        return 0
    text = prometheus_rules(rules, interval_s=args.interval)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
