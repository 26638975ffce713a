"""Email over SMTP: STARTTLS or implicit TLS, optional login, one multipart (text + HTML) message per notification."""

from __future__ import annotations

import html
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

from chat_turbo_metrics._core.endpoints import is_loopback
from chat_turbo_metrics._core.secret import Secret
from chat_turbo_metrics.alerting._delivery import DeliveryError
from chat_turbo_metrics.alerting._notification import Notification
from chat_turbo_metrics.alerting.notifiers._render import alert_fields, header_text, plain_text, printable

TlsMode = Literal["starttls", "tls", "none"]
TLS_MODES = ("starttls", "tls", "none")


class EmailNotifier:
    """Sends each notification as one email to every recipient; subject ``[FIRING:N] …``.

    Example:
        >>> mail = EmailNotifier("smtp.example.com", 587, "alerts@example.com", ["oncall@example.com"],
        ...                      username="alerts", password="hunter2")
        >>> mail
        EmailNotifier('smtp.example.com', 587, tls='starttls', recipients=1)
        >>> mail(notification)  # doctest: +SKIP

    Args:
        host: the SMTP server.
        port: its port (587 for STARTTLS, 465 for implicit TLS, 25 plain).
        sender: the ``From`` address.
        recipients: one or more ``To`` addresses.
        username: log in with this user (after TLS is up).
        password: and this password (``str`` or :class:`Secret`; never shown).
        tls: ``starttls`` (default; fails if the server does not offer it), ``tls`` (implicit) or ``none``.
        ssl_context: certificates to trust (default: the system's).
        timeout_s: per connection.
        allow_insecure_auth: with ``tls="none"``, log in although the server is not on this machine (the
            password then crosses the network in clear text). Without it that is refused, as Go's ``net/smtp``
            (Alertmanager's) refuses it.

    Raises:
        ValueError: no recipients, an unknown ``tls`` mode, a password without a user name, or a login without
            TLS to another machine.
    """

    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: Sequence[str],
        *,
        username: str | None = None,
        password: str | Secret | None = None,
        tls: TlsMode = "starttls",
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 30.0,
        allow_insecure_auth: bool = False,
    ) -> None:
        if isinstance(recipients, str):
            recipients = [part.strip() for part in recipients.split(",")]
        self._recipients = tuple(address for address in recipients if address)
        if not self._recipients:
            raise ValueError("recipients: at least one address is needed")
        if tls not in TLS_MODES:
            raise ValueError(f"tls={tls!r}: expected one of {', '.join(TLS_MODES)}")
        if password is not None and not username:
            raise ValueError("password given without username")
        if tls == "none" and password is not None and not allow_insecure_auth and not is_loopback(host):
            raise ValueError(
                f"tls='none' would send the password to {host!r} in clear text; use starttls or tls "
                "(or allow_insecure_auth=True to accept that)"
            )
        self._host, self._port, self._sender = host, port, sender
        self._username = username
        self._password = password if isinstance(password, Secret) or password is None else Secret(password)
        self._tls = tls
        self._context = ssl_context
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"EmailNotifier({self._host!r}, {self._port}, tls={self._tls!r}, recipients={len(self._recipients)})"

    def message(self, notification: Notification) -> EmailMessage:
        """The email for ``notification``: plain text, with an HTML alternative."""
        message = EmailMessage()
        message["Subject"] = header_text(notification.title)  # a header cannot hold a line break
        message["From"] = self._sender
        message["To"] = ", ".join(self._recipients)
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self._sender.rpartition("@")[2] or None)
        message.set_content(plain_text(notification))
        message.add_alternative(_html(notification), subtype="html")
        return message

    def __call__(self, notification: Notification) -> None:
        """Send ``notification``.

        Raises:
            DeliveryError: the server could not be reached (retryable), refused temporarily (4xx, retryable) or
                for good (5xx, bad login: final).
        """
        message = self.message(notification)
        try:
            with self._connect() as smtp:
                if self._username and self._password is not None:
                    smtp.login(self._username, self._password.reveal())
                smtp.send_message(message, self._sender, list(self._recipients))
        except smtplib.SMTPResponseException as error:
            code = error.smtp_code
            raise DeliveryError(f"SMTP {code} from {self._host}:{self._port}", retryable=400 <= code < 500) from None
        except smtplib.SMTPRecipientsRefused:
            raise DeliveryError(f"all recipients refused by {self._host}:{self._port}", retryable=False) from None
        except smtplib.SMTPNotSupportedError as error:
            raise DeliveryError(f"{self._host}:{self._port}: {error}", retryable=False) from None
        except ssl.SSLCertVerificationError as error:  # retrying cannot make an untrusted certificate trusted
            raise DeliveryError(f"{self._host}:{self._port}: {error.verify_message}", retryable=False) from None
        except (OSError, smtplib.SMTPException) as error:
            raise DeliveryError(f"cannot send through {self._host}:{self._port}: {error}") from None

    def _connect(self) -> smtplib.SMTP:
        context = self._context or ssl.create_default_context()
        if self._tls == "tls":
            return smtplib.SMTP_SSL(self._host, self._port, timeout=self._timeout_s, context=context)
        smtp = smtplib.SMTP(self._host, self._port, timeout=self._timeout_s)
        try:
            if self._tls == "starttls":
                smtp.starttls(context=context)  # raises SMTPNotSupportedError when the server does not offer it
        except BaseException:
            smtp.close()
            raise
        return smtp


def _html(notification: Notification) -> str:
    color = "#d9534f" if notification.status == "firing" else "#5cb85c"
    parts = [f'<h2 style="color:{color}">{html.escape(printable(notification.title))}</h2>']
    for alert in notification.alerts:
        rows = "".join(
            f"<tr><th align=left>{html.escape(name)}</th><td>{html.escape(text)}</td></tr>"
            for name, text in alert_fields(alert)
        )
        parts.append(f"<table>{rows}</table><hr>")
    if notification.external_url:
        url = html.escape(printable(notification.external_url))
        parts.append(f'<p><a href="{url}">{url}</a></p>')
    return "<html><body>" + "".join(parts) + "</body></html>"
