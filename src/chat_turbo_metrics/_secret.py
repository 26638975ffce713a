"""A string that never shows itself in a repr, a log line or an error message."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# The password of ``scheme://user:password@host``: from the user's ":" to the last "@" (a password may hold
# "/" or "@"; masking too much is harmless, too little is not).
_URL_PASSWORD = re.compile(r"(?P<head>//[^/:@]*:).*(?=@)")


def mask_url_password(url: str) -> str:
    """``url`` with the password of its user-info part replaced by ``***`` (nothing else changed).

    Example:
        >>> mask_url_password("postgresql://chat:hunter2@db.internal:5432/metrics")
        'postgresql://chat:***@db.internal:5432/metrics'
    """
    return _URL_PASSWORD.sub(r"\g<head>***", url, count=1)


class Secret:
    """Holds a credential (API key, webhook URL with a token, database URL with a password).

    ``str()`` and ``repr()`` show only a masked form; call :meth:`reveal` where the real value is needed.

    Example:
        >>> url = Secret("https://hooks.slack.com/services/T0/B0/abcdef")
        >>> url
        Secret('https://hooks.slack.com/***')
        >>> url.reveal().endswith("abcdef")
        True
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the real value, for the one call that sends it."""
        return self._value

    def masked(self) -> str:
        """Scheme and host of a URL, or nothing of anything else."""
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

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))
