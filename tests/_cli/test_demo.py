"""The demo (``make demo``): a service under the distro, traffic, an alert's whole life, a report, port rules."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from chat_turbo_metrics.exporters import MetricHistory
from conftest import clean_env, free_port

# Short timings: slow phase at +1 s for 3 s, p95 over 2 s above 2 s for 1 s, evaluated every 0.5 s.
SHORT = ["--slow-after", "1", "--slow-for", "3", "--alert-window", "2", "--alert-for", "1", "--interval", "0.5"]
ROW = re.compile(r"^│ (GET|POST) (\S+)\s+│\s+(\d+) │\s+(\d+) │\s+([\d,]+) ms │\s+([\d,]+) ms │\s+([\d,]+) ms │$")


class Receiver:
    """The test's own webhook receiver on 127.0.0.1 (a free port): every JSON body it was sent."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        payloads = self.payloads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payloads.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


def served(port: int) -> float:
    """Requests the demo's service has handled, read from its Prometheus endpoint (0 while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("api_requests_total{"))


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "chat_turbo_metrics", "demo", *args]


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    port: int
    history: Path
    received: list[dict[str, Any]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One 14-second demo with short alert timings (resolved by about +10 s), notifying the test's receiver too."""
    receiver = Receiver()
    port, history = free_port(), tmp_path_factory.mktemp("demo") / "history.db"
    try:
        result = subprocess.run(
            demo_command("--duration", "14", *SHORT, "--history", str(history), "--webhook", receiver.url),
            env=clean_env(METRICS_PROMETHEUS_PORT=str(port), OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1"),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        yield Run(result, port, history, receiver.payloads)
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def report_rows(output: str) -> dict[str, tuple[int, int, float, float, float]]:
    """route -> (requests, 5xx, p50, p95, p99 in ms) from the report's table."""
    rows = {}
    for line in output.splitlines():
        match = ROW.match(line.strip())
        if match:
            method, route, *numbers = match.groups()
            requests, errors, *ms = (float(n.replace(",", "")) for n in numbers)
            rows[f"{method} {route}"] = (int(requests), int(errors), *ms)
    return rows  # type: ignore[return-value]


def test_demo_says_where_to_look(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    out = run.result.stdout
    assert f"Prometheus metrics: http://127.0.0.1:{run.port}/metrics" in out
    assert f"status page: http://127.0.0.1:{run.port}/status" in out
    assert f"history: sqlite:///{run.history}" in out
    assert re.search(r"Chat-Turbo demo service on http://127\.0\.0\.1:\d+", out)
    assert re.search(r"webhook receiver: http://127\.0\.0\.1:\d+/alerts", out)


def test_alert_goes_pending_firing_resolved_in_the_output_and_the_log(run: Run) -> None:
    out = run.result.stdout
    states = re.findall(r"alert (pending|firing|resolved): High API Response Time on GET /api/search", out)
    assert states == ["pending", "firing", "resolved"], out
    # LogNotifier's records, shown in the terminal, then the demo's own receiver, in that order of states.
    assert out.index("[FIRING:1] High API Response Time") < out.index("[RESOLVED] High API Response Time")
    received = re.findall(r"webhook demo received (firing|resolved): 1 alert\(s\) on GET /api/search", out)
    assert received == ["firing", "resolved"]
    assert re.search(r"alerts fired: 1, resolved: 1", out)


def test_the_webhook_receiver_gets_the_firing_then_the_resolved_alert(run: Run) -> None:
    assert [payload["status"] for payload in run.received] == ["firing", "resolved"]
    firing, resolved = (payload["alerts"][0] for payload in run.received)
    assert firing["labels"]["alertname"] == "High API Response Time"
    assert firing["labels"]["endpoint"] == "/api/search"
    assert firing["labels"]["severity"] == "high"
    summary = re.fullmatch(r"p95 response time ([\d.]+)s on /api/search", firing["annotations"]["summary"])
    assert summary is not None, firing["annotations"]
    assert float(summary.group(1)) > 2.0  # p95 above the seed's threshold
    assert firing["fingerprint"] == resolved["fingerprint"]
    assert resolved["startsAt"] == firing["startsAt"]
    assert resolved["endsAt"] > resolved["startsAt"]


def test_report_gives_totals_and_percentiles_per_route_and_explains_the_errors(run: Run) -> None:
    out = run.result.stdout
    rows = report_rows(out)
    assert set(rows) == {
        "GET /api/channels/{channel}/history",
        "POST /api/channels/{channel}/messages",
        "GET /api/deliberate-failure",
        "GET /api/messages/{id}",
        "GET /api/search",
    }, out  # every request matched a route: no "unmatched"
    total = re.search(r"ran [\d.]+ s: (\d+) requests recorded, (\d+) errors \((\d+) from /api/deliberate-failure", out)
    assert total is not None, out
    requests, errors, deliberate = (int(group) for group in total.groups())
    assert requests == sum(row[0] for row in rows.values()) > 100
    assert errors == deliberate == rows["GET /api/deliberate-failure"][1] == rows["GET /api/deliberate-failure"][0]
    assert sum(row[1] for route, row in rows.items() if route != "GET /api/deliberate-failure") == 0
    for requests_, _, p50, p95, p99 in rows.values():
        assert requests_ > 0
        assert p50 <= p95 <= p99
    assert rows["GET /api/search"][3] > 2000  # the slow phase
    assert rows["POST /api/channels/{channel}/messages"][3] < 500


def test_history_holds_what_the_demo_recorded(run: Run) -> None:
    totals = {route: row[0] for route, row in report_rows(run.result.stdout).items()}
    with MetricHistory(f"sqlite:///{run.history}") as history:
        names = set(history.metric_names())
        rows = history.counter_rate("api_requests_total", time.time() - 600, time.time() + 60, bucket_s=3600)
    for name in (
        "http_request_duration_seconds",
        "database_query_duration_seconds",
        "messages_sent",
        "message_size",
        "message_processing_time_seconds",
        "cache_hits",
        "memory_usage_mb",
        "cpu_usage_percent",
    ):
        assert name in names, sorted(names)
    stored: dict[str, float] = {}
    for row in rows:
        route = f"{row.attributes['method']} {row.attributes['endpoint']}"
        stored[route] = stored.get(route, 0) + row.total
    assert stored == totals


def test_ctrl_c_prints_the_report_and_exits_0(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        demo_command("--history", str(tmp_path / "h.db")),  # no --duration: runs until Ctrl-C
        env=clean_env(METRICS_PROMETHEUS_PORT=str(port), OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while served(port) < 20:  # the service has handled traffic, as its /metrics says
            assert time.monotonic() < deadline, "the demo served no traffic"
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    rows = report_rows(out)
    assert sum(row[0] for row in rows.values()) >= 20, out
    assert re.search(r"alerts fired: 0, resolved: 0", out)  # stopped before the slow phase
    assert f"history: sqlite:///{tmp_path / 'h.db'}" in out


def test_taken_port_ends_with_a_one_line_hint_and_a_failure_status(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            demo_command("--duration", "2", "--history", str(tmp_path / "h.db")),
            env=clean_env(METRICS_PROMETHEUS_PORT=str(port), OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line
    assert "METRICS_PROMETHEUS_PORT" in line


def test_a_second_demo_on_the_same_port_fails_and_names_the_first(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(METRICS_PROMETHEUS_PORT=str(port), OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1", TMPDIR=str(tmp_path))
    first = subprocess.Popen(
        demo_command("--history", str(tmp_path / "first.db")),  # runs until the SIGINT below
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while served(port) == 0:  # its port is bound and its service answers
            assert time.monotonic() < deadline, "the first demo did not start"
            assert first.poll() is None, "the first demo exited"
            time.sleep(0.1)
        second = subprocess.run(
            demo_command("--duration", "2", "--history", str(tmp_path / "second.db")),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=60)

    assert second.returncode == 1
    (line,) = second.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line
    assert f"pid {first.pid}" in line  # the holder: the first demo
    assert "METRICS_PROMETHEUS_PORT" in line
    assert not (tmp_path / "second.db").exists()  # the second wrote no history
    assert first.returncode == 0
    assert sum(row[0] for row in report_rows(output).values()) > 0


def test_report_over_the_demo_history_counts_what_the_demo_served(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    from chat_turbo_metrics.__main__ import main

    assert main(["report", str(run.history), "--since", "10m", "--metric", "api_requests_total", "--no-charts"]) == 0
    out = capsys.readouterr().out
    counted: dict[str, int] = {}
    for line in out.splitlines():
        match = re.match(r"│ endpoint=(\S+), method=(\w+), status=\d+\s+│\s+(\d+) │", line)
        if match:
            route = f"{match.group(2)} {match.group(1)}"
            counted[route] = counted.get(route, 0) + int(match.group(3))
    assert counted == {route: row[0] for route, row in report_rows(run.result.stdout).items()}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--webhook", "http://10.1.2.3/hook"], "--webhook"),
        (["--webhook", "ftp://127.0.0.1/hook"], "--webhook"),
        (["--interval", "0"], "--interval"),
        (["--rate", "nan"], "--rate"),
        (["--slow-for", "-1"], "--slow-for"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from chat_turbo_metrics.__main__ import main

    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert named in err
    assert args[1] in err


ROOT = Path(__file__).resolve().parents[2]


def make_dry_run(venv: Path) -> list[str]:
    result = subprocess.run(
        ["make", "-n", "demo", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.splitlines()


def test_make_demo_installs_the_demo_extra_and_its_instrumentors_only(tmp_path: Path) -> None:
    installs = [line.split("pip install", 1)[1] for line in make_dry_run(tmp_path / "venv") if "pip install" in line]
    assert not [line for line in installs if "[test]" in line or "pytest" in line or "mypy" in line]
    (install,) = [line for line in installs if "-e '.[demo]'" in line]
    installed = set(re.findall(r"-e (instrumentors/\w+)", install))
    assert installed == {"instrumentors/http", "instrumentors/database", "instrumentors/system"}


def test_make_demo_installs_nothing_once_its_stamp_or_the_test_install_is_there(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    stamps = [line for line in make_dry_run(venv) if line.startswith("rm -f") or "touch" in line]
    stamp = re.search(r"touch (\S+)", stamps[-1])
    assert stamp is not None, stamps
    venv.mkdir()
    Path(stamp.group(1)).touch()  # the demo's own stamp, as a first run leaves it
    assert not [line for line in make_dry_run(venv) if "pip install" in line]
    Path(stamp.group(1)).unlink()
    test_stamp = Path(stamp.group(1).replace(".demo-installed-", ".installed-"))
    test_stamp.touch()  # `make test`'s install, a superset
    assert not [line for line in make_dry_run(venv) if "pip install" in line]
