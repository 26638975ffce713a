"""Span rules: finished spans matching a selector become values that rules evaluate.

:class:`AlertingSpanProcessor` keeps one cumulative aggregate per selector (count, errors, slow spans, duration
buckets, sum, max): constant memory per rule, a few additions under an uncontended lock in ``on_end``, no I/O,
nothing that blocks the application. The alert manager reads the aggregates at each evaluation, like a
cumulative histogram, so span rules get the same windowed statistics as metric rules.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.naming import HTTP_DURATION_BUCKETS
from chat_turbo_metrics.alerting._statistics import HistogramPoint
from chat_turbo_metrics.alerting.rules import SpanSelector

_KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}


class _Aggregate:
    """Cumulative statistics of the spans one selector matched."""

    def __init__(self, selector: SpanSelector, bounds: tuple[float, ...]) -> None:
        self.selector = selector
        self.kind = _KINDS[selector.kind] if selector.kind else None
        self.attributes = tuple(selector.attributes.items())
        self.slow = selector.slow_threshold_s
        self.bounds = bounds
        self.lock = threading.Lock()
        self.counts = [0] * (len(bounds) + 1)
        self.count = self.errors = self.slow_count = 0
        self.total = 0.0
        self.max: float | None = None

    def matches(self, span: ReadableSpan) -> bool:
        name = self.selector.name
        if (name is not None and span.name != name) or (self.kind is not None and span.kind != self.kind):
            return False
        attributes = span.attributes or {}
        return all(_text(attributes.get(key)) == value for key, value in self.attributes)

    def add(self, seconds: float, error: bool) -> None:
        index = bisect.bisect_left(self.bounds, seconds)  # buckets are upper-inclusive, like Prometheus's le
        with self.lock:
            self.count += 1
            self.counts[index] += 1
            self.total += seconds
            if self.max is None or seconds > self.max:
                self.max = seconds
            if error:
                self.errors += 1
            if self.slow is not None and seconds > self.slow:
                self.slow_count += 1

    def point(self) -> HistogramPoint:
        with self.lock:
            return HistogramPoint(
                count=float(self.count),
                sum=self.total,
                bounds=self.bounds,
                counts=tuple(float(c) for c in self.counts),
                max=self.max,
                errors=float(self.errors),
                slow=float(self.slow_count),
            )


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class AlertingSpanProcessor(SpanProcessor):
    """A SpanProcessor that turns finished spans into values for span rules.

    The alert manager subscribes one to its monitor when the first span rule is added (it sees the spans of every
    pipeline the monitor records into); pass your own (``AlertManager(span_processor=...)``) to use another provider.

    Example:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> provider = TracerProvider()
        >>> processor = AlertingSpanProcessor()
        >>> provider.add_span_processor(processor)
        >>> processor.track(SpanSelector(name="checkout"))
        >>> with provider.get_tracer("shop").start_as_current_span("checkout"):
        ...     pass
        >>> processor.points()[SpanSelector(name="checkout").key].count
        1.0
    """

    def __init__(self, bounds: tuple[float, ...] = HTTP_DURATION_BUCKETS) -> None:
        self._bounds = tuple(sorted(bounds))
        self._lock = threading.Lock()
        # Replaced, never mutated: on_end reads it without a lock.
        self._aggregates: tuple[_Aggregate, ...] = ()
        forks.register(self, forks.Phase.LOCKS)

    def after_fork_in_child(self) -> None:
        # A lock another thread held at fork() stays held in the child: on_end would block the application.
        self._lock = threading.Lock()
        for aggregate in self._aggregates:
            aggregate.lock = threading.Lock()

    def track(self, selector: SpanSelector) -> None:
        """Start aggregating the spans ``selector`` matches (idempotent)."""
        with self._lock:
            if any(a.selector.key == selector.key for a in self._aggregates):
                return
            self._aggregates = (*self._aggregates, _Aggregate(selector, self._bounds))

    def untrack(self, keep: set[object]) -> None:
        """Forget every selector whose key is not in ``keep``."""
        with self._lock:
            self._aggregates = tuple(a for a in self._aggregates if a.selector.key in keep)

    def points(self) -> Mapping[object, HistogramPoint]:
        """The cumulative aggregate of every tracked selector, by selector key."""
        return {a.selector.key: a.point() for a in self._aggregates}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing: values come from finished spans."""

    def on_end(self, span: ReadableSpan) -> None:
        """Add the span to each aggregate whose selector it matches."""
        aggregates = self._aggregates
        if not aggregates or span.end_time is None or span.start_time is None:
            return
        seconds = (span.end_time - span.start_time) / 1e9
        error = span.status.status_code is StatusCode.ERROR
        for aggregate in aggregates:
            if aggregate.matches(span):
                aggregate.add(seconds, error)

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered."""
        return True
