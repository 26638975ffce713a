"""``chat-turbo-metrics report``: rates and percentiles of stored history, as tables and charts (terminal, PNG).

Reads the database exporter's history (SQLite or PostgreSQL) or the file exporter's JSON Lines
(:mod:`chat_turbo_metrics._cli.report_store`). Percentiles are estimated from the merged histogram buckets as
Prometheus ``histogram_quantile`` does, kept within the stored minimum and maximum (as ``MetricHistory`` does).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chat_turbo_metrics._cli.report_store import Point, StoreError, open_store, resolve
from chat_turbo_metrics._core.naming import prometheus_name
from chat_turbo_metrics.exporters._database_query import quantile

# Reported when no --metric is given and they are stored (the seed's key series); else every stored metric.
KEY_METRICS = (
    "http_request_duration_seconds",
    "api_requests_total",
    "errors_total",
    "messages_sent_total",
    "database_query_duration_seconds",
    "memory_usage_mb",
)
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds of ``90``, ``90s``, ``15m``, ``2h`` or ``7d``.

    Example:
        >>> parse_duration("15m")
        900.0
    """
    match = _DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise StoreError(f"--since={text!r}: a positive duration such as 90s, 15m, 2h or 7d")
    return float(match.group(1)) * _SECONDS[match.group(2)]


@dataclass
class Chart:
    """Lines over time (x: seconds from the window's start) shared by the terminal and the PNG renderings."""

    title: str
    ylabel: str
    lines: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)


@dataclass
class MetricReport:
    """One metric over the window: a table (columns, rows) and a chart."""

    name: str
    kind: str
    columns: list[str]
    rows: list[list[str]]
    chart: Chart


def _label(attributes: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in attributes) or "(no attributes)"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _clamped(value: float | None, low: float | None, high: float | None) -> float | None:
    if value is None:
        return None
    if high is not None:
        value = min(value, high)
    return value if low is None else max(value, low)


@dataclass
class _Merged:
    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    bounds: tuple[float, ...] = ()
    counts: list[int] = field(default_factory=list)

    def add(self, point: Point) -> None:
        if not self.counts or self.bounds != point.bounds:
            if self.counts:  # other bounds (a View changed): start the merge over with the newer layout
                self.count, self.sum, self.min, self.max = 0, 0.0, None, None
            self.bounds, self.counts = point.bounds, [0] * len(point.bucket_counts)
        self.counts = [a + b for a, b in zip(self.counts, point.bucket_counts, strict=False)]
        self.count += point.count
        self.sum += point.sum
        if point.min is not None:
            self.min = point.min if self.min is None else min(self.min, point.min)
        if point.max is not None:
            self.max = point.max if self.max is None else max(self.max, point.max)

    def quantile(self, q: float) -> float | None:
        return _clamped(quantile(q, self.bounds, self.counts), self.min, self.max)


def _histogram(name: str, points: list[Point], start: float, window_s: float, step: float) -> MetricReport:
    by_series: dict[tuple[tuple[str, Any], ...], _Merged] = defaultdict(_Merged)
    by_step: dict[int, _Merged] = defaultdict(_Merged)
    for point in points:
        by_series[point.attributes].add(point)
        by_step[int((point.time - start) // step)].add(point)
    rows = [
        [
            _label(key),
            str(m.count),
            _number(m.count / window_s),
            _number(m.sum / m.count if m.count else None),
            *(_number(m.quantile(q)) for _, q in QUANTILES),
            _number(m.max),
        ]
        for key, m in sorted(by_series.items(), key=lambda item: -item[1].count)
    ]
    chart = Chart(f"{name}: percentiles per {step:g} s (all series)", points[0].unit or "value")
    steps = sorted(by_step)
    for label, q in QUANTILES:
        values = [(s * step, by_step[s].quantile(q)) for s in steps]
        kept = [(x, y) for x, y in values if y is not None]
        chart.lines[label] = ([x for x, _ in kept], [y for _, y in kept])
    columns = ["series", "count", "rate/s", "mean", *(label for label, _ in QUANTILES), "max"]
    return MetricReport(name, "histogram", columns, rows, chart)


def _counter(name: str, points: list[Point], start: float, window_s: float, step: float) -> MetricReport:
    totals: dict[tuple[tuple[str, Any], ...], float] = defaultdict(float)
    per_step: dict[tuple[tuple[str, Any], ...], dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for point in points:
        totals[point.attributes] += point.value
        per_step[point.attributes][int((point.time - start) // step)] += point.value
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    rows = [[_label(key), _number(total), _number(total / window_s)] for key, total in ranked]
    chart = Chart(f"{name}: rate per second, per {step:g} s", "per second")
    for key, _ in ranked[:5]:
        steps = sorted(per_step[key])
        chart.lines[_label(key)] = ([s * step for s in steps], [per_step[key][s] / step for s in steps])
    return MetricReport(name, "counter", ["series", "total", "rate/s"], rows, chart)


def _gauge(name: str, points: list[Point], start: float) -> MetricReport:
    series: dict[tuple[tuple[str, Any], ...], list[Point]] = defaultdict(list)
    for point in points:
        series[point.attributes].append(point)
    rows = [
        [_label(key), _number(p[-1].value), _number(min(x.value for x in p)), _number(max(x.value for x in p))]
        for key, p in sorted(series.items())
    ]
    chart = Chart(f"{name}: values", points[0].unit or "value")
    for key, p in sorted(series.items())[:5]:
        chart.lines[_label(key)] = ([x.time - start for x in p], [x.value for x in p])
    return MetricReport(name, points[0].kind, ["series", "last", "min", "max"], rows, chart)


def build_reports(
    points: list[Point], store: str, metrics: Sequence[str], since_s: float, step_s: float | None
) -> tuple[float, float, list[MetricReport]]:
    """(window start, window end, one report per metric); the window ends at the newest stored point."""
    if not points:
        raise StoreError(f"{store} holds no metric points yet (nothing exported to it)")
    names = [resolve(points, name, store) for name in metrics]
    if not names:
        stored = {p.name for p in points}
        names = [resolve(points, key, store) for key in KEY_METRICS if _known(points, key)] or sorted(stored)
    end = max(p.time for p in points) + 1e-3
    start = end - since_s
    step = step_s or max(1.0, round(since_s / 40))
    reports = []
    for name in dict.fromkeys(names):
        chosen = [p for p in points if p.name == name and start <= p.time < end]
        if not chosen:
            raise StoreError(f"{name!r} has no points in the last {since_s:g} s of {store}; widen --since")
        first = chosen[0]
        shown = prometheus_name(name, first.unit, first.kind)  # type: ignore[arg-type]  # as Prometheus and the README name it
        if first.kind == "histogram":
            reports.append(_histogram(shown, chosen, start, since_s, step))
        elif first.kind == "counter":
            reports.append(_counter(shown, chosen, start, since_s, step))
        else:
            reports.append(_gauge(shown, chosen, start))
    return start, end, reports


def _known(points: list[Point], name: str) -> bool:
    try:
        resolve(points, name, "")
    except StoreError:
        return False
    return True


def terminal_chart(chart: Chart, width: int) -> str:
    """The chart drawn with plotext, as text."""
    import plotext as plt

    plt.clear_figure()
    plt.theme("clear")  # no colours: the same text in a terminal, a pipe or a file
    plt.plotsize(width, 16)
    for label, (xs, ys) in chart.lines.items():
        if xs:
            plt.plot(xs, ys, label=label, marker="braille")
    plt.title(chart.title)
    plt.xlabel("seconds into the window")
    plt.ylabel(chart.ylabel)
    return str(plt.build())


def write_png(chart: Chart, path: Path) -> None:
    """The same chart as a PNG file (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4), dpi=100)
    axes = figure.subplots()
    for label, (xs, ys) in chart.lines.items():
        axes.plot(xs, ys, marker="o", markersize=3, label=label)
    axes.set_title(chart.title)
    axes.set_xlabel("seconds into the window")
    axes.set_ylabel(chart.ylabel)
    axes.grid(alpha=0.3)
    if chart.lines:
        axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")


def run_report(
    store: str, metrics: Sequence[str], since: str, *, step_s: float | None, png: str | None, charts: bool
) -> int:
    """Print the report of ``store``; returns the exit status (2 with one line on stderr when it cannot)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    try:
        shown, points = open_store(store)
        start, end, reports = build_reports(points, shown, metrics, parse_duration(since), step_s)
    except StoreError as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    console = Console() if sys.stdout.isatty() else Console(width=120, no_color=True)
    console.print(f"{shown}: {end - start:g} s up to the newest point; {len(reports)} metric(s)", highlight=False)
    directory = Path(png) if png else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    for report in reports:
        table = Table(title=f"{report.name} ({report.kind})", title_justify="left")
        for index, column in enumerate(report.columns):
            table.add_column(column, justify="left" if index == 0 else "right")
        for row in report.rows:
            table.add_row(*row)
        console.print(table)
        if charts:
            console.print(Text.from_ansi(terminal_chart(report.chart, min(console.width, 120))))
        if directory is not None:
            target = directory / f"{report.name}.png"
            write_png(report.chart, target)
            console.print(f"chart: {target}", highlight=False)
    return 0
