"""The four client instrumentors: each replaces one method of its library and puts it back on ``uninstrument()``.

``instrument()`` imports none of the libraries: each is patched when the application imports it (at once if it
already has), and ``uninstrument()`` before that import cancels the patch.

A request is measured once, at the outermost instrumented call: from the call to the response's headers (and the
body, when the library reads it before returning; a streamed body is the application's to read). The client's own
retries and the redirects it follows are part of that one request. A request that raised (connection refused, a
timeout, a cancellation) is recorded with its ``error_type`` and no status, and the exception goes on unchanged.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics.instrumentation import when_imported
from chat_turbo_metrics_http_client._connections import AIOHTTP, HTTPCORE, URLLIB3, Tracked
from chat_turbo_metrics_http_client._metrics import (
    DEFAULT_PORTS,
    ClientMetrics,
    Patches,
    Server,
    authority,
    client_metrics,
    error_type,
    measuring,
    patched,
    perf_counter,
)

# (the instrumented call's first argument, its other positional arguments, its keywords) -> (method, server key):
# the arguments are passed as they came, a tuple and a dict, so describing a call costs no repacking.
Describe = Callable[[Any, tuple[Any, ...], dict[str, Any]], tuple[str, Server]]


def measured(original: Any, metrics: ClientMetrics, describe: Describe, status: Callable[[Any], int]) -> Any:
    """``original`` measured: one recording per outermost call, with the response's status or the error's type."""

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if measuring.get():
            return original(self, *args, **kwargs)
        token = measuring.set(True)
        start = perf_counter()
        try:
            response = original(self, *args, **kwargs)
        except BaseException as error:
            _finished(metrics, describe, self, args, kwargs, error, perf_counter() - start)
            raise
        finally:
            measuring.reset(token)
        _finished(metrics, describe, self, args, kwargs, response, perf_counter() - start, status)
        return response

    return call


def measured_async(original: Any, metrics: ClientMetrics, describe: Describe, status: Callable[[Any], int]) -> Any:
    """:func:`measured` for a coroutine function: a cancellation is recorded as ``CancelledError``, then raised on."""

    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if measuring.get():
            return await original(self, *args, **kwargs)
        token = measuring.set(True)
        start = perf_counter()
        try:
            response = await original(self, *args, **kwargs)
        except BaseException as error:
            _finished(metrics, describe, self, args, kwargs, error, perf_counter() - start)
            raise
        finally:
            measuring.reset(token)
        _finished(metrics, describe, self, args, kwargs, response, perf_counter() - start, status)
        return response

    return call


def _finished(  # noqa: PLR0917 - the wrappers' shared tail, positional for speed
    metrics: ClientMetrics,
    describe: Describe,
    owner: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    outcome: Any,
    elapsed: float,
    status: Callable[[Any], int] | None = None,
) -> None:
    """Record one call: ``outcome`` is its response (``status`` reads its status) or, without ``status``, the
    exception it raised."""
    try:
        method, server = describe(owner, args, kwargs)
        if status is None:
            metrics.failed(method, server, error_type(outcome), elapsed)
        else:
            metrics.done(method, server, status(outcome), elapsed)
    except Exception as problem:  # an odd call or response the library accepted: never into the application
        metrics.problems.report(("describe", type(problem)), "cannot describe an HTTP client request: %r", problem)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    """The instrumented call's argument ``name``, given at position ``index`` (after self) or as a keyword."""
    return args[index] if len(args) > index else kwargs[name]


class _ClientInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``instrument(metric_names=, monitor=, environ=)``: what every client instrumentor takes.

    metric_names: ``seed`` (``http_client_request_duration_seconds``), ``semconv`` (``http.client.request.duration``)
        or ``both``; default ``CHAT_TURBO_HTTP_METRIC_NAMES``, else ``seed``.
    monitor: record into this monitor (default: the process-wide one, looked up per request).
    """

    _library: tuple[str, ...] = ()
    _module = ""  # the module whose import patches the library (now, if it is imported already)
    _undo: Callable[[], None] | None = None  # restores the library, or cancels its patch still waiting
    _metrics: ClientMetrics | None = None
    _connections: Tracked | None = None  # the library's pools, whose open connections are read at collection
    _following: Tracked | None = None  # _connections, while instrumented and following them

    def instrumentation_dependencies(self) -> Collection[str]:
        """The library versions this instrumentor covers."""
        return self._library

    def _instrument(self, **kwargs: Any) -> None:
        connections = self._connections
        metrics = client_metrics(kwargs, connections)
        if metrics is None:  # a bad variable, logged once: the library is left as it is
            return
        patch = self._patch
        undo = when_imported(self._module, lambda module: patched(lambda patches: patch(patches, metrics, module)))
        if connections is not None:
            connections.acquire()  # a library version whose pools we cannot follow: logged, durations only
        self._undo, self._metrics, self._following = undo, metrics, connections

    @abstractmethod
    def _patch(self, patches: Patches, metrics: ClientMetrics, module: ModuleType) -> None:
        """Patch the library's ``module`` (each subclass its own), recording what it replaced in ``patches``."""

    def _uninstrument(self, **kwargs: Any) -> None:
        undo, self._undo = self._undo, None
        metrics, self._metrics = self._metrics, None
        following, self._following = self._following, None
        if undo is not None:
            undo()
        if following is not None:
            following.release()
        if metrics is not None:
            metrics.close()


class RequestsInstrumentor(_ClientInstrumentor):
    """Measures every request sent by ``requests`` (``Session.send``): entry point ``chat_turbo_requests``.

    Example:
        >>> import requests
        >>> RequestsInstrumentor().instrument(monitor=monitor)
        >>> try:
        ...     requests.get("http://127.0.0.1:9/private?token=x", timeout=1)
        ... except requests.ConnectionError:
        ...     pass
        >>> tags = {"method": "GET", "server_address": "127.0.0.1", "server_port": 9, "error_type": "ConnectionError"}
        >>> monitor.snapshot().value("http_client_request_duration_seconds", tags)["count"]
        1
        >>> RequestsInstrumentor().uninstrument()
    """

    _library = ("requests >= 2.20",)
    _module = "requests"
    _connections = URLLIB3

    def _patch(self, patches: Patches, metrics: ClientMetrics, module: ModuleType) -> None:
        def describe(session: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Server]:
            request = args[0] if args else kwargs["request"]
            return request.method or "", authority(request.url or "")

        patches.replace(module.Session, "send", lambda original: measured(original, metrics, describe, _status_code))


class Urllib3Instrumentor(_ClientInstrumentor):
    """Measures every request of ``urllib3`` (``HTTPConnectionPool.urlopen``): entry point ``chat_turbo_urllib3``.

    A redirect followed by a ``PoolManager`` is one request per hop (each hop is a call of a pool); the retries
    of one pool are part of its request.
    """

    _library = ("urllib3 >= 1.26",)
    _module = "urllib3.connectionpool"  # what ``import urllib3`` (and requests) loads first
    _connections = URLLIB3

    def _patch(self, patches: Patches, metrics: ClientMetrics, module: ModuleType) -> None:
        def describe(pool: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Server]:
            return args[0] if args else kwargs["method"], (pool.host, pool.port or DEFAULT_PORTS.get(pool.scheme, 0))

        patches.replace(
            module.HTTPConnectionPool, "urlopen", lambda original: measured(original, metrics, describe, _status)
        )


class HttpxInstrumentor(_ClientInstrumentor):
    """Measures every request of ``httpx.Client`` and ``httpx.AsyncClient``: entry point ``chat_turbo_httpx``.

    Example:
        >>> import httpx
        >>> HttpxInstrumentor().instrument(monitor=monitor)
        >>> def answer(request):
        ...     return httpx.Response(204)
        >>> with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        ...     client.delete("https://api.example.com/items/7?token=x").status_code
        204
        >>> tags = {"method": "DELETE", "server_address": "api.example.com", "server_port": 443, "status": 204}
        >>> monitor.snapshot().value("http_client_request_duration_seconds", tags)["count"]
        1
        >>> HttpxInstrumentor().uninstrument()
    """

    _library = ("httpx >= 0.23",)
    _module = "httpx"
    _connections = HTTPCORE

    def _patch(self, patches: Patches, metrics: ClientMetrics, module: ModuleType) -> None:
        def describe(client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Server]:
            request = args[0] if args else kwargs["request"]
            url = request.url
            return request.method, (url.host, url.port or DEFAULT_PORTS.get(url.scheme, 0))

        patches.replace(module.Client, "send", lambda original: measured(original, metrics, describe, _status_code))
        patches.replace(
            module.AsyncClient, "send", lambda original: measured_async(original, metrics, describe, _status_code)
        )


def _aiohttp_server(session: Any, url: Any) -> Server:
    if isinstance(url, str):
        if "://" in url:
            return authority(url)
        url = getattr(session, "_base_url", None)  # a relative URL joins the session's base_url
        if url is None:
            return "", 0
    return url.host or "", url.port or 0  # a yarl URL: its port is the scheme's default when none is written


class AiohttpClientInstrumentor(_ClientInstrumentor):
    """Measures every request of ``aiohttp.ClientSession``: entry point ``chat_turbo_aiohttp_client``.

    The duration runs to the response's headers (``session.get()`` returns then; the body is read after).
    """

    _library = ("aiohttp >= 3.8",)
    _module = "aiohttp.client"  # where ClientSession is defined (``import aiohttp`` loads it first)
    _connections = AIOHTTP

    def _patch(self, patches: Patches, metrics: ClientMetrics, module: ModuleType) -> None:
        def describe(session: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Server]:
            if len(args) > 1:
                return args[0], _aiohttp_server(session, args[1])
            url = _argument(args, kwargs, 1, "str_or_url")
            return _argument(args, kwargs, 0, "method"), _aiohttp_server(session, url)

        patches.replace(
            module.ClientSession, "_request", lambda original: measured_async(original, metrics, describe, _status)
        )


def _status_code(response: Any) -> int:
    return int(response.status_code)


def _status(response: Any) -> int:
    return int(response.status)
