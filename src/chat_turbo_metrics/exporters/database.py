"""Store exported metrics in SQLite or PostgreSQL, and query their history.

:class:`DatabaseExporter` writes each export interval's points (counter and histogram deltas, gauge
and up-down counter values) through SQLAlchemy Core; :class:`MetricHistory` answers rate, percentile
and series questions over what was stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar

from opentelemetry.sdk.metrics import Counter, Histogram, ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from sqlalchemy import Engine, create_engine, insert, make_url
from sqlalchemy.exc import SQLAlchemyError

from chat_turbo_metrics._core.config import (
    DEFAULT_DATABASE_URL,
    ConfigurationError,
    StorageSettings,
    history_url,
    shown_value,
)
from chat_turbo_metrics._core.config.values import parse_database_url
from chat_turbo_metrics._core.secret import Secret
from chat_turbo_metrics.exporters import _database_query as _query
from chat_turbo_metrics.exporters._database_query import GaugePoint, HistogramRow, Instant, RateRow
from chat_turbo_metrics.exporters._database_schema import (
    ExportRows,
    chunks,
    ensure_schema,
    expired_points,
    points,
    resolve_stream_ids,
)

__all__ = ["DatabaseExporter", "GaugePoint", "HistogramRow", "MetricHistory", "RateRow"]

_logger = logging.getLogger("chat_turbo_metrics.exporters.database")

_DEFAULT_RETENTION_DAYS = StorageSettings().retention_days
_RETENTION_EVERY_S = 3600.0
_DAY_S = 86400.0
# Rows are per-interval increments for monotonic instruments; everything else stays cumulative
# (the SDK default for instruments missing here), so up-down counters and gauges store values.
_TEMPORALITY: dict[type, AggregationTemporality] = {
    Counter: AggregationTemporality.DELTA,
    ObservableCounter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
}
# Without a connect timeout a blackholed database host stalls the exporter thread for the OS TCP
# timeout (minutes); drivers not listed here keep their own default.
_CONNECT_TIMEOUT_ARG = {"psycopg": "connect_timeout", "psycopg2": "connect_timeout"}
_CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class _Database:
    """An engine plus the ways to talk about its URL without showing a credential."""

    engine: Engine
    shown_url: str
    secrets: tuple[str, ...] = field(repr=False)  # the raw URL and its password: never in a repr

    def scrub(self, text: str) -> str:
        return _scrub(text, self.secrets)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _open(url: str | Secret) -> _Database:
    raw = url.reveal() if isinstance(url, Secret) else url
    try:
        parse_database_url(raw)  # the configuration's own check: parseable, dialect and driver installed
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"database_url={shown_value('database_url', raw)}: {error}") from None
    parsed = make_url(raw)
    # The query string can carry credentials too (password=, sslpassword=), so it is not shown.
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    secrets = tuple(s for s in (raw, parsed.password) if s)
    connect_args: dict[str, Any] = {}
    timeout_arg = _CONNECT_TIMEOUT_ARG.get(parsed.get_driver_name())
    if timeout_arg and timeout_arg not in parsed.query:
        connect_args[timeout_arg] = _CONNECT_TIMEOUT_S
    try:
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except Exception as error:
        raise ConfigurationError(f"database_url={shown!r}: {_scrub(str(error), secrets)}") from None
    return _Database(engine, shown, secrets)


def _describe(database: _Database, error: BaseException) -> str:
    return database.scrub(f"{type(error).__name__}: {error}".splitlines()[0])


class MetricHistory:
    """Historical questions over what :class:`DatabaseExporter` stored.

    Times are unix seconds (float) or datetimes; a time bucket ``i`` covers
    ``[start + i * bucket_s, start + (i + 1) * bucket_s)`` and holds the points collected in it.
    Buckets without points are not returned.

    Example:
        >>> import time
        >>> from chat_turbo_metrics.exporters import DatabaseExporter, MetricHistory
        >>> url = f"sqlite:///{tmp_path / 'history.db'}"
        >>> monitor.add_exporter(DatabaseExporter(url))
        >>> monitor.increment_counter("messages_sent", {"channel": "public"}, value=120)
        >>> monitor.force_flush()
        True
        >>> now = time.time()
        >>> with MetricHistory(url) as history:  # the recorded name or the Prometheus one
        ...     rows = history.counter_rate("messages_sent_total", now - 60, now + 60, bucket_s=120)
        >>> [(row.attributes, row.total) for row in rows]
        [({'channel': 'public'}, 120.0)]

    Args:
        url_or_engine: a database URL (plain or :class:`Secret`) or an SQLAlchemy engine to share;
            an engine passed in is not disposed by :meth:`close`.
    """

    def __init__(self, url_or_engine: str | Secret | Engine) -> None:
        if isinstance(url_or_engine, Engine):
            self._engine, self._owned = url_or_engine, False
            self._shown = url_or_engine.url.set(query={}).render_as_string(hide_password=True)
        else:
            database = _open(url_or_engine)
            self._engine, self._owned, self._shown = database.engine, True, database.shown_url

    def counter_rate(self, name: str, start: Instant, end: Instant, bucket_s: float) -> list[RateRow]:
        """Per attribute set and time bucket, the counter's increments summed and divided by ``bucket_s``.

        Args:
            name: the counter's name as recorded (``messages_sent``) or as Prometheus shows it
                (``messages_sent_total``).
            start: first instant included.
            end: first instant excluded.
            bucket_s: bucket width in seconds.

        Returns:
            Rows ordered by bucket, then attributes.

        Raises:
            ValueError: ``bucket_s`` is not positive, or no metric of this kind is stored under ``name``
                (the message lists the stored names and kinds).
            sqlalchemy.exc.SQLAlchemyError: the database could not be queried.
        """
        window = self._window(start, end, bucket_s)
        stored = _query.resolve_name(self._engine, name, ("counter",))
        return _query.counter_rate(self._engine, stored, *window, bucket_s)

    def histogram_stats(self, name: str, start: Instant, end: Instant, bucket_s: float) -> list[HistogramRow]:
        """Per attribute set and time bucket, count, sum, mean, min, max and p50/p90/p95/p99.

        Percentiles are interpolated inside the merged explicit buckets as Prometheus
        ``histogram_quantile`` does, then kept within the stored min and max (which Prometheus does not
        have): a percentile never lies above the largest or below the smallest observation.

        Args:
            name: the histogram's name as recorded (``api_request_duration``) or as Prometheus shows it
                (``api_request_duration_seconds``).
            start: first instant included.
            end: first instant excluded.
            bucket_s: bucket width in seconds.

        Returns:
            Rows ordered by bucket, then attributes.

        Raises:
            ValueError: ``bucket_s`` is not positive, or no metric of this kind is stored under ``name``
                (the message lists the stored names and kinds).
            sqlalchemy.exc.SQLAlchemyError: the database could not be queried.
        """
        window = self._window(start, end, bucket_s)
        stored = _query.resolve_name(self._engine, name, ("histogram",))
        return _query.histogram_stats(self._engine, stored, *window, bucket_s)

    def gauge_series(self, name: str, start: Instant, end: Instant) -> list[GaugePoint]:
        """Every stored value of a gauge or up-down counter collected in ``[start, end)``.

        Args:
            name: the metric's name (as recorded or as Prometheus shows it).
            start: first instant included.
            end: first instant excluded.

        Returns:
            Points ordered by time, then attributes.

        Raises:
            ValueError: no gauge or up-down counter is stored under ``name`` (the message lists what is).
            sqlalchemy.exc.SQLAlchemyError: the database could not be queried.
        """
        stored = _query.resolve_name(self._engine, name, ("gauge", "updowncounter"))
        return _query.gauge_series(self._engine, stored, *self._window(start, end, 1.0))

    def metric_names(self) -> list[str]:
        """Every metric name stored, sorted.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database could not be queried.
        """
        return _query.metric_names(self._engine)

    def close(self) -> None:
        """Close the connections of an engine this object created."""
        if self._owned:
            self._engine.dispose()

    def __enter__(self) -> MetricHistory:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricHistory({self._shown!r})"

    @staticmethod
    def _window(start: Instant, end: Instant, bucket_s: float) -> tuple[int, int]:
        if not bucket_s > 0:
            raise ValueError(f"bucket_s={bucket_s!r}: must be > 0")
        return _query.to_ns(start), _query.to_ns(end)


class DatabaseExporter(MetricExporter):
    """Write metrics to SQLite or PostgreSQL for historical analysis.

    The constructor only checks its settings and never connects, so it cannot stall the application's
    start-up on a slow database: the first export (on the pipeline's export worker) creates or migrates the
    schema. Points older than ``retention_days`` are deleted at the first export and at most once an hour
    afterwards, and only those of the service that exports them: streams whose resource has the same
    ``service.namespace``, ``service.name`` and ``deployment.environment.name`` as the data this exporter
    wrote. Other services sharing the database keep theirs, whatever their retention. ``export`` never raises:
    it returns ``FAILURE`` when the database cannot take the rows, so the pipeline retries the interval.

    Example:
        >>> from chat_turbo_metrics.exporters import DatabaseExporter
        >>> exporter = DatabaseExporter(f"sqlite:///{tmp_path / 'metrics.db'}", retention_days=7)
        >>> monitor.add_exporter(exporter)
        >>> monitor.increment_counter("chat_requests", {"route": "/chat"})
        >>> monitor.force_flush()
        True
        >>> exporter.history().metric_names()
        ['chat_requests']

    Args:
        url: database URL (a :class:`Secret` when it holds a password); default
            the configuration's (``DEFAULT_DATABASE_URL``: a SQLite file in the working directory). Use
            :meth:`from_config` to follow the configuration.
        retention_days: how long points are kept (default 30).
        batch_size: most rows one INSERT statement carries.
        clock: unix time in seconds, for retention.

    Raises:
        ConfigurationError: a bad setting: an unparseable URL, a dialect or driver that is not installed,
            a non-positive retention or batch size.
    """

    name: ClassVar[str] = "chat_turbo_database"

    def __init__(
        self,
        url: str | Secret | None = None,
        *,
        retention_days: float | None = None,
        batch_size: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(preferred_temporality=dict(_TEMPORALITY))
        url = DEFAULT_DATABASE_URL if url is None else url
        retention_days = _DEFAULT_RETENTION_DAYS if retention_days is None else retention_days
        if not 0 < retention_days < float("inf"):
            raise ConfigurationError(f"retention_days={retention_days!r}: must be a finite number of days > 0")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size={batch_size!r}: must be an integer >= 1")
        self._database = _open(url)  # parses the URL and loads the dialect; connects to nothing
        self._retention_days = retention_days
        self._batch_size = batch_size
        self._clock = clock
        self._lock = threading.Lock()
        self._stream_ids: dict[str, int] = {}
        self._owners: set[str] = set()  # whose points retention may delete: the services this exporter wrote
        self._skipped: set[str] = set()
        self._ready = False
        self._failing = False
        self._closed = False
        self._next_retention = float("-inf")

    @classmethod
    def from_config(cls, config: StorageSettings) -> DatabaseExporter:
        """Build the exporter from the storage settings of a :class:`~chat_turbo_metrics.MonitoringConfig`.

        Args:
            config: the configuration; ``database_url`` (default SQLite file) and ``retention_days`` are used.

        Returns:
            The exporter; it connects on its first export.
        """
        return cls(history_url(config), retention_days=config.retention_days)

    def history(self) -> MetricHistory:
        """A :class:`MetricHistory` sharing this exporter's engine."""
        return MetricHistory(self._database.engine)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        """Insert the points of ``metrics_data`` in one transaction.

        Returns:
            ``SUCCESS`` once committed; ``FAILURE`` (logged, never raised) if nothing was stored.
        """
        with self._lock:
            if self._closed:
                _logger.debug("export after shutdown of %s ignored", self._database.shown_url)
                return MetricExportResult.FAILURE
            try:
                if not self._ready:
                    self._prepare()
                self._write(metrics_data)
            except Exception as error:
                self._report_failure(error)
                return MetricExportResult.FAILURE
            if self._failing:
                self._failing = False
                _logger.info("exporting to %s again", self._database.shown_url)
            self._delete_expired()
            return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered between exports, so there is nothing to flush."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Close the database connections; later exports return ``FAILURE``."""
        with self._lock:
            self._closed = True
            self._database.engine.dispose()

    def __repr__(self) -> str:
        return (
            f"DatabaseExporter(url={self._database.shown_url!r}, retention_days={self._retention_days!r}, "
            f"batch_size={self._batch_size!r})"
        )

    def _prepare(self) -> None:
        with self._database.engine.begin() as conn:
            ensure_schema(conn, self._database.shown_url, self._clock())
        self._ready = True

    def _write(self, metrics_data: MetricsData) -> None:
        rows = ExportRows(metrics_data)
        self._owners |= rows.owners
        for name in rows.skipped - self._skipped:
            _logger.warning("metric %r skipped: its kind or temporality cannot be stored as deltas or values", name)
        self._skipped |= rows.skipped
        if not rows.points:
            return
        with self._database.engine.begin() as conn:
            ids = resolve_stream_ids(conn, rows.streams, self._stream_ids, self._batch_size)
            point_rows = [{"stream_id": ids[digest], **row} for digest, row in rows.points]
            for part in chunks(point_rows, self._batch_size):
                conn.execute(insert(points), list(part))
        # Only ids from a committed transaction are remembered; a rolled-back insert left none.
        self._stream_ids.update(ids)

    def _report_failure(self, error: Exception) -> None:
        # One message when exports start failing; repeats while the database stays down go to debug.
        # A database this version cannot use (a newer schema) needs a person, so it is an error.
        if self._failing:
            log = _logger.debug
        else:
            log = _logger.error if isinstance(error, ConfigurationError) else _logger.warning
        self._failing = True
        log("export to %s failed, will retry: %s", self._database.shown_url, _describe(self._database, error))

    def _delete_expired(self) -> None:
        now = self._clock()
        if now < self._next_retention or not self._owners:  # whose points are ours is known after a first write
            return
        self._next_retention = now + _RETENTION_EVERY_S
        cutoff_ns = round((now - self._retention_days * _DAY_S) * 1e9)
        # Stream rows stay: they are small, and another process may hold their ids in its cache.
        try:
            with self._database.engine.begin() as conn:
                deleted = conn.execute(expired_points(self._owners, cutoff_ns)).rowcount
        except SQLAlchemyError as error:
            _logger.warning("retention on %s failed: %s", self._database.shown_url, _describe(self._database, error))
            return
        _logger.debug("retention deleted %d points older than %s days", deleted, self._retention_days)
