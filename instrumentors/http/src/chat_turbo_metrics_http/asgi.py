"""HTTP metrics for ASGI applications: a middleware, and an instrumentor that adds it to every Starlette app.

Starlette and FastAPI build their middleware stack on the first request; after
``AsgiMetricsInstrumentor().instrument()`` that stack is wrapped in :class:`AsgiMetricsMiddleware`, so every
application (created before or after, as long as it has not served yet) is measured with no code change.
``instrument()`` does not import Starlette: it is patched when the application imports it (FastAPI does).
The endpoint is the template of the route Starlette matched (``scope["route"]``), read when the request
ends; requests no route matched share one endpoint value, ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics import PerformanceMonitor
from chat_turbo_metrics.instrumentation import when_imported
from chat_turbo_metrics_http._metrics import UNMATCHED, RequestMetrics, route_template
from chat_turbo_metrics_http._settings import MEASURE_NOTHING, usable_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MEASURED = "chat_turbo_metrics.measured"  # scope key: an outer middleware of ours measures this request
_perf_counter = time.perf_counter
# (mount prefix, id(route)) -> (route, endpoint): routes define __eq__ and so cannot be dict keys themselves.
_endpoints: dict[tuple[str, int], tuple[Any, str]] = {}
_ENDPOINT_CACHE_LIMIT = 10_000


def endpoint_of(scope: Scope, root_path: str) -> str:
    """The route template of the request, after the application handled it.

    Args:
        scope: the request's scope, as the router left it.
        root_path: the scope's ``root_path`` when the request arrived (a ``Mount`` extends it).

    Returns:
        e.g. ``/api/messages/{id}``, or ``unmatched``.
    """
    route = scope.get("route")
    if route is None:
        return _endpoint_without_route(scope)
    mounted = scope.get("root_path", "")
    prefix = mounted[len(root_path) :] if mounted != root_path else ""
    known = _endpoints.get((prefix, id(route)))
    if known is not None and known[0] is route:
        return known[1]
    return _new_endpoint(scope, prefix, route)


def _new_endpoint(scope: Scope, prefix: str, route: Any) -> str:
    path = getattr(route, "path", None)
    if not isinstance(path, str) or hasattr(route, "routes"):
        endpoint = UNMATCHED  # a Mount matched but nothing inside it did
    elif prefix:
        # The scope keeps the raw path a Mount consumed ("/users/42"); the endpoint wants its template.
        mounts = _mount_template(getattr(scope.get("router"), "routes", None) or (), prefix)
        endpoint = route_template((mounts or prefix) + path)
    else:
        endpoint = route_template(path)
    if len(_endpoints) < _ENDPOINT_CACHE_LIMIT:
        _endpoints[prefix, id(route)] = (route, endpoint)
    return endpoint


def _mount_template(routes: Iterable[Any], prefix: str) -> str | None:
    """The templates of the (nested) Mounts that consumed ``prefix``: ``/users/42`` -> ``/users/{uid}``."""
    for route in routes:
        inner, regex = getattr(route, "routes", None), getattr(route, "path_regex", None)
        if inner is None or regex is None:
            continue
        match = regex.match(prefix + "/")
        if match is None or "path" not in match.groupdict():
            continue
        rest = "/" + match.group("path").rstrip("/")
        if rest == "/":
            return str(route.path)
        deeper = _mount_template(inner, rest)
        if deeper is not None:
            return str(route.path) + deeper
    return None


def _endpoint_without_route(scope: Scope) -> str:
    """Older Starlette sets only ``scope["endpoint"]``: find the route that owns it."""
    endpoint = scope.get("endpoint")
    routes = getattr(scope.get("router"), "routes", None)
    if endpoint is None or routes is None:
        return UNMATCHED
    for route in routes:
        if getattr(route, "endpoint", None) is endpoint and isinstance(getattr(route, "path", None), str):
            return route_template(route.path)
    return UNMATCHED


class AsgiMetricsMiddleware:
    """Measures every HTTP request (and counts open WebSockets) of the ASGI application it wraps.

    Records through the process-wide :class:`~chat_turbo_metrics.PerformanceMonitor` (or ``monitor``):
    ``http_request_duration_seconds``, ``api_requests_total``, ``errors_total``, ``http_requests_in_flight``,
    ``http_request_size_bytes``, ``http_response_size_bytes``, ``websocket_connections_active``, or the
    semantic-convention names (``metric_names="semconv"`` or ``"both"``).

    Example:
        >>> from starlette.applications import Starlette
        >>> app = Starlette()
        >>> app.add_middleware(AsgiMetricsMiddleware, excluded_paths=["/metrics", "/health"])

    Args:
        app: the ASGI application.
        excluded_paths: paths (``/health``) or prefixes (``/static/*``) never measured.
        metric_names: ``seed``, ``semconv`` or ``both`` (default: ``CHAT_TURBO_HTTP_METRIC_NAMES``, else
            ``OTEL_SEMCONV_STABILITY_OPT_IN``: ``http`` is ``semconv``, ``http/dup`` is ``both``, unset ``seed``).
        monitor: record into this monitor instead of the process-wide one.
        environ: read defaults from this mapping instead of ``os.environ``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        excluded_paths: Iterable[str] | str | None = None,
        metric_names: str | None = None,
        monitor: PerformanceMonitor | None = None,
        environ: MutableMapping[str, str] | None = None,
        _metrics: RequestMetrics | None = None,
        _switch: list[bool] | None = None,
    ) -> None:
        self.app = app
        if _metrics is None:
            settings = usable_settings(excluded_paths, metric_names, environ)
            _metrics = RequestMetrics(settings or MEASURE_NOTHING, monitor)
            _switch = _switch or [settings is not None]  # a bad variable: off for good, said once
        self._metrics = _metrics
        self._switch = _switch or [True]  # the instrumentor's shared switch turns off stacks it wrapped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self._metrics
        if scope["type"] != "http" or MEASURED in scope or not self._switch[0] or metrics.skips(scope["path"]):
            await self._unmeasured(scope, receive, send)
            return
        scope[MEASURED] = True
        root_path = scope.get("root_path", "")
        flight = metrics.started(scope["method"], scope.get("scheme", "http"))
        status = received = sent = 0
        end = 0.0
        start = _perf_counter()

        async def measured_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def measured_send(message: Message) -> None:
            nonlocal status, sent, end
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    await send(message)
                    end = _perf_counter()  # the duration runs to the last body chunk
                    return
            elif kind == "http.response.start":
                status = message["status"]
            await send(message)

        error_type = None
        try:
            await self.app(scope, measured_receive, measured_send)
        except BaseException as error:
            error_type = type(error).__name__
            raise  # unchanged: the server (or an outer middleware) sees what the application raised
        finally:
            if not end:
                end = _perf_counter()
                if error_type is not None or not status:
                    status = 500  # no complete response: the client sees a 500 or a broken connection
            metrics.finish(
                scope["method"],
                endpoint_of(scope, root_path),
                status,
                scope.get("scheme", "http"),
                end - start,
                received,
                sent,
                error_type,
                flight,
            )

    async def _unmeasured(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and MEASURED not in scope and self._switch[0]:
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[MEASURED] = True
        bound = self._metrics.websocket_opened()
        try:
            await self.app(scope, receive, send)
        finally:
            self._metrics.websocket_closed(bound)


class AsgiMetricsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Measures every Starlette and FastAPI application: ``opentelemetry_instrumentor`` entry point ``chat_turbo_asgi``.

    Example:
        >>> from starlette.applications import Starlette
        >>> AsgiMetricsInstrumentor().instrument(excluded_paths=["/health"])
        >>> app = Starlette()  # measured (FastAPI() too), no code change
        >>> AsgiMetricsInstrumentor().uninstrument()

    ``instrument()`` takes the keyword arguments of :class:`AsgiMetricsMiddleware` (``excluded_paths``,
    ``metric_names``, ``monitor``); under ``opentelemetry-instrument`` they come from
    ``CHAT_TURBO_HTTP_EXCLUDED_PATHS`` and ``CHAT_TURBO_HTTP_METRIC_NAMES``.
    """

    _switch: list[bool] = [False]  # noqa: RUF012 - one switch shared by every stack this instrumentor wrapped
    _undo: list[Callable[[], None]] = []  # noqa: RUF012 - what uninstrument() restores

    def instrumentation_dependencies(self) -> Collection[str]:
        """Starlette (FastAPI is built on it)."""
        return ("starlette >= 0.13",)

    def _instrument(self, **kwargs: Any) -> None:
        settings = usable_settings(kwargs.get("excluded_paths"), kwargs.get("metric_names"), kwargs.get("environ"))
        if settings is None:  # a bad variable, logged: applications are left as they are
            return
        metrics = RequestMetrics(settings, kwargs.get("monitor"))
        # A new switch per instrument(): stacks wrapped before an uninstrument() stay off for good.
        switch = AsgiMetricsInstrumentor._switch = [True]
        # Starlette is patched when the application imports it (now, if it has).
        undo = when_imported(STARLETTE, lambda module: _patch_starlette(module, metrics, switch))
        AsgiMetricsInstrumentor._undo.append(undo)

    def _uninstrument(self, **kwargs: Any) -> None:
        AsgiMetricsInstrumentor._switch[0] = False
        while AsgiMetricsInstrumentor._undo:
            AsgiMetricsInstrumentor._undo.pop()()


STARLETTE = "starlette.applications"  # where Starlette (FastAPI's base) is defined


def _patch_starlette(module: ModuleType, metrics: RequestMetrics, switch: list[bool]) -> Callable[[], None]:
    """Wrap the middleware stack of every Starlette application (and subclass: FastAPI) from now on.

    Returns:
        The undo: the builders and ``Starlette.__init_subclass__`` as they were.
    """
    starlette = module.Starlette
    originals: dict[type, Any] = {}

    def patch(cls: type) -> None:
        original = cls.__dict__.get("build_middleware_stack")
        if original is not None and cls not in originals:
            originals[cls] = original
            cls.build_middleware_stack = _measured_builder(original, metrics, switch)  # type: ignore[attr-defined]

    def patch_subclass(cls: type, /, **kwargs: Any) -> None:
        # FastAPI overrides build_middleware_stack, and is often imported after instrument() ran.
        super(starlette, cls).__init_subclass__(**kwargs)
        patch(cls)

    hooked = "__init_subclass__" not in starlette.__dict__
    for cls in _subclasses(starlette):
        patch(cls)
    if hooked:
        starlette.__init_subclass__ = classmethod(patch_subclass)

    def undo() -> None:
        for cls, original in originals.items():
            cls.build_middleware_stack = original  # type: ignore[attr-defined]
        originals.clear()
        if hooked:
            del starlette.__init_subclass__

    return undo


def _subclasses(base: type) -> list[type]:
    """``base`` and every subclass of it imported so far."""
    found, pending = [], [base]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _measured_builder(original: Any, metrics: RequestMetrics, switch: list[bool]) -> Any:
    def build_middleware_stack(self: Any) -> ASGIApp:
        stack = original(self)
        if isinstance(stack, AsgiMetricsMiddleware):  # a subclass's builder called its base's
            return stack
        # Outermost, outside ServerErrorMiddleware: an unhandled exception reaches us as itself.
        return AsgiMetricsMiddleware(stack, _metrics=metrics, _switch=switch)

    build_middleware_stack.__wrapped__ = original  # type: ignore[attr-defined]
    return build_middleware_stack
