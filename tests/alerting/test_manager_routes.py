"""AlertManager.add_route passes its settings to the dispatcher, whose defaults are the only ones."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from chat_turbo_metrics.alerting import AlertManager, Dispatcher


def test_add_route_defaults_are_the_dispatchers(monitor_factory: Any) -> None:
    manager = AlertManager(monitor_factory())
    route = manager.add_route(print)
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(Dispatcher.add_route).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    assert route.group_by == tuple(defaults["group_by"])
    assert (route.group_wait_s, route.group_interval_s, route.repeat_interval_s) == (
        defaults["group_wait_s"],
        defaults["group_interval_s"],
        defaults["repeat_interval_s"],
    )
    assert route.send_resolved is defaults["send_resolved"]
    assert manager.dispatcher.routes == (route,)


def test_add_route_passes_every_setting_on(monitor_factory: Any) -> None:
    manager = AlertManager(monitor_factory())
    route = manager.add_route(
        print,
        matchers={"severity": "critical"},
        group_by=("service",),
        group_wait_s=1,
        group_interval_s=2,
        repeat_interval_s=3,
        send_resolved=False,
        name="pager",
    )
    assert (route.name, route.group_by, route.group_wait_s, route.group_interval_s, route.repeat_interval_s) == (
        "pager",
        ("service",),
        1,
        2,
        3,
    )
    assert route.send_resolved is False
    assert len(route.matchers) == 1
    with pytest.raises(ValueError, match="group_interval_s"):
        manager.add_route(print, group_interval_s=0)
    with pytest.raises(TypeError):
        manager.add_route(print, group_wait=5)  # type: ignore[call-arg]
