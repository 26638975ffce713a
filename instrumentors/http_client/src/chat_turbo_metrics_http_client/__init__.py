"""HTTP client metrics for chat_turbo_metrics: requests, httpx (sync and async), aiohttp's client and urllib3.

Entry points ``chat_turbo_requests``, ``chat_turbo_httpx``, ``chat_turbo_aiohttp_client`` and ``chat_turbo_urllib3``.
"""

from chat_turbo_metrics_http_client._instrumentors import (
    AiohttpClientInstrumentor,
    HttpxInstrumentor,
    RequestsInstrumentor,
    Urllib3Instrumentor,
)
from chat_turbo_metrics_http_client._metrics import DURATION, SC_DURATION, server_of

__all__ = [
    "DURATION",
    "SC_DURATION",
    "AiohttpClientInstrumentor",
    "HttpxInstrumentor",
    "RequestsInstrumentor",
    "Urllib3Instrumentor",
    "server_of",
]
