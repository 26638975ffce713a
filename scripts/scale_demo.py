"""``make scale-demo``: the scale-out reference deployment (``scale_deployment.py``) with traffic, an alert and a
host failure, on loopback addresses; it prints what arrives at the webhook and what the deployment carried.

Run ``python scripts/scale_demo.py --help`` for the options; Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from scale_deployment import JOB, Deployment, Layout, render, wait_until


class _Printer(BaseHTTPRequestHandler):
    """The demo's webhook receiver: prints each alert of each notification, with when it arrived."""

    arrivals: ClassVar[list[tuple[float, str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        for alert in payload.get("alerts", []):
            self.arrivals.append((time.monotonic(), self.path, alert))
            labels = alert["labels"]
            print(f"  -> {self.path}: {alert['status']} {labels.get('alertname')} {labels.get('instance', '')}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    @classmethod
    def first(cls, alertname: str, status: str = "firing") -> float:
        """When the first notification of ``alertname`` with ``status`` arrived (waits for it)."""

        def found() -> list[float]:
            return [t for t, _, a in cls.arrivals if (a["labels"].get("alertname"), a["status"]) == (alertname, status)]

        return float(wait_until(f"{alertname} {status}", found, 60)[0])


def _traffic(deployment: Deployment, stop: threading.Event, per_host_per_s: float) -> None:
    while not stop.wait(1.0 / per_host_per_s):
        for host in deployment.layout.hosts:
            if deployment.hosts[host.name].alive():
                with contextlib.suppress(OSError, ValueError, http.client.HTTPException):  # a host that just died
                    deployment.request(host, "/api/messages/1")


def _counted(deployment: Deployment) -> str:
    """Requests the live hosts answered, and what the central Prometheus counts for them."""
    alive = [host.name for host in deployment.layout.hosts if deployment.hosts[host.name].alive()]
    total = deployment.value(f'sum(api_requests_total{{job="{JOB}"}})')
    return f"answered by {', '.join(alive)}: {sum(deployment.sent[name] for name in alive)}, counted centrally: {total}"


def demo(hosts: int, steady_s: float, keep_s: float, directory: Path) -> int:
    """Start the default layout, send traffic, cause an alert and a host failure, print the figures, stop."""
    layout = Layout.default(hosts)
    webhook = urllib.parse.urlsplit(layout.webhook)
    receiver = ThreadingHTTPServer((webhook.hostname or "", webhook.port or 0), _Printer)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    stop = threading.Event()
    started = time.monotonic()
    with Deployment(layout, directory) as deployment, contextlib.suppress(KeyboardInterrupt):
        peers = ", ".join(peer.url for peer in layout.alertmanagers)
        print(f"started in {time.monotonic() - started:.0f} s: central {layout.central_url}, Alertmanagers {peers}")
        for host in layout.hosts:
            print(f"  {host.name}: {host.url}  metrics http://{host.target}/metrics  agent :{host.agent_port}")
        threading.Thread(target=_traffic, args=(deployment, stop, 10.0), daemon=True).start()
        print(f"10 requests/s to each host for {steady_s:.0f} s (the central count trails by a scrape and a send)")
        for _ in range(int(steady_s // 5)):
            time.sleep(5)
            print("  " + _counted(deployment))
        figures = deployment.figures()
        first, last = layout.hosts[0], layout.hosts[-1]
        print(f"{first.name} answers 503 for 4 s: ServerErrors fires centrally and oncall is told once")
        event = time.monotonic()
        for _ in range(20):
            deployment.request(first, "/api/fail")
            time.sleep(0.2)
        alert_s = _Printer.first("ServerErrors") - event
        print(f"{last.name}'s service is killed: its series go stale and ServiceDown fires")
        deployment.hosts[last.name].kill()
        killed = time.monotonic()
        wait_until("stale", lambda: not deployment.query(f'api_requests_total{{host="{last.name}"}}'), 30)
        stale_s = time.monotonic() - killed
        down_s = _Printer.first("ServiceDown") - killed
        print("  " + _counted(deployment))
        print(f"first error -> ServerErrors notification: {alert_s:.1f} s")
        print(f"service killed -> its series stale: {stale_s:.1f} s, -> ServiceDown notification: {down_s:.1f} s")
        for name, figure in figures.items():
            print(f"{name}: {'-' if figure is None else f'{figure:.3g}'}")
        if keep_s:
            print(f"running {keep_s:.0f} s more (0 to Ctrl-C: until then)" if keep_s > 0 else "running until Ctrl-C")
            time.sleep(keep_s if keep_s > 0 else 10**9)
    stop.set()
    receiver.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3, help="hosts of the service (3; each on 127.0.0.<n+1>)")
    parser.add_argument("--steady", type=float, default=35.0, help="seconds of steady traffic before the failures (35)")
    parser.add_argument("--keep", type=float, default=0.0, help="then keep running this long (-1: until Ctrl-C)")
    parser.add_argument("--directory", type=Path, default=None, help="where configurations, data and logs go")
    parser.add_argument("--render", type=Path, default=None, help="only write the configurations here, then exit")
    args = parser.parse_args(argv)
    if args.render is not None:
        args.render.mkdir(parents=True, exist_ok=True)
        for name, text in render(Layout.default(args.hosts)).items():
            (args.render / name).write_text(text)
        return 0
    directory = args.directory or Path(tempfile.mkdtemp(prefix="scale-demo-"))
    print(f"configurations, data and logs in {directory}")
    return demo(args.hosts, args.steady, args.keep, directory)


if __name__ == "__main__":
    sys.exit(main())
