"""What the metrics endpoint answers, whoever carries the HTTP: one :func:`respond` for every transport.

The built-in server (:mod:`._prometheus_server`) and the mountable ASGI/WSGI apps
(:func:`chat_turbo_metrics.exporters.prometheus.make_asgi_app`) both hand a request's path and headers to
:func:`respond` and send back the :class:`Response` it returns, so a scrape on the application's own port is
byte for byte a scrape of the exporter's port: the same pages, negotiation, compression and errors.

Pages are looked up by path in :data:`PAGES`; ``/metrics`` (and ``/``, where a mounted app sees its own root)
is the exposition. A new page is one function ``page(source, request) -> Response`` added with
:func:`add_page`; it then answers on the built-in server and in every mounted app alike.

Example:
    >>> class Fixed:
    ...     def render(self, openmetrics=False):
    ...         return "up 1\\n# EOF\\n" if openmetrics else "up 1\\n"
    >>> response = respond(Fixed(), "/metrics", accept="application/openmetrics-text; version=1.0.0")
    >>> response.status, response.header("Content-Type"), response.body
    (200, 'application/openmetrics-text; version=1.0.0; charset=utf-8', b'up 1\\n# EOF\\n')
    >>> respond(Fixed(), "/nothing").status
    404
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from chat_turbo_metrics.exporters._prometheus_text import CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE

_logger = logging.getLogger("chat_turbo_metrics.exporters.prometheus")

_OPENMETRICS = "application/openmetrics-text"
_OPENMETRICS_VERSIONS = ("1.0.0", "0.0.1")  # 0.0.1 is 1.0.0 but for details a parser of either accepts
_TEXT = ("text/plain", "text/*", "*/*")


class Exposition(Protocol):
    """What the metrics page asks for the exposition (None: the endpoint is stopping)."""

    def render(self, openmetrics: bool = False) -> str | None: ...


@dataclass(frozen=True)
class Request:
    """The parts of an HTTP request a page may read."""

    path: str
    query: str = ""
    accept: str = ""
    accept_encoding: str = ""


@dataclass(frozen=True)
class Response:
    """Status, headers and body of an answer (the body of a GET; a HEAD sends the headers only)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


Page = Callable[[Any, Request], Response]


def plain(status: int, text: str) -> Response:
    """A short text/plain answer (errors, small pages)."""
    return Response(status, (("Content-Type", "text/plain; charset=utf-8"),), text.encode("utf-8"))


def wants_openmetrics(accept: str) -> bool:
    """True when an Accept header prefers OpenMetrics 1.0 over the text format, ``q`` weights honoured.

    A tie goes to OpenMetrics (the client named it); ``q=0`` refuses a type; an OpenMetrics version this endpoint
    does not write (``version=2.0.0``) does not count.

    Example:
        >>> prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        >>> wants_openmetrics(prometheus), wants_openmetrics("text/plain"), wants_openmetrics("")
        (True, False, False)
        >>> wants_openmetrics("application/openmetrics-text;q=0.2, text/plain;q=0.9")
        False
    """
    best_openmetrics = best_text = 0.0
    for item in accept.split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        quality, version = 1.0, None
        for param in params:
            key, _, value = param.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    quality = min(1.0, max(0.0, float(value)))
                except ValueError:
                    quality = 0.0
            elif key == "version":
                version = value
        if media == _OPENMETRICS and (version is None or version in _OPENMETRICS_VERSIONS):
            best_openmetrics = max(best_openmetrics, quality)
        elif media in _TEXT:
            best_text = max(best_text, quality)
    return best_openmetrics > 0 and best_openmetrics >= best_text


def accepts_gzip(header: str) -> bool:
    """True when an Accept-Encoding header allows gzip (``gzip;q=0`` refuses it)."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower().removeprefix("q=") if params.strip().lower().startswith("q=") else "1"
            try:
                return float(quality) > 0
            except ValueError:
                return False
    return False


def metrics_page(source: Exposition | None, request: Request) -> Response:
    """The exposition: OpenMetrics when the client prefers it, else the text format 0.0.4."""
    openmetrics = wants_openmetrics(request.accept)
    text = None if source is None else source.render(openmetrics=True) if openmetrics else source.render()
    if text is None:
        # Stopping (the process is exiting; under a pre-fork server a sibling takes the port over): an
        # empty 200 would tell Prometheus every series vanished. A 503 is a failed scrape, retried.
        return plain(503, "the endpoint is stopping")
    # "replace": a tag value with a lone surrogate must not make every scrape fail.
    body = text.encode("utf-8", "replace")
    return Response(200, (("Content-Type", OPENMETRICS_CONTENT_TYPE if openmetrics else CONTENT_TYPE),), body)


PAGES: dict[str, Page] = {"/metrics": metrics_page, "/": metrics_page, "": metrics_page}


def add_page(path: str, page: Page) -> None:
    """Answer ``path`` (``/status``) with ``page(source, request)`` on the built-in server and the mounted apps.

    ``source`` is what the endpoint serves (the exporter; None while it stops). A page that raises answers 500.
    """
    if not path.startswith("/"):
        raise ValueError(f"a page path starts with '/': {path!r}")
    PAGES[path] = page


def respond(source: Exposition | None, path: str, accept: str = "", accept_encoding: str = "") -> Response:
    """The answer to a GET of ``path`` (with its query, if any) on the metrics endpoint.

    Args:
        source: what the endpoint serves (None: it is stopping; the metrics page answers 503).
        path: the request path as received (``/metrics?x=1``); a mounted app passes the path below its mount.
        accept: the Accept header (content negotiation).
        accept_encoding: the Accept-Encoding header (gzip when allowed).
    """
    route, _, query = path.partition("?")
    page = PAGES.get(route)
    if page is None:
        return plain(404, "try /metrics")
    try:
        response = page(source, Request(route, query, accept, accept_encoding))
    except Exception:
        _logger.exception("collecting metrics for a scrape failed")
        return plain(500, "collection failed; see the application's log")
    if response.status == 200 and response.body and accepts_gzip(accept_encoding):
        headers = (*response.headers, ("Content-Encoding", "gzip"))
        response = Response(response.status, headers, gzip.compress(response.body, compresslevel=1))
    return response
