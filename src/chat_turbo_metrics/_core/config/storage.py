"""Storage settings: the file exporter's files, the database exporter's history, and how long both keep it."""

from __future__ import annotations

from dataclasses import dataclass

from chat_turbo_metrics._core.config.checks import DURATION, LONGEST_RETENTION_DAYS, POSITIVE, holds
from chat_turbo_metrics._core.config.declaration import Settings, Variable, setting
from chat_turbo_metrics._core.config.values import (
    parse_database_url,
    parse_file_mode,
    parse_float,
    parse_int,
    parse_str,
)
from chat_turbo_metrics._core.secret import Secret

# Where history goes when no database_url is configured: a SQLite file in the working directory.
DEFAULT_DATABASE_URL = "sqlite:///chat_turbo_metrics.db"


@dataclass(frozen=True, kw_only=True)
class StorageSettings(Settings):
    """Where the file and database exporters keep history, and for how long.

    Example:
        >>> StorageSettings(file_path="/var/lib/chat/metrics.jsonl").file_mode == 0o600
        True
    """

    SECTION = "storage"
    TITLE = "the file and database exporters' history"

    retention_days: float = setting(
        30.0,
        parse=parse_float,
        variable="METRICS_RETENTION_DAYS",
        checks=(
            holds(
                lambda days: 0 < days <= LONGEST_RETENTION_DAYS,
                f"must be a number of days > 0 and at most {LONGEST_RETENTION_DAYS:.0f} (a hundred years)",
            ),
        ),
        meaning="how long **stored history** is kept: rotated metric files and database rows older than this are "
        "deleted (only the file exporter's own files, only this service's rows). In-memory series are cumulative "
        "and live as long as the process (or until idle: `METRICS_SERIES_IDLE_TIMEOUT`)",
    )
    file_path: str = setting(
        "metrics.jsonl",
        parse=parse_str,
        variable=Variable("METRICS_FILE_PATH", empty_is_error=True),
        checks=(holds(lambda path: bool(path.strip()), "must be a file path, not empty"),),
        meaning="JSON Lines file of the file exporter; setting the variable also enables the file exporter (see "
        "[Files](#files-file-exporter))",
    )
    file_max_bytes: int = setting(
        10 * 1024 * 1024,
        parse=parse_int,
        checks=(POSITIVE,),
        shown_default="`10485760` (10 MiB)",
        meaning="size at which the file is rotated",
    )
    file_rotation_interval_s: float = setting(
        86400.0,
        parse=parse_float,
        checks=(DURATION,),
        meaning="age in seconds at which the file is rotated",
    )
    file_mode: int = setting(
        0o600,
        parse=parse_file_mode,
        variable="METRICS_FILE_MODE",
        shown_default="`0600`",
        meaning="octal mode of the files the file exporter creates: `0600`, `0640` or `0644`; directories it creates "
        "get `0700` plus search permission for whoever may read (see [Files](#files-file-exporter))",
    )
    database_url: Secret | None = setting(
        None,
        parse=parse_database_url,
        variable="METRICS_DATABASE_URL",
        secret="password",
        shown_default=f"`{DEFAULT_DATABASE_URL}` (a SQLite file in the working directory)",
        meaning="SQLAlchemy URL of the metric history; checked at configuration time (parseable, driver installed)",
    )


def history_url(config: StorageSettings) -> Secret:
    """Where the database exporter keeps the metric history: ``database_url``, else :data:`DEFAULT_DATABASE_URL`.

    Example:
        >>> history_url(StorageSettings()).reveal()
        'sqlite:///chat_turbo_metrics.db'
    """
    return config.database_url or Secret(DEFAULT_DATABASE_URL)
