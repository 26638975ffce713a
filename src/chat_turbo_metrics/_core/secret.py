"""A string that never shows itself in a repr, a log line or an error message."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

# The password of ``scheme://user:password@host``: from the user's ":" to the last "@" (a password may hold
# "/" or "@"; masking too much is harmless, too little is not).
_URL_PASSWORD = re.compile(r"(?P<head>//[^/:@]*:).*(?=@)")
# The whole user info of ``scheme://userinfo@host``, up to the last "@" (a token may stand where the user does).
_URL_USERINFO = re.compile(r"(?P<head>//)[^@]*@")


def mask_url_password(url: str) -> str:
    """``url`` with the password of its user-info part replaced by ``***`` (nothing else changed).

    Example:
        >>> mask_url_password("postgresql://chat:hunter2@db.internal:5432/metrics")
        'postgresql://chat:***@db.internal:5432/metrics'
    """
    return _URL_PASSWORD.sub(r"\g<head>***", url, count=1)


def mask_url_userinfo(url: str) -> str:
    """``url`` with its whole user-info part (user and password, or a token) replaced by ``***``.

    Example:
        >>> mask_url_userinfo("https://metrics:hunter2@proxy.internal:8443/datadog")
        'https://***@proxy.internal:8443/datadog'
    """
    return _URL_USERINFO.sub(r"\g<head>***@", url, count=1)


class Secret:
    """Holds a credential (API key, webhook URL with a token, database URL with a password).

    ``str()`` and ``repr()`` show only a masked form; call :meth:`reveal` where the real value is needed.
    ``shown`` replaces the masked form where more of the value may be seen (an endpoint without its user info).

    Example:
        >>> url = Secret("https://hooks.slack.com/services/T0/B0/abcdef")
        >>> url
        Secret('https://hooks.slack.com/***')
        >>> url.reveal().endswith("abcdef")
        True
    """

    __slots__ = ("_shown", "_value")

    def __init__(self, value: str, *, shown: str | None = None) -> None:
        self._value = value
        self._shown = shown

    def reveal(self) -> str:
        """Return the real value, for the one call that sends it."""
        return self._value

    def masked(self) -> str:
        """What may be shown: ``shown`` if given, else scheme and host of a URL, or nothing of anything else."""
        if self._shown is not None:
            return self._shown
        parts = urlsplit(self._value)
        if parts.scheme and parts.hostname:
            return f"{parts.scheme}://{parts.hostname}/***"
        if parts.scheme:
            return f"{parts.scheme}:***"
        return "***"

    def __repr__(self) -> str:
        return f"Secret({self.masked()!r})"

    __str__ = masked

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuilt, (self._value, self._shown))


def _rebuilt(value: str, shown: str | None) -> Secret:
    return Secret(value, shown=shown)
