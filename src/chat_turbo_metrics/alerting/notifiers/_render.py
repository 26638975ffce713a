"""The human-readable text shared by Slack, email and logs: per alert, its summary, value, annotations and labels.

Label values and annotations come from the monitored application's data, so in every text sink they are data,
never structure: control characters (ANSI escapes, line breaks that would forge a log line), Unicode line
separators, bidirectional overrides and lone surrogates are written as escapes (``\\x1b``, ``\\u2028``).
The webhook JSON carries the values unchanged.
"""

from __future__ import annotations

import re

from chat_turbo_metrics.alerting._notification import Notification, NotifiedAlert, rfc3339

# C0 and C1 controls, DEL, line/paragraph separators, bidi marks and overrides, lone surrogates.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x85\x0b\x0c]+")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every character that could move a cursor, break a line or reorder text escaped.

    Example:
        >>> printable("web-1\\n\\x1b[2J<!channel>")
        'web-1\\\\x0a\\\\x1b[2J<!channel>'
    """
    return _UNSAFE.sub(_escape, text)


def header_text(text: str) -> str:
    """``text`` for a one-line header (an email ``Subject``): line breaks folded to a space, the rest escaped.

    Example:
        >>> header_text("[FIRING:1] HighCPU (web-1\\r\\nBcc: x@example.com)")
        '[FIRING:1] HighCPU (web-1 Bcc: x@example.com)'
    """
    return printable(_LINE_BREAKS.sub(" ", text))


def slack_text(text: str) -> str:
    """``text`` for a Slack message: escaped as Slack requires (``&``, ``<``, ``>``), so a label cannot mention
    ``<!channel>`` or forge a link, and printable.

    Example:
        >>> slack_text("<!channel> & <https://evil.example|docs>")
        '&lt;!channel&gt; &amp; &lt;https://evil.example|docs&gt;'
    """
    return printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def value_text(value: float | None) -> str:
    """The alert's value as people read it: ``2.5``, ``1e+06``, ``no data``.

    Args:
        value: the value the rule read, or None.

    Returns:
        The text.

    Example:
        >>> value_text(2.50), value_text(None)
        ('2.5', 'no data')
    """
    return "no data" if value is None else f"{value:.6g}"


def alert_fields(alert: NotifiedAlert) -> list[tuple[str, str]]:
    """(field, text) rows describing one alert, most useful first."""
    rows = [
        ("Alert", alert.annotations.get("summary") or alert.labels.get("alertname", "")),
        ("Status", alert.status),
        ("Severity", alert.labels.get("severity", "")),
        ("Value", value_text(alert.value)),
        ("Since", rfc3339(alert.starts_at)),
    ]
    if alert.ends_at is not None:
        rows.append(("Resolved", rfc3339(alert.ends_at)))
    rows.extend((key.capitalize(), text) for key, text in sorted(alert.annotations.items()) if key != "summary")
    rows.append(("Labels", ", ".join(f"{key}={value}" for key, value in sorted(alert.labels.items()))))
    return [(name, printable(text)) for name, text in rows if text]


def plain_text(notification: Notification) -> str:
    """The whole notification as plain text: the title, then one block per alert."""
    blocks = [printable(notification.title)]
    for alert in notification.alerts:
        blocks.append("\n".join(f"{name}: {text}" for name, text in alert_fields(alert)))
    if notification.truncated_alerts:
        blocks.append(f"... and {notification.truncated_alerts} more alert(s)")
    if notification.external_url:
        blocks.append(printable(notification.external_url))
    return "\n\n".join(blocks) + "\n"
