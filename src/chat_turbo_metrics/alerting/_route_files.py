"""Where alerts go, as data: ``[[routes]]`` and ``[[inhibit_rules]]`` in the rule file, beside ``[[rules]]``.

One file says what fires and where it goes, in process and after the hand-over. In process,
:meth:`AlertManager.load_routes` adds each route to the dispatcher, sending to the notifier the service gives for
the route's ``receiver`` (notifiers hold secrets, so they come from code or the environment, never the file). For
Alertmanager, ``chat-turbo-metrics rules export --format alertmanager`` writes the same routes as an
``alertmanager.yml``: each route a child of the root with ``continue: true``, because in process every matching
route gets the alert; an alert no route matches goes to the root's receiver, which has no integration and sends
nothing, as in process.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "alert_rules.toml"
    >>> _ = path.write_text('[[routes]]\\nreceiver = "oncall"\\nmatchers = [\\'severity="critical"\\']\\n')
    >>> (route,) = load_route_file(path).routes
    >>> route.receiver, [str(m) for m in route.matchers], route.group_wait_s
    ('oncall', ['severity="critical"'], 30.0)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chat_turbo_metrics._core.config import ConfigurationError
from chat_turbo_metrics._core.endpoints import parse_secret_url
from chat_turbo_metrics.alerting._files import read_rule_file
from chat_turbo_metrics.alerting._matchers import Matcher, parse_matchers
from chat_turbo_metrics.alerting._routing import ALL_LABELS, Route
from chat_turbo_metrics.alerting.promql import prometheus_duration, yaml_string
from chat_turbo_metrics.alerting.rules import parse_duration

if TYPE_CHECKING:
    from chat_turbo_metrics.alerting._delivery import Sender
    from chat_turbo_metrics.alerting._dispatch import Dispatcher

UNROUTED = "unrouted"
"""The root receiver of an exported ``alertmanager.yml``: alerts no route matches; it has no integration."""

_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RECEIVER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Defaults are Dispatcher.add_route's (Alertmanager's).
_ROUTE_KEYS = {
    "receiver": None,
    "matchers": None,
    "group_by": ["alertname"],
    "group_wait": 30.0,
    "group_interval": 300.0,
    "repeat_interval": 14400.0,
    "send_resolved": True,
}
_INHIBIT_KEYS = ("source_matchers", "target_matchers", "equal")


@dataclass(frozen=True)
class RouteSpec:
    """One ``[[routes]]`` table: the arguments of :meth:`Dispatcher.add_route` for the notifier named ``receiver``."""

    receiver: str
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...]
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    send_resolved: bool


@dataclass(frozen=True)
class InhibitSpec:
    """One ``[[inhibit_rules]]`` table (see :meth:`Dispatcher.add_inhibition`)."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]


@dataclass(frozen=True)
class RouteFile:
    """The routes and inhibition rules of a rule file."""

    routes: tuple[RouteSpec, ...]
    inhibitions: tuple[InhibitSpec, ...]

    @property
    def receivers(self) -> tuple[str, ...]:
        """The receivers the routes name, in file order."""
        return tuple(route.receiver for route in self.routes)

    def apply(self, dispatcher: Dispatcher, notifiers: Mapping[str, Sender]) -> list[Route]:
        """Add every route (named after its receiver) and inhibition to ``dispatcher``; nothing when one is wrong.

        Raises:
            ConfigurationError: a receiver has no notifier in ``notifiers``, or a route of that name exists.
        """
        missing = [name for name in self.receivers if name not in notifiers]
        if missing:
            raise ConfigurationError(f"receivers {missing}: no notifier given for them (give one per receiver)")
        taken = sorted({route.name for route in dispatcher.routes} & set(self.receivers))
        if taken:
            raise ConfigurationError(f"receivers {taken}: the dispatcher already has routes of these names")
        added = [
            dispatcher.add_route(
                notifiers[spec.receiver],
                matchers=spec.matchers,
                group_by=spec.group_by,
                group_wait_s=spec.group_wait_s,
                group_interval_s=spec.group_interval_s,
                repeat_interval_s=spec.repeat_interval_s,
                send_resolved=spec.send_resolved,
                name=spec.receiver,
            )
            for spec in self.routes
        ]
        for inhibition in self.inhibitions:
            dispatcher.add_inhibition(inhibition.source, inhibition.target, inhibition.equal)
        return added


def load_route_file(path: str | Path) -> RouteFile:
    """The ``[[routes]]`` and ``[[inhibit_rules]]`` of a TOML or YAML rule file (none: an empty :class:`RouteFile`).

    Raises:
        ConfigurationError: unreadable file, bad syntax, or a bad table; the message names the file, the table
            (``routes[2]``) and the key.
    """
    path = Path(path)
    data = read_rule_file(path)
    data = data if isinstance(data, Mapping) else {}
    routes = tuple(_parse(_route, data, "routes", path))
    receivers = [route.receiver for route in routes]
    repeated = sorted({name for name in receivers if receivers.count(name) > 1})
    if repeated:
        raise ConfigurationError(f"{path}: receivers {repeated} have more than one route (one route per receiver)")
    if UNROUTED in receivers:
        raise ConfigurationError(f"{path}: receiver {UNROUTED!r} is reserved for alerts no route matches")
    return RouteFile(routes, tuple(_parse(_inhibition, data, "inhibit_rules", path)))


def _parse(parse: Any, data: Mapping[str, Any], key: str, path: Path) -> list[Any]:
    tables = data.get(key, [])
    if not isinstance(tables, list):
        raise ConfigurationError(f"{path}: `{key}` must be a list of tables")
    parsed = []
    for index, table in enumerate(tables):
        where = f"{path}: {key}[{index}]"
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{where}: expected a table")
        try:
            parsed.append(parse(table))
        except (ValueError, TypeError) as error:
            raise ConfigurationError(f"{where}: {error}") from None
    return parsed


def _route(table: Mapping[str, Any]) -> RouteSpec:
    unknown = sorted(set(table) - set(_ROUTE_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown} (expected {', '.join(_ROUTE_KEYS)})")
    values = {**_ROUTE_KEYS, **table}
    receiver = values["receiver"]
    if not isinstance(receiver, str) or not _RECEIVER.match(receiver):
        raise ValueError(f"receiver={receiver!r}: expected a name of letters, digits, '_', '.', '-'")
    durations = {}
    for key in ("group_wait", "group_interval", "repeat_interval"):
        try:
            durations[key] = parse_duration(values[key])
        except ValueError as error:
            raise ValueError(f"{key}={values[key]!r}: {error}") from None
        if key != "group_wait" and durations[key] == 0:
            raise ValueError(f"{key}={values[key]!r}: must be > 0")
    if not isinstance(values["send_resolved"], bool):
        raise ValueError(f"send_resolved={values['send_resolved']!r}: expected true or false")
    return RouteSpec(
        receiver,
        _matchers(values["matchers"], "matchers"),
        _labels(values["group_by"], "group_by", allow_all=True),
        durations["group_wait"],
        durations["group_interval"],
        durations["repeat_interval"],
        values["send_resolved"],
    )


def _inhibition(table: Mapping[str, Any]) -> InhibitSpec:
    unknown = sorted(set(table) - set(_INHIBIT_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown} (expected {', '.join(_INHIBIT_KEYS)})")
    return InhibitSpec(
        _matchers(table.get("source_matchers"), "source_matchers"),
        _matchers(table.get("target_matchers"), "target_matchers"),
        _labels(table.get("equal", []), "equal"),
    )


def _matchers(value: object, key: str) -> tuple[Matcher, ...]:
    if value is not None and not isinstance(value, (list, Mapping)):
        raise ValueError(f"{key}: expected a list of matchers ('severity=\"critical\"') or a table of equalities")
    matchers = parse_matchers(value, key)
    for matcher in matchers:
        if not _LABEL.match(matcher.label):
            raise ValueError(f"{key}: {matcher.label!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    return matchers


def _labels(value: object, key: str, *, allow_all: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key}={value!r}: expected a list of label names")
    for label in value:
        if not _LABEL.match(label) and not (allow_all and label == ALL_LABELS):
            raise ValueError(f"{key}: {label!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    return tuple(value)


def alertmanager_config(routes: RouteFile, webhooks: Mapping[str, str] | None = None) -> str:
    """An ``alertmanager.yml`` that routes as the in-process dispatcher does with ``routes``.

    Args:
        routes: the rule file's routes and inhibition rules.
        webhooks: receiver -> webhook URL (Alertmanager's webhook speaks the JSON our ``WebhookNotifier``
            sends); receivers without one are written with no integration, for you to add theirs.

    Returns:
        The file's text; ``amtool check-config`` accepts it.

    Raises:
        ValueError: a webhook names a receiver no route uses, or its URL is not an http(s) URL.
    """
    webhooks = dict(webhooks or {})
    unknown = sorted(set(webhooks) - set(routes.receivers))
    if unknown:
        raise ValueError(f"webhook receivers {unknown}: no route names them (routes name {list(routes.receivers)})")
    for name, url in webhooks.items():
        try:
            parse_secret_url(url)
        except ValueError as error:
            raise ValueError(f"webhook {name}: {error}") from None
    lines = [
        "# Generated by `chat-turbo-metrics rules export --format alertmanager` from the rule file's routes.",
        "# Every route continues: an alert goes to each route it matches, as in process; one that matches",
        f"# none goes to {UNROUTED!r}, which sends nothing.",
        "route:",
        f"  receiver: {yaml_string(UNROUTED)}",
        "  routes:" if routes.routes else "  routes: []",
    ]
    for spec in routes.routes:
        lines += [
            f"    - receiver: {yaml_string(spec.receiver)}",
            f"      matchers: {_flow(_am_matcher(m) for m in spec.matchers)}",
            f"      group_by: {_flow(spec.group_by)}",
            f"      group_wait: {prometheus_duration(spec.group_wait_s)}",
            f"      group_interval: {prometheus_duration(spec.group_interval_s)}",
            f"      repeat_interval: {prometheus_duration(spec.repeat_interval_s)}",
            "      continue: true",
        ]
    if routes.inhibitions:
        lines.append("inhibit_rules:")
    for inhibition in routes.inhibitions:
        lines += [
            f"  - source_matchers: {_flow(_am_matcher(m) for m in inhibition.source)}",
            f"    target_matchers: {_flow(_am_matcher(m) for m in inhibition.target)}",
            f"    equal: {_flow(inhibition.equal)}",
        ]
    lines += ["receivers:", f"  - name: {yaml_string(UNROUTED)}"]
    for spec in routes.routes:
        lines.append(f"  - name: {yaml_string(spec.receiver)}")
        if spec.receiver in webhooks:
            lines += [
                "    webhook_configs:",
                f"      - url: {yaml_string(webhooks[spec.receiver].strip())}",
                f"        send_resolved: {'true' if spec.send_resolved else 'false'}",
            ]
        else:
            lines.append("    # no --webhook given: add its webhook_configs, slack_configs or email_configs")
    return "\n".join(lines) + "\n"


def _am_matcher(matcher: Matcher) -> str:
    """``label op "value"`` with the value escaped as Alertmanager's matcher parser reads it back."""
    value = matcher.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{matcher.label}{matcher.op}"{value}"'


def _flow(items: Sequence[str] | Any) -> str:
    return "[" + ", ".join(yaml_string(item) for item in items) + "]"
