"""What the demo shows: live progress (rich), alert events as they happen, and the report at the end."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from chat_turbo_metrics._cli.demo.alerts import Delivery
from chat_turbo_metrics._cli.demo.service import FAILING_ROUTE, SLOW_ROUTE
from chat_turbo_metrics._cli.demo.traffic import ClientStats
from chat_turbo_metrics.alerting import Alert, AlertTransition
from chat_turbo_metrics.exporters._database_query import quantile

_STYLE = {"pending": "yellow", "firing": "bold red", "resolved": "green", "inactive": "dim"}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def _where(alert: Alert) -> str:
    return f"{alert.labels.get('method', '')} {alert.labels.get('endpoint', '')}".strip() or alert.name


@dataclass
class AlertLog:
    """Every alert transition and webhook delivery, each printed as one line when it happens."""

    console: Console
    started: float  # time.time() at the start, for "+12.3s" stamps
    transitions: list[AlertTransition] = field(default_factory=list)
    deliveries: list[tuple[str, Delivery]] = field(default_factory=list)

    def stamp(self, at: float) -> str:
        return f"+{max(0.0, at - self.started):5.1f}s"

    def on_transition(self, transition: AlertTransition) -> None:
        self.transitions.append(transition)
        alert, state = transition.alert, transition.current
        shown = alert.value is not None and state in ("pending", "firing")
        value = f" (p95 {alert.value:.2f} s, threshold 2 s)" if shown else ""
        self.console.print(
            f"{self.stamp(transition.at)} alert [{_STYLE.get(state, '')}]{state}[/]: {alert.name} on {_where(alert)}"
            f"{value}",
            highlight=False,
        )

    def receiver(self, name: str) -> Callable[[Delivery], None]:
        def received(delivery: Delivery) -> None:
            self.deliveries.append((name, delivery))
            where = ", ".join(
                f"{a.get('labels', {}).get('method', '')} {a.get('labels', {}).get('endpoint', '')}".strip()
                for a in delivery.alerts
            )
            self.console.print(
                f"{self.stamp(delivery.at)} webhook {name} received [{_STYLE.get(delivery.status, '')}]"
                f"{delivery.status}[/]: {len(delivery.alerts)} alert(s) on {where}",
                highlight=False,
            )

        return received


@dataclass
class LiveView:
    """The live panel: requests, error rate, p95 of the last seconds, active alerts, and progress."""

    stats: ClientStats
    active_alerts: Callable[[], tuple[Alert, ...]]
    origin: float  # time.monotonic() at the start
    duration_s: float
    slow_phase: Callable[[], bool]

    def __rich__(self) -> RenderableType:
        elapsed = time.monotonic() - self.origin
        stats, alerts = self.stats, self.active_alerts()
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("requests", "req/s", "errors", f"p95 ({stats.window_s:g} s)", "alerts", "phase"):
            table.add_column(column, justify="right" if column != "phase" else "left", no_wrap=True)
        explained = "deliberate" if stats.errors == stats.deliberate else f"{stats.errors - stats.deliberate} other"
        firing = sum(alert.state == "firing" for alert in alerts)
        states = f"{firing} firing" if firing else (f"{len(alerts)} pending" if alerts else "none")
        table.add_row(
            f"{stats.requests:,}",
            f"{stats.recent_rate():.0f}",
            f"{stats.recent_error_ratio():.1%} ({explained})",
            _ms(stats.recent_p95()),
            Text(states, style="bold red" if firing else ""),
            Text(f"slow {SLOW_ROUTE}", style="yellow") if self.slow_phase() else Text("normal"),
        )
        lines: list[RenderableType] = [table]
        lines += [
            Text.from_markup(f"  [{_STYLE.get(a.state, '')}]{a.state}[/] {a.name} on {_where(a)}: p95 {a.value:.2f} s")
            for a in alerts
            if a.value is not None
        ]
        if self.duration_s <= 0:
            lines.append(Text(f"{elapsed:.0f} s; Ctrl-C stops the demo and prints the report", style="dim"))
        else:
            bar = ProgressBar(total=self.duration_s, completed=min(elapsed, self.duration_s), width=60)
            lines += [bar, Text(f"{elapsed:.0f} / {self.duration_s:g} s", style="dim")]
        return Group(*lines)


@dataclass(frozen=True)
class RouteStats:
    """What the service recorded for one route (``http_request_duration_seconds``, merged over statuses)."""

    route: str
    requests: int
    errors: int
    p50: float | None
    p95: float | None
    p99: float | None


def route_stats(records: list[dict[str, Any]]) -> list[RouteStats]:
    """Per (method, route template), from the snapshot's histogram records: counts and estimated percentiles."""
    merged: dict[str, tuple[list[float], list[int]]] = {}
    errors: dict[str, int] = defaultdict(int)
    for record in records:
        if record["name"] != "http_request_duration_seconds" or record["kind"] != "histogram":
            continue
        attributes = record["attributes"]
        route = f"{attributes.get('method', '')} {attributes.get('endpoint', '')}"
        bounds, counts = merged.setdefault(route, (list(record["bucket_bounds"]), [0] * len(record["bucket_counts"])))
        for index, count in enumerate(record["bucket_counts"]):
            counts[index] += count
        if int(attributes.get("status", 0)) >= 500:
            errors[route] += int(record["count"])
    rows = []
    for route, (bounds, counts) in sorted(merged.items(), key=lambda item: item[0].split(" ", 1)[::-1]):
        rows.append(
            RouteStats(
                route,
                sum(counts),
                errors[route],
                *(quantile(q, bounds, counts) for q in (0.5, 0.95, 0.99)),
            )
        )
    return rows


def print_report(
    console: Console,
    *,
    seconds: float,
    routes: list[RouteStats],
    log: AlertLog,
    history: str,
    receiver_url: str,
) -> None:
    """The end-of-run report: totals, p50/p95/p99 per route, the alerts and their deliveries, the history."""
    requests, errors = sum(r.requests for r in routes), sum(r.errors for r in routes)
    console.rule("Chat-Turbo demo report")
    console.print(
        f"ran {seconds:.1f} s: {requests} requests recorded, {errors} errors "
        f"({sum(r.errors for r in routes if r.route.endswith(FAILING_ROUTE))} from {FAILING_ROUTE}, "
        "the route that fails on purpose)",
        highlight=False,
    )
    table = Table(title="per route (estimated from the histogram buckets)")
    for column in ("route", "requests", "5xx", "p50", "p95", "p99"):
        # Numbers never wrap nor shorten; a long route folds onto a second line in a narrow terminal.
        table.add_column(column, justify="left" if column == "route" else "right", no_wrap=column != "route")
    for row in routes:
        table.add_row(row.route, str(row.requests), str(row.errors), _ms(row.p50), _ms(row.p95), _ms(row.p99))
    console.print(table)
    fired = [t for t in log.transitions if t.current == "firing"]
    resolved = [t for t in log.transitions if t.current == "resolved"]
    console.print(f"alerts fired: {len(fired)}, resolved: {len(resolved)}", highlight=False)
    for transition in log.transitions:
        console.print(
            f"  {log.stamp(transition.at)} {transition.alert.name} on {_where(transition.alert)}: "
            f"{transition.previous} -> {transition.current}",
            highlight=False,
        )
    statuses = [delivery.status for _, delivery in log.deliveries]
    console.print(f"webhook deliveries to {receiver_url}: {', '.join(statuses) or 'none'}", highlight=False)
    console.print(f"history: {history} (look back with: chat-turbo-metrics report {history})", highlight=False)
