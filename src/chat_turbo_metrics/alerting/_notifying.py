"""The AlertManager's notification methods: each evaluation hands its alerts to a :class:`Dispatcher`.

A mixin, so the manager's module stays about rules and alert state; it needs the manager's clock, lock, monitor
and its ``add_evaluation_hook`` / ``add_listener``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from chat_turbo_metrics.alerting._background import Monitored
from chat_turbo_metrics.alerting._delivery import Sender
from chat_turbo_metrics.alerting._dispatch import Delivered, Dispatcher, RouteSettings
from chat_turbo_metrics.alerting._matchers import Matchers
from chat_turbo_metrics.alerting._model import AlertListener, EvaluationHook
from chat_turbo_metrics.alerting._routing import Forwarder, Route
from chat_turbo_metrics.alerting.notifiers.configured import notifiers_from_config

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11


class Notifying:
    """Routes, inhibitions, forwarders and flushing for :class:`~chat_turbo_metrics.alerting.AlertManager`."""

    monitor: Monitored
    _clock: Callable[[], float]
    _lock: threading.RLock
    _dispatcher: Dispatcher | None

    if TYPE_CHECKING:  # provided by AlertManager, which this mixin is part of

        def add_evaluation_hook(self, hook: EvaluationHook) -> None: ...

        def add_listener(self, listener: AlertListener) -> None: ...

    @property
    def dispatcher(self) -> Dispatcher:
        """Routes, groups, throttles and delivers this manager's notifications, on this manager's clock."""
        with self._lock:
            if self._dispatcher is None:
                # The monitor's provider follows configure(): delivery counts land in the live pipeline.
                self._attach(Dispatcher(clock=self._clock, meter_provider=self.monitor.meter_provider))
            assert self._dispatcher is not None
            return self._dispatcher

    def _start_notifications(self, dispatcher: Dispatcher | None) -> None:
        """At construction: use ``dispatcher``; route to what ``ALERT_SLACK_WEBHOOK_URL``/``ALERT_EMAIL_*`` ask for.

        Raises:
            ConfigurationError: email is enabled without its server, sender or recipients.
        """
        self._dispatcher = None
        if dispatcher is not None:
            self._attach(dispatcher)
        for notifier in notifiers_from_config(self.monitor.config):
            self.dispatcher.add_route(notifier)

    def _attach(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self.add_evaluation_hook(dispatcher.on_evaluated)
        self.add_listener(dispatcher.on_transition)

    def add_route(self, notifier: Sender, **settings: Unpack[RouteSettings]) -> Route:
        """Send alerts to ``notifier``, grouped, throttled and deduplicated (Alertmanager's routing model).

        Every evaluation then sends what is due at its time (``evaluate(now=t)``: at ``t``). The settings
        (``matchers``, ``group_by``, ``group_wait_s``, ``group_interval_s``, ``repeat_interval_s``, ``send_resolved``,
        ``name``) and their defaults are :meth:`Dispatcher.add_route`'s.

        Returns:
            The route.

        Raises:
            ValueError: a bad setting, named in the message.
        """
        return self.dispatcher.add_route(notifier, **settings)

    def load_routes(self, path: str | Path, receivers: Mapping[str, Sender]) -> list[Route]:
        """Add the ``[[routes]]`` and ``[[inhibit_rules]]`` of a rule file (``rules export --format alertmanager``
        writes the same routes for Alertmanager).

        Args:
            path: a TOML or YAML rule file.
            receivers: a notifier (or callable) for each receiver the routes name; routes are named after them.

        Returns:
            The routes added, in file order.

        Raises:
            ConfigurationError: a bad table (naming the file, table and key), a receiver without a notifier, or a
                route of that name already added; then nothing is added.
        """
        from chat_turbo_metrics.alerting._route_files import load_route_file

        return load_route_file(path).apply(self.dispatcher, receivers)

    def add_inhibition(self, source_matchers: Matchers, target_matchers: Matchers, equal: Iterable[str] = ()) -> None:
        """Mute target alerts while a source alert with equal labels fires: see :meth:`Dispatcher.add_inhibition`.

        Raises:
            ValueError: a malformed matcher.
        """
        self.dispatcher.add_inhibition(source_matchers, target_matchers, tuple(equal))

    def add_forwarder(self, forwarder: Forwarder, *, matchers: Matchers = None) -> None:
        """Forward alerts to Alertmanager instances: see :meth:`Dispatcher.add_forwarder`.

        Raises:
            ValueError: a malformed matcher.
        """
        self.dispatcher.add_forwarder(forwarder, matchers=matchers)

    def recent_notifications(self) -> tuple[Delivered, ...]:
        """The last notifications this manager's routes sent (at most 100), oldest first, with their outcome."""
        dispatcher = self._dispatcher  # read only: no dispatcher is made for the asking
        return dispatcher.recent() if dispatcher is not None else ()

    def notification_counts(self) -> dict[str, dict[str, int]]:
        """Delivery outcomes so far: notifier -> ``sent``/``failed``/``dropped``/``retries`` -> count."""
        dispatcher = self._dispatcher
        return dispatcher.stats.snapshot() if dispatcher is not None else {}

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued notifications are delivered, at most ``timeout_s``.

        Returns:
            True when every queue emptied in time.
        """
        return self._dispatcher.flush(timeout_s) if self._dispatcher is not None else True
