"""psycopg (3), psycopg2 and asyncpg used directly -> ``database_query_duration_seconds``, as the SQLAlchemy path.

The same labels (``table``, ``operation``, ``status``; ``statement`` with literals stripped on request) from the
same classifier. A statement costs a ``perf_counter`` pair, one dict lookup of its series (bound handles made once
per statement text and status, rebound when ``configure()`` gives the monitor a new recorder: one identity check)
and one ``observe``.
When SQLAlchemy runs on top and the SQLAlchemy instrumentor is on, the statements of its connections are its to
record: the driver instrumentors pass them through (no statement is counted twice).
"""

from __future__ import annotations

import inspect
import logging
import random
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics import ConfigurationError, PerformanceMonitor
from chat_turbo_metrics.instrumentation import (
    DATABASE_QUERY_DURATION,
    DB_CLIENT_OPERATION_DURATION,
    Problems,
    SemconvMode,
    StatementClassifier,
    define_metrics,
    semconv_mode,
    strip_literals,
    when_imported,
)
from chat_turbo_metrics_database._semconv import SemconvNames

_perf_counter = time.perf_counter
_random = random.random
SYSTEM = "postgresql"  # db.system.name: every driver instrumented here speaks to PostgreSQL
_SERIES_LIMIT = 4096  # statement texts whose handles are kept; beyond, each statement binds its own (bounded series)
_MAX_TEXT = 4096
Undo = Callable[[], None]  # restores what a patch replaced (what when_imported returns)

# Driver connections that SQLAlchemy checked out while its instrumentor listened: it records their statements.
sqlalchemy_connections: weakref.WeakSet[Any] = weakref.WeakSet()
_claimed = [False]  # True once a connection was claimed: a WeakSet's truth value costs a Python-level __len__
_owned_lock = threading.Lock()


def claim_for_sqlalchemy(driver_connection: Any) -> None:
    """Mark a driver connection as SQLAlchemy's (its instrumentor records its statements)."""
    if driver_connection is not None and driver_connection not in sqlalchemy_connections:
        try:
            with _owned_lock:
                sqlalchemy_connections.add(driver_connection)
                _claimed[0] = True
        except TypeError:  # a driver connection that cannot be weakly referenced: the drivers never see those
            pass


def release_sqlalchemy_connections() -> None:
    """The SQLAlchemy instrumentor stopped: every connection's statements are the drivers' to record again."""
    with _owned_lock:
        sqlalchemy_connections.clear()
        _claimed[0] = False


def statement_text(statement: Any, context: Any = None) -> str:
    """A statement as text: a ``str`` as it is, bytes decoded, a ``psycopg.sql`` object composed."""
    if isinstance(statement, str):
        return statement
    if isinstance(statement, bytes):
        return statement.decode("utf-8", "replace")
    as_string = getattr(statement, "as_string", None)
    if as_string is not None:
        try:
            return str(as_string(context))
        except Exception:  # a composition the driver will refuse too: classified as "other"
            return ""
    return str(statement)


class Statements:
    """Records finished statements (``ok``, ``failed``), bound handles per statement text and status.

    Example:
        >>> statements = Statements(monitor)
        >>> statements.ok("SELECT name FROM users WHERE id = %s", 0.002)
        >>> tags = {"table": "users", "operation": "select", "status": "success"}
        >>> monitor.snapshot().value("database_query_duration_seconds", tags)["count"]
        1
    """

    def __init__(
        self,
        monitor: PerformanceMonitor | None = None,
        record_statement: bool = False,
        max_tables: int = 100,
        logger: str = "chat_turbo_metrics.database",
    ) -> None:
        self._fixed = monitor
        self._record_statement = record_statement
        self._classifier = StatementClassifier(max_tables=max_tables)
        self._monitor: PerformanceMonitor | None = None
        self._marker: Any = None
        self._names = SemconvNames(SemconvMode.SEED)  # asked of the monitor when it is bound
        self._ok: dict[str, Callable[[float], None]] = {}  # the series of the statements that succeeded, by text
        self._failed: dict[tuple[str, str], Callable[[float], None]] = {}  # and of those that raised, and why
        self.problems = Problems(logging.getLogger(logger))

    def ok(self, query: Any, elapsed: float, context: Any = None) -> None:
        """``query`` (a ``str``, or what :func:`statement_text` reads with ``context``) succeeded; never raises."""
        try:
            monitor = self._fixed or PerformanceMonitor._instance or PerformanceMonitor.get_instance()
            if monitor._recorder is not self._marker:  # a recorder is one monitor's: configure() makes a new one
                self._rebind(monitor)
            observe = self._ok.get(query) if type(query) is str else None
            if observe is None:
                statement = query if type(query) is str else statement_text(query, context)
                observe = self._ok.get(statement)
                if observe is None:
                    observe = self._new_series(monitor, statement, "success")
                    if len(self._ok) < _SERIES_LIMIT and len(statement) <= _MAX_TEXT:
                        self._ok[statement] = observe
            observe(elapsed)
        except Exception as error:  # never into the application's statement
            self.problems.report(("record", type(error)), "cannot record a statement: %r", error)

    def failed(self, query: Any, elapsed: float, context: Any = None, error: str = "_OTHER") -> None:
        """``query`` raised ``error`` (the exception's class name; ``CancelledError`` for a cancelled ``await``);
        never raises."""
        try:
            monitor = self._fixed or PerformanceMonitor._instance or PerformanceMonitor.get_instance()
            if monitor._recorder is not self._marker:
                self._rebind(monitor)
            statement = query if type(query) is str else statement_text(query, context)
            observe = self._failed.get((statement, error))
            if observe is None:
                observe = self._new_series(monitor, statement, "error", error)
                if len(self._failed) < _SERIES_LIMIT and len(statement) <= _MAX_TEXT:
                    self._failed[statement, error] = observe
            observe(elapsed)
        except Exception as problem:
            self.problems.report(("record", type(problem)), "cannot record a statement: %r", problem)

    def _rebind(self, monitor: PerformanceMonitor) -> None:
        """A new recorder: which names to emit (``OTEL_SEMCONV_STABILITY_OPT_IN``'s ``database``, as the SQLAlchemy
        instrumentor asks), and new handles."""
        self._names = SemconvNames(semconv_mode("database", monitor))
        if self._names.semconv:
            define_metrics(monitor, DB_CLIENT_OPERATION_DURATION)
        self._ok, self._failed = {}, {}
        self._monitor, self._marker = monitor, monitor._recorder

    def _new_series(
        self, monitor: PerformanceMonitor, statement: str, status: str, error: str | None = None
    ) -> Callable[[float], None]:
        operation, table = self._classifier.classify(statement)
        tags = {"table": table, "operation": operation, "status": status}
        observers = []
        if self._names.semconv:
            semconv = self._names.operation_tags(SYSTEM, tags, error)
            observers.append(monitor.histogram(DB_CLIENT_OPERATION_DURATION.name, semconv).observe)
        if self._names.seed:
            if self._record_statement:
                tags["statement"] = strip_literals(statement)[:2048]
            observers.append(monitor.histogram(DATABASE_QUERY_DURATION, tags).observe)
        observe = observers[0] if len(observers) == 1 else _both(*observers)
        rate = monitor.config.sampling_rate
        if rate < 1.0:
            full = observe

            def observe(value: float) -> None:
                if _random() < rate:
                    full(value)

        return observe


def _both(first: Callable[[float], None], second: Callable[[float], None]) -> Callable[[float], None]:
    def observe(value: float) -> None:
        first(value)
        second(value)

    return observe


def statements_from(kwargs: dict[str, Any], owner: str, logger: str) -> Statements:
    """The :class:`Statements` of ``instrument(monitor=, record_statement=, max_tables=)``.

    Raises:
        ConfigurationError: ``max_tables`` is not a positive int.
    """
    max_tables = kwargs.get("max_tables", 100)
    if isinstance(max_tables, bool) or not isinstance(max_tables, int) or max_tables < 1:
        raise ConfigurationError(f"{owner}: max_tables={max_tables!r} must be a positive int")
    return Statements(kwargs.get("monitor"), bool(kwargs.get("record_statement")), max_tables, logger)


class _Saved:
    """Attributes replaced on classes or modules, put back by :meth:`restore`."""

    def __init__(self) -> None:
        self.saved: list[tuple[Any, str, Any]] = []
        self.on = [True]  # shared with what cannot be put back (classes made for connections already open)

    def replace(self, owner: Any, name: str, wrapper: Any) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        wrapper.__wrapped__ = original
        self.saved.append((owner, name, original))
        setattr(owner, name, wrapper)

    def restore(self) -> None:
        self.on[0] = False
        while self.saved:
            owner, name, original = self.saved.pop()
            setattr(owner, name, original)


class _DriverInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``instrument(monitor=, record_statement=, max_tables=)``, as the SQLAlchemy instrumentor's.

    ``instrument()`` imports no driver: :meth:`_patch` runs when the application imports :attr:`_module` (at once if
    it already has), so that ``opentelemetry-instrument`` loads no driver the application does not use.
    """

    _library: tuple[str, ...] = ()
    _module = ""  # the module whose import loads all that _patch replaces
    _undo: Undo | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """The driver versions this instrumentor covers."""
        return self._library

    def _instrument(self, **kwargs: Any) -> None:
        name = type(self).__name__
        statements = statements_from(kwargs, name, f"chat_turbo_metrics.{name}")

        def patch(module: ModuleType) -> Undo:
            saved = _Saved()
            try:
                self._patch(saved, statements)
            except BaseException:  # a version we cannot patch whole: none of it (when_imported logs why)
                saved.restore()
                raise
            return saved.restore

        self._undo = when_imported(self._module, patch)

    @abstractmethod
    def _patch(self, saved: _Saved, statements: Statements) -> None:
        """Patch the library (each subclass its own), recording what it replaced in the first argument.

        Called once :attr:`_module` is imported whole (``when_imported`` waits for another thread's import), so
        importing what it patches here imports nothing new.
        """

    def _uninstrument(self, **kwargs: Any) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()  # restores, or cancels the patch if the driver was not imported since instrument()


QueryOf = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]  # (self, args, kwargs) -> the statement


def _first_argument(owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The statement of a driver method called with it first: positional, or ``query=`` (``command=``: asyncpg's
    ``executemany``)."""
    if args:
        return args[0]
    return kwargs.get("query", kwargs.get("command", ""))


def _prepared_query(statement: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The statement of an asyncpg ``PreparedStatement``: the text it was prepared from."""
    return statement.get_query()


def _sync_method(original: Any, statements: Statements, connection_of: Callable[[Any], Any], on: list[bool]) -> Any:
    ok, failed = statements.ok, statements.failed

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not on[0] or (_claimed[0] and connection_of(self) in sqlalchemy_connections):
            return original(self, *args, **kwargs)
        start = _perf_counter()
        try:
            result = original(self, *args, **kwargs)
        except BaseException as error:
            failed(_first_argument(self, args, kwargs), _perf_counter() - start, self, type(error).__qualname__)
            raise
        ok(args[0] if args else _first_argument(self, args, kwargs), _perf_counter() - start, self)
        return result

    return method


# The hottest methods with their own signatures, so a call packs no argument tuple and keyword dict (about a
# third of the wrapper's cost): psycopg2's cursor.execute(query, vars=None), and psycopg's Cursor.execute(query,
# params=None, *, prepare=None, binary=None) when its signature is that one.
def _psycopg2_execute(original: Any, statements: Statements, on: list[bool]) -> Any:
    ok, failed = statements.ok, statements.failed

    def execute(self: Any, query: Any, vars: Any = None) -> Any:
        if not on[0] or (_claimed[0] and self.connection in sqlalchemy_connections):
            return original(self, query, vars)
        start = _perf_counter()
        try:
            result = original(self, query, vars)
        except BaseException as error:
            failed(query, _perf_counter() - start, self, type(error).__qualname__)
            raise
        ok(query, _perf_counter() - start, self)
        return result

    return execute


PSYCOPG_EXECUTE = ["self", "query", "params", "prepare", "binary"]


def _signature_is(function: Any, names: list[str]) -> bool:
    """``function`` takes exactly ``names``, each optional one defaulting to None (what the wrapper passes on)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    optional = [
        parameter.default for parameter in parameters.values() if parameter.default is not inspect.Parameter.empty
    ]
    return list(parameters) == names and all(default is None for default in optional)


def _psycopg_execute(original: Any, statements: Statements, on: list[bool]) -> Any:
    ok, failed = statements.ok, statements.failed

    def execute(self: Any, query: Any, params: Any = None, *, prepare: Any = None, binary: Any = None) -> Any:
        if not on[0] or (_claimed[0] and self.connection in sqlalchemy_connections):
            return original(self, query, params, prepare=prepare, binary=binary)
        start = _perf_counter()
        try:
            result = original(self, query, params, prepare=prepare, binary=binary)
        except BaseException as error:
            failed(query, _perf_counter() - start, self, type(error).__qualname__)
            raise
        ok(query, _perf_counter() - start, self)
        return result

    return execute


def _async_method(
    original: Any,
    statements: Statements,
    connection_of: Callable[[Any], Any],
    on: list[bool],
    query_of: QueryOf = _first_argument,
) -> Any:
    positional = query_of is _first_argument  # the statement is the first argument: read without a call
    ok, failed = statements.ok, statements.failed

    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not on[0] or (_claimed[0] and connection_of(self) in sqlalchemy_connections):
            return await original(self, *args, **kwargs)
        start = _perf_counter()
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as error:  # a cancellation too: the statement did not complete
            failed(query_of(self, args, kwargs), _perf_counter() - start, self, type(error).__qualname__)
            raise
        ok(args[0] if positional and args else query_of(self, args, kwargs), _perf_counter() - start, self)
        return result

    return method


def _cursor_connection(cursor: Any) -> Any:
    return cursor.connection


def _itself(connection: Any) -> Any:
    return connection


def _statement_connection(statement: Any) -> Any:
    return statement._connection  # asyncpg's PreparedStatement keeps the connection it was prepared on


class PsycopgInstrumentor(_DriverInstrumentor):
    """Measures every statement of psycopg 3 (sync and async cursors): entry point ``chat_turbo_psycopg``.

    Example:
        >>> import psycopg
        >>> PsycopgInstrumentor().instrument(monitor=monitor)
        >>> with psycopg.connect("host=127.0.0.1 dbname=test") as connection:
        ...     connection.execute("SELECT 1").fetchone()
        (1,)
        >>> tags = {"table": "other", "operation": "select", "status": "success"}
        >>> monitor.snapshot().value("database_query_duration_seconds", tags)["count"]
        1
        >>> PsycopgInstrumentor().uninstrument()
    """

    _library = ("psycopg >= 3.1",)
    _module = "psycopg"  # psycopg.Cursor and the rest: the package's __init__ loads them all

    def _patch(self, saved: _Saved, statements: Statements) -> None:
        import psycopg

        for cls in (psycopg.Cursor, psycopg.ServerCursor):
            for name in ("execute", "executemany"):
                if name in cls.__dict__:
                    original = cls.__dict__[name]
                    if name == "execute" and _signature_is(original, PSYCOPG_EXECUTE):
                        saved.replace(cls, name, _psycopg_execute(original, statements, saved.on))
                    else:
                        saved.replace(cls, name, _sync_method(original, statements, _cursor_connection, saved.on))
        for async_cls in (psycopg.AsyncCursor, psycopg.AsyncServerCursor):
            for name in ("execute", "executemany"):
                if name in async_cls.__dict__:
                    method = _async_method(async_cls.__dict__[name], statements, _cursor_connection, saved.on)
                    saved.replace(async_cls, name, method)


class AsyncpgInstrumentor(_DriverInstrumentor):
    """Measures every query of asyncpg (``execute``, ``executemany``, ``fetch*``; pools too): ``chat_turbo_asyncpg``.

    A ``PreparedStatement``'s ``fetch*`` and ``executemany`` are measured too, under the text it was prepared from
    (SQLAlchemy's asyncpg dialect runs every statement so); its ``cursor()`` is not.
    """

    _library = ("asyncpg >= 0.27",)
    _module = "asyncpg.connection"  # Connection, and prepared_stmt, which it imports

    def _patch(self, saved: _Saved, statements: Statements) -> None:
        from asyncpg.connection import Connection
        from asyncpg.prepared_stmt import PreparedStatement

        for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany"):
            if name in Connection.__dict__:
                saved.replace(Connection, name, _async_method(Connection.__dict__[name], statements, _itself, saved.on))
        for name in ("executemany", "fetch", "fetchrow", "fetchval", "fetchmany"):
            if name in PreparedStatement.__dict__:
                method = _async_method(
                    PreparedStatement.__dict__[name], statements, _statement_connection, saved.on, _prepared_query
                )
                saved.replace(PreparedStatement, name, method)


class Psycopg2Instrumentor(_DriverInstrumentor):
    """Measures every statement of psycopg2's connections opened after ``instrument()``: ``chat_turbo_psycopg2``.

    psycopg2's classes are C types that cannot be patched: ``psycopg2.connect`` is wrapped to open the connection
    as a subclass whose cursors (any ``cursor_factory``: ``RealDictCursor``, ...) measure ``execute`` and
    ``executemany``. Connections opened before ``instrument()`` (or through a ``connect`` imported before it) are
    not measured; those opened while instrumented stop measuring at ``uninstrument()``.
    """

    _library = ("psycopg2 >= 2.8",)
    # psycopg2.connect is defined by the package's __init__ after it imports psycopg2.extensions, whose hook would
    # run before connect exists: hooked on the package, whose import ends before any ``from psycopg2 import connect``.
    _module = "psycopg2"

    def instrumentation_dependencies(self) -> Collection[str]:
        """psycopg2, or its binary wheel ``psycopg2-binary``: whichever is installed."""
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            distribution("psycopg2")
        except PackageNotFoundError:
            try:
                distribution("psycopg2-binary")
                return ("psycopg2-binary >= 2.8",)
            except PackageNotFoundError:
                pass
        return self._library

    def _patch(self, saved: _Saved, statements: Statements) -> None:
        import psycopg2
        import psycopg2.extensions

        cursors: dict[type, type] = {}
        connections: dict[type, type] = {}
        on = saved.on

        def measured_cursor(base: type) -> type:
            made = cursors.get(base)
            if made is None:
                methods = {
                    name: _sync_method(getattr(base, name), statements, _cursor_connection, on)
                    for name in ("execute", "executemany")
                }
                if base.execute is psycopg2.extensions.cursor.execute:  # type: ignore[attr-defined]  # the C one
                    methods["execute"] = _psycopg2_execute(base.execute, statements, on)  # type: ignore[attr-defined]
                # No __slots__ of its own: an instance has the base's layout (psycopg2's cursor has no __dict__, and
                # gets none from us: the same attributes, the same allocation as without the instrumentor).
                made = cursors[base] = type(base.__name__, (base,), {"__slots__": (), **methods})
            return made

        def measured_connection(base: type) -> type:
            made = connections.get(base)
            if made is None:
                base_cursor = base.cursor  # type: ignore[attr-defined]

                def given(self: Any, name: Any = None, cursor_factory: Any = None, *args: Any, **kwargs: Any) -> Any:
                    if cursor_factory is None:  # the connection's own, measured since connect()
                        return base_cursor(self, name, None, *args, **kwargs)
                    return base_cursor(
                        self, name, measured_cursor(cursor_factory) if on[0] else cursor_factory, *args, **kwargs
                    )

                # psycopg2's own parameters, named: a call packs no argument tuple and keyword dict.
                def cursor(
                    self: Any,
                    name: Any = None,
                    cursor_factory: Any = None,
                    withhold: Any = False,
                    scrollable: Any = None,
                ) -> Any:
                    if name is None and cursor_factory is None and withhold is False and scrollable is None:
                        return base_cursor(self)  # the connection's own factory, measured since connect()
                    return given(self, name, cursor_factory, withhold=withhold, scrollable=scrollable)

                made = connections[base] = type(base.__name__, (base,), {"__slots__": (), "cursor": cursor})
            return made

        original = psycopg2.connect

        def connect(*args: Any, connection_factory: Any = None, cursor_factory: Any = None, **kwargs: Any) -> Any:
            factory = connection_factory or psycopg2.extensions.connection
            if on[0]:
                try:
                    factory = measured_connection(factory)
                    cursor_factory = measured_cursor(cursor_factory or psycopg2.extensions.cursor)
                except Exception as error:  # an odd factory (not a class): its connection goes unmeasured
                    statements.problems.report(("factory", type(error)), "cannot measure %r: %r", factory, error)
            return original(*args, connection_factory=factory, cursor_factory=cursor_factory, **kwargs)

        saved.replace(psycopg2, "connect", connect)
