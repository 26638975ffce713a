"""What one rule reads at one evaluation: the label sets whose condition holds, with their values.

Rules that share a metric, statistic and window (the usual case: one latency, several thresholds or
severities) share each series' statistic within an evaluation, and each (rule, series) pair keeps its alert
labels and fingerprint between evaluations, so evaluation cost grows with series, not with rules x buckets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from chat_turbo_metrics._core.naming import prometheus_label
from chat_turbo_metrics.alerting._model import fingerprint
from chat_turbo_metrics.alerting._rule_checks import UNSEEN_EVALUATIONS, close_names, unseen_problem, window_problem
from chat_turbo_metrics.alerting._statistics import Series, SeriesStore, statistic_value
from chat_turbo_metrics.alerting.promql import NotExportable, metric_kind
from chat_turbo_metrics.alerting.rules import CONDITIONS, STATISTICS, AlertRule

_log = logging.getLogger("chat_turbo_metrics.alerting")
SPANS = "spans:"
Results = dict[str, tuple[Mapping[str, str], float | None]]


def source_name(rule: AlertRule) -> str:
    """The store's name for what the rule reads (its metric, or its span selector)."""
    return f"{SPANS}{rule.spans.key!r}" if rule.spans is not None else rule.metric


def alert_labels(rule: AlertRule, series: Mapping[str, str], *, no_data: bool = False) -> dict[str, str]:
    """Series labels, then the rule's labels, then ``alertname`` and ``severity`` (Prometheus's precedence)."""
    labels = {**series, **rule.labels, "alertname": rule.name, "severity": rule.severity}
    if no_data:
        labels["no_data"] = "true"
    return labels


class RuleReader:
    """Reads rules' values from a :class:`SeriesStore`; call :meth:`begin` once per evaluation.

    It also says (once per rule) what makes a rule read nothing: a metric absent from the collected data after
    :data:`~._rule_checks.UNSEEN_EVALUATIONS` evaluations, a window too short for the evaluation interval, a
    statistic that does not apply to the metric's kind.
    """

    def __init__(self, store: SeriesStore, staleness_s: float, interval_s: float) -> None:
        self.store = store
        self.staleness_s = staleness_s
        self.interval_s = interval_s
        self._unseen: dict[str, int] = {}  # rule id -> evaluations without its metric; -1: seen, or said
        self._values: dict[Any, list[tuple[Series, float | None, bool]]] = {}
        self._statistics: dict[tuple[int, str, float], float | None] = {}
        self._memo: dict[Any, Any] = {}
        self._last: dict[tuple[str, str], float | None] = {}  # keep_last rules only
        self._warned: set[tuple[str, str]] = set()

    def begin(self) -> None:
        """Start an evaluation: statistics are shared within one evaluation only."""
        self._values.clear()
        self._statistics.clear()
        self._memo.clear()

    def forget(self, rule_id: str) -> None:
        """Drop what was remembered for a removed rule."""
        for key in [k for k in self._last if k[0] == rule_id]:
            del self._last[key]
        self._unseen.pop(rule_id, None)
        self._warned = {key for key in self._warned if key[0] != rule_id}

    def check_added(self, rule: AlertRule) -> None:
        """At ``add_rule``: warn now when the window is too short for a kind the rule already tells."""
        try:
            kind: str | None = metric_kind(rule) if rule.spans is None else "spans"
        except NotExportable:
            kind = None  # told by the first collection that has the metric
        problem = window_problem(rule, kind, self.interval_s)
        if problem is not None:
            self._warn_once(rule.id, problem)

    def _check_seen(self, rule: AlertRule) -> None:
        count = self._unseen.get(rule.id, 0)
        if count < 0 or rule.spans is not None:
            return
        if next(self.store.histories(rule.metric), None) is not None:
            self._unseen[rule.id] = -1
            return
        self._unseen[rule.id] = count + 1
        if count + 1 >= UNSEEN_EVALUATIONS:
            self._unseen[rule.id] = -1
            where = f"in the collected data after {count + 1} evaluations"
            close = close_names(rule.metric, self.store.known_names())
            self._warn_once(rule.id, unseen_problem(rule, close, where))

    def results(self, rule: AlertRule, now: float) -> Results:
        """Fingerprint -> (labels, value) of every label set whose condition holds at ``now``."""
        compare = CONDITIONS[rule.condition][0]
        threshold = rule.threshold
        results: Results = {}
        readings = self._readings(rule, now)
        self._check_seen(rule)
        for series, value, fresh in readings:
            if fresh or rule.missing_data == "ok":
                if rule.missing_data == "keep_last":
                    self._last[(rule.id, self._labels(rule, series)[1])] = value
                if value is not None and compare(value, threshold):
                    labels, fp = self._labels(rule, series)
                    results[fp] = (labels, value)
            else:
                self._missing(rule, *self._labels(rule, series), results)
        if not readings and rule.missing_data in ("alerting", "no_data"):
            labels = alert_labels(rule, {}, no_data=rule.missing_data == "no_data")
            results[fingerprint(labels)] = (labels, None)
        return results

    def _readings(self, rule: AlertRule, now: float) -> list[tuple[Series, float | None, bool]]:
        """(series, value, fresh) of every selected series; shared by rules reading the same thing."""
        key = (source_name(rule), rule.statistic, rule.window_s, tuple(sorted(rule.matchers.items())))
        readings = self._values.get(key)
        if readings is None:
            readings = self._values[key] = [
                (series, self._value(series, statistic, rule.window_s, now), now - series.last_seen <= self.staleness_s)
                for series, statistic in self._series(rule)
            ]
        return readings

    def _missing(self, rule: AlertRule, labels: dict[str, str], fp: str, results: Results) -> None:
        if rule.missing_data == "keep_last":
            last = self._last.get((rule.id, fp))
            if last is not None and CONDITIONS[rule.condition][0](last, rule.threshold):
                results[fp] = (labels, last)
        elif rule.missing_data == "no_data":
            no_data = {**labels, "no_data": "true"}
            results[fingerprint(no_data)] = (no_data, None)
        else:  # "alerting": absence is a breach
            results[fp] = (labels, None)

    def _series(self, rule: AlertRule) -> Iterator[tuple[Series, str]]:
        name = source_name(rule)
        matchers = [(prometheus_label(k), v) for k, v in rule.matchers.items()]
        for history in self.store.histories(name):
            statistic = rule.resolved_statistic(history.kind)
            if history.kind not in STATISTICS[statistic]:
                mismatch = f"statistic {statistic!r} does not apply to the {history.kind} {name!r}"
                self._warn_once(rule.id, f"{mismatch}; the rule reads nothing from it")
                continue
            short = window_problem(rule, history.kind, self.interval_s)
            if short is not None:
                self._warn_once(rule.id, short)
            for series in history.series.values():
                if not matchers or all(series.labels.get(k) == v for k, v in matchers):
                    yield series, statistic

    def _labels(self, rule: AlertRule, series: Series) -> tuple[dict[str, str], str]:
        cached: Any = series.cache.get(rule.id)
        if cached is None or cached[0] is not rule:  # a re-added or re-enabled rule is a new object
            labels = alert_labels(rule, series.labels)
            cached = series.cache[rule.id] = (rule, labels, fingerprint(labels))
        return cached[1], cached[2]

    def _value(self, series: Series, statistic: str, window_s: float, now: float) -> float | None:
        key = (id(series), statistic, window_s)  # series outlive the evaluation, so ids are unique within it
        try:
            return self._statistics[key]
        except KeyError:
            value = self._statistics[key] = statistic_value(
                series, statistic, now, window_s, self.staleness_s, memo=self._memo
            )
            return value

    def _warn_once(self, rule_id: str, problem: str) -> None:
        if (rule_id, problem) not in self._warned:
            self._warned.add((rule_id, problem))
            _log.warning("alert rule %r: %s", rule_id, problem)
