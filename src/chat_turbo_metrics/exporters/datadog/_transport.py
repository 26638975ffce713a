"""HTTP to the series intake: one connection per export, retries with backoff, 413 splitting.

Standard library only (``http.client`` with a verifying SSL context): the exporter needs one POST and
must stay importable everywhere the SDK is. Each request has a total deadline (the export's remaining time), not
a per-read timeout, so an intake that trickles its answer cannot hold the export worker. A wait the intake asks for
(``Retry-After``, ``X-RateLimit-Reset``) holds across exports: no request goes out before it ends, and the exports
meanwhile keep their data for later, as the OpenTelemetry exporters' retry rules ask for throttled answers.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import json
import logging
import math
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from chat_turbo_metrics._core.config import ConfigurationError
from chat_turbo_metrics._core.deadline import abort_after, shutdown_socket
from chat_turbo_metrics._core.endpoints import is_loopback
from chat_turbo_metrics._core.secret import Secret, mask_url_userinfo
from chat_turbo_metrics._core.version import __version__
from chat_turbo_metrics.exporters.datadog._batching import Batch, Batcher

_logger = logging.getLogger("chat_turbo_metrics.exporters.datadog")

SERIES_PATH = "/api/v2/series"
_RETRYABLE = frozenset({408, 429})
_MAX_ERROR_TEXT = 500
_MAX_RESPONSE = 65_536
_MAX_SERVER_WAIT_S = 3600.0  # a longer Retry-After (or a bogus one) still lets an export try again after an hour


def intake_base_url(site: str, endpoint: str | Secret | None, setting: str = "endpoint") -> str:
    """The base URL to post to, without user info: see :func:`intake_endpoint`."""
    return intake_endpoint(site, endpoint, setting)[0]


def intake_endpoint(site: str, endpoint: str | Secret | None, setting: str = "endpoint") -> tuple[str, Secret | None]:
    """The base URL to post to (``endpoint`` if given, else ``https://api.<site>``), and its Basic credentials.

    User info in the endpoint (``https://user:password@proxy``, for a proxy that asks for a login) is taken out
    of the URL, which is what logs and reprs show, and sent as ``Authorization: Basic`` instead.

    Args:
        site: the Datadog site, used when there is no endpoint.
        endpoint: a base URL that replaces ``https://api.<site>``.
        setting: how an error names the endpoint (its variable when it came from one).

    Returns:
        The base URL without user info or trailing slash, and the ``Authorization`` value or None.

    Raises:
        ConfigurationError: the endpoint is not an http(s) URL, or is plain http to a non-loopback host; the
            message shows it with its user info masked.
    """
    if endpoint is None:
        return f"https://api.{site}", None
    raw = (endpoint.reveal() if isinstance(endpoint, Secret) else endpoint).strip()
    shown = mask_url_userinfo(raw)
    parts = _split(raw)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(f"{setting}={shown!r}: expected a base URL such as https://api.datadoghq.com")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"{setting}={shown!r}: plain http would send the API key unencrypted; use https "
            "(http is accepted only for loopback addresses)"
        )
    netloc = parts.netloc.rpartition("@")[2]
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if "@" not in parts.netloc:
        return base, None
    login = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return base, Secret("Basic " + base64.b64encode(login.encode()).decode("ascii"))


def _split(url: str) -> SplitResult | None:
    """``url``'s parts, or None when it or its port does not parse (found here, not at the first export)."""
    try:
        parts = urlsplit(url)
        return parts if parts.port is None or parts.port >= 0 else None
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    return is_loopback(host)


@dataclass(frozen=True)
class Response:
    """What the intake answered."""

    status: int
    headers: Mapping[str, str]
    text: str


class Intake:
    """Posts gzip bodies to ``<base>/api/v2/series``; :meth:`abort` may be called from another thread."""

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        ssl_context: ssl.SSLContext | None = None,
        authorization: Secret | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self._authorization = authorization
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "").rstrip("/") + SERIES_PATH
        self._api_key = api_key
        if ssl_context is None and self._https:  # the system's CA bundle: 35 ms of CPU, for https only
            ssl_context = ssl.create_default_context()
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, timeout_s: float) -> Response:
        """POST one body; raises OSError or http.client.HTTPException when the connection fails."""
        connection = self._connect(timeout_s)
        headers = {
            "DD-API-KEY": self._api_key.reveal(),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
            "User-Agent": f"chat-turbo-metrics/{__version__}",
        }
        if self._authorization is not None:  # the endpoint's user info, for a proxy that asks for a login
            headers["Authorization"] = self._authorization.reveal()
        with abort_after(timeout_s, lambda: shutdown_socket(connection.sock)) as call:
            try:
                connection.request("POST", self._path, body=body, headers=headers)
                answer = connection.getresponse()
                text = answer.read(_MAX_RESPONSE).decode("utf-8", "replace")
                if answer.will_close or not answer.isclosed():  # a body left unread would corrupt the next answer
                    self.close()
            except BaseException as error:
                self.close()  # the connection's state is unknown; the next request opens a new one
                if call.expired and isinstance(error, (OSError, http.client.HTTPException)):
                    raise TimeoutError(f"no complete answer within {timeout_s:.1f} s") from None
                raise
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, text)

    def close(self) -> None:
        """Close the connection; the next :meth:`post` opens a new one."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def abort(self) -> None:
        """Interrupt a request in flight on another thread (used by shutdown)."""
        with self._lock:
            connection = self._connection
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(2)  # SHUT_RDWR wakes a thread blocked in recv or send

    def forget_connection(self) -> None:
        """After fork(), in the child: drop the parent's connection without touching its socket."""
        self._lock = threading.Lock()
        self._connection = None

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        with self._lock:
            connection = self._connection
            if connection is None:
                if self._https:
                    connection = http.client.HTTPSConnection(
                        self._host, self._port, timeout=timeout_s, context=self._ssl_context
                    )
                else:
                    connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
                self._connection = connection
        connection.timeout = timeout_s
        if connection.sock is not None:
            connection.sock.settimeout(timeout_s)
        return connection


def server_wait_s(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the intake asked us to wait: ``Retry-After`` (seconds or HTTP date) or ``X-RateLimit-Reset``."""
    retry_after = headers.get("retry-after", "").strip()
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(retry_after).timestamp() - now())
        except (TypeError, ValueError):
            pass
    reset = headers.get("x-ratelimit-reset", "").strip()
    try:
        return max(0.0, float(reset)) if reset else None
    except ValueError:
        return None


def intake_errors(response: Response) -> list[str]:
    """The ``errors`` list of the intake's JSON answer (empty when there is none)."""
    try:
        errors = json.loads(response.text).get("errors")
    except (ValueError, AttributeError):
        return []
    return [str(error) for error in errors] if isinstance(errors, list) else []


def error_text(response: Response, secret: str) -> str:
    """The intake's error messages (its JSON ``errors`` list, else the raw text), short and key-free."""
    errors = intake_errors(response)
    text = "; ".join(errors) if errors else response.text.strip()
    if secret:
        text = text.replace(secret, "***")
    return text[:_MAX_ERROR_TEXT] or "(no error text)"


class Outcome(Enum):
    """How one request ended."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"  # 400/403/404 and other 4xx: sending it again would fail again
    TOO_LARGE = "too large"
    UNSENT = "unsent"  # retries ran out of time, or shutdown: the data is kept for the next export


@dataclass
class Delivery:
    """What happened to the series of one export."""

    accepted: int = 0
    rejected: int = 0
    unsent: list[bytes] = field(default_factory=list)
    gave_up: bool = False  # out of time, told to wait, or shut down: the export's other bodies wait too

    @property
    def final(self) -> bool:
        """True when at least one request reached a final answer (so the export cannot be simply repeated)."""
        return bool(self.accepted or self.rejected)


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits initial * 2**n, capped, times a random 0.5-1.0."""

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: Callable[[], float] = random.random

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return float(min(self.max_s, self.initial_s * 2**attempt) * (0.5 + self.jitter() / 2))


class Sender:
    """Delivers batches with retries, bounded by a deadline and interrupted by ``stop``."""

    def __init__(
        self,
        intake: Intake,
        batcher: Batcher,
        *,
        policy: RetryPolicy,
        stop: threading.Event,
        secret: Secret,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._intake = intake
        self._batcher = batcher
        self._policy = policy
        self.stop = stop
        self._secret = secret
        self._clock = clock
        self.retries = 0
        self._resume_at = -math.inf  # clock time before which the intake asked for no request

    def deliver(self, batch: Batch, deadline: float, delivery: Delivery) -> None:
        """Send ``batch``, splitting it on 413; record the result in ``delivery``."""
        if not self._batcher.fits(batch) and len(batch.items) < 2:
            self._drop_oversized(batch, delivery, "it is larger than the intake's limits on its own")
            return
        # Once a body could not be delivered in time, the others would only knock on the same closed door
        # (a rate-limited or failing intake): they wait for the next export without a request.
        outcome = Outcome.UNSENT if delivery.gave_up else self._post_with_retries(batch, deadline)
        if outcome is Outcome.ACCEPTED:
            delivery.accepted += len(batch.items)
        elif outcome is Outcome.REJECTED:
            delivery.rejected += len(batch.items)
        elif outcome is Outcome.UNSENT:
            delivery.unsent.extend(batch.items)
            delivery.gave_up = True
        elif len(batch.items) < 2:
            self._drop_oversized(batch, delivery, "the intake answered 413 for it alone")
        else:
            for half in batch.halves():
                self.deliver(half, deadline, delivery)

    def _drop_oversized(self, batch: Batch, delivery: Delivery, why: str) -> None:
        delivery.rejected += len(batch.items)
        _logger.error("Datadog series dropped: %s (%d bytes, %d compressed)", why, batch.raw_size, len(batch.body))

    def _post_with_retries(self, batch: Batch, deadline: float) -> Outcome:
        if self._clock() < self._resume_at:
            _logger.debug("Datadog intake asked to wait %.0f s more; the data is kept", self._resume_at - self._clock())
            return Outcome.UNSENT
        attempt = 0
        while True:
            remaining = deadline - self._clock()
            if self.stop.is_set() or remaining <= 0:
                return Outcome.UNSENT
            try:
                response = self._intake.post(batch.body, remaining)
            except ssl.SSLCertVerificationError as error:
                # A certificate that does not verify will not verify on a retry either: say so once.
                _logger.error("Datadog intake %s: TLS certificate not trusted: %s", self._intake.base_url, error)
                return Outcome.UNSENT
            except (OSError, http.client.HTTPException) as error:
                reason, wait = f"connection failed ({type(error).__name__})", None
            else:
                outcome = self._classify(response, len(batch.items))
                if outcome is not None:
                    return outcome
                reason, wait = f"HTTP {response.status}", server_wait_s(response.headers)
                if wait:
                    wait = min(wait, _MAX_SERVER_WAIT_S)
                    self._resume_at = max(self._resume_at, self._clock() + wait)
            # The intake's wait is a minimum: a Retry-After of 0 must not turn the retries into a busy loop.
            delay = max(self._policy.delay_s(attempt), wait or 0.0)
            if self._clock() + delay >= deadline:
                _logger.warning(
                    "Datadog intake %s: %s; not retrying within this export's timeout, the data is kept for %s",
                    self._intake.base_url,
                    reason,
                    f"the first export after {wait:.0f} s (the intake's wait)" if wait else "the next export",
                )
                return Outcome.UNSENT
            _logger.info("Datadog intake %s: %s; retrying in %.1f s", self._intake.base_url, reason, delay)
            self.retries += 1
            attempt += 1
            if self.stop.wait(delay):
                return Outcome.UNSENT

    def _classify(self, response: Response, count: int) -> Outcome | None:
        status = response.status
        if 200 <= status < 300:
            if intake_errors(response):
                # Accepted, yet the intake says some of it was not: worth a warning, not a retry.
                _logger.warning(
                    "Datadog intake %s accepted %d series with errors: %s",
                    self._intake.base_url,
                    count,
                    error_text(response, self._secret.reveal()),
                )
            return Outcome.ACCEPTED
        if status == 413:
            return Outcome.TOO_LARGE
        if status in _RETRYABLE or status >= 500:
            return None
        _logger.error(
            "Datadog intake %s rejected %d series with HTTP %d (not retried): %s",
            self._intake.base_url,
            count,
            status,
            error_text(response, self._secret.reveal()),
        )
        return Outcome.REJECTED
