"""``chat-turbo-metrics rules check FILE`` and ``rules export --format prometheus|alertmanager FILE``.

``rules check`` reports every bad rule (not just the first), and warns about valid rules that would read nothing:
a metric name that is not among the known ones (those of a running service's ``/metrics`` or a saved scrape with
``--metrics``, else the names the core and its instrumentors record), and a window too short for the evaluation
interval. Errors make it exit 2; warnings do not, except an unknown name when ``--metrics`` was given.
``rules export --format alertmanager`` writes the file's ``[[routes]]`` as an ``alertmanager.yml``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chat_turbo_metrics._core.config import ConfigurationError
from chat_turbo_metrics._core.endpoints import parse_secret_url
from chat_turbo_metrics.alerting._delivery import DeliveryError
from chat_turbo_metrics.alerting._files import check_rules, load_rules
from chat_turbo_metrics.alerting._route_files import alertmanager_config, load_route_file
from chat_turbo_metrics.alerting._rule_checks import (
    close_names,
    known_names,
    rule_names,
    unseen_problem,
    window_problem,
)
from chat_turbo_metrics.alerting.notifiers._http import get
from chat_turbo_metrics.alerting.promql import NotExportable, export_rule, metric_kind, prometheus_rules
from chat_turbo_metrics.alerting.rules import MAX_DURATION_S, AlertRule, parse_duration


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``rules`` sub-command to the CLI's parser."""
    rules = commands.add_parser("rules", help="check alert rule files, export them to Prometheus")
    actions = rules.add_subparsers(dest="rules_command", required=True)
    check = actions.add_parser("check", help="validate a TOML or YAML alert rule file")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--metrics",
        default=None,
        help="a /metrics URL of the running service, or a file holding a scrape: rule metrics must be among its names",
    )
    check.add_argument("--interval", type=_interval, default=60.0, help="evaluation interval in seconds (60)")
    export = actions.add_parser("export", help="write equivalent Prometheus rules, or the routes for Alertmanager")
    export.add_argument("file", type=Path, help="the TOML or YAML alert rule file")
    export.add_argument(
        "--format",
        choices=["prometheus", "alertmanager"],
        default="prometheus",
        help="prometheus: the [[rules]] as a rule file; alertmanager: the [[routes]] as an alertmanager.yml",
    )
    export.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="RECEIVER=URL",
        help="with --format alertmanager: send this receiver's alerts to a webhook (repeat for each receiver)",
    )
    export.add_argument("--output", "-o", type=Path, default=None, help="write here instead of stdout")
    export.add_argument("--interval", type=_interval, default=60.0, help="evaluation interval in seconds (60)")


def _interval(text: str) -> float:
    try:
        seconds = parse_duration(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    if not 0.001 <= seconds <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 0.001 s")
    return seconds


def run(args: argparse.Namespace) -> int:
    """Run ``rules check`` or ``rules export``; ConfigurationError propagates to the CLI's handler."""
    if args.rules_command == "check":
        return _check(args.file, args.metrics, args.interval)
    if args.format == "alertmanager":
        text = _alertmanager(args.file, args.webhook)
    else:
        text = prometheus_rules(load_rules(args.file), interval_s=args.interval)
    if args.output is None:
        sys.stdout.write(text)
    else:
        # An alertmanager.yml may hold webhook URLs with tokens: only this user may read what is written.
        descriptor = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
    return 0


def _alertmanager(path: Path, webhooks: list[str]) -> str:
    given: dict[str, str] = {}
    for item in webhooks:
        name, equals, url = item.partition("=")
        if not equals or not name:
            raise ConfigurationError("--webhook: expected RECEIVER=URL")
        given[name] = url
    try:
        return alertmanager_config(load_route_file(path), given)
    except ValueError as error:
        raise ConfigurationError(f"--webhook: {error}") from None


def _check(path: Path, metrics: str | None, interval_s: float) -> int:
    rules, rule_errors = check_rules(path)
    errors: list[ConfigurationError] = list(rule_errors)
    try:
        receivers = load_route_file(path).receivers
    except ConfigurationError as problem:
        errors.append(problem)
        receivers = ()
    known, where = (_scraped_names(metrics), f"in {metrics}") if metrics else (known_names(), "a known metric name")
    unknown = 0
    for rule in rules:
        state = "enabled" if rule.enabled else "disabled"
        print(f"{rule.id}: ok, {state}{_export_note(rule)}")
        name = _name_problem(rule, known, where, strict=metrics is not None)
        unknown += name is not None
        for warning in (name, window_problem(rule, _kind(rule), interval_s)):
            if warning is not None:
                print(f"{rule.id}: warning: {warning}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    routes = f"; routes to {', '.join(receivers)}" if receivers else ""
    print(f"{path}: {len(rules)} rule(s) valid, {len(errors)} invalid{routes}")
    return 2 if errors or (metrics is not None and unknown) else 0


def _export_note(rule: AlertRule) -> str:
    try:
        export_rule(rule)
    except NotExportable as reason:
        return f" (not exportable to Prometheus: {reason})"
    return ""


def _name_problem(rule: AlertRule, known: set[str], where: str, *, strict: bool) -> str | None:
    if rule.spans is not None or not rule_names(rule).isdisjoint(known):
        return None
    close = close_names(rule.metric, known)
    # Without a scrape to compare with, only a likely typo is worth a warning: custom metric names are normal.
    return unseen_problem(rule, close, where) if strict or close else None


def _kind(rule: AlertRule) -> str | None:
    if rule.spans is not None:
        return "spans"
    try:
        return metric_kind(rule)
    except NotExportable:
        return None


def _scraped_names(source: str) -> set[str]:
    """Metric family and sample names of a Prometheus text exposition: a URL's answer or a file's text."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        if source.startswith(("http://", "https://")):
            text = get(parse_secret_url(source), timeout_s=10.0).decode("utf-8", "replace")
        else:
            text = Path(source).read_text(encoding="utf-8")
        names: set[str] = set()
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
    except (OSError, ValueError, DeliveryError) as error:
        raise ConfigurationError(f"--metrics: cannot read metric names: {error}") from None
    return names
