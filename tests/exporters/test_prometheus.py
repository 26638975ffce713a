"""PrometheusExporter end to end: ``promtool`` lint, ``/metrics`` over real HTTP, a real Prometheus scraping it.

Monitors record through the public API on private pipelines; the exporter listens on 127.0.0.1 port 0. The
real-Prometheus tests share one ``prometheus`` process (scrape interval 1 s) for the whole module.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat_turbo_metrics import MonitoringConfig, PerformanceMonitor, get_monitoring_config
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter
from conftest import free_port, make_config, require_tool

MonitorFactory = Callable[..., PerformanceMonitor]
TRICKY = 'say "hi" \\ back\\slash\nnext line ünïcødé 日本 \u2028 end'
TRICKY_ESCAPED = 'say \\"hi\\" \\\\ back\\\\slash\\nnext line ünïcødé 日本 \u2028 end'
API_TAGS = {"method": "GET", "endpoint": "/api/messages", "status": 200}
# promtool lints the seed's documented gauge name (kept as documented, see naming.py); nothing else may appear.
ACCEPTED_LINTS = {"memory_usage_mb metric names should not contain abbreviated units"}
PROMETHEUS_PATIENCE_S = 30.0


def record_everything(monitor: PerformanceMonitor) -> None:
    """Counters, gauges, histograms and timers, with ordinary and hostile tag values."""
    for _ in range(3):
        monitor.increment_counter("messages_sent", {"channel": "public"})
    monitor.increment_counter("api_requests_total", API_TAGS)
    monitor.increment_counter("errors")
    monitor.increment_counter("bytes_received", {"peer": TRICKY}, value=2.5)
    monitor.record_gauge("memory_usage_mb", 256.5)
    monitor.record_gauge("active_connections", 12, {"node": "a"})
    monitor.record_gauge("cpu_usage_percent", 3.25, {"http.route": "/chat/{id}"})
    monitor.record_histogram("http_request_duration_seconds", 0.12, {"route": TRICKY, "status": 200})
    monitor.record_histogram("payload_bytes", 512, {"compressed": True})
    monitor.record_timer("api_request", time.perf_counter() - 0.3, API_TAGS)
    with monitor.timer("message_processing", {"channel": "ünïcødé"}):
        pass


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and raw body of a GET; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def scrape(exporter: PrometheusExporter) -> str:
    status, _, body = get(exporter.url)
    assert status == 200
    return body.decode("utf-8")


def served_by(monitor: PerformanceMonitor) -> PrometheusExporter:
    exporter = PrometheusExporter(host="127.0.0.1", port=0, scope_labels=False)
    monitor.add_exporter(exporter)
    return exporter


# --- promtool ---------------------------------------------------------------------------------


def test_scrape_passes_promtool_check_metrics(monitor_factory: MonitorFactory, recording: str) -> None:
    promtool = require_tool("promtool")
    monitor = monitor_factory(recording=recording)
    exporter = served_by(monitor)
    record_everything(monitor)

    text = scrape(exporter)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode("utf-8"), capture_output=True, timeout=30, check=False
    )

    output = (result.stdout + result.stderr).decode("utf-8")
    lints = {line.strip() for line in output.splitlines() if line.strip()}
    assert "no help text" not in output
    assert lints <= ACCEPTED_LINTS, f"promtool: {output}\n--- scraped text ---\n{text}"
    # 0: clean; 3: lint findings only (all of them accepted above); 1 would be a parse error.
    assert result.returncode == (3 if lints else 0), output


def test_every_family_has_help_and_type(monitor_factory: MonitorFactory, recording: str) -> None:
    monitor = monitor_factory(recording=recording)
    exporter = served_by(monitor)
    record_everything(monitor)

    lines = scrape(exporter).splitlines()
    helped = {line.split()[2] for line in lines if line.startswith("# HELP ")}
    typed = {line.split()[2] for line in lines if line.startswith("# TYPE ")}

    assert typed == helped
    assert {
        "messages_sent_total",
        "api_requests_total",
        "errors_total",
        "bytes_received_total",
        "memory_usage_mb",
        "active_connections",
        "cpu_usage_percent",
        "http_request_duration_seconds",
        "payload_bytes",
        "api_request_duration_seconds",
        "message_processing_duration_seconds",
    } <= typed


def test_tag_values_are_escaped_in_the_exposition(monitor_factory: MonitorFactory, recording: str) -> None:
    monitor = monitor_factory(recording=recording)
    exporter = served_by(monitor)
    monitor.increment_counter("bytes_received", {"peer": TRICKY}, value=2.5)

    lines = scrape(exporter).split("\n")  # not splitlines(): U+2028 is not a line break in the exposition

    assert f'bytes_received_total{{peer="{TRICKY_ESCAPED}"}} 2.5' in lines


def test_undecodable_tag_value_does_not_break_every_scrape(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = served_by(monitor)
    monitor.increment_counter("messages_sent", {"channel": "public"})
    monitor.increment_counter("files_seen", {"name": b"caf\xe9".decode("utf-8", "surrogateescape")})

    status, _, body = get(exporter.url)

    assert status == 200
    assert b'messages_sent_total{channel="public"} 1' in body


def test_boolean_tag_values_render_as_json_booleans(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = served_by(monitor)
    monitor.increment_counter("cache_lookups", {"hit": True})

    assert 'cache_lookups_total{hit="true"} 1' in scrape(exporter).split("\n")


def test_tag_keys_that_sanitize_alike_keep_both_values(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = served_by(monitor)
    monitor.increment_counter("pairs", {"a.b": "x", "a_b": "y"})

    assert 'pairs_total{a_b="x;y"} 1' in scrape(exporter).split("\n")


# --- the HTTP endpoint --------------------------------------------------------------------------


def test_metrics_are_served_over_http(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = served_by(monitor)
    monitor.increment_counter("messages_sent", {"channel": "public"})

    status, headers, body = get(f"http://127.0.0.1:{exporter.port}/metrics")

    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    assert b'messages_sent_total{channel="public"} 1\n' in body
    assert exporter.url == f"http://127.0.0.1:{exporter.port}/metrics"


def test_a_scrape_sees_recordings_made_since_the_last_scrape(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = served_by(monitor)
    monitor.increment_counter("messages_sent", {"channel": "public"})
    scrape(exporter)

    monitor.increment_counter("messages_sent", {"channel": "public"}, value=4)

    assert 'messages_sent_total{channel="public"} 5' in scrape(exporter).splitlines()


@pytest.mark.parametrize("path", ["/metricz", "/metrics/extra", "/favicon.ico"])
def test_other_paths_answer_404(monitor_factory: MonitorFactory, path: str) -> None:
    exporter = served_by(monitor_factory())

    status, _, _ = get(f"http://127.0.0.1:{exporter.port}{path}")

    assert status == 404


def test_scrape_is_gzip_compressed_when_the_client_accepts_it(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = served_by(monitor)
    record_everything(monitor)

    status, headers, body = get(exporter.url, {"Accept-Encoding": "gzip"})

    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(body)
    assert gzip.decompress(body).decode("utf-8") == exporter.render()


def test_scrape_is_plain_when_the_client_does_not_ask_for_gzip(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = served_by(monitor)
    record_everything(monitor)

    status, headers, body = get(exporter.url)

    assert status == 200
    assert "Content-Encoding" not in headers
    assert body.decode("utf-8") == exporter.render()


def test_scrape_is_plain_when_the_client_refuses_gzip(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = served_by(monitor)
    record_everything(monitor)

    status, headers, body = get(exporter.url, {"Accept-Encoding": "gzip;q=0, identity"})

    assert status == 200
    assert "Content-Encoding" not in headers
    assert body.decode("utf-8") == exporter.render()


def test_default_host_is_localhost() -> None:
    assert MonitoringConfig().prometheus_host == "localhost"
    assert PrometheusExporter.from_config(MonitoringConfig(prometheus_port=0)).host == "localhost"


def test_binds_to_loopback_only_by_default(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    exporter = PrometheusExporter.from_config(make_config(prometheus_port=0))
    assert exporter.host == "localhost"
    monitor.add_exporter(exporter)

    status, _, _ = get(f"http://127.0.0.1:{exporter.port}/metrics")
    assert status == 200
    # The listening socket's own address says it accepts loopback connections only (no traffic leaves 127/8).
    bound = exporter._endpoint.address  # type: ignore[union-attr]
    assert bound.startswith("127.") or bound == "::1"


def test_port_in_use_raises_oserror_naming_host_and_port(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}\b") as raised:
            monitor.add_exporter(PrometheusExporter(host="127.0.0.1", port=port))

    assert raised.value.errno == errno.EADDRINUSE
    assert monitor.pipeline is not None
    assert monitor.pipeline.pull_exporters == ()


# --- a real Prometheus server --------------------------------------------------------------------


@dataclass
class PrometheusServer:
    """A running ``prometheus`` process and its HTTP API."""

    base_url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful answer of the HTTP API at ``path`` (``/api/v1/series``, ...)."""
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("/api/v1/query", query=expr)["result"]  # type: ignore[no-any-return]

    def exemplars(self, expr: str) -> list[dict[str, Any]]:
        """Every exemplar Prometheus stored for ``expr`` in the last hour."""
        now = time.time()
        query = urllib.parse.urlencode({"query": expr, "start": now - 3600, "end": now + 60})
        with urllib.request.urlopen(f"{self.base_url}/api/v1/query_exemplars?{query}", timeout=5) as response:
            body = json.load(response)
        return [exemplar for series in body["data"] for exemplar in series["exemplars"]]

    def wait_for(self, expr: str, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``done(result)``; fail with the last result and Prometheus's log at the deadline."""
        return self._poll(self.query, expr, done)

    def wait_exemplars(self, expr: str, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        """Poll the exemplars of ``expr`` until ``done(exemplars)``; fail at the deadline."""
        return self._poll(self.exemplars, expr, done)

    def _poll(
        self, ask: Callable[[str], list[dict[str, Any]]], expr: str, done: Callable[[list[dict[str, Any]]], bool]
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + PROMETHEUS_PATIENCE_S
        while True:
            result = ask(expr)
            if done(result):
                return result
            if time.monotonic() > deadline:
                log = self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                pytest.fail(f"{expr!r} still {result} after {PROMETHEUS_PATIENCE_S} s; prometheus log:\n{log}")
            time.sleep(0.25)


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def start_prometheus(
    directory: Path, target_port: int, extra_targets: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], PrometheusServer]:
    binary = require_tool("prometheus")
    targets = ", ".join(f"'{t}'" for t in [f"127.0.0.1:{target_port}", *(extra_targets or [])])
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: chat_turbo\n"
        "    static_configs:\n"
        f"      - targets: [{targets}]\n",
        encoding="utf-8",
    )
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--enable-feature=exemplar-storage",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, PrometheusServer(f"http://127.0.0.1:{port}", log_path)


def wait_ready(process: subprocess.Popen[bytes], server: PrometheusServer) -> None:
    deadline = time.monotonic() + PROMETHEUS_PATIENCE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{server.base_url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    log = server.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    pytest.fail(f"prometheus did not become ready (exit code {process.poll()}); log:\n{log}")


def stop_prometheus(process: subprocess.Popen[bytes]) -> None:
    """Stop a Prometheus this test started: terminated, killed if it does not exit within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Scraped:
    monitor: PerformanceMonitor
    prometheus: PrometheusServer


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """One monitor (default recording path) served on 127.0.0.1, scraped every second by a real Prometheus."""
    require_tool("prometheus")
    monitor = PerformanceMonitor(make_config())
    exporter = served_by(monitor)
    process, server = start_prometheus(tmp_path_factory.mktemp("prometheus"), exporter.port)
    try:
        wait_ready(process, server)
        server.wait_for('up{job="chat_turbo"}', lambda result: values(result) == [1.0])
        yield Scraped(monitor, server)
    finally:
        stop_prometheus(process)
        monitor.shutdown()


def test_prometheus_sums_a_counter(scraped: Scraped) -> None:
    sent = 7
    for _ in range(sent):
        scraped.monitor.increment_counter("messages_sent", {"channel": "public"})

    result = scraped.prometheus.wait_for("sum(messages_sent_total)", lambda r: values(r) == [sent])

    assert values(result) == [sent]
    (series,) = scraped.prometheus.query("messages_sent_total")
    assert series["metric"]["channel"] == "public"
    assert series["metric"]["job"] == "chat_turbo"


def test_prometheus_reads_a_gauge(scraped: Scraped) -> None:
    scraped.monitor.record_gauge("memory_usage_mb", 256.5)

    result = scraped.prometheus.wait_for("memory_usage_mb", lambda r: values(r) == [256.5])

    assert result[0]["metric"]["__name__"] == "memory_usage_mb"


def test_prometheus_histogram_quantile_falls_in_the_observed_bucket(scraped: Scraped) -> None:
    prometheus, monitor = scraped.prometheus, scraped.monitor
    # Two batches seen by two different scrapes, so rate() over the buckets has an increase to work with.
    batch = 20
    for scraped_total in (batch, 2 * batch):
        for _ in range(batch):
            # ~0.3 s: inside the (0.25, 0.5] bucket of the HTTP duration buckets.
            monitor.record_timer("api_request", time.perf_counter() - 0.3, API_TAGS)
        prometheus.wait_for("sum(api_request_duration_seconds_count)", lambda r, n=scraped_total: values(r) == [n])

    result = prometheus.wait_for(
        "histogram_quantile(0.95, rate(api_request_duration_seconds_bucket[1m]))",
        lambda r: len(r) == 1 and values(r)[0] == values(r)[0],  # not NaN
    )

    (p95,) = values(result)
    assert 0.25 < p95 <= 0.5
    assert result[0]["metric"]["endpoint"] == "/api/messages"
    (sum_s,) = values(prometheus.query("sum(api_request_duration_seconds_sum)"))
    assert 0.3 * 2 * batch <= sum_s < 0.5 * 2 * batch


def test_prometheus_keeps_a_hostile_label_value_exactly(scraped: Scraped) -> None:
    scraped.monitor.increment_counter("label_roundtrip", {"text": TRICKY, "plain": "yes"})

    (series,) = scraped.prometheus.wait_for('label_roundtrip_total{plain="yes"}', lambda r: len(r) == 1)

    assert series["metric"]["text"] == TRICKY
    assert values([series]) == [1.0]


def test_exporter_can_attach_again_once_the_port_is_free(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    exporter = PrometheusExporter(host="127.0.0.1", port=port, scope_labels=False)
    with pytest.raises(OSError, match="cannot listen"):
        monitor.add_exporter(exporter)
    squatter.close()

    monitor.add_exporter(exporter)
    monitor.increment_counter("retried")

    assert "retried_total 1" in scrape(exporter).splitlines()


def test_series_whose_keys_sanitize_alike_are_one_series_not_two(
    monitor_factory: MonitorFactory, recording: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Collisions are warned about once per process, so each recording path uses names of its own.
    hits, depth = f"hits_{recording}", f"depth_{recording}"
    monitor = monitor_factory(recording=recording)
    monitor.increment_counter(hits, {"http.route": "/a"})
    monitor.increment_counter(hits, {"http_route": "/a"}, value=2)
    monitor.record_gauge(depth, 1, {"q.name": "x"})
    monitor.record_gauge(depth, 9, {"q_name": "x"})

    with caplog.at_level("WARNING", logger="chat_turbo_metrics.exposition"):
        lines = monitor.snapshot().to_prometheus().splitlines()

    assert [line for line in lines if line.startswith(hits)] == [f'{hits}_total{{http_route="/a"}} 3']
    assert [line for line in lines if line.startswith(depth)] == [f'{depth}{{q_name="x"}} 1']
    # One warning per colliding family, naming the family and the labels both series map to.
    warned = sorted(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert [message.split(": ")[0] for message in warned] == [depth, f"{hits}_total"]
    assert '{q_name="x"}' in warned[0]
    assert '{http_route="/a"}' in warned[1]


def test_constructor_defaults_never_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The configuration reaches an exporter through from_config only; the constructor knows its defaults.
    monkeypatch.setenv("METRICS_PROMETHEUS_PORT", "9100")
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
    exporter = PrometheusExporter()
    configured = PrometheusExporter.from_config(make_config(prometheus_host="127.0.0.1", prometheus_port=9100))

    assert (exporter.host, exporter.port) == ("localhost", 9464)
    assert (configured.host, configured.port) == ("127.0.0.1", 9100)


# --- tag keys Prometheus reserves ----------------------------------------------------------------------

POISONED = json.loads(b'{"channel":"general\\udce9"}')["channel"]


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_reserved_tag_keys_are_renamed_in_the_exposition_and_warned_once(
    monitor_factory: MonitorFactory, recording: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Warnings are once per process and family: each recording path uses names of its own.
    latency, orders = f"reserved_latency_{recording}", f"reserved_orders_{recording}"
    monitor = monitor_factory(recording=recording, resource_attributes={"__name__": "svc", "team": "chat"})
    monitor.record_histogram(latency, 0.2, {"le": "user", "route": "/a"})
    monitor.increment_counter(orders, {"__name__": "n", "__meta_x": "m", "le": "x", "quantile": "0.9"})

    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.exposition"):
        text = monitor.snapshot().to_prometheus()
        assert monitor.snapshot().to_prometheus() == text

    found = families(text)
    samples = found[latency].samples
    assert [s.labels for s in samples if s.name.endswith("_count")] == [{"exported_le": "user", "route": "/a"}]
    assert sorted({s.labels["le"] for s in samples if s.name.endswith("_bucket")}, key=float)[-1] == "+Inf"
    # le and quantile mean nothing special on a counter: Prometheus stores them as they are.
    assert [s.labels for s in found[orders].samples] == [{"_name_": "n", "_meta_x": "m", "le": "x", "quantile": "0.9"}]
    assert found["target_info"].samples[0].labels["_name_"] == "svc"
    warned = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and (latency in r.getMessage() or orders in r.getMessage())
    ]
    assert len(warned) == 3  # le on the histogram; __name__ and __meta_x on the counter; each once


def test_tag_key_underscores_collapse_as_the_opentelemetry_spec_says(monitor_factory: MonitorFactory) -> None:
    monitor = monitor_factory()
    monitor.increment_counter("keys", {"a..b": "1", "c__d": "2", "_e": "3", "9f": "4"})

    (sample,) = families(monitor.snapshot().to_prometheus())["keys"].samples
    assert sample.labels == {"a_b": "1", "c_d": "2", "_e": "3", "_9f": "4"}


def test_prometheus_keeps_the_target_up_with_reserved_keys_and_hostile_values(
    tmp_path: Path, monitor_factory: MonitorFactory
) -> None:
    config = get_monitoring_config("test", env={"OTEL_RESOURCE_ATTRIBUTES": "__name__=x,le=y"})
    monitor = monitor_factory(resource_attributes=config.resource_attributes)
    exporter = served_by(monitor)
    hostile = "\x00 \r \x1b[2J \u2028 " + POISONED
    monitor.increment_counter("orders")
    monitor.record_histogram("checkout_seconds", 0.2, {"le": "user"})
    monitor.increment_counter("named", {"__name__": "n", "text": hostile})
    monitor.record_gauge("percentiles", 3, {"quantile": "0.9"})
    process, server = start_prometheus(tmp_path, exporter.port)
    try:
        wait_ready(process, server)
        server.wait_for("orders_total", lambda result: values(result) == [1.0])

        assert values(server.query('up{job="chat_turbo"}')) == [1.0]
        (bucket,) = server.query('checkout_seconds_bucket{le="+Inf"}')
        assert bucket["metric"]["exported_le"] == "user"
        (named,) = server.query("named_total")
        assert (named["metric"]["_name_"], named["metric"]["text"]) == ("n", "\x00 \r \x1b[2J \u2028 general\ufffd")
        assert server.query("percentiles")[0]["metric"]["quantile"] == "0.9"
        assert server.query("target_info")[0]["metric"]["_name_"] == "x"
    finally:
        process.terminate()
        process.wait(timeout=10)
