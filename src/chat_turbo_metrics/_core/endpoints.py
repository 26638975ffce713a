"""Endpoints given in settings: http(s) URLs that carry a secret (webhooks), and whether a host is this machine.

A webhook URL is a credential: its path, query or user part holds the token. It is checked once, when it is
configured, so that no later error (Python's ``InvalidURL`` quotes the URL it fails on) can show any of it; a
message about a URL names at most its scheme and host.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from chat_turbo_metrics._core.secret import Secret

# RFC 3986's characters, plus "%" for escapes: no space, no control character, nothing outside ASCII.
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+\Z")
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?\.?\Z")


@dataclass(frozen=True)
class SecretURL:
    """A checked http(s) URL, split the way an HTTP client needs it; ``str()`` shows scheme and host only.

    Example:
        >>> url = parse_secret_url("https://bot:t0ken@hooks.example.com:8443/services/T0?x=1")
        >>> url, url.host, url.port, url.target, url.credentials
        (SecretURL('https://hooks.example.com/***'), 'hooks.example.com', 8443, '/services/T0?x=1', ('bot', 't0ken'))
    """

    secret: Secret
    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line
    credentials: tuple[str, str] | None  # the user part, sent as HTTP Basic authentication (as Go's client does)

    def __str__(self) -> str:
        return self.secret.masked()

    def __repr__(self) -> str:
        return f"SecretURL({self.secret.masked()!r})"


def parse_secret_url(value: str | Secret) -> SecretURL:
    """Check an http(s) URL that may carry a secret and split it.

    Args:
        value: the URL, as text or a :class:`Secret`; blanks around it are ignored.

    Returns:
        The parts an HTTP client needs.

    Raises:
        ValueError: not an http(s) URL with a host, a bad port, or spaces, control or non-ASCII characters in
            it (percent-encode those); the message shows no part of the URL.

    Example:
        >>> parse_secret_url("hooks.example.com/T0")
        Traceback (most recent call last):
        ValueError: expected an http:// or https:// URL
    """
    text = (value.reveal() if isinstance(value, Secret) else value).strip()
    scheme = text.partition(":")[0].lower()
    if scheme not in ("http", "https") or not text[len(scheme) :].startswith("://"):
        raise ValueError("expected an http:// or https:// URL")
    if not _URL_CHARACTERS.match(text):
        raise ValueError("contains spaces, control or non-ASCII characters (percent-encode them)")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number from 1 to 65535") from None
    host = parts.hostname or ""
    if not _HOST_NAME.match(host) and not _is_address(host):
        raise ValueError("has no valid host name")
    if port == 0:
        raise ValueError("has a port that is not a number from 1 to 65535")
    credentials = None
    if "@" in parts.netloc:
        credentials = (unquote(parts.username or ""), unquote(parts.password or ""))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return SecretURL(Secret(text), scheme, host, port or (443 if scheme == "https" else 80), target, credentials)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (what Go's ``net/smtp`` lets authenticate without TLS).

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("smtp.example.com")
        (True, True, False)
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
