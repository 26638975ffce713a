"""Notifiers: Slack, email, webhooks, logging, and forwarding to Alertmanager. Any callable is a notifier too."""

from chat_turbo_metrics.alerting.notifiers.alertmanager import AlertmanagerForwarder
from chat_turbo_metrics.alerting.notifiers.email import EmailNotifier
from chat_turbo_metrics.alerting.notifiers.log import LogNotifier
from chat_turbo_metrics.alerting.notifiers.slack import SlackNotifier
from chat_turbo_metrics.alerting.notifiers.webhook import WebhookNotifier

__all__ = ["AlertmanagerForwarder", "EmailNotifier", "LogNotifier", "SlackNotifier", "WebhookNotifier"]
