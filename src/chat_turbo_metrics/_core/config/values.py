"""Setting values: each parser takes a raw value (text from a variable, a TOML value, a value given in code)
and returns the typed one, or raises ``ValueError`` with the reason; :mod:`chat_turbo_metrics._core.config` names
the setting and the source around that reason.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from chat_turbo_metrics._core.secret import Secret, mask_url_password, mask_url_userinfo


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    value = float(raw)
    if math.isnan(value):
        raise ValueError("expected a number, not NaN")
    return value


def parse_int(raw: Any) -> int:
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise ValueError("expected an integer")
    return int(str(raw).strip()) if isinstance(raw, str) else int(raw)


def parse_names(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    names = tuple(str(item).strip() for item in items if str(item).strip())
    return () if names == ("none",) else names


def parse_file_mode(raw: Any) -> int:
    """A mode for files the exporters create: the owner reads and writes, others may at most read.

    Text is octal (``"0640"``, ``"640"``, ``"0o640"``); a number is taken as it is (TOML ``0o640``).
    """
    if isinstance(raw, str):
        text = raw.strip().lower().removeprefix("0o")
        mode = int(text, 8) if text and all(char in "01234567" for char in text) else -1
    else:
        mode = raw if isinstance(raw, int) and not isinstance(raw, bool) else -1
    if mode < 0 or mode & ~0o644 or mode & 0o600 != 0o600:
        raise ValueError("expected a file mode such as 0600 or 0640 (owner read-write, others read at most)")
    return mode


def parse_str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    return raw


def parse_secret(raw: Any) -> Secret | None:
    if isinstance(raw, Secret):
        return raw
    text = parse_str(raw).strip()
    return Secret(text) if text else None


def parse_endpoint(raw: Any) -> Secret | None:
    """An endpoint URL that may carry credentials in its user info: shown with that part masked, never revealed."""
    secret = parse_secret(raw)
    if secret is None:
        return None
    return Secret(secret.reveal(), shown=mask_url_userinfo(secret.reveal()))


def parse_database_url(raw: Any) -> Secret | None:
    """A Secret holding a URL SQLAlchemy can parse and has a dialect (and driver) installed for.

    Raises:
        ValueError: the URL cannot be used; the message gives the cause with the password masked.
    """
    secret = parse_secret(raw)
    if secret is None:
        return None
    from sqlalchemy import make_url  # here, so that importing the package does not load SQLAlchemy

    text = secret.reveal()
    try:
        make_url(text).get_dialect().import_dbapi()  # the dialect, then its driver (psycopg, sqlite3, ...)
    except Exception as error:
        # The parser's message may quote the URL: show it with the password masked, never the password.
        password = _url_password(text)
        cause = str(error).replace(text, mask_url_password(text))
        cause = cause.replace(password, "***") if password else cause
        raise ValueError(f"{type(error).__name__}: {cause}") from None
    return secret


def _url_password(text: str) -> str:
    try:
        return urlsplit(text).password or ""
    except ValueError:
        return ""


def parse_host(raw: Any) -> str:
    host = parse_str(raw).strip()
    if not host:
        raise ValueError("expected a host name or address, got nothing")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise ValueError(f"cannot be resolved to an address ({error})") from None
    return host


def parse_resource(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    pairs: dict[str, str] = {}
    for item in str(raw).split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value pairs, got {item.strip()!r}")
        pairs[key.strip()] = value.strip()
    return pairs
