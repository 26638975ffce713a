"""Alert rule files: ``[[rules]]`` tables in TOML, or a ``rules:`` list in YAML (with PyYAML)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chat_turbo_metrics._core.config import ConfigurationError
from chat_turbo_metrics.alerting.rules import AlertRule, RuleError


def load_rules(path: str | Path) -> list[AlertRule]:
    """Rules from a TOML (``[[rules]]`` tables) or YAML (``rules:`` list) file.

    Args:
        path: a ``.toml``, ``.yaml`` or ``.yml`` file.

    Returns:
        The rules in file order.

    Raises:
        ConfigurationError: unreadable file, bad syntax, or a bad rule (a :class:`RuleError` naming the file,
            the rule's id and the field); duplicate ids in one file.
    """
    rules, errors = check_rules(path)
    if errors:
        raise errors[0]
    return rules


def check_rules(path: str | Path) -> tuple[list[AlertRule], list[RuleError]]:
    """Every valid rule of a rule file, and a :class:`RuleError` for each bad one (``rules check`` shows all).

    Args:
        path: a ``.toml``, ``.yaml`` or ``.yml`` file.

    Returns:
        The valid rules in file order, and the errors in file order (each names the file, rule id and field).

    Raises:
        ConfigurationError: unreadable file, bad syntax, or no ``rules`` list.
    """
    path = Path(path)
    data = read_rule_file(path)
    specs = data.get("rules") if isinstance(data, Mapping) else None
    if not isinstance(specs, list):
        raise ConfigurationError(f"{path}: expected a list `rules` of rule tables")
    rules: list[AlertRule] = []
    errors: list[RuleError] = []
    seen: set[str] = set()
    for spec in specs:
        try:
            rule = AlertRule.from_dict(spec)
        except RuleError as error:
            errors.append(RuleError(error.rule_id, error.field, f"{error.problem} (in {path})"))
            continue
        if rule.id in seen:
            errors.append(RuleError(rule.id, "id", f"duplicate id in {path}"))
            continue
        seen.add(rule.id)
        rules.append(rule)
    return rules, errors


def read_rule_file(path: Path) -> Any:
    """The parsed content of a TOML or YAML rule file (rules, and the routes ``_route_files`` reads)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(f"{path}: cannot read alert rules: {error.strerror}") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigurationError(f"{path}: invalid TOML: {error}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigurationError(f"{path}: YAML rule files need PyYAML (pip install pyyaml)") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigurationError(f"{path}: invalid YAML: {error}") from None
    raise ConfigurationError(f"{path}: alert rules must be a .toml, .yaml or .yml file")
