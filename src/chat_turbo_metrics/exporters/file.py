"""Metrics as JSON Lines on local disk, with size/time rotation and retention.

Each data point becomes one self-describing JSON object on its own line, so ``jq``, pandas or
:func:`read_metric_records` can read a file without knowing the instruments. One export (a whole
snapshot) is written with one ``write()`` call on an unbuffered file; if that write fails part-way
(disk full, file size limit, I/O error) the file is truncated back to where the export began, so a
reader never sees part of a snapshot as if it were whole. A process killed mid-write leaves at most
a torn last line, which the reader skips with a warning.

Non-finite floats become the strings ``"NaN"``, ``"+Inf"`` and ``"-Inf"`` (the Prometheus
spellings) so every line stays strict JSON; bytes become text (undecodable bytes as ``\\xNN``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from chat_turbo_metrics._collection.records import metric_records
from chat_turbo_metrics._core.config import ConfigurationError, StorageSettings
from chat_turbo_metrics._core.config.values import parse_file_mode
from chat_turbo_metrics._pipeline.temporality import INSTRUMENT_CLASSES
from chat_turbo_metrics.exporters._rotating_file import RotatingFile, rotated_files

__all__ = ["FileExporter", "read_metric_records"]

_logger = logging.getLogger("chat_turbo_metrics.exporters.file")

_SECONDS_PER_DAY = 86400.0
_DEFAULTS = StorageSettings()
_NON_FINITE = {math.inf: "+Inf", -math.inf: "-Inf"}


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def _sanitized(value: Any) -> Any:
    """Return ``value`` with non-finite floats and non-string keys made JSON-safe (the slow path)."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE.get(value, "NaN")
    if isinstance(value, Mapping):
        return {str(key): _sanitized(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_sanitized(item) for item in value]
    return value


def _encoded(record: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError):
        # Rare (a NaN, an empty histogram's infinite min, a tuple key): walk the record only then.
        text = json.dumps(_sanitized(record), ensure_ascii=False, allow_nan=False, default=_json_default)
    return (text + "\n").encode("utf-8")


# --- the exporter -------------------------------------------------------------------------------


def _checked(setting: str, value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{setting}={value!r}: must be > 0")


class FileExporter(MetricExporter):
    """Write every exported data point as one JSON line to a rotating local file.

    Arguments left as ``None`` take the defaults of :class:`~chat_turbo_metrics.MonitoringConfig`; the
    environment and configuration files are read only through :meth:`from_config`.

    Example:
        >>> exporter = FileExporter(tmp_path / "metrics.jsonl", max_bytes=50_000_000, retention_days=7)
        >>> monitor.add_exporter(exporter)
        >>> monitor.increment_counter("messages_sent", {"channel": "public"})
        >>> monitor.force_flush()
        True
        >>> for record in read_metric_records(exporter.path, include_rotated=True):
        ...     print(record["name"], record["kind"], record["attributes"], record["value"])
        messages_sent counter {'channel': 'public'} 1

    Args:
        path: the active file; rotated files sit next to it as ``<path>.<YYYYmmddTHHMMSS>[.<n>]`` (UTC).
        max_bytes: rotate before an export would make the active file larger than this (an export is
            never split across files, so one larger than this fills a file of its own).
        rotation_interval_s: rotate once the active file has been open this long (by ``clock``).
        retention_days: delete rotated files whose modification time is older than this, among the files this
            exporter created (listed by inode number in ``<path>.created``); a file it did not create is never
            deleted, whatever its name.
        file_mode: the mode of the files it creates (default ``0o600``; ``0o640`` or ``0o644`` let others read);
            directories it creates get ``0o700`` plus search permission for whoever may read.
        clock: seconds since the epoch; used for rotation age, rotated names and retention.

    The active file is never written through a symbolic link, nor when it is not a regular file owned by
    this process's user: the export fails with the reason logged. The constructor touches no file.

    Raises:
        ConfigurationError: a size, interval or retention setting is not positive, or ``file_mode`` would let
            others write or the owner not read and write.
    """

    name = "chat_turbo_file"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int | None = None,
        rotation_interval_s: float | None = None,
        retention_days: float | None = None,
        file_mode: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(preferred_temporality=dict.fromkeys(INSTRUMENT_CLASSES, AggregationTemporality.CUMULATIVE))
        path = _DEFAULTS.file_path if path is None else path
        max_bytes = _DEFAULTS.file_max_bytes if max_bytes is None else max_bytes
        interval_s = _DEFAULTS.file_rotation_interval_s if rotation_interval_s is None else rotation_interval_s
        retention_days = _DEFAULTS.retention_days if retention_days is None else retention_days
        if not str(path).strip():
            raise ConfigurationError(f"path={str(path)!r}: must be a file path, not empty")
        for setting, value in (
            ("max_bytes", max_bytes),
            ("rotation_interval_s", interval_s),
            ("retention_days", retention_days),
        ):
            _checked(setting, value)
        file_mode = _DEFAULTS.file_mode if file_mode is None else file_mode
        try:
            mode = parse_file_mode(file_mode)
        except ValueError as error:
            raise ConfigurationError(f"file_mode={file_mode!r}: {error}") from None
        retention_s = retention_days * _SECONDS_PER_DAY
        # Nothing is opened, created or deleted here: validating a set-up (``chat-turbo-metrics config``) builds
        # this exporter too. The first export opens the file and runs retention, on the export worker.
        self._file = RotatingFile(Path(path), max_bytes, interval_s, retention_s, clock, mode=mode)
        self._lock = threading.Lock()
        self._is_shutdown = False

    @classmethod
    def from_config(cls, config: StorageSettings) -> FileExporter:
        """Build the exporter from the ``file_*`` and ``retention_days`` settings of ``config``."""
        return cls(
            config.file_path,
            max_bytes=config.file_max_bytes,
            rotation_interval_s=config.file_rotation_interval_s,
            retention_days=config.retention_days,
            file_mode=config.file_mode,
        )

    @property
    def path(self) -> Path:
        """The active file (it exists once the first export wrote to it)."""
        return self._file.path

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        """Append one line per data point, all or none; on any error log it and return ``FAILURE``, never raise."""
        if self._is_shutdown:
            return self._refused()
        try:
            snapshot = b"".join(_encoded(record) for record in metric_records(metrics_data))
        except Exception:
            _logger.exception("could not encode metrics for %s", self._file.path)
            return MetricExportResult.FAILURE
        with self._lock:
            if self._is_shutdown:
                return self._refused()
            try:
                if snapshot:
                    self._file.write_snapshot(snapshot)
            except Exception as error:
                # A traceback helps only when the cause is not the file system (disk full, permissions).
                unexpected = not isinstance(error, OSError)
                _logger.error("could not write metrics to %s: %s", self.path, error, exc_info=unexpected)
                self._close_quietly()  # the next export reopens the file
                return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Make written lines durable (``fsync``); every line already reached the OS when written."""
        with self._lock:
            try:
                self._file.sync()
            except OSError as error:
                _logger.error("could not flush metrics file %s: %s", self._file.path, error)
                return False
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Sync and close the file; later exports return ``FAILURE``."""
        with self._lock:
            if self._is_shutdown:
                return
            self._is_shutdown = True
            self._close_quietly()

    def _refused(self) -> MetricExportResult:
        _logger.warning("export after shutdown: metrics for %s dropped", self._file.path)
        return MetricExportResult.FAILURE

    def _close_quietly(self) -> None:
        try:
            self._file.close()
        except OSError as error:
            _logger.error("could not close metrics file %s: %s", self._file.path, error)


# --- reading back -------------------------------------------------------------------------------


def read_metric_records(path: str | os.PathLike[str], include_rotated: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the records written by :class:`FileExporter`, skipping torn and invalid lines with a warning.

    Args:
        path: the active file, as given to :class:`FileExporter`.
        include_rotated: read its rotated files first, oldest first, then the active file (which
            may be missing, e.g. before the first export).

    Yields:
        One dict per data point; a file's warnings are logged once it has been read to the end.

    Raises:
        FileNotFoundError: ``path`` does not exist and ``include_rotated`` is false.
    """
    active = Path(path)
    if not include_rotated:
        yield from _read_file(active)
        return
    for file in [*rotated_files(active), active]:
        try:
            yield from _read_file(file)
        except FileNotFoundError:
            continue  # deleted by retention while we read, or the active file is not created yet


def _read_file(file: Path) -> Iterator[dict[str, Any]]:
    invalid: list[int] = []
    line_number, last = 0, b""
    with file.open("rb") as stream:
        # Binary lines split on b"\n" only; str.splitlines would also split inside U+2028 etc.
        for line_number, line in enumerate(stream, start=1):
            last = line
            record = _parsed(line)
            if record is None:
                invalid.append(line_number)
            else:
                yield record
    if invalid and invalid[-1] == line_number:
        invalid.pop()
        _logger.warning(
            "%s: skipped a torn last line (line %d, %d bytes): the writer was probably killed mid-write",
            file,
            line_number,
            len(last),
        )
    if invalid:
        _logger.warning("%s: skipped %d invalid line(s), first at line %d", file, len(invalid), invalid[0])


def _parsed(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n"):
        return None  # only the last line can lack it: cut off mid-write
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
