"""Alert notification settings: the Slack webhook and the email notifier the ``ALERT_*`` variables ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chat_turbo_metrics._core.config.checks import one_of, port
from chat_turbo_metrics._core.config.declaration import InvalidSetting, Settings, setting, settings_of
from chat_turbo_metrics._core.config.values import parse_bool, parse_int, parse_names, parse_secret, parse_str
from chat_turbo_metrics._core.endpoints import is_loopback, parse_secret_url
from chat_turbo_metrics._core.secret import Secret

EmailTls = Literal["starttls", "tls", "none"]


def _webhook_problem(url: Secret | None) -> str | None:
    """Why the Slack notifier could not post to ``url`` (the reason shows no part of it), or None."""
    if url is None:
        return None
    try:
        parse_secret_url(url)
    except ValueError as error:
        return str(error)
    return None


@dataclass(frozen=True, kw_only=True)
class AlertingSettings(Settings):
    """The notifiers the configuration turns on: Slack with a webhook URL, email when enabled.

    Example:
        >>> AlertingSettings(alert_email_tls="none", alert_email_username="bot", alert_email_password="pw",
        ...                  alert_email_enabled=True, alert_email_host="smtp.example.com")
        Traceback (most recent call last):
        ...
        chat_turbo_metrics._core.config.declaration.InvalidSetting: alert_email_tls='none': the SMTP password ...
    """

    SECTION = "alerting"
    TITLE = "alert notifications by Slack and email"

    alert_email_enabled: bool = setting(
        False,
        parse=parse_bool,
        variable="ALERT_EMAIL_ENABLED",
        meaning="send alert notifications by email; needs `ALERT_EMAIL_HOST`, `ALERT_EMAIL_FROM` and `ALERT_EMAIL_TO`",
    )
    alert_slack_webhook_url: Secret | None = setting(
        None,
        parse=parse_secret,
        variable="ALERT_SLACK_WEBHOOK_URL",
        secret="whole",
        checks=(_webhook_problem,),
        shown_default="not set",
        meaning="Slack incoming-webhook URL for alert notifications: an http(s) URL with a host, checked at "
        "configuration time (no spaces, control or non-ASCII characters: percent-encode them)",
    )
    alert_email_host: str = setting(
        "",
        parse=parse_str,
        variable="ALERT_EMAIL_HOST",
        shown_default="not set",
        meaning="SMTP server for alert emails",
    )
    alert_email_port: int = setting(
        587, parse=parse_int, variable="ALERT_EMAIL_PORT", checks=(port(1),), meaning="SMTP port"
    )
    alert_email_from: str = setting(
        "",
        parse=parse_str,
        variable="ALERT_EMAIL_FROM",
        shown_default="not set",
        meaning="sender address of alert emails",
    )
    alert_email_to: tuple[str, ...] = setting(
        (),
        parse=parse_names,
        variable="ALERT_EMAIL_TO",
        shown_default="none",
        meaning="recipient addresses of alert emails, comma-separated",
    )
    alert_email_username: str = setting(
        "",
        parse=parse_str,
        variable="ALERT_EMAIL_USERNAME",
        shown_default="not set (no login)",
        meaning="SMTP login user; no login when empty",
    )
    alert_email_password: Secret | None = setting(
        None,
        parse=parse_secret,
        variable="ALERT_EMAIL_PASSWORD",
        secret="whole",
        shown_default="not set",
        meaning="SMTP login password",
    )
    # Before alert_email_tls: a variable is checked with those applied before it, and this one permits tls=none.
    alert_email_allow_insecure_auth: bool = setting(
        False,
        parse=parse_bool,
        variable="ALERT_EMAIL_ALLOW_INSECURE_AUTH",
        meaning="`true` to log in to the SMTP server without TLS although it is not on this machine",
    )
    alert_email_tls: EmailTls = setting(
        "starttls",
        parse=parse_str,
        variable="ALERT_EMAIL_TLS",
        checks=(one_of("starttls", "tls", "none"),),
        meaning="`starttls` (refuses a server without it), `tls` (implicit, usually port 465) or `none`; `none` with "
        "a login to a server other than this machine is a configuration error (the password would cross the network "
        "in clear text; Go's `net/smtp`, which Alertmanager uses, refuses it too)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        plain_login = self.alert_email_tls == "none" and self.alert_email_username and self.alert_email_password
        if (
            self.alert_email_enabled
            and plain_login
            and not self.alert_email_allow_insecure_auth
            and not is_loopback(self.alert_email_host)
        ):
            raise InvalidSetting(
                "alert_email_tls",
                repr(self.alert_email_tls),
                f"the SMTP password would cross the network to {self.alert_email_host!r} in clear text; use starttls "
                "or tls (or set alert_email_allow_insecure_auth, ALERT_EMAIL_ALLOW_INSECURE_AUTH=true, to accept that)",
            )


_EMAIL_NEEDS = ("alert_email_host", "alert_email_from", "alert_email_to")


def missing_for_email(config: AlertingSettings) -> list[str]:
    """What enabled email alerts lack of a server, a sender and recipients: ``VARIABLE (setting)`` each.

    Example:
        >>> missing_for_email(AlertingSettings(alert_email_enabled=True, alert_email_host="smtp.example.com"))
        ['ALERT_EMAIL_FROM (alert_email_from)', 'ALERT_EMAIL_TO (alert_email_to)']
    """
    if not config.alert_email_enabled:
        return []
    declared = {item.name: item for item in settings_of(AlertingSettings)}
    missing = [declared[name] for name in _EMAIL_NEEDS if not getattr(config, name)]
    return [f"{item.variable.name if item.variable else item.name} ({item.name})" for item in missing]
