"""Database metrics for chat_turbo_metrics: SQLAlchemy, and psycopg, psycopg2 and asyncpg used directly.

Entry points ``chat_turbo_sqlalchemy``, ``chat_turbo_psycopg``, ``chat_turbo_psycopg2``, ``chat_turbo_asyncpg``.

``monitor_database_query`` itself lives in the core (SQLAlchemy is a core dependency) and is re-exported here.
"""

from chat_turbo_metrics import monitor_database_query, monitor_database_query_async, set_database_connection
from chat_turbo_metrics_database._drivers import AsyncpgInstrumentor, Psycopg2Instrumentor, PsycopgInstrumentor
from chat_turbo_metrics_database._instrumentor import CONNECTIONS, SQLAlchemyInstrumentor, pool_label

__all__ = [
    "CONNECTIONS",
    "AsyncpgInstrumentor",
    "Psycopg2Instrumentor",
    "PsycopgInstrumentor",
    "SQLAlchemyInstrumentor",
    "monitor_database_query",
    "monitor_database_query_async",
    "pool_label",
    "set_database_connection",
]
