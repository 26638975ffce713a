"""The notifiers the configuration asks for: Slack when a webhook URL is set, email when it is enabled."""

from __future__ import annotations

from chat_turbo_metrics._core.config import AlertingSettings, ConfigurationError
from chat_turbo_metrics._core.config.alerting import missing_for_email
from chat_turbo_metrics.alerting._delivery import Sender
from chat_turbo_metrics.alerting.notifiers.email import EmailNotifier
from chat_turbo_metrics.alerting.notifiers.slack import SlackNotifier


def notifiers_from_config(config: AlertingSettings) -> list[Sender]:
    """Build the notifiers ``config`` enables (``ALERT_SLACK_WEBHOOK_URL``, ``ALERT_EMAIL_*``).

    Args:
        config: the monitoring configuration (its alerting section is what is read).

    Returns:
        Zero, one or two notifiers, to pass to ``add_route``.

    Raises:
        ConfigurationError: email is enabled but its server, sender or recipients are missing, or the Slack URL
            is not an http(s) URL; the message names the variable.

    Example:
        >>> from chat_turbo_metrics import MonitoringConfig
        >>> notifiers_from_config(MonitoringConfig(alert_email_enabled=True, alert_email_host="smtp.example.com",
        ...                                        alert_email_from="a@example.com", alert_email_to=("b@example.com",)))
        [EmailNotifier('smtp.example.com', 587, tls='starttls', recipients=1)]
    """
    built: list[Sender] = []
    if config.alert_slack_webhook_url is not None:
        try:
            built.append(SlackNotifier(config.alert_slack_webhook_url))
        except ValueError as error:
            raise ConfigurationError(f"ALERT_SLACK_WEBHOOK_URL: {error}") from None
    if config.alert_email_enabled:
        missing = missing_for_email(config)
        if missing:
            raise ConfigurationError(f"ALERT_EMAIL_ENABLED=true needs {', '.join(missing)}: empty")
        try:
            built.append(
                EmailNotifier(
                    config.alert_email_host,
                    config.alert_email_port,
                    config.alert_email_from,
                    config.alert_email_to,
                    username=config.alert_email_username or None,
                    password=config.alert_email_password if config.alert_email_username else None,
                    tls=config.alert_email_tls,
                    allow_insecure_auth=config.alert_email_allow_insecure_auth,
                )
            )
        except ValueError as error:
            raise ConfigurationError(f"ALERT_EMAIL_*: {error}") from None
    return built
