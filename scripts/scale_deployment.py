"""The scale-out reference deployment on one machine: its layout, its configurations, its processes.

Several hosts of one service, each on its own loopback address: the service runs under
``opentelemetry-instrument gunicorn -w 2`` and serves ``/metrics`` (one scrape for all its workers); a Prometheus
agent on the host scrapes it and remote-writes to a central Prometheus, which evaluates the rules exported from
``configs/deploy/alert_rules.toml`` and alerts every peer of an Alertmanager cluster, routed by the same file's
``[[routes]]``. ``configs/deploy/`` holds these configurations as :func:`render` writes them for
:meth:`Layout.default`; ``scripts/scale_demo.py`` (``make scale-demo``) and ``tests/test_scale_out.py`` run
:class:`Deployment`, the tests on ports of their own.

    host 127.0.0.N: gunicorn -w 2 (app :8000, /metrics :9464) <- agent :9090 --remote write-->
    central 127.0.0.10:9090 (rules) --alerts--> alertmanagers 127.0.0.11-13:9093 (gossip :9094) --> webhook
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "configs" / "deploy"
RULES = DEPLOY / "alert_rules.toml"
HOST_RULES = DEPLOY / "host_rules.yml"
BIN = Path(sys.executable).parent
INTERVAL = "1s"  # scrape and evaluation: seconds, so the demo shows alerts at once (production: 15s to 1m)
JOB = "chat-service"
# Variables that configure monitoring: the hosts get exactly the ones below, never the caller's.
_MONITORING_PREFIXES = ("OTEL_", "METRICS_", "PERFORMANCE_", "ALERT_", "CHAT_TURBO_", "SERVICE_ALERT_")


@dataclass(frozen=True)
class Host:
    """One host of the service: its address, the service's ports, its agent's port."""

    name: str
    address: str
    app_port: int = 8000
    metrics_port: int = 9464
    agent_port: int = 9090
    inprocess_webhook: str | None = None  # alert in process too (the one-machine stage), to this base URL

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.app_port}"

    @property
    def target(self) -> str:
        return f"{self.address}:{self.metrics_port}"


@dataclass(frozen=True)
class Peer:
    """One Alertmanager of the cluster."""

    name: str
    address: str
    web_port: int = 9093
    cluster_port: int = 9094

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.web_port}"


@dataclass(frozen=True)
class Layout:
    """Where everything listens; :meth:`default` is the demo's (and ``configs/deploy``'s)."""

    hosts: tuple[Host, ...]
    alertmanagers: tuple[Peer, ...]
    central: tuple[str, int] = ("127.0.0.10", 9090)
    webhook: str = "http://127.0.0.20:9099"  # receiver R gets <webhook>/R from the Alertmanagers
    workers: int = 2
    # How long each Alertmanager waits for the one before it to notify (Alertmanager: 15s). Keep a route's
    # group_interval above (peers - 1) x this, or a peer still waiting sends news that is already old.
    peer_timeout: str = "1s"

    @classmethod
    def default(cls, hosts: int = 3) -> Layout:
        return cls(
            hosts=tuple(Host(f"h{n}", f"127.0.0.{n + 1}") for n in range(1, hosts + 1)),
            alertmanagers=tuple(Peer(f"am{n}", f"127.0.0.{10 + n}") for n in range(1, 4)),
        )

    @property
    def central_url(self) -> str:
        return f"http://{self.central[0]}:{self.central[1]}"


def render(layout: Layout) -> dict[str, str]:
    """Every configuration file of the deployment, by name (what ``configs/deploy`` holds for the default)."""
    files = {f"agent-{host.name}.yml": _agent(layout, host) for host in layout.hosts}
    files["central.yml"] = _central(layout)
    files["alert_rules.yml"] = _cli("rules", "export", "--format", "prometheus", "--interval", "1", str(RULES))
    webhooks = [f"--webhook={name}={layout.webhook}/{name}" for name in ("oncall", "team")]
    files["alertmanager.yml"] = _cli("rules", "export", "--format", "alertmanager", *webhooks, str(RULES))
    return files


def _cli(*arguments: str) -> str:
    """The output of ``chat-turbo-metrics <arguments>``: the hand-over commands the README gives."""
    command = [sys.executable, "-m", "chat_turbo_metrics", *arguments]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def _agent(layout: Layout, host: Host) -> str:
    return f"""\
# The Prometheus agent of host {host.name}: scrapes the service on this host and its own metrics, keeps them in its
# write-ahead log and sends them to the central Prometheus. prometheus --enable-feature=agent (2.32+).
global:
  scrape_interval: {INTERVAL}
  scrape_timeout: {INTERVAL}
scrape_configs:
  - job_name: {JOB}
    static_configs:
      - targets: ["{host.target}"]
        labels:
          host: {host.name}
  - job_name: prometheus-agent
    static_configs:
      - targets: ["{host.address}:{host.agent_port}"]
        labels:
          host: {host.name}
remote_write:
  - url: {layout.central_url}/api/v1/write
    queue_config:
      batch_send_deadline: 500ms
      min_backoff: 100ms
      max_backoff: 1s
"""


def _central(layout: Layout) -> str:
    targets = ", ".join(f'"{peer.address}:{peer.web_port}"' for peer in layout.alertmanagers)
    return f"""\
# The central Prometheus: stores what the agents send (--web.enable-remote-write-receiver), evaluates the rules
# exported from alert_rules.toml and the scrape-health rules, and alerts every Alertmanager (they deduplicate).
global:
  scrape_interval: {INTERVAL}
  evaluation_interval: {INTERVAL}
rule_files:
  - alert_rules.yml  # chat-turbo-metrics rules export --format prometheus --interval 1 alert_rules.toml
  - host_rules.yml
alerting:
  alertmanagers:
    - static_configs:
        - targets: [{targets}]
scrape_configs:
  - job_name: prometheus-central
    static_configs:
      - targets: ["{layout.central[0]}:{layout.central[1]}"]
"""


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(f"{names[0]} is not installed (scripts/ensure-tools installs it)")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MONITORING_PREFIXES)}
    env.update(extra)
    return env


class Process:
    """A program in a session of its own, logging to a file; :meth:`stop` ends the whole session."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.command, self.log_path = command, log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=log.parent
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def kill(self) -> None:
        """SIGKILL to every process of the session: a crash, or a machine that is gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the session if it has not ended in ``timeout_s``."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout_s)
        self.kill()


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 30.0, logs: Callable[[], str] = str) -> Any:
    """Poll ``check`` until it returns something true; at the deadline raise with ``what`` and ``logs()``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s\n{logs()}")
        time.sleep(0.2)


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read()  # type: ignore[no-any-return]


@dataclass
class Deployment:
    """The whole deployment: start it, change it as a test or a demo needs, stop everything."""

    layout: Layout
    directory: Path
    multiprocess_dir: Path | None = None  # the hosts' METRICS_MULTIPROCESS_DIR (default: each user's own)
    hosts: dict[str, Process] = field(default_factory=dict)
    agents: dict[str, Process] = field(default_factory=dict)
    alertmanagers: dict[str, Process] = field(default_factory=dict)
    central: Process | None = None
    sent: dict[str, int] = field(default_factory=dict)  # requests each host answered
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Write the configurations and start everything, the Alertmanagers first (they take longest to settle)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, text in render(self.layout).items():
            (self.directory / name).write_text(text)
        shutil.copy(HOST_RULES, self.directory / HOST_RULES.name)
        for peer in self.layout.alertmanagers:  # one after the other: each joins the ones already listening
            self.start_alertmanager(peer)
        self.start_central()
        for host in self.layout.hosts:
            self.start_host(host)
        for host in self.layout.hosts:
            self.start_agent(host)
        for host in self.layout.hosts:
            self.wait_host(host)
        for peer in self.layout.alertmanagers:
            ready = functools.partial(http_get, peer.url + "/-/ready")
            wait_until(f"{peer.name} ready", ready, logs=self.alertmanagers[peer.name].log)
        up = f'count(up{{job="{JOB}"}} == 1)'
        hosts = float(len(self.layout.hosts))
        wait_until("every host scraped centrally", lambda: self.value(up) == hosts, logs=self.central_log)

    def stop(self) -> None:
        """Stop everything, whatever state it is in."""
        for process in [*self.hosts.values(), *self.agents.values(), self.central, *self.alertmanagers.values()]:
            if process is not None:
                process.stop()

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the pieces ------------------------------------------------------------------------------------------

    def start_host(self, host: Host) -> None:
        env = _clean_env(
            CHAT_TURBO_ENV="production",
            OTEL_SERVICE_NAME=JOB,
            OTEL_METRICS_EXPORTER="prometheus",
            OTEL_EXPORTER_PROMETHEUS_HOST=host.address,
            OTEL_EXPORTER_PROMETHEUS_PORT=str(host.metrics_port),
            OTEL_METRIC_EXPORT_INTERVAL="1000",  # the in-process alerting's evaluation cycle
        )
        if self.multiprocess_dir is not None:
            env["METRICS_MULTIPROCESS_DIR"] = str(self.multiprocess_dir)
        if host.inprocess_webhook:
            env.update(SERVICE_ALERT_RULES=str(RULES), SERVICE_ALERT_WEBHOOK=host.inprocess_webhook)
        command = [str(BIN / "opentelemetry-instrument"), str(BIN / "gunicorn"), "-w", str(self.layout.workers)]
        command += ["-b", f"{host.address}:{host.app_port}", "--graceful-timeout", "5"]
        command += ["--pythonpath", str(ROOT / "scripts"), "scale_demo_service:app"]
        self.hosts[host.name] = Process(command, self.directory / f"host-{host.name}.log", env)
        self.sent.setdefault(host.name, 0)

    def wait_host(self, host: Host) -> None:
        """Until the service answers and every worker has served a request."""
        process = self.hosts[host.name]
        wait_until(f"{host.name} answers", lambda: self.request(host), timeout_s=60, logs=process.log)

        def every_worker_served() -> bool:
            return {self.request(host) for _ in range(4 * self.layout.workers)} >= set(self.workers(host))

        wait_until(f"every worker of {host.name} serves", every_worker_served, timeout_s=60, logs=process.log)

    def request(self, host: Host, path: str = "/api/messages/7") -> int:
        """One request to ``host``; the pid of the worker that answered (errors count as answered)."""
        try:
            body = http_get(host.url + path)
        except urllib.error.HTTPError as error:
            body = error.read()
        with self._lock:
            self.sent[host.name] += 1
        return int(json.loads(body).get("worker", 0))

    def workers(self, host: Host) -> list[int]:
        """The worker pids of ``host``'s gunicorn (children of its master)."""
        pid = self.hosts[host.name].pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in children]

    def start_agent(self, host: Host) -> None:
        command = [_binary("prometheus"), "--enable-feature=agent", f"--config.file=agent-{host.name}.yml"]
        command += [f"--storage.agent.path=agent-{host.name}", f"--web.listen-address={host.address}:{host.agent_port}"]
        self.agents[host.name] = Process(command, self.directory / f"agent-{host.name}.log")
        wait_until(f"agent {host.name} ready", lambda: http_get(f"http://{host.address}:{host.agent_port}/-/ready"),
                   logs=self.agents[host.name].log)  # fmt: skip

    def start_central(self) -> None:
        address, port = self.layout.central
        command = [_binary("prometheus"), "--config.file=central.yml", "--storage.tsdb.path=central"]
        command += [f"--web.listen-address={address}:{port}", "--web.enable-remote-write-receiver"]
        self.central = Process(command, self.directory / "central.log")
        wait_until("central ready", lambda: http_get(self.layout.central_url + "/-/ready"), logs=self.central_log)

    def start_alertmanager(self, peer: Peer) -> None:
        others = [p for p in self.layout.alertmanagers if p != peer]
        command = [_binary("prometheus-alertmanager", "alertmanager"), "--config.file=alertmanager.yml"]
        command += [f"--storage.path={peer.name}", f"--web.listen-address={peer.address}:{peer.web_port}"]
        command += [f"--cluster.listen-address={peer.address}:{peer.cluster_port}"]
        command += [f"--cluster.advertise-address={peer.address}:{peer.cluster_port}"]
        command += [f"--cluster.peer={p.address}:{p.cluster_port}" for p in others]
        command += [f"--cluster.peer-timeout={self.layout.peer_timeout}"]
        process = self.alertmanagers[peer.name] = Process(command, self.directory / f"{peer.name}.log")

        def gossips() -> bool:
            socket.create_connection((peer.address, peer.cluster_port), timeout=1).close()
            return True

        wait_until(f"{peer.name} listens for its peers", gossips, logs=process.log)

    def central_log(self) -> str:
        return self.central.log() if self.central is not None else ""

    # --- reading the central Prometheus ----------------------------------------------------------------------

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result of an instant query at the central Prometheus."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = json.loads(http_get(f"{self.layout.central_url}/api/v1/query?{urllib.parse.urlencode(params)}"))
        return body["data"]["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def figures(self) -> dict[str, float | None]:
        """What the deployment carries and costs, over the last 30 s (read from the central Prometheus)."""
        queries = {
            "series of the service, per host": f'avg(scrape_samples_scraped{{job="{JOB}"}})',
            "samples/s scraped from the service, all hosts": f'sum(scrape_samples_scraped{{job="{JOB}"}}) / 1',
            "samples/s sent by the agents (theirs included)": "sum(rate(prometheus_remote_storage_samples_total[30s]))",
            "samples/s stored centrally (its own too)": "sum(rate(prometheus_tsdb_head_samples_appended_total[30s]))",
            "series stored centrally": "prometheus_tsdb_head_series",
            "CPU of the central Prometheus (cores)": 'rate(process_cpu_seconds_total{job="prometheus-central"}[30s])',
            "memory of the central Prometheus (MB)": 'process_resident_memory_bytes{job="prometheus-central"} / 1e6',
            "CPU of an agent (cores)": 'avg(rate(process_cpu_seconds_total{job="prometheus-agent"}[30s]))',
            "memory of an agent (MB)": 'avg(process_resident_memory_bytes{job="prometheus-agent"}) / 1e6',
        }
        return {name: self.value(query) for name, query in queries.items()}
