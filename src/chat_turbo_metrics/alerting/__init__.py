"""Alerting: rules evaluated against the pipeline's data, alert lifecycle, notifications.

Example:
    >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
    >>> from chat_turbo_metrics.alerting import AlertManager
    >>> monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))  # AlertManager(): the process-wide one
    >>> manager = AlertManager(monitor)
    >>> _ = manager.add_rule({"id": "memory", "name": "High Memory", "metric": "memory_usage_mb",
    ...                       "condition": "gt", "threshold": 512, "duration": "5m", "severity": "warning"})
    >>> manager.evaluate()
    ()
    >>> monitor.shutdown()
"""

from chat_turbo_metrics.alerting._delivery import DeliveryError, DeliveryStats, RetryPolicy
from chat_turbo_metrics.alerting._dispatch import Delivered, Dispatcher
from chat_turbo_metrics.alerting._files import load_rules
from chat_turbo_metrics.alerting._lifecycle import Silence
from chat_turbo_metrics.alerting._matchers import Matcher
from chat_turbo_metrics.alerting._model import (
    Alert,
    AlertListener,
    AlertState,
    AlertTransition,
    EvaluationHook,
    fingerprint,
)
from chat_turbo_metrics.alerting._notification import Notification, NotifiedAlert
from chat_turbo_metrics.alerting._routing import Route
from chat_turbo_metrics.alerting.manager import AlertManager
from chat_turbo_metrics.alerting.notifiers import (
    AlertmanagerForwarder,
    EmailNotifier,
    LogNotifier,
    SlackNotifier,
    WebhookNotifier,
)
from chat_turbo_metrics.alerting.notifiers.configured import notifiers_from_config
from chat_turbo_metrics.alerting.rules import AlertRule, RuleError, SpanSelector, parse_duration
from chat_turbo_metrics.alerting.spans import AlertingSpanProcessor

__all__ = [
    "Alert",
    "AlertListener",
    "AlertManager",
    "AlertRule",
    "AlertState",
    "AlertTransition",
    "AlertingSpanProcessor",
    "AlertmanagerForwarder",
    "Delivered",
    "DeliveryError",
    "DeliveryStats",
    "Dispatcher",
    "EmailNotifier",
    "EvaluationHook",
    "LogNotifier",
    "Matcher",
    "Notification",
    "NotifiedAlert",
    "RetryPolicy",
    "Route",
    "RuleError",
    "Silence",
    "SlackNotifier",
    "SpanSelector",
    "WebhookNotifier",
    "fingerprint",
    "load_rules",
    "notifiers_from_config",
    "parse_duration",
]
