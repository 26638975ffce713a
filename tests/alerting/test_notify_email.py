"""The email notifier against a real SMTP server (aiosmtpd) on 127.0.0.1: STARTTLS, implicit TLS, login, parts."""

from __future__ import annotations

import datetime
import email
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from notify_peers import alert

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, get_monitoring_config
from chat_turbo_metrics.alerting import (
    DeliveryError,
    Dispatcher,
    EmailNotifier,
    Notification,
    RetryPolicy,
    SlackNotifier,
    notifiers_from_config,
)
from conftest import free_port

USER, PASSWORD = "alerts", "correct horse battery staple"

# The server for ALERT_EMAIL_TLS=none asks for a login without TLS on purpose; aiosmtpd warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made for this test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Mailbox:
    """The aiosmtpd handler: keeps each message with its envelope and whether the session was encrypted."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message, bool, Any]] = []
        self.logins: list[str] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        encrypted = server.transport.get_extra_info("ssl_object") is not None
        self.messages.append((list(envelope.rcpt_tos), message, encrypted, session.auth_data))
        self.arrived.set()
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == (USER, PASSWORD):
            self.logins.append(data.login.decode())
            return AuthResult(success=True, auth_data=data.login.decode())
        return AuthResult(success=False, handled=False)


@pytest.fixture
def smtp_server(certificate) -> Iterator[Any]:
    """Starts aiosmtpd servers on loopback: ``start(tls=...)`` -> (port, mailbox, client ssl context)."""
    cert_path, key_path = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=str(cert_path))
    started: list[Controller] = []

    def start(tls: str) -> tuple[int, Mailbox, ssl.SSLContext]:
        mailbox = Mailbox()
        options: dict[str, Any] = {"authenticator": mailbox.authenticate, "auth_required": True}
        if tls == "starttls":
            options.update(tls_context=server_context, require_starttls=True)
        elif tls == "tls":  # aiosmtpd only knows of STARTTLS when it decides whether AUTH needs TLS
            options.update(ssl_context=server_context, auth_require_tls=False)
        else:
            options.update(auth_require_tls=False)
        port = free_port()
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
        controller.start()
        started.append(controller)
        return port, mailbox, client_context

    yield start
    for controller in started:
        controller.stop()


def starttls_notifier(port: int, context: ssl.SSLContext, password: str) -> EmailNotifier:
    """The notifier of the STARTTLS server with login: alerts@ to oncall@."""
    return EmailNotifier(
        "127.0.0.1",
        port,
        "alerts@chat.example",
        ["oncall@chat.example"],
        username=USER,
        password=password,
        ssl_context=context,
    )


def deliver(notifier: EmailNotifier, *alerts: object) -> Dispatcher:
    dispatcher = Dispatcher(retry=RetryPolicy(deadline_s=3.0, backoff_base_s=0.01, backoff_max_s=0.05))
    dispatcher.add_route(notifier, group_wait_s=0)
    dispatcher.on_evaluated(1_800_000_000.0, alerts)  # type: ignore[arg-type]
    assert dispatcher.shutdown(10.0)
    return dispatcher


@pytest.mark.parametrize("tls", ["starttls", "tls"])
def test_email_over_tls_with_login_has_subject_recipients_and_both_parts(smtp_server, tls) -> None:
    port, mailbox, context = smtp_server(tls)
    notifier = EmailNotifier(
        "127.0.0.1",
        port,
        "alerts@chat.example",
        ["oncall@chat.example", "lead@chat.example"],
        username=USER,
        password=PASSWORD,
        tls=tls,
        ssl_context=context,  # type: ignore[arg-type]
    )
    dispatcher = deliver(notifier, alert(instance="web-1", value=97.5), alert(instance="web-2", value=91.0))
    assert dispatcher.stats.snapshot()["email"]["sent"] == 1
    ((recipients, message, encrypted, login),) = mailbox.messages
    assert recipients == ["oncall@chat.example", "lead@chat.example"]
    assert (encrypted, login) == (True, USER)
    assert message["Subject"] == "[FIRING:2] HighCPU (warning)"
    assert message["From"] == "alerts@chat.example"
    assert message["To"] == "oncall@chat.example, lead@chat.example"
    assert message["Message-ID"]
    assert message["Date"]
    assert message.get_content_type() == "multipart/alternative"
    parts = {
        part.get_content_type(): part.get_payload(decode=True).decode()
        for part in message.walk()
        if not part.is_multipart()
    }
    assert set(parts) == {"text/plain", "text/html"}
    assert "Value: 97.5" in parts["text/plain"]
    assert "instance=web-2" in parts["text/plain"]
    assert "<td>97.5</td>" in parts["text/html"]
    assert "[FIRING:2] HighCPU (warning)" in parts["text/html"]


def test_wrong_password_fails_without_retrying_and_without_showing_it(smtp_server, caplog) -> None:
    port, mailbox, context = smtp_server("starttls")
    notifier = starttls_notifier(port, context, "wrong-password-123")
    dispatcher = deliver(notifier, alert())
    assert dispatcher.stats.snapshot()["email"] == {"sent": 0, "failed": 1, "dropped": 0, "retries": 0}
    assert mailbox.messages == []
    assert "535" in caplog.text
    assert "wrong-password-123" not in caplog.text + repr(notifier)


def test_starttls_required_but_not_offered_sends_nothing_in_clear(smtp_server) -> None:
    port, mailbox, context = smtp_server("none")
    notifier = EmailNotifier("127.0.0.1", port, "a@chat.example", ["b@chat.example"], ssl_context=context)
    with pytest.raises(DeliveryError) as caught:
        notifier(Notification.for_alerts("ops", [alert()], {"alertname": "HighCPU"}))
    assert not caught.value.retryable
    assert mailbox.messages == []


def test_unreachable_server_is_a_retryable_error() -> None:
    notifier = EmailNotifier("127.0.0.1", free_port(), "a@chat.example", ["b@chat.example"], timeout_s=2)
    with pytest.raises(DeliveryError) as caught:
        notifier(Notification.for_alerts("ops", [alert()], {"alertname": "HighCPU"}))
    assert caught.value.retryable


def test_email_settings_come_from_the_environment_beside_alert_email_enabled(smtp_server) -> None:
    port, mailbox, _ = smtp_server("none")
    env = {
        "ALERT_EMAIL_ENABLED": "true",
        "ALERT_EMAIL_HOST": "127.0.0.1",
        "ALERT_EMAIL_PORT": str(port),
        "ALERT_EMAIL_FROM": "alerts@chat.example",
        "ALERT_EMAIL_TO": "oncall@chat.example, lead@chat.example",
        "ALERT_EMAIL_USERNAME": USER,
        "ALERT_EMAIL_PASSWORD": PASSWORD,
        "ALERT_EMAIL_TLS": "none",
        "ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/token",
    }
    config = get_monitoring_config("test", env=env)
    assert config.alert_email_to == ("oncall@chat.example", "lead@chat.example")
    assert PASSWORD not in repr(config)
    slack, mail = notifiers_from_config(config)
    assert isinstance(slack, SlackNotifier)
    assert isinstance(mail, EmailNotifier)
    deliver(mail, alert())
    ((recipients, _, encrypted, login),) = mailbox.messages
    assert (recipients, encrypted, login) == (["oncall@chat.example", "lead@chat.example"], False, USER)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ALERT_EMAIL_ENABLED": "true", "ALERT_EMAIL_FROM": "a@x", "ALERT_EMAIL_TO": "b@x"}, "ALERT_EMAIL_HOST"),
        ({"ALERT_EMAIL_ENABLED": "true", "ALERT_EMAIL_HOST": "h", "ALERT_EMAIL_TO": "b@x"}, "ALERT_EMAIL_FROM"),
        ({"ALERT_EMAIL_ENABLED": "true", "ALERT_EMAIL_HOST": "h", "ALERT_EMAIL_FROM": "a@x"}, "ALERT_EMAIL_TO"),
    ],
)
def test_enabled_email_without_its_settings_is_a_configuration_error(env, named) -> None:
    with pytest.raises(ConfigurationError, match=named):
        notifiers_from_config(get_monitoring_config("test", env=env))


@pytest.mark.parametrize(
    ("variable", "value"), [("ALERT_EMAIL_TLS", "ssl3"), ("ALERT_EMAIL_PORT", "0"), ("ALERT_EMAIL_PORT", "smtp")]
)
def test_bad_email_variables_are_named_at_configuration_time(variable, value) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        get_monitoring_config("test", env={variable: value})


def test_bad_password_variable_is_not_echoed() -> None:
    config = get_monitoring_config("test", env={"ALERT_EMAIL_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(config)
    assert config.alert_email_password is not None
    assert config.alert_email_password.reveal() == "hunter2"
    assert notifiers_from_config(MonitoringConfig()) == []


def test_untrusted_certificate_is_final_not_retried(smtp_server) -> None:
    port, mailbox, _ = smtp_server("tls")
    notifier = EmailNotifier("127.0.0.1", port, "a@chat.example", ["b@chat.example"], tls="tls", timeout_s=5)
    with pytest.raises(DeliveryError) as caught:  # the system's trust store does not know our test CA
        notifier(Notification.for_alerts("ops", [alert()], {"alertname": "HighCPU"}))
    assert not caught.value.retryable
    assert mailbox.messages == []


def test_config_command_masks_the_smtp_password() -> None:
    import io

    from chat_turbo_metrics._cli.config import run_config_command

    out = io.StringIO()
    run_config_command("test", {"ALERT_EMAIL_PASSWORD": "hunter2-secret", "ALERT_EMAIL_HOST": "smtp.x"}, out)
    shown = out.getvalue()
    rows = {line.split("=")[0].strip(): line for line in shown.splitlines()}
    assert rows["alert_email_host"].endswith("= 'smtp.x'  (ALERT_EMAIL_HOST)")
    assert rows["alert_email_password"].endswith("(ALERT_EMAIL_PASSWORD)")
    assert "hunter2-secret" not in shown


@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\r", "\u2028"])
def test_a_line_break_in_a_label_is_folded_in_the_subject_and_the_email_is_sent(smtp_server, breaker) -> None:
    port, mailbox, context = smtp_server("starttls")
    notifier = starttls_notifier(port, context, PASSWORD)
    forged = f"web-1{breaker}Bcc: attacker@evil.example"
    dispatcher = deliver(notifier, alert(f"High{breaker}CPU", instance=forged))
    assert dispatcher.stats.snapshot()["email"] == {"sent": 1, "failed": 0, "dropped": 0, "retries": 0}
    ((recipients, message, _, _),) = mailbox.messages
    assert recipients == ["oncall@chat.example"]
    assert message["Bcc"] is None
    assert message["Subject"] == "[FIRING:1] High CPU (web-1 Bcc: attacker@evil.example warning)"
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    assert "\nBcc:" not in text  # in the body too, the value stays on its line


@pytest.mark.parametrize("host", ["smtp.example.com", "192.0.2.1"])
def test_a_login_without_tls_to_another_machine_is_refused(host) -> None:
    with pytest.raises(ValueError, match="tls"):
        EmailNotifier(host, 25, "a@chat.example", ["b@chat.example"], username=USER, password=PASSWORD, tls="none")
    allowed = EmailNotifier(
        host,
        25,
        "a@chat.example",
        ["b@chat.example"],
        username=USER,
        password=PASSWORD,
        tls="none",
        allow_insecure_auth=True,
    )
    assert PASSWORD not in repr(allowed)
    EmailNotifier(host, 25, "a@chat.example", ["b@chat.example"], tls="none")  # no login: nothing to protect


def test_a_login_without_tls_to_another_machine_fails_at_configuration() -> None:
    env = {
        "ALERT_EMAIL_ENABLED": "true",
        "ALERT_EMAIL_HOST": "smtp.example.com",
        "ALERT_EMAIL_FROM": "alerts@chat.example",
        "ALERT_EMAIL_TO": "oncall@chat.example",
        "ALERT_EMAIL_USERNAME": USER,
        "ALERT_EMAIL_PASSWORD": PASSWORD,
        "ALERT_EMAIL_TLS": "none",
    }
    with pytest.raises(ConfigurationError, match="ALERT_EMAIL_TLS") as raised:
        get_monitoring_config("test", env=env)
    assert PASSWORD not in str(raised.value)
    config = get_monitoring_config("test", env={**env, "ALERT_EMAIL_ALLOW_INSECURE_AUTH": "true"})
    (mail,) = notifiers_from_config(config)
    assert isinstance(mail, EmailNotifier)
    loopback = get_monitoring_config("test", env={**env, "ALERT_EMAIL_HOST": "localhost"})
    assert loopback.alert_email_tls == "none"
