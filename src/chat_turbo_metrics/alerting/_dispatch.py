"""Dispatch: which alerts go to which notifier, grouped, throttled, deduplicated, inhibited, on the caller's clock.

Alertmanager's model, driven by evaluations instead of a timer. Each evaluation hands :meth:`Dispatcher.on_evaluated`
its time and every current alert; the dispatcher files firing and resolved alerts into groups (one per route and
value of ``group_by``), and at that time flushes the groups that are due: ``group_wait`` after a group appears, then
every ``group_interval``. A flush sends a message only when the notification log says the receiver has not been told
(a new firing alert, a newly resolved one with ``send_resolved``, everything resolved) or ``repeat_interval`` has
passed. Silenced and inhibited alerts are left out; acknowledged ones cause no repeats. Messages go to each
notifier's own delivery queue (:mod:`._delivery`), so this never waits for the network.

As in Alertmanager, a resolved alert leaves its group only once a notification carrying it was delivered: when
delivery fails, the notification log forgets the decision and the next flush sends the resolution again, until
it is delivered. Groups are scheduled on a :class:`~._timeline.Timeline`, so a wall clock that steps back delays
no flush.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from opentelemetry import metrics

from chat_turbo_metrics._core import forks
from chat_turbo_metrics.alerting._delivery import Channel, DeliveryStats, Job, RetryPolicy, Sender
from chat_turbo_metrics.alerting._matchers import Matcher, Matchers, match_all, parse_matchers
from chat_turbo_metrics.alerting._model import Alert, AlertTransition
from chat_turbo_metrics.alerting._nflog import LogEntry, NotificationLog
from chat_turbo_metrics.alerting._notification import Notification
from chat_turbo_metrics.alerting._routing import (
    GROUP_BY,
    GROUP_INTERVAL_S,
    GROUP_WAIT_S,
    REPEAT_INTERVAL_S,
    Forwarder,
    Inhibition,
    Route,
    group_key,
    needs_update,
)
from chat_turbo_metrics.alerting._timeline import Timeline

if TYPE_CHECKING:
    pass  # typing.Unpack from Python 3.11

_logger = logging.getLogger("chat_turbo_metrics.alerting")


class RouteSettings(TypedDict, total=False):
    """The keyword arguments of :meth:`Dispatcher.add_route`, which holds their defaults; whoever passes a route's
    settings on (``AlertManager.add_route``) takes ``**settings: Unpack[RouteSettings]``."""

    matchers: Matchers
    group_by: Sequence[str]
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    send_resolved: bool
    name: str | None


@dataclass
class _Group:
    route: Route
    labels: dict[str, str]
    key: str
    next_flush: float  # scheduling time (see _timeline)
    flushed: bool = False
    alerts: dict[str, Alert] = field(default_factory=dict)
    in_flight: int = 0  # notifications of this group queued or being delivered


@dataclass
class _Tracked:
    alert: Alert
    last_seen: float  # the evaluation's time, for the resolution's end time
    last_seen_tick: float  # its scheduling time, for resolve_timeout_s


@dataclass(frozen=True)
class Delivered:
    """One notification a route sent, and whether it reached its notifier (:meth:`Dispatcher.recent`).

    Attributes:
        at: when its delivery ended (the dispatcher's clock).
        receiver: the route's name.
        title: the notification's title (``[FIRING:2] HighLatency (high)``).
        status: ``firing`` or ``resolved``.
        alerts: how many alerts it carried.
        delivered: True when the notifier took it; False when it failed (retries used up) or was dropped.
    """

    at: float
    receiver: str
    title: str
    status: str
    alerts: int
    delivered: bool


RECENT = 100  # notifications Dispatcher.recent() keeps


def _notifier_name(notifier: object) -> str:
    name = getattr(notifier, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(getattr(notifier, "__name__", type(notifier).__name__))


class Dispatcher:
    """Routes, groups, throttles and delivers alert notifications; time comes from the caller.

    Example:
        >>> sent = []
        >>> dispatcher = Dispatcher()
        >>> route = dispatcher.add_route(sent.append, group_wait_s=30)
        >>> alert = Alert(rule_id="cpu", name="HighCPU", labels={"alertname": "HighCPU", "severity": "warning"},
        ...               state="firing", active_at=1000.0, value=97.0, fired_at=1000.0)
        >>> dispatcher.on_evaluated(1000.0, (alert,)); dispatcher.on_evaluated(1030.0, (alert,))
        >>> dispatcher.flush(5.0), [n.title for n in sent]
        (True, ['[FIRING:1] HighCPU (warning)'])
        >>> dispatcher.shutdown(5.0)
        True

    Args:
        clock: Unix seconds; used only where no ``now`` is given (notification-log retention).
        notification_log: a file that keeps what each receiver was told, so a restart does not resend it.
        resolve_timeout_s: a firing alert that stops being reported (a rule removed, or restarting as pending
            after a reload) counts as resolved after this long; if it fires again before, nothing is resent.
        queue_size: notifications waiting per notifier before the oldest is dropped.
        retry: retry deadline and backoff for every notifier.
        external_url: ``externalURL`` of webhook payloads (a link back to this service).
        meter_provider: where the delivery counters go (default: OpenTelemetry's global provider).
        rng: the jitter source, ``[0, 1)``.
        monotonic: measures real elapsed time when the evaluations' clock steps back (default
            ``time.monotonic``).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        notification_log: str | os.PathLike[str] | None = None,
        resolve_timeout_s: float = 300.0,
        queue_size: int = 1000,
        retry: RetryPolicy | None = None,
        external_url: str = "",
        meter_provider: metrics.MeterProvider | None = None,
        rng: Callable[[], float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size={queue_size!r}: must be >= 1")
        if not resolve_timeout_s > 0:
            raise ValueError(f"resolve_timeout_s={resolve_timeout_s!r}: must be > 0")
        self._clock = clock
        self._log = NotificationLog(Path(notification_log) if notification_log is not None else None)
        self._resolve_timeout_s = resolve_timeout_s
        self._queue_size = queue_size
        self._retry = retry or RetryPolicy()
        self._external_url = external_url
        self.stats = DeliveryStats(meter_provider)
        self._rng = rng
        self._timeline = Timeline(monotonic)
        self._lock = threading.RLock()
        self._routes: list[Route] = []
        self._inhibitions: list[Inhibition] = []
        self._forwarders: list[tuple[Forwarder, tuple[Matcher, ...], list[Channel]]] = []
        self._groups: dict[tuple[str, Any], _Group] = {}  # (route name, group label items) -> group
        self._tracked: dict[str, _Tracked] = {}
        self._ended: deque[Alert] = deque(maxlen=10_000)  # resolved between evaluations (see on_transition)
        self._recent: deque[Delivered] = deque(maxlen=RECENT)
        self._sources: list[list[tuple[str, Alert]]] = []  # per inhibition: firing (fp, alert) matching its source
        self._closed = False
        self._warned_error = False
        forks.register(self, forks.Phase.PIPELINE)
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # --- configuration -------------------------------------------------------------------------

    def add_route(
        self,
        notifier: Sender,
        *,
        matchers: Matchers = None,
        group_by: Sequence[str] = GROUP_BY,
        group_wait_s: float = GROUP_WAIT_S,
        group_interval_s: float = GROUP_INTERVAL_S,
        repeat_interval_s: float = REPEAT_INTERVAL_S,
        send_resolved: bool = True,
        name: str | None = None,
    ) -> Route:
        """Send alerts matching ``matchers`` to ``notifier``; every matching route gets its own copy.

        Args:
            notifier: a notifier object or any callable taking a :class:`Notification` (sync or async).
            matchers: which alerts (mapping of equalities or ``label=~"regex"`` strings); None: all.
            group_by: labels whose values form one group (one message); ``("...",)``: every label.
            group_wait_s: wait this long after a group appears, to gather its first alerts into one message.
            group_interval_s: then look at the group this often for changes.
            repeat_interval_s: resend an unchanged, still firing group this often.
            send_resolved: also tell this notifier when alerts resolve.
            name: the receiver's name in payloads, metrics and the notification log (default: the notifier's,
                with ``-2``, ``-3``, ... for further routes to the same kind). Name routes when a notification log
                is kept, so a restart that adds them in another order still finds what each was told.

        Returns:
            The route.

        Raises:
            ValueError: a matcher is malformed or a duration is not positive; the message names which.
        """
        if isinstance(group_by, str):
            raise ValueError(f"group_by={group_by!r}: expected a sequence of label names, not a string")
        for setting, value in (
            ("group_wait_s", group_wait_s),
            ("group_interval_s", group_interval_s),
            ("repeat_interval_s", repeat_interval_s),
        ):
            if not value >= 0 or (setting != "group_wait_s" and value == 0):
                raise ValueError(f"{setting}={value!r}: must be > 0" + (" (or 0)" if setting == "group_wait_s" else ""))
        if not callable(notifier):
            raise ValueError(f"notifier={notifier!r}: expected a notifier or a callable taking a Notification")
        parsed = parse_matchers(matchers, "matchers")
        with self._lock:
            if name is not None and self._unique(name) != name:  # the notification log is keyed by it
                raise ValueError(f"name={name!r}: a route or forwarder already has this name")
            name = self._unique(name or _notifier_name(notifier))
            channel = self._channel(name, notifier)
            route = Route(
                name,
                notifier,
                parsed,
                tuple(group_by),
                group_wait_s,
                group_interval_s,
                repeat_interval_s,
                send_resolved,
                channel,
            )
            self._routes.append(route)
        return route

    @property
    def routes(self) -> tuple[Route, ...]:
        """The routes, in the order they were added."""
        with self._lock:
            return tuple(self._routes)

    def add_inhibition(self, source_matchers: Matchers, target_matchers: Matchers, equal: Sequence[str] = ()) -> None:
        """Mute alerts matching ``target_matchers`` while one matching ``source_matchers`` fires with equal labels.

        Raises:
            ValueError: a matcher is malformed.
        """
        inhibition = Inhibition(
            parse_matchers(source_matchers, "source_matchers"),
            parse_matchers(target_matchers, "target_matchers"),
            (equal,) if isinstance(equal, str) else tuple(equal),
        )
        with self._lock:
            self._inhibitions.append(inhibition)

    def add_forwarder(self, forwarder: Forwarder, *, matchers: Matchers = None) -> None:
        """Forward alerts to Alertmanager instances (an :class:`AlertmanagerForwarder`), each on its own queue.

        Raises:
            ValueError: a matcher is malformed.
        """
        parsed = parse_matchers(matchers, "matchers")
        with self._lock:
            channels: list[Channel] = []
            self._forwarders.append((forwarder, parsed, channels))
            for name, send in forwarder.senders():  # one at a time: each name must see the ones before it
                channels.append(self._channel(self._unique(name), send))

    def _unique(self, name: str) -> str:
        taken = {route.name for route in self._routes} | {
            channel.name for _, _, channels in self._forwarders for channel in channels
        }
        candidate, number = name, 1
        while candidate in taken:
            number += 1
            candidate = f"{name}-{number}"
        return candidate

    def _channel(self, name: str, send: Sender) -> Channel:
        rng = self._rng
        if rng is None:
            return Channel(name, send, self._retry, self._queue_size, self.stats)
        return Channel(name, send, self._retry, self._queue_size, self.stats, rng=rng)

    # --- evaluation --------------------------------------------------------------------------------

    def on_evaluated(self, now: float, alerts: tuple[Alert, ...]) -> None:
        """The evaluation hook: take in the current alerts and send what is due at ``now``.

        Args:
            now: the evaluation's time (clock seconds).
            alerts: every pending, firing and just-resolved alert of that evaluation.
        """
        try:
            with self._lock:
                if self._closed:
                    return
                self._dispatch(now, alerts)
        except Exception:  # the evaluator's thread must survive a bug here; say so once
            if not self._warned_error:
                self._warned_error = True
                _logger.exception("alert dispatch failed; notifications may be missing (logged once)")

    def on_transition(self, transition: AlertTransition) -> None:
        """The listener: keeps alerts that resolve between evaluations for the next one.

        A rule removed or disabled, or an alert resolved by hand, resolves its firing alerts outside an
        evaluation; without this their resolution would wait for ``resolve_timeout_s``.
        """
        if transition.previous == "firing" and transition.current == "resolved":
            with self._lock:
                self._ended.append(transition.alert)

    def _dispatch(self, now: float, alerts: tuple[Alert, ...]) -> None:
        tick = self._timeline.at(now)
        if self._ended:
            alerts = (*self._ended, *alerts)  # the evaluation's own reports come later and win
            self._ended.clear()
        reported = self._ingest(now, tick, alerts)
        for forwarder, parsed, channels in self._forwarders:
            chosen = [alert for _, alert in reported if match_all(parsed, alert.labels)]
            for payload in forwarder.due(now, chosen):
                for channel in channels:
                    channel.submit(Job(payload, on_done=lambda ok: None))
        due = [(key, group) for key, group in self._groups.items() if group.next_flush <= tick]
        if due:
            firing = [(fp, tracked.alert) for fp, tracked in self._tracked.items()]
            self._sources = [
                [(fp, a) for fp, a in firing if match_all(rule.source, a.labels)] for rule in self._inhibitions
            ]
            for key, group in due:
                self._flush(key, group, now, tick)

    def _ingest(self, now: float, tick: float, alerts: tuple[Alert, ...]) -> list[tuple[str, Alert]]:
        """Update tracked alerts and groups; return the firing and resolved alerts of this evaluation."""
        seen: list[tuple[str, Alert]] = []
        for alert in alerts:
            if alert.state == "pending":
                continue
            fp = alert.fingerprint  # a hash of the labels: computed once per alert and evaluation
            if alert.state == "firing":
                self._tracked[fp] = _Tracked(alert, now, tick)
            else:
                self._tracked.pop(fp, None)
            seen.append((fp, alert))
        reported = {fp for fp, _ in seen}
        for fp, tracked in list(self._tracked.items()):
            if fp not in reported and tick - tracked.last_seen_tick >= self._resolve_timeout_s:
                del self._tracked[fp]
                seen.append((fp, dataclasses.replace(tracked.alert, state="resolved", resolved_at=tracked.last_seen)))
        for fp, alert in seen:
            self._file(fp, alert, now, tick)
        return seen

    def _file(self, fp: str, alert: Alert, now: float, tick: float) -> None:
        for route in self._routes:
            if not match_all(route.matchers, alert.labels):
                continue
            labels = route.group_of(alert.labels)
            identity = (route.name, tuple(labels.items()))  # cheap; the group key text is made once per group
            group = self._groups.get(identity)
            if group is None:
                group = _Group(route, labels, group_key(route, labels), next_flush=tick + route.group_wait_s)
                self._groups[identity] = group
            group.alerts[fp] = alert
            started = alert.fired_at if alert.fired_at is not None else alert.active_at
            if not group.flushed and started + route.group_wait_s <= now:
                group.next_flush = min(group.next_flush, tick)  # an old alert (e.g. after a restart): no wait

    def _muted(self, fp: str, alert: Alert) -> bool:
        if alert.silenced:
            return True
        rules = zip(self._inhibitions, self._sources, strict=True)
        return any(rule.mutes(fp, alert, sources) for rule, sources in rules)

    def _flush(self, identity: tuple[str, Any], group: _Group, now: float, tick: float) -> None:
        route = group.route
        key = (route.name, group.key)
        current = [(fp, alert) for fp, alert in group.alerts.items() if not self._muted(fp, alert)]
        firing = {fp: a for fp, a in current if a.state == "firing"}
        resolved = {fp: a for fp, a in current if a.state == "resolved"}
        previous = self._log.get(key)
        if needs_update(previous, firing, resolved, route, now, tick=tick):
            entry = LogEntry(frozenset(firing), frozenset(resolved), now, tick)
            self._log.set(key, entry)
            chosen = list(firing.values()) + (list(resolved.values()) if route.send_resolved else [])
            if chosen:
                chosen.sort(key=lambda alert: sorted(alert.labels.items()))
                notification = Notification.for_alerts(route.name, chosen, group.labels, group.key, self._external_url)
                carried = {fp: a for fp, a in group.alerts.items() if a.state == "resolved"}
                done = self._on_done_callback(identity, group, carried, key=key, entry=entry, previous=previous)
                done = self._recorded(notification, done)
                group.in_flight += 1
                route.channel.submit(Job(notification, on_done=done))
        if not group.in_flight:  # nothing on its way that could still fail: the receiver knows what it needs
            self._forget_resolved(group, {fp: a for fp, a in group.alerts.items() if a.state == "resolved"})
        group.flushed = True
        group.next_flush = tick + route.group_interval_s
        self._drop_if_empty(identity, group)

    def _forget_resolved(self, group: _Group, resolved: dict[str, Alert]) -> None:
        """Remove resolved alerts the receiver was told about (unless they changed since, e.g. fire again)."""
        for fp, alert in resolved.items():
            if group.alerts.get(fp) is alert:
                del group.alerts[fp]

    def _drop_if_empty(self, identity: tuple[str, Any], group: _Group) -> None:
        if not group.alerts and not group.in_flight and self._groups.get(identity) is group:
            del self._groups[identity]

    def _on_done_callback(
        self,
        identity: tuple[str, Any],
        group: _Group,
        carried: dict[str, Alert],
        *,
        key: tuple[str, str],
        entry: LogEntry,
        previous: LogEntry | None,
    ) -> Callable[[bool], None]:
        def done(delivered: bool) -> None:
            with self._lock:
                group.in_flight -= 1
                if delivered:  # Alertmanager deletes resolved alerts from a group only after a successful flush
                    self._forget_resolved(group, carried)
                    self._drop_if_empty(identity, group)
            if delivered:
                self._log.save(self._clock())
            else:  # not delivered: forget the decision, so the next flush (the group is kept) tries again
                self._log.restore(key, entry, previous)

        return done

    def _recorded(self, notification: Notification, done: Callable[[bool], None]) -> Callable[[bool], None]:
        def record(delivered: bool) -> None:
            try:
                done(delivered)
            finally:
                self._recent.append(
                    Delivered(
                        self._clock(),
                        notification.receiver,
                        notification.title,
                        notification.status,
                        len(notification.alerts),
                        delivered,
                    )
                )

        return record

    def recent(self) -> tuple[Delivered, ...]:
        """The last notifications the routes sent (at most 100), oldest first, with their outcome.

        Example:
            >>> dispatcher = Dispatcher()
            >>> _ = dispatcher.add_route(lambda notification: None, name="log", group_wait_s=0)
            >>> alert = Alert(rule_id="cpu", name="HighCPU", labels={"alertname": "HighCPU"},
            ...               state="firing", active_at=0.0, value=97.0, fired_at=0.0)
            >>> dispatcher.on_evaluated(0.0, (alert,)); dispatcher.flush(5.0)
            True
            >>> [(d.receiver, d.title, d.status, d.delivered) for d in dispatcher.recent()]
            [('log', '[FIRING:1] HighCPU', 'firing', True)]
            >>> dispatcher.shutdown(5.0)
            True
        """
        return tuple(self._recent)

    # --- lifecycle ---------------------------------------------------------------------------------

    def _channels(self) -> list[Channel]:
        with self._lock:
            return [route.channel for route in self._routes] + [
                channel for _, _, channels in self._forwarders for channel in channels
            ]

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued notification is delivered (or given up on), at most ``timeout_s``.

        Returns:
            True when every queue is empty and idle in time.
        """
        deadline = time.monotonic() + timeout_s
        idle = True
        for channel in self._channels():  # wait for each, even after one timed out: all share the deadline
            idle = channel.wait_idle(deadline) and idle
        self._log.save(self._clock())
        return idle

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Deliver what is queued within ``timeout_s``, drop (and count) the rest, save the notification log.

        Returns:
            True when nothing had to be dropped.
        """
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + timeout_s
        clean = True
        for channel in self._channels():  # close every channel, even after one had to drop
            clean = channel.close(deadline) and clean
        self._log.save(self._clock())
        return clean

    def after_fork_in_child(self) -> None:
        self._lock = threading.RLock()
        self._recent.clear()  # the parent's notifications, not the child's
        self._log.after_fork()
        self.stats.after_fork()
        for channel in self._channels():
            channel.after_fork()
        for group in self._groups.values():  # what was on its way is the parent's to deliver, not the child's
            group.in_flight = 0


def _shutdown_at_exit(ref: weakref.ref[Dispatcher]) -> None:
    dispatcher = ref()
    if dispatcher is not None and not dispatcher._closed:
        dispatcher.shutdown(5.0)
