"""Reading what a monitor would serve, and the state of an alert, in a test's assertions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chat_turbo_metrics import AlertManager, PerformanceMonitor
from chat_turbo_metrics.instrumentation import prometheus_label

INACTIVE = "inactive"


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_SCOPE_LABELS = ("otel_scope_name", "otel_scope_version")


def sample_value(monitor: PerformanceMonitor, name: str, labels: Mapping[str, Any] | None = None) -> float | None:
    """The value of one sample in a Prometheus scrape of ``monitor``, or None when there is no such sample.

    As prometheus_client's ``REGISTRY.get_sample_value``: ``name`` is the sample's name as scraped (a counter's
    ``_total``, a histogram's ``_count``, ``_sum`` and ``_bucket``), and ``labels`` must be exactly the sample's
    labels. Keys may be written as recorded (``http.route``) or as scraped (``http_route``); values are compared
    as text (``200`` matches ``"200"``, ``le=0.5`` matches ``"0.5"``). The instrumentation scope labels every
    sample carries (``otel_scope_name``, ``otel_scope_version``) count only when ``labels`` names them.

    Example:
        >>> monitor.increment_counter("messages_sent", {"channel": "email"}, 2)
        >>> sample_value(monitor, "messages_sent_total", {"channel": "email"})
        2.0
        >>> sample_value(monitor, "messages_sent_total", {"channel": "sms"}) is None
        True

    Args:
        monitor: the monitor to collect from (its collection hooks run, as at a scrape).
        name: a sample name.
        labels: the sample's labels (none: the sample without labels).

    Returns:
        The value, or None.
    """
    wanted = {prometheus_label(str(key)): _label_value(value) for key, value in (labels or {}).items()}
    for family in text_string_to_metric_families(monitor.snapshot().to_prometheus()):
        for sample in family.samples:
            found = {k: v for k, v in sample.labels.items() if k not in _SCOPE_LABELS or k in wanted}
            if sample.name == name and _same(found, wanted):
                return float(sample.value)
    return None


def _same_bound(found: str, wanted: str) -> bool:
    """Bucket bounds compare as numbers: ``0.5`` is ``.5``, ``+Inf`` is ``inf``, ``1.0`` is ``1``."""
    try:
        return float(found) == float(wanted)
    except ValueError:
        return found == wanted


def _same(found: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    if found.keys() != wanted.keys():
        return False
    return all(
        _same_bound(value, wanted[key]) if key in ("le", "quantile") else value == wanted[key]
        for key, value in found.items()
    )


def _rule_id(manager: AlertManager, rule: str) -> str:
    for item in manager.rules():
        if rule in (item.id, item.name):
            return item.id
    known = sorted({item.id for item in manager.rules()} | {item.name for item in manager.rules()})
    raise LookupError(f"no rule {rule!r} in this alert manager (rules: {known})")


def _rule_alerts(manager: AlertManager, rule: str) -> list[Any]:
    rule_id = _rule_id(manager, rule)
    return [alert for alert in manager.alerts() if alert.rule_id == rule_id]


def _holding(alerts: Iterable[Any], labels: Mapping[str, Any] | None) -> list[Any]:
    wanted = {str(key): _label_value(value) for key, value in (labels or {}).items()}
    return [alert for alert in alerts if all(alert.labels.get(key) == value for key, value in wanted.items())]


def _one(found: list[Any], rule: str, labels: Mapping[str, Any] | None, state: Callable[[Any], str]) -> str:
    if len(found) > 1:
        shown = ", ".join(f"{dict(item.labels)}: {state(item)}" for item in found)
        raise LookupError(f"{len(found)} alerts of {rule!r} hold {dict(labels or {})}; name more labels ({shown})")
    return state(found[0])


def alert_state(manager: AlertManager, rule: str, labels: Mapping[str, Any] | None = None) -> str:
    """The state of ``rule``'s alert whose labels hold ``labels``, after the manager's last evaluation.

    ``pending`` or ``firing`` for an active alert; ``resolved`` when its last transition resolved it (it stays
    so until it is pending again); ``inactive`` when it never was active, or was dropped while pending.

    Raises:
        LookupError: the manager has no rule with that id or name, or several of its alerts hold ``labels``
            (name more labels).
    """
    active = _holding(_rule_alerts(manager, rule), labels)
    if active:
        return _one(active, rule, labels, lambda alert: str(alert.state))
    latest: dict[str, Any] = {}  # fingerprint -> the alert's last transition
    for transition in manager.history(rule_id=_rule_id(manager, rule)):
        latest[transition.alert.fingerprint] = transition
    ended = _holding((item.alert for item in latest.values()), labels)
    if not ended:
        return INACTIVE
    last = {id(item.alert): item.current for item in latest.values()}
    return _one(ended, rule, labels, lambda alert: str(last[id(alert)]))


def assert_alert(manager: AlertManager, rule: str, state: str, labels: Mapping[str, Any] | None = None) -> None:
    """Assert that ``rule``'s alert holding ``labels`` is in ``state`` (``inactive``, ``pending``, ``firing``,
    ``resolved``: see :func:`alert_state`); the failure names every active alert of the rule with its value.

    Raises:
        AssertionError: it is in another state.
        LookupError: as :func:`alert_state`.
    """
    found = alert_state(manager, rule, labels)
    if found != state:
        alerts = _rule_alerts(manager, rule)
        shown = "; ".join(f"{dict(alert.labels)} {alert.state} value={alert.value}" for alert in alerts) or "none"
        raise AssertionError(f"alert {rule!r} {dict(labels or {})} is {found}, expected {state} (its alerts: {shown})")


class ManualClock:
    """A clock a test moves by hand: give it to an :class:`AlertManager` (``clock=``) to step through durations.

    Example:
        >>> clock = ManualClock(1000.0)
        >>> clock.advance(300)
        1300.0
        >>> clock()
        1300.0
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward ``seconds``; returns the new time."""
        self.now += float(seconds)
        return self.now
