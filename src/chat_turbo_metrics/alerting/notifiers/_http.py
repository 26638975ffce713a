"""One JSON POST over HTTP(S) with the standard library, mapping failures to retryable or final errors.

The URL is a :class:`~chat_turbo_metrics._core.endpoints.SecretURL`: errors name only its scheme and host. 408, 429
and 5xx are retryable (429 and 503 with the peer's ``Retry-After``); other 4xx are final, since sending the same
request again cannot succeed. Redirects are not followed: a 3xx is a failed delivery (urllib would re-send a POST
as a bodyless GET to wherever the receiver points, signature header included), final like Alertmanager's
notifiers treat any answer that is neither 2xx nor retryable. ``timeout_s`` is the whole request's deadline, not a
per-read timeout, so a receiver that trickles its answer cannot hold its queue. A user part in the URL is sent as
HTTP Basic authentication, as Go's client (Alertmanager's) sends it. ``HTTP(S)_PROXY`` and ``NO_PROXY`` apply.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import ssl
import time
import urllib.request
from collections.abc import Mapping
from urllib.parse import unquote, urljoin, urlsplit

from chat_turbo_metrics._core.deadline import abort_after, shutdown_socket
from chat_turbo_metrics._core.endpoints import SecretURL
from chat_turbo_metrics._core.secret import Secret
from chat_turbo_metrics.alerting._delivery import DeliveryError

USER_AGENT = "chat-turbo-metrics-alerting"
_RETRYABLE_4XX = (408, 429)
_MAX_RESPONSE = 65536


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


def post(url: SecretURL, body: bytes, headers: Mapping[str, str], timeout_s: float) -> bytes:
    """POST ``body`` to ``url`` within ``timeout_s`` in all; return the response body (first 64 KiB).

    Raises:
        DeliveryError: the peer refused, redirected, failed, could not be reached or did not answer in time; the
            message shows the masked URL only.
    """
    return _exchange("POST", url, body, headers, timeout_s, _MAX_RESPONSE)


def get(url: SecretURL, timeout_s: float, limit: int = 64 * 1024 * 1024) -> bytes:
    """GET ``url`` within ``timeout_s`` in all (``rules check --metrics``); return at most ``limit`` bytes.

    Raises:
        DeliveryError: as :func:`post`.
    """
    return _exchange("GET", url, None, {}, timeout_s, limit)


def _exchange(  # noqa: PLR0917 - the two public functions above are its only callers
    method: str, url: SecretURL, body: bytes | None, headers: Mapping[str, str], timeout_s: float, limit: int
) -> bytes:
    connection, target, sent = _connection(url, timeout_s)
    sent.update({"User-Agent": USER_AGENT, **headers})
    if url.credentials is not None:
        sent["Authorization"] = _basic(*url.credentials)
    with abort_after(timeout_s, lambda: shutdown_socket(connection.sock)) as call:
        try:
            connection.request(method, target, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read(limit)
        except ssl.SSLCertVerificationError as error:  # retrying cannot make an untrusted certificate trusted
            raise DeliveryError(f"cannot reach {url}: {error.verify_message}", retryable=False) from None
        except (OSError, http.client.HTTPException) as error:
            if call.expired:
                raise DeliveryError(f"no complete answer from {url} within {timeout_s:g} s") from None
            raise DeliveryError(f"cannot reach {url}: {type(error).__name__}: {_reason(error)}") from None
        finally:
            connection.close()
    return _checked(url, response, data)


def _checked(url: SecretURL, response: http.client.HTTPResponse, data: bytes) -> bytes:
    status = response.status
    if 200 <= status < 300:
        return data
    if 300 <= status < 400:
        raise DeliveryError(
            f"HTTP {status} from {url}: redirects to {_location(url, response)}, not followed",
            retryable=False,
        )
    retryable = status in _RETRYABLE_4XX or status >= 500
    wait = retry_after_seconds(response.getheader("Retry-After"))
    raise DeliveryError(f"HTTP {status} from {url}", retryable=retryable, retry_after_s=wait)


def _location(url: SecretURL, response: http.client.HTTPResponse) -> str:
    """Where a redirect points, with no more of it than a secret URL shows (scheme and host)."""
    location = response.getheader("Location")
    if not location:
        return "no Location"
    try:
        return Secret(urljoin(url.secret.reveal(), location.strip())).masked()
    except ValueError:
        return "an unreadable Location"


def _connection(url: SecretURL, timeout_s: float) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """The connection to open (to the proxy the environment names for this host, if any), the request target and
    the headers the proxy needs."""
    proxy = None if urllib.request.proxy_bypass(url.host) else urllib.request.getproxies().get(url.scheme)
    if not proxy:
        if url.scheme == "https":
            return _https(url.host, url.port, timeout_s), url.target, {}
        return http.client.HTTPConnection(url.host, url.port, timeout=timeout_s), url.target, {}
    via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    auth = {}
    if via.username is not None:
        auth["Proxy-Authorization"] = _basic(unquote(via.username), unquote(via.password or ""))
    if url.scheme == "http":  # a forward proxy takes the absolute URL in the request line
        connection = http.client.HTTPConnection(via.hostname or "", via.port, timeout=timeout_s)
        return connection, f"http://{url.host}:{url.port}{url.target}", auth
    tunnel = _https(via.hostname or "", via.port, timeout_s)
    tunnel.set_tunnel(url.host, url.port, headers=auth)
    return tunnel, url.target, {}


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _https(host: str, port: int | None, timeout_s: float) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(host, port, timeout=timeout_s, context=ssl.create_default_context())


def _reason(error: BaseException) -> str:
    """The error's own text, which for socket and TLS errors names no URL (only the host was ever given)."""
    return str(error) or "no details"
