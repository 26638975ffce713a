"""Alert spam under flapping: messages sent vs alert transitions in one simulated hour.

Run: ``python bench/bench_alert_flapping.py``. A rule with ``for: 0`` is evaluated every 15 s for one hour
against a condition that is true for ``on`` seconds, then false for ``off`` seconds (or for random spells,
seeded). Every firing and every resolution is a transition. The same alerts go through the dispatcher with
several routes on one injected clock (an hour takes milliseconds); each column counts the messages one route's
notifier received:

- ``each change``: group_wait 0, group_interval 15 s (the evaluation interval): one message per transition,
  what a notifier without throttling sends;
- ``defaults``: Alertmanager's defaults (group_wait 30 s, group_interval 5 min, repeat_interval 4 h,
  send_resolved);
- ``no resolved``: the defaults without resolved messages;
- ``interval 15m``: the defaults with group_interval 15 min (the README's "increase throttle windows").

Then the cost of dispatch on the evaluating thread: one ``on_evaluated`` with 1,000 firing alerts, three routes
(one grouping per alert) and an inhibition rule, as a share of the default 60 s evaluation interval.
"""

from __future__ import annotations

import dataclasses
import random
import timeit
from collections.abc import Iterator

from chat_turbo_metrics.alerting import Alert, Dispatcher, Notification

T0 = 1_800_000_000.0
HOUR_S = 3600
EVALUATION_S = 15
ROUTES = {
    "each change": {"group_wait_s": 0, "group_interval_s": EVALUATION_S},
    "defaults": {},
    "no resolved": {"send_resolved": False},
    "interval 15m": {"group_interval_s": 900},
}


def spells_fixed(on_s: float, off_s: float) -> Iterator[tuple[bool, float]]:
    while True:
        yield True, on_s
        yield False, off_s


def spells_random(mean_s: float, seed: int) -> Iterator[tuple[bool, float]]:
    rng = random.Random(seed)
    state = True
    while True:
        yield state, rng.expovariate(1 / mean_s)
        state = not state


def simulate(spells: Iterator[tuple[bool, float]]) -> tuple[int, dict[str, int]]:
    """Run one hour; return (transitions, messages per route)."""
    clock = [T0]
    dispatcher = Dispatcher(clock=lambda: clock[0])
    received: dict[str, list[Notification]] = {name: [] for name in ROUTES}
    for name, options in ROUTES.items():
        dispatcher.add_route(received[name].append, name=name, **options)  # type: ignore[arg-type]
    changes, boundary, state = [], 0.0, False
    for state, length in spells:  # the condition's value at each evaluation
        changes.append((boundary, state))
        boundary += length
        if boundary > HOUR_S:
            break
    firing: Alert | None = None
    transitions = 0
    labels = {"alertname": "Flapping", "severity": "warning"}
    for offset in range(0, HOUR_S, EVALUATION_S):
        true = [value for start, value in changes if start <= offset][-1]
        now = T0 + offset
        clock[0] = now
        alerts: tuple[Alert, ...] = ()
        if true:
            if firing is None:
                firing = Alert("flapping", "Flapping", labels, "firing", now, 1.0, fired_at=now)
                transitions += 1
            alerts = (firing,)
        elif firing is not None:
            alerts = (dataclasses.replace(firing, state="resolved", resolved_at=now),)
            firing = None
            transitions += 1
        dispatcher.on_evaluated(now, alerts)
        dispatcher.flush(5.0)
    dispatcher.shutdown(5.0)
    return transitions, {name: len(messages) for name, messages in received.items()}


def dispatch_cost_s(alert_count: int = 1000) -> float:
    """Seconds per evaluation for ``alert_count`` firing alerts (timeit minimum; groups flush every few)."""
    dispatcher = Dispatcher()
    for index, group_by in enumerate((("alertname",), ("alertname", "instance"), ("alertname", "service"))):
        dispatcher.add_route(lambda notification: None, group_by=group_by, name=f"route-{index}")
    dispatcher.add_inhibition({"severity": "critical"}, {"severity": "warning"}, equal=("service",))
    labels = [
        {"alertname": "HighCPU", "severity": "warning", "instance": f"web-{i}", "service": f"svc-{i % 10}"}
        for i in range(alert_count)
    ]
    alerts = tuple(Alert("cpu", "HighCPU", one, "firing", T0, 97.0, fired_at=T0) for one in labels)
    clock = [T0]

    def evaluate() -> None:
        clock[0] += EVALUATION_S
        dispatcher.on_evaluated(clock[0], alerts)

    cost = min(timeit.repeat(evaluate, number=20, repeat=5)) / 20
    dispatcher.shutdown(5.0)
    return cost


def main() -> None:
    scenarios = [(f"{s} s on / {s} s off", spells_fixed(s, s)) for s in (30, 60, 120, 300, 600)]
    scenarios += [(f"random spells, mean 90 s (seed {seed})", spells_random(90, seed)) for seed in (1, 2)]
    print(f"one simulated hour, evaluated every {EVALUATION_S} s; messages per route")
    print(f"| condition | transitions | {' | '.join(ROUTES)} |")
    print("|---|---:|" + "---:|" * len(ROUTES))
    for title, spells in scenarios:
        transitions, messages = simulate(spells)
        print(f"| {title} | {transitions} | " + " | ".join(str(messages[name]) for name in ROUTES) + " |")
    cost = dispatch_cost_s()
    print(f"\ndispatch: {cost * 1000:.1f} ms per evaluation of 1,000 firing alerts on 3 routes "
          f"({cost / 60 * 100:.2f} % of a 60 s evaluation interval)")  # fmt: skip


if __name__ == "__main__":
    main()
