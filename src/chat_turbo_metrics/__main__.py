"""``python -m chat_turbo_metrics`` / ``chat-turbo-metrics``: the demo and small tools."""

from __future__ import annotations

import argparse
import sys

from chat_turbo_metrics._core.config import ConfigurationError


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="chat-turbo-metrics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    from chat_turbo_metrics._cli import demo_command, report_command

    demo_command.register(commands)
    report_command.register(commands)
    config = commands.add_parser(
        "config", help="check and print the configuration, one setting a line, with its source"
    )
    config.add_argument("--environment", default=None, help="configs/<environment>.toml to load")
    from chat_turbo_metrics._cli import rules as alerting_cli

    alerting_cli.register(commands)
    commands.add_parser("doctor", help="check endpoints, exporters and metrics").add_argument(
        "--json", action="store_true"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "rules":
            return alerting_cli.run(args)
        if args.command == "demo":
            return demo_command.run(args)
        if args.command == "report":
            return report_command.run(args)
        if args.command == "doctor":
            from chat_turbo_metrics._cli.doctor import run_doctor

            return run_doctor(as_json=args.json)
        from chat_turbo_metrics._cli.config import run_config_command

        run_config_command(args.environment, None, sys.stdout)
        return 0
    except ConfigurationError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
