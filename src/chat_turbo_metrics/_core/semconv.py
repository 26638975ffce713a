"""Which metric names an instrumentor emits: the seed's, OpenTelemetry's semantic conventions, or both.

Read from ``OTEL_SEMCONV_STABILITY_OPT_IN`` exactly as OpenTelemetry's Python instrumentations
(opentelemetry-python-contrib) read it, so that one variable switches their spans and our metrics together:

- the value is split at commas and each token stripped of blanks; tokens are compared as they are written
  (``http``, not ``HTTP``);
- ``http`` or ``database``: the stable semantic-convention names only; ``http/dup`` or ``database/dup``: both the
  old names (here: the seed's) and the stable ones; ``/dup`` wins when a signal has both tokens;
- tokens for other signals or other libraries (``messaging``, ``gen_ai_latest_experimental``) are ignored: the
  variable is shared by every instrumentation in the process, so no token is an error; unset or empty: the
  seed's names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from chat_turbo_metrics._core.naming import DB_DURATION_BUCKETS, HTTP_DURATION_BUCKETS, Kind

SEMCONV_STABILITY_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"
Signal = Literal["http", "database"]
SIGNALS: tuple[Signal, ...] = ("http", "database")


class SemconvMode(enum.Enum):
    """The metric names an instrumentor emits for one signal.

    Example:
        >>> SemconvMode.BOTH.seed, SemconvMode.BOTH.semconv, SemconvMode.SEMCONV.seed
        (True, True, False)
        >>> SemconvMode("semconv") is SemconvMode.SEMCONV
        True
    """

    SEED = "seed"  # the seed's names only (the default; contrib's "default")
    SEMCONV = "semconv"  # the stable semantic-convention names only (``http``, ``database``)
    BOTH = "both"  # both sets (``http/dup``, ``database/dup``)

    @property
    def seed(self) -> bool:
        """The seed's names are emitted."""
        return self is not SemconvMode.SEMCONV

    @property
    def semconv(self) -> bool:
        """The semantic-convention names are emitted."""
        return self is not SemconvMode.SEED


def opt_in_mode(tokens: tuple[str, ...], signal: Signal) -> SemconvMode:
    """The names ``signal`` (``http`` or ``database``) is emitted under, given the opt-in's ``tokens``.

    Example:
        >>> tokens = parse_opt_in("database, http/dup ,messaging")
        >>> tokens
        ('database', 'http/dup', 'messaging')
        >>> opt_in_mode(tokens, "http"), opt_in_mode(tokens, "database")
        (<SemconvMode.BOTH: 'both'>, <SemconvMode.SEMCONV: 'semconv'>)
        >>> opt_in_mode(parse_opt_in(""), "http")
        <SemconvMode.SEED: 'seed'>
    """
    if f"{signal}/dup" in tokens:
        return SemconvMode.BOTH
    return SemconvMode.SEMCONV if signal in tokens else SemconvMode.SEED


def ignored_tokens(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """Tokens that select nothing here (other signals, other libraries', or a different spelling)."""
    known = {*SIGNALS, *(f"{signal}/dup" for signal in SIGNALS)}
    return tuple(token for token in tokens if token not in known)


def parse_opt_in(raw: object) -> tuple[str, ...]:
    """``OTEL_SEMCONV_STABILITY_OPT_IN``'s text (or a list of tokens, from a file or code) as its tokens:
    split at commas, each stripped, empty ones dropped, the rest kept as written.

    Raises:
        ValueError: ``raw`` is neither text nor a sequence of text.
    """
    if isinstance(raw, str):
        parts: list[str] = raw.split(",")
    elif isinstance(raw, (list, tuple)) and all(isinstance(part, str) for part in raw):
        parts = list(raw)
    else:
        raise ValueError("expected comma-separated tokens such as 'http,database/dup'")
    return tuple(token for token in (part.strip() for part in parts) if token)


def is_tokens(value: object) -> bool:
    """True for what :func:`parse_opt_in` returns: a tuple of text."""
    return isinstance(value, tuple) and all(isinstance(token, str) for token in value)


@dataclass(frozen=True)
class MetricDefinition:
    """A semantic-convention metric as an instrumentor declares it on a monitor before recording into it.

    The name carries no unit, so the unit must be declared: Prometheus then shows ``db.client.operation.duration``
    (unit ``s``) as ``db_client_operation_duration_seconds``, as the OpenTelemetry-Prometheus compatibility
    specification says.
    """

    name: str
    kind: Kind
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None


DB_CLIENT_OPERATION_DURATION = MetricDefinition(
    "db.client.operation.duration", "histogram", "s", "Duration of database client operations.", DB_DURATION_BUCKETS
)
DB_CLIENT_CONNECTION_COUNT = MetricDefinition(
    "db.client.connection.count",
    "gauge",
    "{connection}",
    "The number of connections that are currently in the state described by the state attribute.",
)
HTTP_CLIENT_REQUEST_DURATION = MetricDefinition(
    "http.client.request.duration", "histogram", "s", "Duration of HTTP client requests.", HTTP_DURATION_BUCKETS
)
