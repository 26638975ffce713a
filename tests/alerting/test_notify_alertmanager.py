"""Forwarding to Alertmanager: a real prometheus-alertmanager on loopback, and the re-send rules on a clock."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from notify_peers import Receiver, Reply, alert, receivers_fixture  # noqa: F401  (the `receivers` fixture)

from chat_turbo_metrics.alerting import AlertmanagerForwarder, Dispatcher, RetryPolicy
from conftest import free_port, require_tool

T0 = 1_800_000_000.0
FAST_RETRY = RetryPolicy(deadline_s=5.0, backoff_base_s=0.01, backoff_max_s=0.05)


@pytest.fixture
def alertmanager(tmp_path: Path, receivers) -> Iterator[tuple[str, Receiver]]:
    """A real Alertmanager on 127.0.0.1 whose only receiver is a webhook to a test HTTP server."""
    binary = require_tool("prometheus-alertmanager")
    hook = receivers()
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "route:\n"
        "  receiver: hook\n"
        "  group_by: ['alertname']\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: hook\n"
        "    webhook_configs:\n"
        f"      - url: {hook.url}/hook\n"
        "        send_resolved: true\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"alertmanager did not start: {process.stderr.read().decode() if process.stderr else ''}")
            time.sleep(0.1)
        yield url, hook
    finally:
        process.terminate()
        process.wait(10)


def test_forwarded_alert_reaches_alertmanagers_webhook_and_resolves(alertmanager) -> None:
    url, hook = alertmanager
    dispatcher = Dispatcher(retry=FAST_RETRY)
    try:
        dispatcher.add_forwarder(AlertmanagerForwarder([url], generator_url="http://chat.example/alerts"))
        now = time.time()
        firing = dataclasses.replace(alert(instance="web-1", at=now - 60), annotations={"summary": "CPU at 97%"})
        dispatcher.on_evaluated(now, (firing,))
        assert dispatcher.flush(10.0)
        assert dispatcher.stats.snapshot()["alertmanager"]["sent"] == 1
        (request,) = hook.wait_for(1, timeout_s=20)
        body = request.json()
        assert body["status"] == "firing"
        (received,) = body["alerts"]
        assert received["labels"] == dict(firing.labels)
        assert received["annotations"] == {"summary": "CPU at 97%"}
        assert received["generatorURL"] == "http://chat.example/alerts"
        assert abs(_seconds(received["startsAt"]) - (now - 60)) < 0.01

        later = time.time()
        dispatcher.on_evaluated(later, (dataclasses.replace(firing, state="resolved", resolved_at=later),))
        assert dispatcher.flush(10.0)
        resolved = hook.wait_for(2, timeout_s=20)[1].json()
        assert resolved["status"] == "resolved"
        assert resolved["alerts"][0]["labels"] == dict(firing.labels)
        assert abs(_seconds(resolved["alerts"][0]["endsAt"]) - later) < 0.01
    finally:
        dispatcher.shutdown(5.0)


def _seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_firing_alerts_are_resent_every_interval_and_resolved_once(receivers) -> None:
    first, second = receivers(), receivers()
    second.default = Reply(503)  # a sick replica: retried, and never in the way of the healthy one
    dispatcher = Dispatcher(retry=RetryPolicy(deadline_s=0.2, backoff_base_s=0.01, backoff_max_s=0.02))
    try:
        dispatcher.add_forwarder(AlertmanagerForwarder([first.url, second.url + "/prefix/"], resend_interval_s=60))
        firing = alert(at=T0)
        silenced = dataclasses.replace(alert("Muted", at=T0), silenced=True)
        for offset in range(0, 181, 15):
            dispatcher.on_evaluated(T0 + offset, (firing, silenced))
        dispatcher.on_evaluated(T0 + 195, (dataclasses.replace(firing, state="resolved", resolved_at=T0 + 195),))
        dispatcher.on_evaluated(T0 + 210, ())
        assert dispatcher.flush(10.0)
        batches = [r.json() for r in first.requests]
        assert {r.path for r in first.requests} == {"/api/v2/alerts"}
        assert {r.path for r in second.requests} == {"/prefix/api/v2/alerts"}
        assert [[a["labels"]["alertname"] for a in batch] for batch in batches] == [["HighCPU"]] * 5
        ends = [_seconds(batch[0]["endsAt"]) - T0 for batch in batches]
        assert ends == [240, 300, 360, 420, 195]  # sent at 0, 60, 120, 180 valid for 4 intervals; resolved at 195
        stats = dispatcher.stats.snapshot()
        assert stats["alertmanager"]["sent"] == 5
        assert stats["alertmanager-2"]["failed"] == 5
    finally:
        dispatcher.shutdown(5.0)


def test_forwarder_rejects_a_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="urls"):
        AlertmanagerForwarder(["ftp://127.0.0.1:9093"])
    with pytest.raises(ValueError, match="resend_interval_s"):
        AlertmanagerForwarder("http://127.0.0.1:9093", resend_interval_s=0)
    assert json.loads(AlertmanagerForwarder("http://x").due(T0, [alert(at=T0)])[0])[0]["startsAt"].endswith("Z")


def test_a_resolved_alert_is_resent_every_interval_for_fifteen_minutes_as_prometheus_does() -> None:
    forwarder = AlertmanagerForwarder("http://127.0.0.1:9093", resend_interval_s=60)
    firing = alert(at=T0)
    forwarder.due(T0, [firing])
    resolved = dataclasses.replace(firing, state="resolved", resolved_at=T0 + 30)
    sent = {offset: forwarder.due(T0 + offset, [resolved] if offset == 30 else []) for offset in range(30, 1200, 15)}
    times = [offset for offset, batches in sent.items() if batches]
    assert times == list(range(30, 30 + 901, 60))  # at the resolution, then every minute for 15 minutes
    bodies = {json.loads(batches[0])[0]["endsAt"] for batches in sent.values() if batches}
    assert len(bodies) == 1  # always the same end time
    assert forwarder.due(T0 + 1300, [firing]) != []  # firing again is news at once


def test_a_wall_clock_step_back_does_not_stop_the_resends() -> None:
    forwarder = AlertmanagerForwarder("http://127.0.0.1:9093", resend_interval_s=60)
    firing = alert(at=T0)
    sent = [bool(forwarder.due(T0 + offset - (3600 if offset >= 90 else 0), [firing])) for offset in range(0, 300, 30)]
    assert sent.count(True) >= 4  # about once a minute; on the wall clock alone: none for an hour
