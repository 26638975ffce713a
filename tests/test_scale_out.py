"""Scaling out: the reference deployment (``scripts/scale_deployment.py``), run for real and checked end to end.

Two hosts of the service on their own loopback addresses (127.0.0.2, 127.0.0.3), on the same ``/metrics`` port and
one multiprocess base directory, each ``opentelemetry-instrument gunicorn -w 2`` with its own Prometheus agent
(2.42, ``--enable-feature=agent``) remote-writing to a central Prometheus, which evaluates the rules exported from
``configs/deploy/alert_rules.toml`` and alerts a cluster of three Alertmanagers gossiping on 127.0.0.11-13, routed
by the same file's routes to a webhook receiver of the test. Host h1 also alerts in process from the same file, as
it did on one machine.

One scenario runs once (about 40 s) and records what it saw, phase by phase, as JSON; each test checks one behaviour
against the record. Under pytest-xdist the first worker to need it runs it and the others read its record, so the
deployment starts once per run (the root conftest.py orders one test that needs it first and the others last, so
no worker waits for it). Everything is stopped at the end of the scenario, whatever happened.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from alerting.notify_peers import Receiver
from chat_turbo_metrics import __version__
from conftest import free_port, require_tool

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)  # the first test to need the scenario waits for it


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_deployment", ROOT / "scripts" / "scale_deployment.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("scale_deployment", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


scale_deployment = _load_script()
JOB = scale_deployment.JOB


def _port_on(first: str, second: str) -> int:
    """A port free at both addresses (the two hosts of the service share their /metrics port)."""
    while True:
        port = free_port(first)
        with socket.socket() as probe:
            try:
                probe.bind((second, port))
            except OSError:
                continue
        return port


def _layout(receiver: Receiver) -> Any:
    metrics_port = _port_on("127.0.0.2", "127.0.0.3")
    hosts = [
        scale_deployment.Host(name, address, free_port(address), metrics_port, free_port(address))
        for name, address in (("h1", "127.0.0.2"), ("h2", "127.0.0.3"))
    ]
    hosts[0] = scale_deployment.Host(**{**hosts[0].__dict__, "inprocess_webhook": receiver.url + "/inprocess"})
    peers = tuple(
        scale_deployment.Peer(
            f"am{n}", f"127.0.0.{10 + n}", free_port(f"127.0.0.{10 + n}"), free_port(f"127.0.0.{10 + n}")
        )
        for n in (1, 2, 3)
    )
    return scale_deployment.Layout(
        hosts=tuple(hosts),
        alertmanagers=peers,
        central=("127.0.0.10", free_port("127.0.0.10")),
        webhook=receiver.url + "/central",
    )


@dataclass
class Run:
    """What the scenario saw, as JSON-able data; ``failure`` holds the traceback of the phase that did not finish."""

    hosts: dict[str, dict[str, Any]]  # name -> target, metrics_port
    done: list[str] = field(default_factory=list)
    failure: str = ""
    seen: dict[str, Any] = field(default_factory=dict)
    notifications: list[dict[str, Any]] = field(default_factory=list)  # path, at, alert: every alert received

    def require(self, phase: str) -> None:
        if phase not in self.done:
            pytest.fail(f"the scenario did not reach the end of {phase!r}:\n{self.failure}")

    def alerts(self, path: str, status: str = "", alertname: str = "") -> list[dict[str, Any]]:
        """Every alert of every notification posted to ``path`` (with that status and alert name), in order."""
        return [
            n
            for n in self.notifications
            if n["path"] == path
            and n["alert"]["status"] == (status or n["alert"]["status"])
            and n["alert"]["labels"]["alertname"] == (alertname or n["alert"]["labels"]["alertname"])
        ]


@dataclass
class Scenario:
    """The live deployment and receiver while the scenario runs; it keeps ``run`` up to date."""

    deployment: Any
    receiver: Receiver
    run: Run

    def alerts(self, path: str, status: str = "", alertname: str = "") -> list[dict[str, Any]]:
        self.run.notifications = [
            {"path": request.path, "at": request.at, "alert": alert}
            for request in list(self.receiver.requests)
            for alert in request.json()["alerts"]
        ]
        return self.run.alerts(path, status, alertname)


def _central_totals(deployment: Any) -> dict[str, float]:
    result = deployment.query(f'sum by (host) (api_requests_total{{job="{JOB}"}})')
    return {sample["metric"]["host"]: float(sample["value"][1]) for sample in result}


def _settled(deployment: Any) -> dict[str, float]:
    """The central totals once they equal the requests sent to each host (or the last ones seen, at the deadline)."""
    wanted = {name: float(count) for name, count in deployment.sent.items()}
    with contextlib.suppress(TimeoutError):
        scale_deployment.wait_until("central totals", lambda: _central_totals(deployment) == wanted, 30)
    return _central_totals(deployment)


def _load(deployment: Any, host: Any, requests: int) -> None:
    with ThreadPoolExecutor(4) as pool:  # four at a time, so every worker takes some
        list(pool.map(lambda _: deployment.request(host), range(requests)))


def _scrape_total(host: Any) -> float:
    with urllib.request.urlopen(f"http://{host.target}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("api_requests_total{"))


def _webhook_sender(deployment: Any) -> str:
    """The Alertmanager peer whose webhook integration has sent a notification."""
    for peer in deployment.layout.alertmanagers:
        text = urllib.request.urlopen(peer.url + "/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith('alertmanager_notifications_total{integration="webhook"}') and float(line.split()[-1]):
                return str(peer.name)
    return ""


def _logs(deployment: Any) -> str:
    processes = [*deployment.hosts.values(), *deployment.agents.values(), *deployment.alertmanagers.values()]
    return "\n".join(
        f"--- {p.log_path.name}:\n{p.log(1500)}" for p in [*processes, deployment.central] if p is not None
    )


def _spread(scenario: Scenario) -> None:
    """Requests to both hosts; what each host's own scrape shows, and what the central Prometheus stores."""
    deployment, seen = scenario.deployment, scenario.run.seen
    for host in deployment.layout.hosts:
        _load(deployment, host, 30)
    seen["spread"] = (_settled(deployment), dict(deployment.sent))
    seen["scrapes"] = {host.name: (_scrape_total(host), deployment.sent[host.name]) for host in deployment.layout.hosts}
    seen["directories"] = sorted({path.name.split(".run-")[0] for path in deployment.multiprocess_dir.iterdir()})


def _kill_worker(scenario: Scenario) -> None:
    """A worker of h1 that served requests is SIGKILLed once they were scraped; gunicorn starts another."""
    deployment, (h1, h2) = scenario.deployment, scenario.deployment.layout.hosts
    victim = deployment.workers(h1)[0]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        workers = deployment.workers(h1)
        return len(workers) == deployment.layout.workers and victim not in workers

    scale_deployment.wait_until("a new worker", replaced, 30)
    for host in (h1, h2):
        _load(deployment, host, 30)
    scenario.run.seen["kill_worker"] = (_settled(deployment), dict(deployment.sent))


def _restart_agent(scenario: Scenario) -> None:
    """h1's agent crashes, requests go on meanwhile, and it starts again on its write-ahead log."""
    deployment, h1 = scenario.deployment, scenario.deployment.layout.hosts[0]
    deployment.agents[h1.name].kill()
    _load(deployment, h1, 30)
    deployment.start_agent(h1)
    scenario.run.seen["restart_agent"] = (_settled(deployment), dict(deployment.sent))
    scenario.run.seen["resets"] = deployment.query(f'sum(resets(api_requests_total{{job="{JOB}"}}[5m]))')


def _alert(scenario: Scenario) -> None:
    """Errors on h1 for 5 s: the rule fires in process and centrally; the peer that notified is then killed."""
    deployment, h1 = scenario.deployment, scenario.deployment.layout.hosts[0]
    for _ in range(25):
        deployment.request(h1, "/api/fail")
        time.sleep(0.2)
    first, *_ = scale_deployment.wait_until(
        "the central alert", lambda: scenario.alerts("/central/oncall", "firing"), 60
    )
    scale_deployment.wait_until("the in-process alert", lambda: scenario.alerts("/inprocess/oncall", "firing"), 30)
    sender = scale_deployment.wait_until("the peer that sent it", lambda: _webhook_sender(deployment), 10)
    # The peer that notified dies once its notification log has had a second (five gossip intervals) to reach the
    # others. Killed before that, the next peer notifies again: Alertmanager delivers at least once.
    time.sleep(max(0.0, 1.0 - (time.monotonic() - first["at"])))
    deployment.alertmanagers[sender].kill()
    scenario.run.seen["killed_peer"] = sender
    resolved = lambda: scenario.alerts("/central/oncall", "resolved")  # noqa: E731
    scale_deployment.wait_until("the resolution, from the peers left", resolved, 60)


def _host_disappears(scenario: Scenario) -> None:
    """h2's service is killed, every process of it; its agent stays and reports it gone."""
    deployment, seen = scenario.deployment, scenario.run.seen
    series = f'api_requests_total{{host="h2",job="{JOB}"}}'
    seen["before"] = deployment.query(series)
    deployment.hosts["h2"].kill()
    gone = time.monotonic()
    scale_deployment.wait_until("h2's series stale", lambda: deployment.query(series) == [], 30)
    seen["stale_after_s"] = time.monotonic() - gone
    scale_deployment.wait_until("ServiceDown", lambda: scenario.alerts("/central/oncall", "firing", "ServiceDown"), 60)
    time.sleep(5)  # two peer timeouts and a group interval: a peer's duplicate would have arrived by now
    seen["history"] = deployment.query(f"count_over_time({series}[1m])")
    scenario.alerts("")  # the record holds every notification


PHASES = (("spread", _spread), ("kill_worker", _kill_worker), ("restart_agent", _restart_agent), ("alert", _alert),
          ("host_disappears", _host_disappears))  # fmt: skip


def _scenario(directory: Path) -> Run:
    """Start the deployment, run every phase until one fails, stop everything; what was seen."""
    receiver = Receiver()
    deployment = scale_deployment.Deployment(_layout(receiver), directory / "run", multiprocess_dir=directory / "mp")
    hosts = {h.name: {"target": h.target, "metrics_port": h.metrics_port} for h in deployment.layout.hosts}
    scenario = Scenario(deployment, receiver, Run(hosts))
    try:
        for name, phase in (("start", lambda _: deployment.start()), *PHASES):
            try:
                phase(scenario)
            except Exception:
                scenario.run.failure = traceback.format_exc() + "\n" + _logs(deployment)
                break
            scenario.run.done.append(name)
    finally:
        deployment.stop()
        receiver.close()
    return scenario.run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Run:
    """The scenario's record: run here, or read from the pytest-xdist worker that ran it."""
    for tool in ("prometheus", "prometheus-alertmanager"):
        require_tool(tool)
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    record = shared / "scale-out.json"
    with (shared / "scale-out.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers wait here while one runs it
        if not record.exists():
            record.write_text(json.dumps(asdict(_scenario(tmp_path_factory.mktemp("scale-out")))))
    return Run(**json.loads(record.read_text()))


# --- totals ----------------------------------------------------------------------------------------------------


def _exact(totals: dict[str, float], sent: dict[str, int]) -> bool:
    return totals == {name: float(count) for name, count in sent.items()}


def test_each_host_serves_its_own_requests_on_the_same_port_of_another_address(run: Run) -> None:
    run.require("spread")
    port = run.hosts["h1"]["metrics_port"]
    assert run.hosts["h2"]["metrics_port"] == port
    assert {name: scraped == sent for name, (scraped, sent) in run.seen["scrapes"].items()} == {"h1": True, "h2": True}
    # One group directory per host in the shared base directory: the endpoint's address is part of its name.
    assert run.seen["directories"] == [f"127.0.0.2-{port}", f"127.0.0.3-{port}"]


def test_central_totals_equal_the_requests_sent_to_every_host(run: Run) -> None:
    run.require("spread")
    assert _exact(*run.seen["spread"]), run.seen["spread"]


def test_a_worker_killed_with_sigkill_loses_no_counted_request(run: Run) -> None:
    run.require("kill_worker")
    assert _exact(*run.seen["kill_worker"]), run.seen["kill_worker"]


def test_an_agent_restarted_on_its_wal_loses_no_counted_request(run: Run) -> None:
    run.require("restart_agent")
    assert _exact(*run.seen["restart_agent"]), run.seen["restart_agent"]
    # Neither the killed worker nor the agent's restart looks like a counter reset to Prometheus.
    assert [float(sample["value"][1]) for sample in run.seen["resets"]] == [0.0]


# --- alerts ------------------------------------------------------------------------------------------------------


def test_the_same_rule_fires_in_process_and_centrally(run: Run) -> None:
    run.require("alert")
    central = run.alerts("/central/oncall", "firing")[0]["alert"]
    in_process = [n["alert"] for n in run.alerts("/inprocess/oncall", "firing")]
    assert in_process  # one per worker that served errors: each evaluates its own share
    for alert in in_process:
        # The central alert has the in-process alert's labels, plus where its series came from.
        assert alert["labels"].items() <= central["labels"].items()
        added = {key: value for key, value in central["labels"].items() if key not in alert["labels"]}
        scope = {"otel_scope_name": "chat_turbo_metrics", "otel_scope_version": __version__}  # on every sample
        assert added == {"instance": run.hosts["h1"]["target"], "job": JOB, "host": "h1", **scope}
    assert central["labels"]["alertname"] == "ServerErrors"
    assert central["labels"]["endpoint"] == "/api/fail"


def test_the_central_alert_reaches_the_receiver_once_while_a_peer_is_killed(run: Run) -> None:
    run.require("host_disappears")  # every notification of the run has had time to arrive
    h1, h2 = run.hosts["h1"]["target"], run.hosts["h2"]["target"]
    alerts = [n["alert"] for n in run.alerts("/central/oncall")]
    sent = sorted((alert["labels"]["alertname"], alert["labels"]["instance"], alert["status"]) for alert in alerts)
    expected = [("ServerErrors", h1, "firing"), ("ServerErrors", h1, "resolved"), ("ServiceDown", h2, "firing")]
    assert sent == expected, (sent, run.seen["killed_peer"])
    assert run.alerts("/central/team") == []


def test_a_host_that_disappears_goes_stale_and_service_down_fires(run: Run) -> None:
    run.require("host_disappears")
    assert run.seen["before"]  # h2 had series until its service died
    assert run.seen["stale_after_s"] < 10  # staleness markers from its agent, not five minutes of lookback
    assert run.seen["history"]  # what it sent stays queryable


# --- configuration -----------------------------------------------------------------------------------------------


def test_configs_deploy_holds_the_rendering_of_the_default_layout() -> None:
    for name, text in scale_deployment.render(scale_deployment.Layout.default()).items():
        assert (ROOT / "configs" / "deploy" / name).read_text() == text, name


def test_the_scrape_health_rules_fire_for_a_service_down_and_a_silent_host(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    (tmp_path / "host_rules.yml").write_text((ROOT / "configs" / "deploy" / "host_rules.yml").read_text())
    # h1 answers throughout; h2's service stops answering at 10 s; h3's agent (with the whole host) is gone at 10 s.
    series = {"h1": "1x30", "h2": "1x9 0x20", "h3": "1x9 _x20"}
    expected = [
        ("9s", "ServiceDown", []),
        ("15s", "ServiceDown", [_expected("h2", "h2 does not answer its agent's scrapes")]),
        ("15s", "HostSilent", []),  # 6 s of silence: not yet
        ("25s", "HostSilent", [_expected("h3", "nothing from h3 for 16 s")]),
    ]
    test = {
        "rule_files": ["host_rules.yml"],
        "evaluation_interval": "1s",
        "tests": [
            {
                "interval": "1s",
                "input_series": [
                    {"series": f'up{{job="{JOB}", instance="{name}"}}', "values": values}
                    for name, values in series.items()
                ],
                "alert_rule_test": [
                    {"eval_time": at, "alertname": name, "exp_alerts": alerts} for at, name, alerts in expected
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(json.dumps(test))
    result = subprocess.run(
        [promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _expected(instance: str, summary: str) -> dict[str, Any]:
    labels = {"job": JOB, "instance": instance, "severity": "critical"}
    return {"exp_labels": labels, "exp_annotations": {"summary": summary}}


def test_the_exported_alertmanager_config_is_valid(tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    path = tmp_path / "alertmanager.yml"
    path.write_text((ROOT / "configs" / "deploy" / "alertmanager.yml").read_text())
    check = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert [r["name"] for r in yaml.safe_load(path.read_text())["receivers"]] == ["unrouted", "oncall", "team"]
