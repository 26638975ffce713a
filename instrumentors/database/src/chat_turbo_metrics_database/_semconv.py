"""The semantic conventions' database client attributes, from what the seed's labels already know."""

from __future__ import annotations

from typing import Any

from chat_turbo_metrics.instrumentation import SemconvMode

# SQLAlchemy dialect names -> the conventions' db.system.name values; any other dialect is "other_sql".
DB_SYSTEMS = {
    "postgresql": "postgresql",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "mssql": "microsoft.sql_server",
    "oracle": "oracle.db",
}
OTHER_SQL = "other_sql"
_UNKNOWN = "other"  # the classifier's label for an operation or table it cannot tell (or past its bound)


def db_system_name(dialect: Any) -> str:
    """``db.system.name`` of a SQLAlchemy dialect (or dialect name).

    Example:
        >>> db_system_name("postgresql"), db_system_name("mssql"), db_system_name("firebird")
        ('postgresql', 'microsoft.sql_server', 'other_sql')
    """
    name = dialect if isinstance(dialect, str) else getattr(dialect, "name", None)
    return DB_SYSTEMS.get(str(name), OTHER_SQL)


class SemconvNames:
    """Which names a database instrumentor emits, and the conventions' attributes of one recording.

    Example:
        >>> names = SemconvNames(SemconvMode.SEMCONV)
        >>> names.operation_tags("postgresql", {"table": "users", "operation": "select"}, None)
        {'db.system.name': 'postgresql', 'db.operation.name': 'SELECT', 'db.collection.name': 'users'}
        >>> names.operation_tags("sqlite", {"table": "other", "operation": "other"}, "IntegrityError")
        {'db.system.name': 'sqlite', 'error.type': 'IntegrityError'}
    """

    __slots__ = ("seed", "semconv")

    def __init__(self, mode: SemconvMode) -> None:
        self.seed, self.semconv = mode.seed, mode.semconv

    @staticmethod
    def operation_tags(dialect: Any, seed: dict[str, Any], error_type: str | None) -> dict[str, Any]:
        """``db.client.operation.duration``'s attributes; an operation or table not told is left out (not
        ``other``), as the conventions ask for attributes that are not readily available."""
        tags: dict[str, Any] = {"db.system.name": db_system_name(dialect)}
        operation, table = seed["operation"], seed["table"]
        if operation != _UNKNOWN:
            tags["db.operation.name"] = operation.upper()
        if table != _UNKNOWN:
            tags["db.collection.name"] = table
        if error_type is not None:
            tags["error.type"] = error_type
        return tags

    @staticmethod
    def pool_tags(pool: str, state: str) -> dict[str, str]:
        """``db.client.connection.count``'s attributes: the pool's name and ``used`` or ``idle``."""
        return {"db.client.connection.pool.name": pool, "db.client.connection.state": state}
