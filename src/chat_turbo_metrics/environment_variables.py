"""Environment variables read by chat_turbo_metrics (also ``opentelemetry-instrument --flags``).

The standard ``OTEL_*`` variables we read are OpenTelemetry's own (their flags come from the SDK); the
seed's variables below are read by :func:`chat_turbo_metrics.get_monitoring_config`.
"""

PERFORMANCE_MONITORING_ENABLED = "PERFORMANCE_MONITORING_ENABLED"
"""``true``/``false``: ``false`` makes every recording call a no-op (twin: ``OTEL_SDK_DISABLED``)."""

METRICS_SAMPLING_RATE = "METRICS_SAMPLING_RATE"
"""Fraction (0, 1] of histogram and timer observations recorded; counters and gauges are exact."""

METRICS_RETENTION_DAYS = "METRICS_RETENTION_DAYS"
"""Days that stored history (rotated metric files, database rows) is kept."""

METRICS_RECORDING = "METRICS_RECORDING"
"""``fast`` (pre-aggregating front end) or ``sdk`` (plain OpenTelemetry SDK instruments)."""

METRICS_SELF_TELEMETRY = "METRICS_SELF_TELEMETRY"
"""``true`` (default) or ``false``: the pipeline's own health as ``chat_turbo_metrics_*`` metrics."""

METRICS_CARDINALITY_LIMIT = "METRICS_CARDINALITY_LIMIT"
"""Series per metric before further tag sets fold into ``otel.metric.overflow="true"``."""

METRICS_SERIES_IDLE_TIMEOUT = "METRICS_SERIES_IDLE_TIMEOUT"
"""Seconds after which a series nobody records leaves memory (fast path); ``0`` (default): never."""

METRICS_METRIC_LIMIT = "METRICS_METRIC_LIMIT"
"""Distinct metric names per monitor (10000); further new names are dropped, with one warning."""

METRICS_SHUTDOWN_TIMEOUT = "METRICS_SHUTDOWN_TIMEOUT"
"""Seconds that ``shutdown()`` and process exit wait at most for exporters (default 5)."""

ALERT_EMAIL_ENABLED = "ALERT_EMAIL_ENABLED"
"""``true`` to send alert notifications by email."""

ALERT_SLACK_WEBHOOK_URL = "ALERT_SLACK_WEBHOOK_URL"
"""Slack incoming-webhook URL for alert notifications (a secret: never logged)."""

ALERT_EMAIL_HOST = "ALERT_EMAIL_HOST"
"""SMTP server for alert emails."""

ALERT_EMAIL_PORT = "ALERT_EMAIL_PORT"
"""SMTP port (587)."""

ALERT_EMAIL_FROM = "ALERT_EMAIL_FROM"
"""Sender address of alert emails."""

ALERT_EMAIL_TO = "ALERT_EMAIL_TO"
"""Comma-separated recipient addresses of alert emails."""

ALERT_EMAIL_USERNAME = "ALERT_EMAIL_USERNAME"
"""SMTP login user (no login when empty)."""

ALERT_EMAIL_PASSWORD = "ALERT_EMAIL_PASSWORD"
"""SMTP login password (a secret: never logged)."""

ALERT_EMAIL_TLS = "ALERT_EMAIL_TLS"
"""``starttls`` (default), ``tls`` (implicit TLS, usually port 465) or ``none``."""

ALERT_EMAIL_ALLOW_INSECURE_AUTH = "ALERT_EMAIL_ALLOW_INSECURE_AUTH"
"""``true`` to log in to the SMTP server without TLS although it is not on this machine (default ``false``)."""

METRICS_PROMETHEUS_PORT = "METRICS_PROMETHEUS_PORT"
"""Port of the ``/metrics`` endpoint (twin: ``OTEL_EXPORTER_PROMETHEUS_PORT``)."""

METRICS_FILE_PATH = "METRICS_FILE_PATH"
"""JSON Lines file for the file exporter; setting it enables file export."""

METRICS_FILE_MODE = "METRICS_FILE_MODE"
"""Octal mode of the files the file exporter creates: ``0600`` (default), ``0640`` or ``0644``; directories it
creates get ``0700`` plus search permission for whoever may read."""

METRICS_DATABASE_URL = "METRICS_DATABASE_URL"
"""SQLAlchemy URL for metric history (default: SQLite file ``chat_turbo_metrics.db``)."""

CHAT_TURBO_ENV = "CHAT_TURBO_ENV"
"""Which ``configs/<environment>.toml`` to load: development, production or test."""

CHAT_TURBO_CONFIG_DIR = "CHAT_TURBO_CONFIG_DIR"
"""A directory of your own ``<environment>.toml`` files, looked in first (then ``./configs``, then the shipped ones)."""

DD_API_KEY = "DD_API_KEY"
"""Datadog API key for ``OTEL_METRICS_EXPORTER=datadog`` (a secret: never logged; prefer the environment to a
command-line flag, which other users of the machine can see)."""

DD_SITE = "DD_SITE"
"""Datadog site: ``datadoghq.com`` (default), ``datadoghq.eu``, ``us3.datadoghq.com``, ``us5.datadoghq.com``, ..."""

DD_ENV = "DD_ENV"
"""Datadog ``env`` tag (default: the resource's ``deployment.environment.name``)."""

DD_SERVICE = "DD_SERVICE"
"""Datadog ``service`` tag (default: the resource's ``service.name``)."""

DD_VERSION = "DD_VERSION"
"""Datadog ``version`` tag (default: the resource's ``service.version``)."""

DD_TAGS = "DD_TAGS"
"""Extra Datadog tags on every series, space or comma separated (``team:chat region:eu``)."""

DD_HOSTNAME = "DD_HOSTNAME"
"""Host sent with every Datadog series (default: the resource's ``host.name``, else none)."""

CHAT_TURBO_DATADOG_ENDPOINT = "CHAT_TURBO_DATADOG_ENDPOINT"
"""Base URL replacing ``https://api.<DD_SITE>`` (a proxy or test intake); plain ``http://`` only to loopback.
User info (``https://user:password@proxy``) is sent as Basic authentication and shown masked everywhere."""

CHAT_TURBO_DATADOG_HISTOGRAM_BUCKETS = "CHAT_TURBO_DATADOG_HISTOGRAM_BUCKETS"
"""``true`` to send per-bucket Datadog counts (``<name>.bucket`` tagged ``lower_bound``/``upper_bound``)."""

METRICS_MULTIPROCESS = "METRICS_MULTIPROCESS"
"""``false`` to serve only this process's data on the Prometheus port (default: merge every worker's)."""

METRICS_MULTIPROCESS_DIR = "METRICS_MULTIPROCESS_DIR"
"""Private base directory where the workers of a pre-fork server meet (default ``$TMPDIR/chat-turbo-metrics-<uid>``,
0700; refused if another user owns it or may write to it)."""

METRICS_MULTIPROCESS_GROUP = "METRICS_MULTIPROCESS_GROUP"
"""A group name: processes of this user with the same name share one scrape, whoever started them (default:
only the processes of one server, its master and the workers it forks or spawns)."""

METRICS_MULTIPROCESS_GAUGES = "METRICS_MULTIPROCESS_GAUGES"
"""How gauges of several workers combine: ``sum``, ``max``, ``min``, ``latest``, ``worker``; or per metric."""
