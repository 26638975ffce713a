"""``OTEL_EXPORTER_OTLP_*HEADERS``: checked before an OTLP exporter reads them, and never logged.

Those variables usually carry a credential (``authorization=Bearer%20...``). OpenTelemetry's exporters parse
them themselves and log a header they cannot parse whole, token included, at WARNING; a common slip (``:``
instead of ``=``) does exactly that. So the variable the exporter will read is checked here first, with the
grammar OpenTelemetry applies (comma-separated ``name=value``, the value printable ASCII), and a bad one is a
:class:`ConfigurationError` that names the variable and shows at most a header's name. A filter on
OpenTelemetry's parser logger masks what it logs, for OTLP exporters an application builds itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from chat_turbo_metrics._core.config import ConfigurationError

# The specification's grammar as OpenTelemetry Python's parser applies it (opentelemetry.util.re, liberal).
_KEY = r"[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+"
_VALUE = r"[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_HEADER = re.compile(rf"[ \t]*{_KEY}[ \t]*=[ \t]*{_VALUE}[ \t]*")
_DELIMITER = re.compile(r"[ \t]*,[ \t]*")
_NAMED = re.compile(rf"[ \t]*(?P<name>{_KEY})[ \t]*(?P<sep>[=:])")
# The logger OpenTelemetry's header parser warns on (with the header as the only argument).
PARSER_LOGGER = "opentelemetry.util.re"

# What each signal's exporter reads: the signal's own variable if set, else the shared one.
HEADER_VARIABLES = {
    "metrics": ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
    "traces": ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
}


def masked_header(header: str) -> str:
    """A header as it may be shown: its name, if it starts with one, and ``***`` for everything else.

    Example:
        >>> masked_header("Authorization: Bearer eyJhbGciOi")
        'Authorization: ***'
    """
    named = _NAMED.match(header)
    return f"{named.group('name')}{named.group('sep')} ***" if named else "***"


def check_otlp_headers(env: Mapping[str, str], signal: str) -> None:
    """Check the headers variable the ``signal``'s OTLP exporter will read from ``env``.

    Raises:
        ConfigurationError: a header is not ``name=value``; the message names the variable and the header's
            position and name, never its value.
    """
    for variable in HEADER_VARIABLES[signal]:
        value = env.get(variable)
        if value:
            _check(variable, value)
            return  # the exporter reads the first one set, as OpenTelemetry does


def _check(variable: str, value: str) -> None:
    for position, header in enumerate(_DELIMITER.split(value), start=1):
        if header and not _HEADER.fullmatch(header.strip()):
            raise ConfigurationError(
                f"{variable}: header {position} ({masked_header(header)!r}) is not name=value; write headers as "
                "comma-separated name=value pairs with URL-encoded values, e.g. authorization=Bearer%20<token> "
                "(the value is not shown)"
            )


class _MaskedHeaders(logging.Filter):
    """Masks the header OpenTelemetry's parser logs when it cannot parse it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(masked_header(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def mask_parser_warnings() -> None:
    """Install the filter once (importing this package does it)."""
    logger = logging.getLogger(PARSER_LOGGER)
    if not any(isinstance(existing, _MaskedHeaders) for existing in logger.filters):
        logger.addFilter(_MaskedHeaders())
