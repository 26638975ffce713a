"""Routes as data: ``[[routes]]`` in the rule file route in process, and exported for a real Alertmanager the same.

The exported ``alertmanager.yml`` is checked by the real ``amtool`` (``check-config``, and ``config routes test``
for which receivers an alert reaches), against the routes the in-process dispatcher was given from the same file.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor
from chat_turbo_metrics.__main__ import main
from chat_turbo_metrics.alerting import AlertManager, Dispatcher, Notification
from chat_turbo_metrics.alerting._route_files import alertmanager_config, load_route_file
from conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "alert_rules.toml"

ROUTES = r"""
[[routes]]
receiver = "oncall"
matchers = ['severity=~"critical|page"', 'team!="q\"x\\y"']
group_by = ["alertname", "instance"]
group_wait = "1s"
group_interval = "2s"
repeat_interval = "1h"

[[routes]]
receiver = "team"
matchers = { severity = "warning" }
send_resolved = false

[[routes]]
receiver = "audit"
group_by = ["..."]
group_wait = 0

[[inhibit_rules]]
source_matchers = ['severity="critical"']
target_matchers = ['severity="warning"']
equal = ["instance"]
"""
# Label sets and the receivers the in-process dispatcher sends them to (each checked against amtool too).
ALERTS = [
    ({"alertname": "A", "severity": "critical"}, ["oncall", "audit"]),
    ({"alertname": "A", "severity": "page", "team": "db"}, ["oncall", "audit"]),
    ({"alertname": "A", "severity": "critical", "team": 'q"x\\y'}, ["audit"]),
    ({"alertname": "A", "severity": "critical-ish"}, ["audit"]),  # regexes are anchored in both
    ({"alertname": "A", "severity": "warning"}, ["team", "audit"]),
    ({"alertname": "A"}, ["audit"]),
]


def _notify(notification: Notification) -> None:
    """A notifier that sends nothing (these tests look at routing, not delivery)."""


def _dispatcher(path: Path) -> Dispatcher:
    dispatcher = Dispatcher()
    load_route_file(path).apply(dispatcher, {"oncall": _notify, "team": _notify, "audit": _notify})
    return dispatcher


def _amtool_receivers(amtool: str, config: Path, labels: dict[str, str]) -> list[str]:
    escaped = {key: value.replace("\\", "\\\\").replace('"', '\\"') for key, value in labels.items()}
    arguments = [f'{key}="{value}"' for key, value in escaped.items()]
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={config}", *arguments],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(",")


@pytest.fixture
def routes_file(tmp_path: Path) -> Path:
    path = tmp_path / "alert_rules.toml"
    path.write_text(ROUTES)
    return path


def test_alertmanager_routes_every_alert_to_the_receivers_the_dispatcher_does(routes_file: Path) -> None:
    amtool = require_tool("amtool")
    config = routes_file.parent / "alertmanager.yml"
    config.write_text(alertmanager_config(load_route_file(routes_file), {"oncall": "http://127.0.0.1:9/hook"}))
    check = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    dispatcher = _dispatcher(routes_file)

    for labels, expected in ALERTS:
        in_process = [route.name for route in dispatcher.routes if all(m.matches(labels) for m in route.matchers)]
        assert in_process == expected, labels
        # Alertmanager sends what no route matched to the root receiver, which has no integration.
        assert _amtool_receivers(amtool, config, labels) == (expected or ["unrouted"]), labels
    dispatcher.shutdown(5.0)


def test_the_in_process_routes_take_the_files_settings(routes_file: Path) -> None:
    dispatcher = _dispatcher(routes_file)
    oncall, team, audit = dispatcher.routes

    assert (oncall.name, oncall.group_by, oncall.group_wait_s, oncall.group_interval_s) == (
        "oncall", ("alertname", "instance"), 1.0, 2.0,
    )  # fmt: skip
    assert (oncall.repeat_interval_s, oncall.send_resolved) == (3600.0, True)
    assert [str(m) for m in team.matchers] == ['severity="warning"']
    assert (team.send_resolved, team.group_wait_s, team.repeat_interval_s) == (False, 30.0, 14400.0)
    assert (audit.matchers, audit.group_by, audit.group_wait_s) == ((), ("...",), 0.0)
    dispatcher.shutdown(5.0)


def test_the_exported_webhook_keeps_each_routes_send_resolved(routes_file: Path) -> None:
    text = alertmanager_config(
        load_route_file(routes_file), {"oncall": "http://127.0.0.1:9/a", "team": "http://127.0.0.1:9/b"}
    )
    yaml = pytest.importorskip("yaml")
    receivers = {receiver["name"]: receiver for receiver in yaml.safe_load(text)["receivers"]}

    assert receivers["oncall"]["webhook_configs"] == [{"url": "http://127.0.0.1:9/a", "send_resolved": True}]
    assert receivers["team"]["webhook_configs"] == [{"url": "http://127.0.0.1:9/b", "send_resolved": False}]
    assert "webhook_configs" not in receivers["audit"]
    assert set(receivers["unrouted"]) == {"name"}


def test_an_alert_manager_loads_the_routes_with_its_notifiers(routes_file: Path) -> None:
    monitor = PerformanceMonitor(MonitoringConfig(metrics_exporters=()))
    manager = AlertManager(monitor)
    sent: list[str] = []
    try:
        routes = manager.load_routes(routes_file, {"oncall": _notify, "team": _notify, "audit": sent.append})
        manager.add_rule({"id": "cpu", "name": "High CPU", "metric": "cpu_usage_percent", "condition": "gt",
                          "threshold": 90, "severity": "critical"})  # fmt: skip
        monitor.record_gauge("cpu_usage_percent", 97.0)
        manager.evaluate()
        assert manager.flush(5.0)
    finally:
        manager.dispatcher.shutdown(5.0)  # its notifier queues count in every pipeline's telemetry while they run
        monitor.shutdown()

    assert [route.name for route in routes] == ["oncall", "team", "audit"]
    assert [notification.receiver for notification in sent] == ["audit"]  # group_wait 0: sent at once


def test_a_receiver_without_a_notifier_adds_nothing(routes_file: Path) -> None:
    dispatcher = Dispatcher()
    with pytest.raises(ConfigurationError, match="audit"):
        load_route_file(routes_file).apply(dispatcher, {"oncall": _notify, "team": _notify})
    assert dispatcher.routes == ()
    dispatcher.shutdown(5.0)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('receiver = "a"\ngroup_wiat = "1s"', "group_wiat"),
        ('receiver = "a"\ngroup_interval = 0', "group_interval"),
        ('receiver = "a"\nrepeat_interval = "soon"', "repeat_interval"),
        ('receiver = "a"\nmatchers = ["severity~critical"]', "matchers"),
        ('receiver = "a"\nmatchers = { "http.route" = "/" }', "http.route"),
        ('receiver = "a"\ngroup_by = "alertname"', "group_by"),
        ('receiver = "a"\nsend_resolved = "yes"', "send_resolved"),
        ('receiver = "a b"', "receiver"),
        ('receiver = "unrouted"', "unrouted"),
        ('receiver = "a"\n[[routes]]\nreceiver = "a"', "'a'"),
    ],
)
def test_a_bad_route_is_refused_naming_the_table_and_key(tmp_path: Path, table: str, named: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(f"[[routes]]\n{table}\n")
    with pytest.raises(ConfigurationError) as raised:
        load_route_file(path)
    assert named in str(raised.value)
    assert str(path) in str(raised.value)


def test_rules_check_fails_on_a_bad_route(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.toml"
    rule = '[[rules]]\nid = "cpu"\nname = "CPU"\nmetric = "cpu_usage_percent"\ncondition = "gt"\nthreshold = 90\n'
    path.write_text(rule + '[[routes]]\nreceiver = "a"\ngroup_wait = "-1s"\n')
    assert main(["rules", "check", str(path)]) == 2
    assert "routes[0]" in capsys.readouterr().err


def test_export_writes_a_file_only_its_user_may_read(tmp_path: Path, routes_file: Path) -> None:
    out = tmp_path / "alertmanager.yml"
    url = "https://hooks.example.com/services/T0/s3cret"
    assert main(["rules", "export", "--format", "alertmanager", str(routes_file), "--webhook", f"oncall={url}",
                 "-o", str(out)]) == 0  # fmt: skip
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert f'url: "{url}"' in out.read_text()


@pytest.mark.parametrize("webhook", ["nobody=http://127.0.0.1:9/", "oncall=ftp://127.0.0.1/", "oncall"])
def test_export_refuses_a_webhook_it_cannot_use(routes_file: Path, webhook: str, capsys) -> None:
    assert main(["rules", "export", "--format", "alertmanager", str(routes_file), "--webhook", webhook]) == 2
    assert "--webhook" in capsys.readouterr().err


def test_the_shipped_alertmanager_config_is_the_export_of_the_shipped_rule_file() -> None:
    assert (ROOT / "configs" / "alertmanager.yml").read_text() == alertmanager_config(load_route_file(SHIPPED))
