"""One JSON POST over HTTP(S) with the standard library, mapping failures to retryable or final errors.

The URL is a :class:`Secret`: errors name only its scheme and host. 408, 429 and 5xx are retryable (429 and 503
with the peer's ``Retry-After``); other 4xx are final, since sending the same request again cannot succeed.
"""

from __future__ import annotations

import email.utils
import http.client
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from chat_turbo_metrics._secret import Secret
from chat_turbo_metrics.alerting._delivery import DeliveryError

USER_AGENT = "chat-turbo-metrics-alerting"
_RETRYABLE_4XX = (408, 429)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delta seconds or an HTTP date.

    Args:
        value: the header, or None.
        now: Unix time to measure an HTTP date from (default: now).

    Returns:
        Seconds to wait (never negative), or None when absent or unreadable.

    Example:
        >>> retry_after_seconds("3"), retry_after_seconds("soon")
        (3.0, None)
    """
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def post(url: Secret, body: bytes, headers: Mapping[str, str], timeout_s: float) -> bytes:
    """POST ``body`` to ``url``; return the response body (first 64 KiB).

    Raises:
        DeliveryError: the peer refused, failed or could not be reached; the message shows the masked URL.
    """
    request = urllib.request.Request(url.reveal(), data=body, method="POST")
    request.add_header("User-Agent", USER_AGENT)
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return bytes(response.read(65536))
    except urllib.error.HTTPError as error:
        status = error.code
        retryable = status in _RETRYABLE_4XX or status >= 500
        wait = retry_after_seconds(error.headers.get("Retry-After")) if error.headers else None
        raise DeliveryError(f"HTTP {status} from {url}", retryable=retryable, retry_after_s=wait) from None
    except urllib.error.URLError as error:
        final = isinstance(error.reason, ssl.SSLCertVerificationError)  # retrying cannot make it trusted
        raise DeliveryError(f"cannot reach {url}: {_scrubbed(error.reason, url)}", retryable=not final) from None
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryError(f"cannot reach {url}: {_scrubbed(error, url)}") from None


def _scrubbed(reason: object, url: Secret) -> str:
    """The reason's text without the secret URL (some errors quote the address they failed on)."""
    text = str(reason) or type(reason).__name__
    return text.replace(url.reveal(), str(url))
