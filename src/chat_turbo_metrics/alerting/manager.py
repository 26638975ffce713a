"""The seed's ``AlertManager``: rules evaluated against the pipeline's collected data, and the alert lifecycle."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from opentelemetry import metrics
from opentelemetry.sdk.metrics.export import MetricsData

from chat_turbo_metrics._core import forks
from chat_turbo_metrics._pipeline.attached import ALERT_MANAGERS
from chat_turbo_metrics._pipeline.globals import process_monitor
from chat_turbo_metrics.alerting._background import CycleSubscriber, Monitored, register_active_gauge
from chat_turbo_metrics.alerting._dispatch import Dispatcher
from chat_turbo_metrics.alerting._engine import Change, RuleEvaluator
from chat_turbo_metrics.alerting._files import load_rules
from chat_turbo_metrics.alerting._lifecycle import History, Silence, Silences
from chat_turbo_metrics.alerting._model import Alert, AlertListener, AlertTransition, EvaluationHook
from chat_turbo_metrics.alerting._notifying import Notifying
from chat_turbo_metrics.alerting._reading import SPANS, RuleReader
from chat_turbo_metrics.alerting._statistics import STALENESS_S, SeriesStore
from chat_turbo_metrics.alerting.rules import AlertRule, RuleError
from chat_turbo_metrics.alerting.spans import AlertingSpanProcessor

__all__ = ["AlertManager"]

_log = logging.getLogger("chat_turbo_metrics.alerting")


class AlertManager(Notifying):
    """Evaluates alert rules against the pipeline's data with Prometheus's semantics; tracks each alert's life.

    Example:
        >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
        >>> monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))  # default: the process-wide one
        >>> manager = AlertManager(monitor)
        >>> rule = manager.add_rule({"id": "high-response-time", "name": "High API Response Time",
        ...     "metric": "http_request_duration_seconds", "condition": "gt", "threshold": 2.0,
        ...     "duration": 300, "severity": "high", "enabled": True})
        >>> for now in (0, 60):  # p95 over 5 minutes needs two evaluations in the window
        ...     monitor.record_histogram("http_request_duration_seconds", 3.0)
        ...     alerts = manager.evaluate(now)
        >>> [(a.name, a.state, a.active_at, a.value) for a in alerts]
        [('High API Response Time', 'pending', 60, 4.875)]
        >>> monitor.shutdown()

    Args:
        monitor: whose pipeline to read; default the process-wide monitor.
        clock: seconds, default ``time.time``.
        evaluation_interval_s: how often the background evaluation runs (default: the monitor's export
            interval, which it follows through ``configure()``); sizes the windowed history and is the group
            interval of exported rules.
        collect: where data comes from (default: the cumulative ``collect`` of the pipeline the monitor records
            into at each evaluation).
        span_processor: the processor span rules read (default: one subscribed to the monitor, which sees the
            spans of every pipeline it records into, made when the first span rule is added).
        history_size: how many transitions :meth:`history` keeps.
        staleness_s: how long a series' last sample counts before it is missing data (Prometheus: 5 minutes).
        dispatcher: where notifications go (:meth:`add_route`); default: one on this manager's clock, made when
            first needed. Pass your own for a notification log on disk, or other queue and retry settings. The
            Slack and email notifiers the monitor's configuration enables (``ALERT_*``) get a route each.
    """

    def __init__(
        self,
        monitor: Monitored | None = None,
        *,
        clock: Callable[[], float] | None = None,
        evaluation_interval_s: float | None = None,
        collect: Callable[[], MetricsData | None] | None = None,
        span_processor: AlertingSpanProcessor | None = None,
        history_size: int = 1000,
        staleness_s: float = STALENESS_S,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        # Everything read from the monitor is read when needed, or follows it: a manager made before configure()
        # (the seed's start-up order) evaluates the pipeline configure() builds, and the next one.
        self.monitor: Monitored = process_monitor() if monitor is None else monitor
        self._clock = clock or time.time
        interval = self.monitor.config.export_interval_s if evaluation_interval_s is None else evaluation_interval_s
        if not interval > 0 or not math.isfinite(interval):
            raise ValueError(f"evaluation_interval_s must be > 0, got {evaluation_interval_s!r}")
        self.evaluation_interval_s = float(interval)
        self._follows_interval = evaluation_interval_s is None
        self._collect = collect or self._collect_current
        self._span_processor = span_processor
        self._span_processor_installed = span_processor is not None
        self._store = SeriesStore(staleness_s=staleness_s)
        self._staleness_s = staleness_s
        self._rules: dict[str, AlertRule] = {}
        self._evaluators: dict[str, RuleEvaluator] = {}
        self._reader = RuleReader(self._store, staleness_s, self.evaluation_interval_s)
        self._silences = Silences()
        self._history = History(history_size)
        self._listeners: tuple[AlertListener, ...] = ()
        self._hooks: tuple[EvaluationHook, ...] = ()
        self._lock = threading.RLock()  # rules and alert state
        # One evaluation at a time, listeners in order; re-entrant so a listener may resolve or remove.
        self._evaluating = threading.RLock()
        self._published: tuple[Alert, ...] = ()
        self._subscriber: CycleSubscriber | None = None
        self._failures: dict[str, int] = {}
        self._failing: set[str] = set()
        meter = metrics.get_meter("chat_turbo_metrics.alerting", meter_provider=self.monitor.meter_provider)
        self._failure_counter = meter.create_counter(
            "alert_rule_evaluation_failures", description="Evaluations of an alert rule that failed, by rule"
        )
        self._start_notifications(dispatcher)  # and routes to the notifiers ALERT_* variables configure
        register_active_gauge(self.monitor.meter_provider, self)
        self._attach_to_pipeline()  # the status page of the pipeline's endpoint reads it
        forks.register(self, forks.Phase.LOCKS)

    def after_fork_in_child(self) -> None:
        # Only the forking thread survives fork(): a lock an evaluation held would stay held in the child.
        self._lock = threading.RLock()
        self._evaluating = threading.RLock()
        self._history.after_fork_in_child()

    # -- rules ------------------------------------------------------------------------------------------

    def add_rule(self, rule: AlertRule | Mapping[str, Any]) -> AlertRule:
        """Add a rule (the seed's dict or an :class:`AlertRule`); it is evaluated from the next evaluation on.

        Args:
            rule: ``{id, name, metric, condition, threshold, duration, severity, enabled, ...}``.

        Returns:
            The parsed rule.

        Raises:
            RuleError: a bad field, or the id is taken. A rule that fires exactly when another does (same
                metric, statistic, matchers, condition, threshold, duration) is added, with a warning naming both.
        """
        parsed = rule if isinstance(rule, AlertRule) else AlertRule.from_dict(rule)
        parsed.validate()
        with self._lock:
            if parsed.id in self._rules:
                raise RuleError(parsed.id, "id", "duplicate: a rule with this id was already added")
            for other in self._rules.values():
                if other.definition() == parsed.definition():
                    _log.warning("alert rule %r duplicates rule %r (same definition)", parsed.id, other.id)
            self._rules[parsed.id] = parsed
            self._evaluators[parsed.id] = RuleEvaluator(parsed)
            try:
                if parsed.spans is not None:
                    self._spans().track(parsed.spans)
                self._watch()
            except BaseException:  # a rule that cannot be watched is not kept: later add_rule calls still work
                del self._rules[parsed.id], self._evaluators[parsed.id]
                self._watch()
                raise
            self._reader.check_added(parsed)
        return parsed

    def load_rules(self, path: str | Path) -> list[AlertRule]:
        """Add every rule of a TOML or YAML file (see :func:`chat_turbo_metrics.alerting.load_rules`).

        Raises:
            ConfigurationError: a bad file or rule; no rule of the file is added then.
        """
        rules = load_rules(path)
        with self._lock:
            taken = [rule.id for rule in rules if rule.id in self._rules]
            if taken:
                raise RuleError(taken[0], "id", f"duplicate: a rule with this id was already added ({path})")
            return [self.add_rule(rule) for rule in rules]

    def remove_rule(self, rule_id: str) -> None:
        """Remove a rule; its alerts end (firing ones resolve) and listeners hear it."""
        with self._evaluating:
            with self._lock:
                self._rule(rule_id)
                changes = self._end_alerts(rule_id)
                del self._rules[rule_id]
                del self._evaluators[rule_id]
                self._reader.forget(rule_id)
                self._failing.discard(rule_id)
                self._watch()
            self._publish(changes, self._clock())

    def enable_rule(self, rule_id: str) -> None:
        """Evaluate the rule again from the next evaluation on."""
        with self._lock:
            self._rules[rule_id] = replace(self._rule(rule_id), enabled=True)
            self._evaluators[rule_id].rule = self._rules[rule_id]

    def disable_rule(self, rule_id: str) -> None:
        """Stop evaluating the rule; its alerts end now (firing ones resolve)."""
        with self._evaluating:
            with self._lock:
                self._rules[rule_id] = replace(self._rule(rule_id), enabled=False)
                self._evaluators[rule_id].rule = self._rules[rule_id]
                changes = self._end_alerts(rule_id)
            self._publish(changes, self._clock())

    def rules(self) -> tuple[AlertRule, ...]:
        """Every rule, in the order added."""
        with self._lock:
            return tuple(self._rules.values())

    def _rule(self, rule_id: str) -> AlertRule:
        try:
            return self._rules[rule_id]
        except KeyError:
            raise KeyError(f"no alert rule with id {rule_id!r}") from None

    def _end_alerts(self, rule_id: str) -> list[Change]:
        evaluator = self._evaluators[rule_id]
        now = self._clock()
        changes = [evaluator.resolve(fp, now) for fp in list(evaluator.active)]
        self._published = tuple(a for a in self._published if a.rule_id != rule_id)
        return [c for c in changes if c is not None]

    def _spans(self) -> AlertingSpanProcessor:
        if self._span_processor is None:
            self._span_processor = AlertingSpanProcessor()
        if not self._span_processor_installed:
            self.monitor.subscribe(self._span_processor)  # on every pipeline the monitor records into
            self._span_processor_installed = True
        return self._span_processor

    def _watch(self) -> None:
        rules = self._rules.values()
        longest = max([self._staleness_s, *(r.window_s for r in rules)])
        self._store.watch(
            {r.metric for r in rules if r.metric}, window_s=longest, interval_s=self.evaluation_interval_s
        )
        if self._span_processor is not None:
            self._span_processor.untrack({r.spans.key for r in rules if r.spans is not None})

    # -- evaluation -------------------------------------------------------------------------------------

    def _attach_to_pipeline(self) -> None:
        """Be found by the status page of the pipeline the monitor records into now (again after configure())."""
        pipeline = self.monitor.pipeline
        attach = getattr(pipeline, "attach", None)  # a PipelineView; a stand-in monitor may have none
        if attach is not None:
            attach(ALERT_MANAGERS, self)

    def _collect_current(self) -> MetricsData | None:
        pipeline = self.monitor.pipeline  # the one the monitor records into now
        return pipeline.collect() if pipeline is not None else None

    def evaluate(self, now: float | None = None) -> tuple[Alert, ...]:
        """Collect the pipeline's data and evaluate every enabled rule once at ``now`` (default: the clock).

        Returns:
            The pending and firing alerts after this evaluation.
        """
        return self.evaluate_data(self._collect(), self._clock() if now is None else now)

    def evaluate_data(self, data: MetricsData | None, now: float) -> tuple[Alert, ...]:
        """Evaluate against an already collected snapshot (what the background evaluation does)."""
        with self._evaluating:
            with self._lock:
                self._follow_interval()
                self._attach_to_pipeline()
                self._store.ingest(data, now)
                self._ingest_spans(now)
                self._reader.begin()
                changes: list[Change] = []
                for rule in self._rules.values():
                    if rule.enabled:
                        changes.extend(self._step(rule, now))
                changes = self._flag(changes, now)
                current = tuple(i.alert for e in self._evaluators.values() for i in e.active.values())
                self._published = current
            self._publish(changes, now)
            ended = tuple(c.alert for c in changes if c.current == "resolved")
            for hook in self._hooks:
                self._call(hook, now, current + ended)
        return current

    def _follow_interval(self) -> None:
        """Take the export interval a ``configure()`` set, unless one was given: the history keeps its windows."""
        if self._follows_interval:
            interval = self.monitor.config.export_interval_s
            if interval != self.evaluation_interval_s:
                self.evaluation_interval_s = self._reader.interval_s = float(interval)
                self._watch()

    def _step(self, rule: AlertRule, now: float) -> list[Change]:
        """One rule's evaluation, isolated: whatever makes it fail (a malformed series, a bug), the other rules
        are evaluated; it is logged when it starts failing and when it works again, and counted each time in
        ``alert_rule_evaluation_failures`` and :meth:`evaluation_failures`. Its alerts keep their state meanwhile,
        as Prometheus keeps a rule's alerts when its query fails."""
        try:
            changes = self._evaluators[rule.id].step(now, self._reader.results(rule, now))
        except Exception:
            self._failures[rule.id] = self._failures.get(rule.id, 0) + 1
            self._failure_counter.add(1, {"rule": rule.id})
            if rule.id not in self._failing:
                self._failing.add(rule.id)
                _log.exception("alert rule %r: evaluation failed; its alerts keep their state (logged once)", rule.id)
            return []
        if rule.id in self._failing:
            self._failing.discard(rule.id)
            _log.warning("alert rule %r: evaluates again", rule.id)
        return changes

    def evaluation_failures(self) -> dict[str, int]:
        """How many evaluations failed, per rule id (rules that never failed are absent)."""
        with self._lock:
            return dict(self._failures)

    def _ingest_spans(self, now: float) -> None:
        if self._span_processor is not None:
            for key, point in self._span_processor.points().items():
                self._store.ingest_points(f"{SPANS}{key!r}", "spans", {frozenset(): point}, now)

    def _flag(self, changes: list[Change], now: float) -> list[Change]:
        """Set ``silenced`` on every live alert and on the alerts of this evaluation's changes."""
        if not self._silences.needs_flagging(now):
            return changes
        for evaluator in self._evaluators.values():
            for fp, instance in evaluator.active.items():
                silenced = self._silences.mutes(instance.alert.labels, now)
                if instance.alert.silenced != silenced:
                    evaluator.update(fp, silenced=silenced)
        flagged = []
        for change in changes:
            live = self._evaluators[change.alert.rule_id].active.get(change.alert.fingerprint)
            alert = replace(
                change.alert,
                silenced=self._silences.mutes(change.alert.labels, now),
                acknowledged=live.alert.acknowledged if live else change.alert.acknowledged,
            )
            flagged.append(Change(alert, change.previous, change.current))
        return flagged

    def _publish(self, changes: list[Change], now: float) -> None:
        for change in changes:
            transition = AlertTransition(change.alert, change.previous, change.current, now)
            self._history.record(transition)
            for listener in self._listeners:
                self._call(listener, transition)

    @staticmethod
    def _call(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            _log.exception("alert listener %r raised; continuing", callback)

    # -- alerts and their lifecycle -----------------------------------------------------------------------

    def alerts(self) -> tuple[Alert, ...]:
        """The pending and firing alerts as of the last evaluation (or lifecycle action)."""
        with self._lock:
            return tuple(i.alert for e in self._evaluators.values() for i in e.active.values())

    def add_listener(self, listener: AlertListener) -> None:
        """Call ``listener`` with every transition, on the evaluating thread; its exceptions are logged."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def add_evaluation_hook(self, hook: EvaluationHook) -> None:
        """Call ``hook(now, alerts)`` after each evaluation, with the alerts that resolved in it too."""
        with self._lock:
            self._hooks = (*self._hooks, hook)

    def acknowledge(self, alert: Alert | str) -> bool:
        """Mark an alert (or its fingerprint) acknowledged until it resolves; False if it is not active."""
        fp = alert if isinstance(alert, str) else alert.fingerprint
        with self._lock:
            for evaluator in self._evaluators.values():
                if fp in evaluator.active:
                    evaluator.update(fp, acknowledged=True)
                    self._published = self.alerts()
                    return True
        return False

    def resolve(self, alert: Alert | str) -> bool:
        """Resolve an alert by hand; if its condition still holds it starts over as pending. False if not active."""
        fp = alert if isinstance(alert, str) else alert.fingerprint
        now = self._clock()
        with self._evaluating:
            with self._lock:
                change = next((c for e in self._evaluators.values() if (c := e.resolve(fp, now))), None)
                self._published = self.alerts()
            if change is None:
                return False
            self._publish([change], now)
        return True

    def silence(
        self, matchers: Mapping[str, str], until: float, *, starts_at: float | None = None, comment: str = ""
    ) -> Silence:
        """Mute alerts whose labels equal ``matchers`` until ``until``; they still evaluate and change state.

        Args:
            matchers: label name -> value; every one must equal the alert's label.
            until: when the silence ends (clock seconds).
            starts_at: when it starts (default: now).
            comment: why, for whoever reads :meth:`silences`.

        Returns:
            The silence (its ``id`` expires it early with :meth:`expire_silence`).

        Raises:
            ValueError: no matchers, or it ends before it starts.
        """
        if not matchers:
            raise ValueError("a silence needs at least one matcher")
        starts = self._clock() if starts_at is None else starts_at
        if not until > starts:
            raise ValueError(f"a silence must end after it starts: until={until!r}, starts_at={starts!r}")
        silence = Silence({k: str(v) for k, v in matchers.items()}, starts, until, comment)
        with self._lock:
            self._silences.add(silence)
            self._flag([], self._clock())
        return silence

    def expire_silence(self, silence_id: str) -> None:
        """End a silence now."""
        with self._lock:
            self._silences.expire(silence_id)
            self._flag([], self._clock())

    def silences(self) -> tuple[Silence, ...]:
        """Silences that have not ended yet."""
        now = self._clock()
        with self._lock:
            return self._silences.active(now)

    def history(
        self,
        *,
        rule_id: str | None = None,
        fingerprint: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[AlertTransition]:
        """Recent transitions (at most ``history_size``), oldest first, filtered by rule, alert and time.

        Args:
            rule_id: only this rule's.
            fingerprint: only this alert instance's (``alert.fingerprint``).
            since: only transitions at or after this clock time.
            limit: only the newest ``limit``.

        Returns:
            The transitions.
        """
        return self._history.query(rule_id=rule_id, fingerprint=fingerprint, since=since, limit=limit)

    def active_counts(self) -> dict[tuple[str, str, str], int]:
        """``(rule id, severity, state) -> count`` for every enabled rule (zeros included): ``alerts_active``."""
        counts = {
            (rule.id, rule.severity, state): 0
            for rule in tuple(self._rules.values())
            if rule.enabled
            for state in ("pending", "firing")
        }
        for alert in self._published:
            key = (alert.rule_id, alert.labels.get("severity", ""), alert.state)
            counts[key] = counts.get(key, 0) + 1
        return counts

    # -- background -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Evaluate on the pipeline's export cycle, on the fan-out's worker thread (never the application's).

        The evaluation follows the monitor: after ``configure()`` it runs on the new pipeline's cycle, on its data.
        """
        if self.monitor.pipeline is None:
            _log.warning("monitoring is disabled: alert rules are not evaluated in the background until it is enabled")
        cycle_s = self.monitor.config.export_interval_s
        if cycle_s != self.evaluation_interval_s:
            _log.warning(
                "alert rules are evaluated every export cycle (%s s), not every evaluation_interval_s (%s s); "
                "windows hold one point per evaluation",
                cycle_s,
                self.evaluation_interval_s,
            )
        with self._lock:
            if self._subscriber is None:
                self._subscriber = CycleSubscriber(self.evaluate_data, self._clock)
                self.monitor.subscribe(self._subscriber)

    def stop(self) -> None:
        """Stop the background evaluation (an evaluation under way finishes)."""
        with self._lock:
            subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            self.monitor.unsubscribe(subscriber)
