"""Checks of a valid rule against where it runs: is its metric there at all, can its window hold two collections.

Neither is an error (a metric may appear later; a short window works with a short enough interval), so both are
warnings: logged once by the alert manager, printed by ``rules check``. A typo in a metric name otherwise shows as
an alert that never fires.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from chat_turbo_metrics._core.naming import KNOWN_METRICS, infer_unit
from chat_turbo_metrics.alerting._statistics import aliases
from chat_turbo_metrics.alerting.rules import DEFAULT_STATISTICS, AlertRule

UNSEEN_EVALUATIONS = 3
"""Evaluations without a rule's metric after which the manager says so (a metric may appear after start-up)."""

_KINDS = ("counter", "gauge", "histogram", "updowncounter")


def window_problem(rule: AlertRule, kind: str | None, interval_s: float) -> str | None:
    """Why the rule's window is too short for one collection every ``interval_s``, or None.

    A windowed statistic (``rate``, ``increase``, the histogram and span statistics) needs two samples in its
    window; with collections ``interval_s`` apart, a window under twice that holds two only when every collection
    is on time, and otherwise reads nothing, silently. Prometheus's advice is four scrape intervals.

    Args:
        rule: the rule.
        kind: its metric's kind when known (``gauge``, ``counter``, ...), else None.
        interval_s: seconds between evaluations (the export interval).

    Example:
        >>> rule = AlertRule("errors", "Errors", "errors_total", "gt", 1.0, statistic="rate", window_s=60)
        >>> window_problem(rule, "counter", 60.0) is not None, window_problem(rule, "counter", 15.0)
        (True, None)
    """
    if rule.spans is not None:
        statistic: str | None = rule.statistic or DEFAULT_STATISTICS["spans"]
    elif rule.statistic is not None:
        statistic = rule.statistic
    else:
        statistic = DEFAULT_STATISTICS.get("histogram" if kind == "timer" else kind or "")
    if statistic in (None, "value") or rule.window_s >= 2 * interval_s:
        return None
    return (
        f"window {rule.window_s:g} s cannot hold two collections {interval_s:g} s apart, so {statistic!r} "
        f"often reads nothing; use a window of at least {2 * interval_s:g} s (Prometheus advises "
        f"{4 * interval_s:g} s)"
    )


def rule_names(rule: AlertRule) -> set[str]:
    """Every name the rule's metric may go by: as written, and its Prometheus name for each kind."""
    names = {rule.metric}
    for kind in _KINDS:
        names |= aliases(rule.metric, infer_unit(rule.metric), kind)
    if not rule.metric.endswith(("_seconds", "_duration", "_time")):  # a timer: `api_request` records
        names.add(f"{rule.metric}_duration_seconds")  # `api_request_duration`, exported with `_seconds`
    return names


def known_names() -> set[str]:
    """The names the core and its instrumentors record (the seed's table), under every alias."""
    names: set[str] = set()
    for name, known in KNOWN_METRICS.items():
        names |= aliases(name, infer_unit(name), known.kind)
    return names


def close_names(name: str, known: Iterable[str]) -> list[str]:
    """Up to three of ``known`` that look like ``name`` (a typo's likely intent), closest first."""
    return difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.8)


def unseen_problem(rule: AlertRule, close: list[str], where: str) -> str:
    """The warning for a rule whose metric is not ``where`` it should be, with the ``close`` names."""
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "; check its name"
    return f"metric {rule.metric!r} is not {where}{hint}"
