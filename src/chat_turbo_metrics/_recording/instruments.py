"""Instrument definitions: name validation, units, descriptions and bucket advice, decided once per name.

Both recording paths ask this registry on their slow path (first use of a name); the answer is cached,
so the hot path never validates a name again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from chat_turbo_metrics._core import forks
from chat_turbo_metrics._core.guard import Problems
from chat_turbo_metrics._core.naming import (
    Kind,
    counter_name,
    default_buckets,
    describe,
    infer_unit,
    is_valid_instrument_name,
    timer_name,
)


@dataclass(frozen=True)
class InstrumentSpec:
    """Everything needed to create one OpenTelemetry instrument."""

    name: str
    kind: Kind
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None


class InstrumentRegistry:
    """Maps the names users record under to instrument specs; one kind per name, at most ``limit`` names.

    Every name costs an instrument and its streams for the life of the process (on the SDK path, one in the
    SDK's meter too), so a name built from data (``f"user_{id}_logins"``) would grow without bound: past
    ``limit``, new names are dropped, with one warning naming the first, and counted.

    Example:
        >>> registry = InstrumentRegistry(Problems(), limit=1)
        >>> registry.resolve("counter", "api_requests_total").name
        'api_requests'
        >>> registry.resolve("counter", "user_42_logins") is None
        True
    """

    def __init__(self, problems: Problems, limit: int = 10_000) -> None:
        self._problems = problems
        self._limit = limit
        self._lock = threading.Lock()
        self._specs: dict[str, InstrumentSpec] = {}  # by instrument name
        forks.register(self, forks.Phase.LOCKS)

    def after_fork_in_child(self) -> None:
        forks.reinit(self._lock)  # another thread of the parent may have been resolving a name

    @staticmethod
    def instrument_name(kind: Kind, name: str, *, timer: bool = False) -> str:
        """The OTel instrument name for what a user records as ``name``."""
        if timer:
            return timer_name(name)
        return counter_name(name) if kind == "counter" else name

    def define(
        self,
        kind: Kind,
        name: str,
        *,
        unit: str | None = None,
        description: str | None = None,
        buckets: tuple[float, ...] | None = None,
        timer: bool = False,
    ) -> InstrumentSpec:
        """Declare an instrument's unit, description or buckets before it is first used.

        Raises:
            ValueError: the name is invalid, or already in use with another kind or settings.
        """
        if not is_valid_instrument_name(name):
            raise ValueError(f"metric name {name!r} is invalid: a letter, then letters, digits, _ . - / (<=255)")
        otel_name = self.instrument_name(kind, name, timer=timer)
        spec = self._make(kind, otel_name, unit=unit, description=description, buckets=buckets, timer=timer)
        with self._lock:
            existing = self._specs.get(otel_name)
            if existing is not None and existing != spec:
                raise ValueError(f"metric {otel_name!r} is already defined as {existing}")
            if existing is None and len(self._specs) >= self._limit:
                raise ValueError(f"metric {otel_name!r}: already {self._limit} metrics (metric_limit)")
            self._specs[otel_name] = spec
        return spec

    def resolve(self, kind: Kind, name: object, *, timer: bool = False) -> InstrumentSpec | None:
        """The spec for recording ``name`` as ``kind``; None (reported once) when it cannot be recorded."""
        if not is_valid_instrument_name(name):
            self._problems.report(("name", repr(name)[:100]), "metric name %r is invalid", name)
            return None
        assert isinstance(name, str)
        otel_name = self.instrument_name(kind, name, timer=timer)
        with self._lock:
            spec = self._specs.get(otel_name)
            if spec is None and len(self._specs) < self._limit:
                spec = self._specs[otel_name] = self._make(kind, otel_name, timer=timer)
        if spec is None:
            self._problems.report(
                ("metric_limit",),
                "metric %r is past metric_limit=%s distinct metrics, as is every further new one",
                otel_name,
                self._limit,
            )
            return None
        if spec.kind != kind:
            self._problems.report(
                ("kind", otel_name, kind),
                "metric %r is a %s; recording it as a %s",
                otel_name,
                spec.kind,
                kind,
            )
            return None
        return spec

    @staticmethod
    def _make(
        kind: Kind,
        otel_name: str,
        *,
        unit: str | None = None,
        description: str | None = None,
        buckets: tuple[float, ...] | None = None,
        timer: bool = False,
    ) -> InstrumentSpec:
        unit = unit if unit is not None else ("s" if timer else infer_unit(otel_name))
        if kind == "histogram" and buckets is None:
            buckets = default_buckets(otel_name, unit)
        return InstrumentSpec(
            name=otel_name,
            kind=kind,
            unit=unit,
            description=description or describe(otel_name, kind, unit),
            buckets=tuple(buckets) if buckets is not None else None,
        )
