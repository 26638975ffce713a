"""Database metrics for chat_turbo_metrics: an SQLAlchemy instrumentor (entry point ``chat_turbo_sqlalchemy``).

``monitor_database_query`` itself lives in the core (SQLAlchemy is a core dependency) and is re-exported here.
"""

from chat_turbo_metrics import monitor_database_query, monitor_database_query_async, set_database_connection
from chat_turbo_metrics_database._instrumentor import CONNECTIONS, SQLAlchemyInstrumentor, pool_label

__all__ = [
    "CONNECTIONS",
    "SQLAlchemyInstrumentor",
    "monitor_database_query",
    "monitor_database_query_async",
    "pool_label",
    "set_database_connection",
]
