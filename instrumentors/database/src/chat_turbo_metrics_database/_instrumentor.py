"""SQLAlchemy engine events -> ``database_query_duration_seconds`` and pool usage, via the monitor's front end."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection
from types import ModuleType
from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from chat_turbo_metrics import ConfigurationError, PerformanceMonitor
from chat_turbo_metrics.instrumentation import (
    DATABASE_QUERY_DURATION,
    DB_CLIENT_CONNECTION_COUNT,
    DB_CLIENT_OPERATION_DURATION,
    Problems,
    SemconvMode,
    StatementClassifier,
    define_metrics,
    semconv_mode,
    strip_literals,
    when_imported,
)
from chat_turbo_metrics_database._drivers import Undo, claim_for_sqlalchemy, release_sqlalchemy_connections
from chat_turbo_metrics_database._semconv import SemconvNames

if TYPE_CHECKING:  # SQLAlchemy is imported by the application, not by instrument(): see _listen
    from sqlalchemy.engine import Engine

_instruments = ("sqlalchemy >= 2.0",)
CONNECTIONS = "database_connections"
_START = "_chat_turbo_start"  # attribute set on SQLAlchemy's execution context for one statement
_perf_counter = time.perf_counter
_MAX_STRIPPED = 2048  # statement texts kept, literals stripped, when record_statement is on
_DOUBLE_QUOTED_STRINGS = frozenset({"mysql", "mariadb"})  # dialects whose "..." is a string, not a name


def pool_label(engine: Engine) -> str:
    """The ``pool`` label of an engine: its logging name, else backend, host and database (never a password)."""
    url = engine.url
    named = engine.pool.logging_name or engine.logging_name
    if named:
        return str(named)
    host = f"{url.host}:{url.port}" if url.port else (url.host or "")
    return f"{url.get_backend_name()}://{host}/{url.database or ''}"


class _Listener:
    """The event handlers of one instrumentation, and the state they share."""

    def __init__(self, monitor: PerformanceMonitor | None, record_statement: bool, max_tables: int) -> None:
        self.monitor = monitor
        self.record_statement = record_statement
        self.classifier = StatementClassifier(max_tables=max_tables)
        self.engines: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
        self.engines_lock = threading.Lock()  # a collection copies the engines while connects add to them
        self.stripped: dict[tuple[str, bool], str] = {}
        self.hooked: PerformanceMonitor | None = None
        self.names = SemconvNames(SemconvMode.SEED)  # which names: asked of the monitor when it is resolved
        self.marker: Any = None  # the monitor's recorder the names were asked for (configure() makes a new one)
        self.problems = Problems(logging.getLogger("chat_turbo_metrics.sqlalchemy"))

    def recorder(self) -> PerformanceMonitor:
        """The monitor to record into, resolved at the first statement.

        The process-wide monitor stays the same object across ``configure()``, which rebinds its methods;
        they are looked up on it at each call, so holding it follows a reconfiguration.
        """
        hooked = self.hooked
        if hooked is not None:
            return hooked
        with self.engines_lock:
            if self.hooked is None:
                monitor = self.monitor or PerformanceMonitor.get_instance()
                monitor.add_collection_hook(self.read_pools)  # pool readings join the monitor's collections
                self.hooked = monitor
                self.follow(monitor)
            return self.hooked

    def follow(self, monitor: PerformanceMonitor) -> None:
        """Ask which names to emit (``OTEL_SEMCONV_STABILITY_OPT_IN``'s ``database``), and declare the
        semantic-convention metrics; again whenever ``configure()`` gives the monitor a new recorder."""
        mode = semconv_mode("database", monitor)
        if mode.semconv:
            define_metrics(monitor, DB_CLIENT_OPERATION_DURATION, DB_CLIENT_CONNECTION_COUNT)
        self.names = SemconvNames(mode)
        self.marker = monitor._recorder  # swapped whole by configure(): how a new recorder is noticed

    def tags(self, statement: str, status: str, dialect: Any = None) -> dict[str, Any]:
        operation, table = self.classifier.classify(statement)
        tags = {"table": table, "operation": operation, "status": status}
        if self.record_statement:
            # MySQL quotes names with backticks: its "..." are strings, literals like any other.
            strings = getattr(dialect, "name", None) in _DOUBLE_QUOTED_STRINGS
            text = self.stripped.get((statement, strings))
            if text is None:
                text = strip_literals(statement, double_quoted_strings=strings)[:2048]
                if len(self.stripped) < _MAX_STRIPPED and len(statement) <= 4096:
                    self.stripped[statement, strings] = text
            tags["statement"] = text
        return tags

    # --- engine events ----------------------------------------------------------------------------
    def engine_connect(self, connection: Any) -> None:
        try:  # its statements are ours to record: the driver instrumentors leave them alone
            claim_for_sqlalchemy(connection.connection.driver_connection)
        except Exception as error:
            self.problems.report(("claim", type(error)), "cannot see the driver connection: %r", error)
        engine = connection.engine
        if engine not in self.engines:
            try:
                label = pool_label(engine)
                with self.engines_lock:
                    self.engines[engine] = label
            except Exception as error:  # an odd engine: no pool readings for it, never a failed connect
                self.problems.report(("pool", type(error)), "cannot label the pool of %r: %r", engine, error)

    def before_cursor_execute(  # noqa: PLR0917 - SQLAlchemy's event signature
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if context is not None:
            setattr(context, _START, _perf_counter())

    def after_cursor_execute(  # noqa: PLR0917 - SQLAlchemy's event signature
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        start = getattr(context, _START, None)
        if start is not None:
            self.record(_perf_counter() - start, statement, "success", conn.dialect)

    def handle_error(self, exception_context: Any) -> None:
        start = getattr(exception_context.execution_context, _START, None)
        statement = exception_context.statement
        if start is not None and statement is not None:
            error = exception_context.original_exception
            error_type = type(error).__qualname__ if error is not None else "_OTHER"
            self.record(_perf_counter() - start, statement, "error", exception_context.dialect, error_type)

    def record(
        self, elapsed: float, statement: str, status: str, dialect: Any = None, error_type: str | None = None
    ) -> None:
        try:
            monitor = self.recorder()
            if monitor._recorder is not self.marker:  # configure() made a new recorder
                self.follow(monitor)
            names = self.names
            tags = self.tags(statement, status, dialect)
            if names.seed:
                monitor.record_histogram(DATABASE_QUERY_DURATION, elapsed, tags)
            if names.semconv:
                monitor.record_histogram(
                    DB_CLIENT_OPERATION_DURATION.name, elapsed, names.operation_tags(dialect, tags, error_type)
                )
        except Exception as error:  # an event handler that raises would fail the application's statement
            self.problems.report(("record", type(error)), "cannot record a statement: %r", error)

    # --- collection time ------------------------------------------------------------------------
    def read_pools(self) -> None:
        """Record connections in use and idle per pool (QueuePool and its async twin report both)."""
        monitor = self.hooked
        if monitor is None:
            return
        if monitor._recorder is not self.marker:  # configure() since the last statement
            self.follow(monitor)
        with self.engines_lock:
            engines = list(self.engines.items())
        for engine, label in engines:
            pool = engine.pool
            used, idle = getattr(pool, "checkedout", None), getattr(pool, "checkedin", None)
            if used is None or idle is None:
                continue  # StaticPool, NullPool, SingletonThreadPool: no counts to report
            in_use, free = used(), idle()
            if self.names.seed:
                monitor.record_gauge(CONNECTIONS, in_use, {"pool": label, "state": "used"})
                monitor.record_gauge(CONNECTIONS, free, {"pool": label, "state": "idle"})
            if self.names.semconv:
                for state, count in (("used", in_use), ("idle", free)):
                    monitor.record_gauge(DB_CLIENT_CONNECTION_COUNT.name, count, self.names.pool_tags(label, state))


_EVENTS = ("engine_connect", "before_cursor_execute", "after_cursor_execute", "handle_error")


def _listen(listener: _Listener) -> Callable[[ModuleType], Undo]:
    """The patch of ``sqlalchemy``: listen on the ``Engine`` class (every engine, made before or after), once the
    package (whose ``__init__`` loads ``sqlalchemy.engine`` and ``sqlalchemy.event``) is imported."""

    def listen(module: ModuleType) -> Undo:
        from sqlalchemy import event  # loaded by the package's __init__, as is sqlalchemy.engine
        from sqlalchemy.engine import Engine

        added: list[str] = []

        def remove() -> None:
            while added:
                name = added.pop()
                event.remove(Engine, name, getattr(listener, name))

        try:
            for name in _EVENTS:
                event.listen(Engine, name, getattr(listener, name))
                added.append(name)
        except BaseException:
            remove()
            raise
        return remove

    return listen


class SQLAlchemyInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Records every SQLAlchemy statement's duration and every pool's usage; spans stay contrib's.

    Listens on the ``Engine`` class, so engines created before and after ``instrument()`` are measured,
    sync and async (an ``AsyncEngine`` runs on a sync one). Records ``database_query_duration_seconds``
    {table, operation, status} like :func:`chat_turbo_metrics.monitor_database_query`, with table and
    operation read from the statement (bounded: ``other`` past ``max_tables``), and at each collection
    ``database_connections`` {pool, state=used|idle}. Parameters are never recorded; the statement text
    only with ``record_statement=True``, literals stripped. With ``OTEL_SEMCONV_STABILITY_OPT_IN=database``
    (or the ``semconv_stability_opt_in`` setting) the semantic conventions' ``db.client.operation.duration``
    {db.system.name, db.operation.name, db.collection.name, error.type} and ``db.client.connection.count``
    {db.client.connection.pool.name, db.client.connection.state} replace them; ``database/dup`` emits both.

    Example:
        >>> from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor
        >>> monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))
        >>> from sqlalchemy import create_engine, text
        >>> SQLAlchemyInstrumentor().instrument(monitor=monitor)
        >>> with create_engine("sqlite://").connect() as connection:
        ...     _ = connection.execute(text("SELECT 1"))
        >>> monitor.snapshot().value(
        ...     "database_query_duration_seconds", {"table": "other", "operation": "select", "status": "success"}
        ... )["count"]
        1
        >>> SQLAlchemyInstrumentor().uninstrument()
    """

    _listener: _Listener | None = None
    _stop_listening: Undo | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """The SQLAlchemy versions this instrumentor covers."""
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        """Args (keywords of ``instrument()``):
        monitor: record into this monitor (default: the process-wide one, looked up at first use).
        record_statement: add the statement text, literals stripped, as the ``statement`` label.
        max_tables: distinct ``table`` labels before new tables are labelled ``other`` (100).
        """
        max_tables = kwargs.get("max_tables", 100)
        if isinstance(max_tables, bool) or not isinstance(max_tables, int) or max_tables < 1:
            raise ConfigurationError(f"SQLAlchemyInstrumentor: max_tables={max_tables!r} must be a positive int")
        listener = _Listener(kwargs.get("monitor"), bool(kwargs.get("record_statement")), max_tables)
        if listener.monitor is not None:
            listener.recorder()
        self._listener = listener
        self._stop_listening = when_imported("sqlalchemy", _listen(listener))

    def _uninstrument(self, **kwargs: Any) -> None:
        listener, self._listener = self._listener, None
        stop, self._stop_listening = self._stop_listening, None
        if listener is None:
            return
        if stop is not None:
            stop()  # the listeners removed, or never added if SQLAlchemy was not imported since instrument()
        release_sqlalchemy_connections()
        if listener.hooked is not None:
            listener.hooked.remove_collection_hook(listener.read_pools)
