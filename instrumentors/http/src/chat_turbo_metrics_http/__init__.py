"""HTTP request metrics for ASGI and WSGI applications, recorded through chat_turbo_metrics' monitor."""
