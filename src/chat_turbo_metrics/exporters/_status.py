"""The status page beside ``/metrics``: ``/status`` (HTML) and ``/status.json`` (the same data).

Everything on it comes from the seams the rest of the package already has, never from a path of its own:

- alerts, silences and notifications: the public state of the alert managers attached to the pipeline the
  endpoint serves (:mod:`chat_turbo_metrics._pipeline.attached`; an ``AlertManager`` attaches itself), read
  through their methods (``alerts()``, ``silences()``, ``recent_notifications()``, ``notification_counts()``);
- the health metrics (``chat_turbo_metrics_*``: exports, drops, overflow, queues) and the charts' series: the
  collection the endpoint makes, the one a scrape makes (under a pre-fork server, the merged one).

The charts show the last hour of a few key series as HTML/CSS bars (no script, no external asset, works offline).
Their points are taken from the collections the endpoint makes, scrapes and page views alike, at most one every
:data:`SAMPLE_SPACING_S` seconds: with Prometheus scraping, the hour fills; without, from the first page view on
(the page reloads itself every 30 s).

:func:`status_data` builds the data, :func:`render_status` the HTML page from it, :func:`status_json` the JSON:
pure functions of their arguments, so any server (the built-in one, a mounted app) can serve them. Every label
value, annotation and name is escaped; the page's Content-Security-Policy forbids scripts besides.

Example:
    >>> history = StatusHistory()
    >>> monitor.increment_counter("api_requests_total", {"endpoint": "/chat"})
    >>> data = status_data(monitor.snapshot().data, managers=(), history=history, now=1000.0)
    >>> data["alerts"], data["series"][0]["title"]
    ([], 'HTTP requests per second')
    >>> b"<h1>" in render_status(data) and json.loads(status_json(data))["generated_at"] == 1000.0
    True
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.sdk.metrics.export import Gauge, Histogram, HistogramDataPoint, MetricsData, NumberDataPoint, Sum

from chat_turbo_metrics._collection.walk import walk
from chat_turbo_metrics._pipeline.health import PREFIX

_logger = logging.getLogger("chat_turbo_metrics.exporters.status")

WINDOW_S = 3600.0
"""How far back the charts go."""
SAMPLE_SPACING_S = 5.0
"""At most one chart point per this many seconds, however often the endpoint collects."""
SLOTS = 60
"""Bars per chart: one a minute over :data:`WINDOW_S`."""
REFRESH_S = 30
JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
# No script at all, even if something slipped through escaping; styles only inline.
HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)


class AlertManagerView(Protocol):
    """What the page reads of an alert manager: its public state, nothing it could change."""

    def alerts(self) -> tuple[Any, ...]: ...

    def silences(self) -> tuple[Any, ...]: ...

    def recent_notifications(self) -> tuple[Any, ...]: ...

    def notification_counts(self) -> dict[str, dict[str, int]]: ...


# -- the charts' series ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chart:
    """One key series: a metric of the collection and how a point is made of it."""

    title: str
    metric: str
    kind: str  # "rate" (counter per second), "count_rate" (histogram count per second), "p95", "value" (gauge sum)
    unit: str


CHARTS: tuple[Chart, ...] = (
    Chart("HTTP requests per second", "api_requests", "rate", "/s"),
    Chart("HTTP errors per second", "errors", "rate", "/s"),
    Chart("HTTP p95 latency", "http_request_duration_seconds", "p95", "s"),
    Chart("Database queries per second", "database_query_duration_seconds", "count_rate", "/s"),
    Chart("Active alerts", "alerts_active", "value", ""),
    Chart("Memory", "memory_usage_mb", "value", "MB"),
    Chart("CPU", "cpu_usage_percent", "value", "%"),
)
_WANTED = {chart.metric for chart in CHARTS}

# A sample: per metric, a number (counter or gauge total) or (bounds, bucket counts) of a histogram.
Reading = float | tuple[tuple[float, ...], tuple[int, ...]]


def _read(data: MetricsData | None) -> dict[str, Reading]:
    """The charts' metrics in one collection, each point summed over its series."""
    readings: dict[str, Reading] = {}
    for found in walk(data):
        metric = found.metric
        if metric.name not in _WANTED:
            continue
        points = metric.data.data_points
        if isinstance(metric.data, Histogram):
            histograms = [p for p in points if isinstance(p, HistogramDataPoint)]
            if histograms:
                bounds = tuple(histograms[0].explicit_bounds)
                counts = [0] * (len(bounds) + 1)
                for point in histograms:
                    if tuple(point.explicit_bounds) == bounds:
                        for i, count in enumerate(point.bucket_counts):
                            counts[i] += count
                previous = readings.get(metric.name)
                if isinstance(previous, tuple) and previous[0] == bounds:
                    counts = [a + b for a, b in zip(counts, previous[1], strict=True)]
                readings[metric.name] = (bounds, tuple(counts))
        elif isinstance(metric.data, (Sum, Gauge)):
            total = sum(float(p.value) for p in points if isinstance(p, NumberDataPoint))
            previous = readings.get(metric.name)
            readings[metric.name] = total + (previous if isinstance(previous, float) else 0.0)
    return readings


def _quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """Prometheus's ``histogram_quantile`` over one set of bucket counts (None: no observations)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if seen + count >= rank and count > 0:
            if i == len(bounds):  # the +Inf bucket: the highest finite bound, as Prometheus answers
                return float(bounds[-1]) if bounds else None
            lower = float(bounds[i - 1]) if i > 0 else 0.0
            return lower + (float(bounds[i]) - lower) * (rank - seen) / count
        seen += count
    return float(bounds[-1]) if bounds else None


Sample = tuple[float, dict[str, Reading]]


def _delta(chart: Chart, current: Reading, previous: Reading, seconds: float) -> float | None:
    """A counter's rate, or a histogram's count rate or p95, between two readings (None: a reset)."""
    if isinstance(current, float) and isinstance(previous, float):
        delta = current - previous
        return delta / seconds if chart.kind == "rate" and delta >= 0 else None
    if not (isinstance(current, tuple) and isinstance(previous, tuple) and current[0] == previous[0]):
        return None
    deltas = [a - b for a, b in zip(current[1], previous[1], strict=True)]
    if min(deltas, default=0) < 0:
        return None
    if chart.kind == "count_rate":
        return sum(deltas) / seconds
    return _quantile(0.95, current[0], deltas) if chart.kind == "p95" else None


def _point(chart: Chart, before: Sample, after: Sample) -> float | None:
    """The chart's value at ``after``, from it and the sample before it (None: no data, or a counter reset)."""
    (t0, old), (t1, new) = before, after
    current, previous = new.get(chart.metric), old.get(chart.metric)
    if chart.kind == "value":
        return current if isinstance(current, float) else None
    if current is None or previous is None or t1 <= t0:
        return None
    return _delta(chart, current, previous, t1 - t0)


class StatusHistory:
    """The last hour of the charts' metrics, one sample per :data:`SAMPLE_SPACING_S` at most; thread-safe.

    Example:
        >>> history = StatusHistory()
        >>> monitor.increment_counter("api_requests_total", value=10)
        >>> history.observe(monitor.snapshot().data, now=0.0)
        >>> monitor.increment_counter("api_requests_total", value=50)
        >>> history.observe(monitor.snapshot().data, now=10.0)
        >>> history.points(CHARTS[0])
        [(10.0, 5.0)]
    """

    def __init__(self, window_s: float = WINDOW_S, spacing_s: float = SAMPLE_SPACING_S) -> None:
        self._window_s = window_s
        self._spacing_s = spacing_s
        self._lock = threading.Lock()
        self._samples: deque[Sample] = deque(maxlen=int(window_s / spacing_s) + 2)
        self._warned = False

    def due(self, now: float) -> bool:
        """Whether a collection at ``now`` should be sampled (cheap: a time comparison)."""
        samples = self._samples
        return not samples or abs(now - samples[-1][0]) >= self._spacing_s

    def observe(self, data: MetricsData | None, now: float) -> None:
        """Take a sample of ``data`` (collected at ``now``) if one is due."""
        if not self.due(now):
            return
        try:
            readings = _read(data)
        except Exception:  # a chart must never fail the scrape that feeds it
            if not self._warned:
                self._warned = True
                _logger.exception("the status page could not read a collection for its charts (logged once)")
            return
        with self._lock:
            if self._samples and now <= self._samples[-1][0] - self._spacing_s:
                self._samples.clear()  # the clock stepped back: the old points would draw in the wrong place
            self._samples.append((now, readings))
            while self._samples and self._samples[0][0] < now - self._window_s - self._spacing_s:
                self._samples.popleft()

    def points(self, chart: Chart) -> list[tuple[float, float]]:
        """``(time, value)`` of ``chart`` over the window, oldest first."""
        with self._lock:
            samples = list(self._samples)
        points = []
        for before, after in zip([None, *samples], samples, strict=False):
            value = _point(chart, before or (after[0], {}), after)
            if value is not None and math.isfinite(value):
                points.append((after[0], value))
        return points


# -- the data ------------------------------------------------------------------------------------------


def _number(value: float | None) -> float | str | None:
    """A JSON-safe number: non-finite values as Prometheus spells them."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _alert(alert: Any) -> dict[str, Any]:
    return {
        "rule_id": _text(alert.rule_id),
        "name": _text(alert.name),
        "state": _text(alert.state),
        "since": _number(alert.active_at),
        "firing_since": _number(alert.fired_at),
        "value": _number(alert.value),
        "labels": {_text(k): _text(v) for k, v in alert.labels.items()},
        "annotations": {_text(k): _text(v) for k, v in alert.annotations.items()},
        "silenced": bool(alert.silenced),
        "acknowledged": bool(alert.acknowledged),
    }


_STATE_ORDER = {"firing": 0, "pending": 1}


def _health(data: MetricsData | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for found in walk(data):
        metric = found.metric
        if not metric.name.startswith(PREFIX):
            continue
        for point in metric.data.data_points:
            labels = {_text(k): _text(v) for k, v in (point.attributes or {}).items()}
            if isinstance(point, NumberDataPoint):
                rows.append({"metric": metric.name, "labels": labels, "value": _number(point.value)})
            elif isinstance(point, HistogramDataPoint):
                rows.append({"metric": metric.name + " (count)", "labels": labels, "value": _number(point.count)})
                rows.append({"metric": metric.name + " (sum)", "labels": labels, "value": _number(point.sum)})
    rows.sort(key=lambda row: (row["metric"], sorted(row["labels"].items())))
    return rows


def status_data(
    data: MetricsData | None,
    managers: Iterable[AlertManagerView],
    history: StatusHistory,
    now: float | None = None,
    *,
    multiprocess: bool = False,
) -> dict[str, Any]:
    """Everything the status page shows, as plain JSON-ready data.

    Args:
        data: the collection the endpoint made for this request (it also feeds ``history``).
        managers: the alert managers attached to the endpoint's pipeline (this process's).
        history: the charts' samples.
        now: the time of ``data`` (default: now).
        multiprocess: whether the endpoint serves a pre-fork group (then alerting is the serving process's).

    Returns:
        ``generated_at``, ``pid``, ``multiprocess``, ``alert_managers``, ``alerts`` (firing first, then pending,
        oldest first), ``silences``, ``notifications`` (``recent``, newest first, and ``outcomes`` per notifier),
        ``health`` (every ``chat_turbo_metrics_*`` point) and ``series`` (each chart's points of the last hour).
    """
    now = time.time() if now is None else now
    history.observe(data, now)
    managers = tuple(managers)
    alerts = [_alert(alert) for manager in managers for alert in manager.alerts()]
    alerts.sort(key=lambda a: (_STATE_ORDER.get(a["state"], 2), a["since"] if isinstance(a["since"], float) else 0))
    silences = [
        {
            "id": _text(silence.id),
            "matchers": {_text(k): _text(v) for k, v in silence.matchers.items()},
            "starts_at": _number(silence.starts_at),
            "ends_at": _number(silence.ends_at),
            "comment": _text(silence.comment),
        }
        for manager in managers
        for silence in manager.silences()
    ]
    recent = [
        {
            "at": _number(sent.at),
            "receiver": _text(sent.receiver),
            "title": _text(sent.title),
            "status": _text(sent.status),
            "alerts": int(sent.alerts),
            "outcome": "delivered" if sent.delivered else "failed",
        }
        for manager in managers
        for sent in manager.recent_notifications()
    ]
    recent.sort(key=lambda n: n["at"] if isinstance(n["at"], float) else 0, reverse=True)
    outcomes: dict[str, dict[str, int]] = {}
    for manager in managers:
        for notifier, counts in manager.notification_counts().items():
            row = outcomes.setdefault(_text(notifier), {})
            for outcome, count in counts.items():
                row[outcome] = row.get(outcome, 0) + int(count)
    return {
        "generated_at": now,
        "pid": os.getpid(),
        "multiprocess": multiprocess,
        "alert_managers": len(managers),
        "alerts": alerts,
        "silences": silences,
        "notifications": {"recent": recent, "outcomes": outcomes},
        "health": _health(data),
        "series": [
            {"title": chart.title, "metric": chart.metric, "unit": chart.unit, "points": history.points(chart)}
            for chart in CHARTS
        ],
    }


def status_json(data: Mapping[str, Any]) -> bytes:
    """``/status.json``: :func:`status_data`'s result as UTF-8 JSON (every non-ASCII character escaped)."""
    return json.dumps(data, ensure_ascii=True, allow_nan=False, sort_keys=True).encode("ascii")


# -- the page ------------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
.meta{color:#666}table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f0f0f0;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600;text-transform:uppercase;font-size:.85em}.firing{color:#b00020}.pending{color:#b36b00}
.label{display:inline-block;background:#eef;border-radius:3px;padding:0 .35em;margin:0 .2em .15em 0;
font-family:ui-monospace,monospace;font-size:.85em;white-space:pre-wrap;word-break:break-all}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1em}
.chart{background:#fff;border:1px solid #ddd;padding:.5em}.chart h3{font-size:.95em;margin:0 0 .3em}
.bars{display:flex;align-items:flex-end;height:70px;gap:1px;border-bottom:1px solid #999}
.bar{flex:1;background:#4a78c2;min-height:1px}.gap{flex:1}.empty{color:#888;font-style:italic}
.ok{color:#1b7f3b}.failed{color:#b00020}
"""


def _e(value: object) -> str:
    return html.escape(_text(value), quote=True)


def _when(seconds: object) -> str:
    if not isinstance(seconds, float | int) or not math.isfinite(seconds):
        return "—"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + "Z"
    except (OverflowError, OSError, ValueError):
        return "—"


def _value(value: object, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return _e(value)
    assert isinstance(value, float | int)
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return _e(text + (f" {unit}" if unit and not unit.startswith("/") else unit))


def _labels(labels: Mapping[str, str]) -> str:
    return "".join(f'<span class="label">{_e(k)}="{_e(v)}"</span>' for k, v in sorted(labels.items()))


def _table(head: Sequence[str], rows: list[str], empty: str) -> list[str]:
    if not rows:
        return [f'<p class="empty">{_e(empty)}</p>']
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return [f"<table><thead><tr>{header}</tr></thead><tbody>", *rows, "</tbody></table>"]


def _chart(series: Mapping[str, Any], now: float) -> str:
    points = series["points"]
    title, unit = series["title"], series["unit"]
    if not points:
        body = '<p class="empty">no data yet</p>'
    else:
        slots: list[float | None] = [None] * SLOTS
        start = now - WINDOW_S
        for at, value in points:
            index = int((at - start) / (WINDOW_S / SLOTS))
            if 0 <= index < SLOTS:
                slots[index] = value  # the slot's last point
            elif index == SLOTS:
                slots[-1] = value
        top = max((v for v in slots if v is not None), default=0.0)
        bars = []
        for index, value in enumerate(slots):
            if value is None:
                bars.append('<div class="gap"></div>')
                continue
            height = 100.0 * value / top if top > 0 else 0.0
            at = _when(start + (index + 1) * WINDOW_S / SLOTS)
            bars.append(
                f'<div class="bar" style="height:{max(height, 1.0):.1f}%" title="{_e(at)}: {_value(value, unit)}">'
                "</div>"
            )
        latest = points[-1][1]
        body = (
            f'<div class="bars" role="img" aria-label="{_e(title)}, last hour">{"".join(bars)}</div>'
            f'<div class="meta">now {_value(latest, unit)} · max {_value(top, unit)}</div>'
        )
    return f'<div class="chart"><h3>{_e(title)}</h3>{body}</div>'


def page(path: str, data: Mapping[str, Any]) -> tuple[bytes, str]:
    """The body and content type of ``/status`` or ``/status.json`` (``path``) for ``data``."""
    return (status_json(data), JSON_TYPE) if path.endswith(".json") else (render_status(data), HTML_TYPE)


def render_status(data: Mapping[str, Any]) -> bytes:
    """``/status``: :func:`status_data`'s result as a self-contained HTML page (UTF-8; no script, no asset)."""
    now = data["generated_at"]
    alerts = data["alerts"]
    firing = sum(1 for a in alerts if a["state"] == "firing")
    scope = (
        f"pre-fork group: alerting shown is that of process {data['pid']}, which serves this endpoint"
        if data["multiprocess"]
        else f"process {data['pid']}"
    )
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>chat_turbo_metrics status: {firing} firing</title><style>{_STYLE}</style></head><body>",
        "<h1>chat_turbo_metrics status</h1>",
        f'<p class="meta">{_e(_when(now))} · {_e(scope)} · {data["alert_managers"]} alert manager(s) · '
        '<a href="metrics">metrics</a> · <a href="status.json">status.json</a></p>',  # relative: it may be mounted
        f'<h2 id="alerts">Active alerts ({len(alerts)}: {firing} firing)</h2>',
    ]
    rows = []
    for alert in alerts:
        flags = " ".join(
            f for f, on in (("silenced", alert["silenced"]), ("acknowledged", alert["acknowledged"])) if on
        )
        summary = alert["annotations"].get("summary", "")
        rows.append(
            f'<tr class="alert"><td class="state {_e(alert["state"])}">{_e(alert["state"])}</td>'
            f"<td>{_e(alert['name'])}<br><small>{_e(summary)}</small></td>"
            f"<td>{_e(_when(alert['since']))}</td><td>{_e(_when(alert['firing_since']))}</td>"
            f'<td class="num">{_value(alert["value"])}</td><td>{_labels(alert["labels"])}</td><td>{_e(flags)}</td></tr>'
        )
    empty = "no alert is pending or firing" if data["alert_managers"] else "no alert manager is attached"
    out += _table(("state", "alert", "since", "firing since", "value", "labels", ""), rows, empty)
    out.append(f'<h2 id="silences">Silences ({len(data["silences"])})</h2>')
    rows = [
        f"<tr><td>{_e(s['id'])}</td><td>{_labels(s['matchers'])}</td><td>{_e(_when(s['starts_at']))}</td>"
        f"<td>{_e(_when(s['ends_at']))}</td><td>{_e(s['comment'])}</td></tr>"
        for s in data["silences"]
    ]
    out += _table(("id", "matchers", "starts", "ends", "comment"), rows, "no silence")
    notifications = data["notifications"]
    out.append('<h2 id="notifications">Notifications</h2>')
    rows = [
        f"<tr><td>{_e(name)}</td>"
        + "".join(f'<td class="num">{int(counts.get(o, 0))}</td>' for o in ("sent", "failed", "dropped", "retries"))
        + "</tr>"
        for name, counts in sorted(notifications["outcomes"].items())
    ]
    out += _table(("notifier", "sent", "failed", "dropped", "retries"), rows, "no notifier has been used")
    rows = [
        f"<tr><td>{_e(_when(n['at']))}</td><td>{_e(n['receiver'])}</td><td>{_e(n['title'])}</td>"
        f'<td class="{"ok" if n["outcome"] == "delivered" else "failed"}">{_e(n["outcome"])}</td></tr>'
        for n in notifications["recent"]
    ]
    out += _table(("when", "receiver", "notification", "outcome"), rows, "no notification sent yet")
    out.append('<h2 id="series">Last hour</h2><div class="charts">')
    out += [_chart(series, now) for series in data["series"]]
    out.append(
        f'</div><p class="meta">A point at most every {SAMPLE_SPACING_S:g} s, taken when /metrics is scraped or '
        "this page is viewed.</p>"
    )
    out.append('<h2 id="health">Health</h2>')
    rows = [
        f"<tr><td>{_e(row['metric'])}</td><td>{_labels(row['labels'])}</td>"
        f'<td class="num">{_value(row["value"])}</td></tr>'
        for row in data["health"]
    ]
    out += _table(("metric", "labels", "value"), rows, "no self-telemetry (METRICS_SELF_TELEMETRY=false?)")
    out.append("</body></html>\n")
    # "replace": a label value with a lone surrogate must not make the page fail.
    return "\n".join(out).encode("utf-8", "replace")
