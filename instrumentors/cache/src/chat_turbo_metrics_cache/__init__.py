"""Cache metrics for chat_turbo_metrics: a redis-py instrumentor (entry point ``chat_turbo_redis``).

The explicit API (``record_cache_hit``, ``record_cache_miss``, ``cached``) lives in the core and is
re-exported here.
"""

from chat_turbo_metrics import cached, record_cache_hit, record_cache_miss
from chat_turbo_metrics_cache._redis import COMMAND_DURATION, LOOKUPS, RedisInstrumentor, key_prefix

__all__ = [
    "COMMAND_DURATION",
    "LOOKUPS",
    "RedisInstrumentor",
    "cached",
    "key_prefix",
    "record_cache_hit",
    "record_cache_miss",
]
