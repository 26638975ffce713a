"""The shipped dashboards and Prometheus configuration, checked against a real Prometheus scraping a real service.

``configs/prometheus/prometheus.yml`` (its target's port rewritten to the test's, its intervals to 1 s) scrapes
``tests/dashboard_service.py``: a Flask application measured by the HTTP instrumentor, with SQLAlchemy on SQLite,
Redis, the system instrumentor and an alert manager that fires and notifies. Once a few scrapes are in, every
panel query of every dashboard in ``configs/grafana/`` (template variables substituted) goes through Prometheus's
HTTP API and must be valid and return data; so must every variable query and every exported alert rule, which
``promtool check rules`` must accept too, and which must be exactly what ``rules export`` writes. The service runs
twice: with the seed's names, for ``chat-turbo-service.json``, and under ``OTEL_SEMCONV_STABILITY_OPT_IN=http,database``
(the semantic conventions' names), for ``chat-turbo-service-semconv.json``; the alerting dashboard, whose names do
not change, is checked against both. The service keeps the default ``otel_scope_*`` labels on every sample.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from chat_turbo_metrics.__main__ import main
from conftest import clean_env, free_port, port_open, require, require_tool

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "configs" / "grafana"
PROMETHEUS = ROOT / "configs" / "prometheus"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
SCRAPES = 5  # scrapes to wait for before querying (1 s apart): enough for every rate() to have two samples
PATIENCE_S = 20.0
MODES = {"seed": {}, "semconv": {"OTEL_SEMCONV_STABILITY_OPT_IN": "http,database"}}  # the service's environment
# Which naming each dashboard is written for (the alerting names are the same in both).
RUNS = {
    "chat-turbo-service.json": ("seed",),
    "chat-turbo-service-semconv.json": ("semconv",),
    "chat-turbo-alerting.json": ("seed", "semconv"),
}
CHECKS = [
    pytest.param(mode, GRAFANA / name, id=f"{Path(name).stem}-{mode}") for name, modes in RUNS.items() for mode in modes
]


@dataclass
class Prometheus:
    base_url: str
    log_path: Path

    def query(self, expr: str) -> dict[str, Any]:
        """The API's whole answer to an instant query (status, data or error)."""
        body = urllib.parse.urlencode({"query": expr}).encode()
        try:
            with urllib.request.urlopen(f"{self.base_url}/api/v1/query", data=body, timeout=5) as response:
                return json.load(response)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as error:  # 400 for a query that does not parse: the answer says why
            text = error.read().decode(errors="replace")
            try:
                return json.loads(text)  # type: ignore[no-any-return]
            except ValueError:  # not ready yet: plain text
                return {"status": "error", "error": text}

    def rules(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.base_url}/api/v1/rules", timeout=5) as response:
            return [rule for group in json.load(response)["data"]["groups"] for rule in group["rules"]]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]


@dataclass
class Scraped:
    prometheus: Prometheus
    substitutions: dict[str, str]


def scrape_config(directory: Path, target_port: int) -> tuple[Path, str]:
    """The shipped prometheus.yml for this test: its target on ``target_port``, 1 s intervals, no Alertmanager."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    config.pop("alerting")  # no Alertmanager here
    [job] = config["scrape_configs"]
    [static] = job["static_configs"]
    [target] = static["targets"]
    static["targets"] = [re.sub(r":\d+$", f":{target_port}", target)]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path, str(job["job_name"])


def wait_until(what: str, check: Any, prometheus: Prometheus | None = None) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what} after {PATIENCE_S} s" + (f"; prometheus log:\n{prometheus.log()}" if prometheus else "")
            )
        time.sleep(0.2)


@contextlib.contextmanager
def serving(binary: str, directory: Path, mode: str) -> Iterator[tuple[Scraped, Callable[[], None]]]:
    """The service naming as ``mode`` says and a Prometheus scraping it, started; and how to wait for the scrapes."""
    service_port = free_port()
    service = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "dashboard_service.py"), str(service_port),
         str(directory / "chat.db"), f"dashboards-{service_port}"],
        env=clean_env(METRICS_PROMETHEUS_SCOPE_LABELS="true", **MODES[mode]),
        stdout=subprocess.DEVNULL, stderr=(directory / "service.log").open("wb"),
    )  # fmt: skip
    prometheus_process: subprocess.Popen[bytes] | None = None
    try:
        config, job = scrape_config(directory, service_port)
        api_port = free_port()
        log_path = directory / "prometheus.log"
        with log_path.open("wb") as log:
            prometheus_process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{api_port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        prometheus = Prometheus(f"http://127.0.0.1:{api_port}", log_path)

        def scrapes() -> bool:
            assert service.poll() is None, (directory / "service.log").read_text(errors="replace")[-3000:]
            try:
                answer = prometheus.query(f'count_over_time(up{{job="{job}"}}[1m]) >= {SCRAPES} and up == 1')
            except OSError:
                return False
            return bool(answer.get("data", {}).get("result"))

        substitutions = {
            "job": job,
            "instance": f"127.0.0.1:{service_port}",
            "__rate_interval": "10s",  # what Grafana makes of a 1 s scrape interval, rounded up
            "__range": "1m",
            "datasource": "prometheus",
        }
        yield (
            Scraped(prometheus, substitutions),
            lambda: wait_until(f"{SCRAPES} successful scrapes of the service ({mode} names)", scrapes, prometheus),
        )
    finally:
        for process in (prometheus_process, service):
            if process is not None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="module")
def scraped_by_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scraped]]:
    """For each naming, a real Prometheus that has scraped the service a few times (both started at once)."""
    binary = require_tool("prometheus")
    require(port_open("127.0.0.1", 6379), "Redis is not running on 127.0.0.1:6379")
    with contextlib.ExitStack() as stack:
        started = {
            mode: stack.enter_context(serving(binary, tmp_path_factory.mktemp(f"dashboards-{mode}"), mode))
            for mode in MODES
        }
        for _, wait in started.values():
            wait()
        yield {mode: scraped for mode, (scraped, _) in started.items()}


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with Grafana's ``$name``, ``${name}`` and ``[[name]]`` variables replaced by ``values``."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        assert name in values, f"unknown template variable {name!r} in {expr!r}"
        return values[name]  # one value each; a "." in an instance matches itself too

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_the_dashboards_are_current_grafana_json_with_unique_ids() -> None:
    assert {path.name for path in DASHBOARDS} == set(RUNS)
    uids = set()
    for path in DASHBOARDS:
        dashboard = load(path)
        assert dashboard["schemaVersion"] >= 39, path  # Grafana 11 and later
        uids.add(dashboard["uid"])
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        for panel in panels(dashboard):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            assert all(target["expr"] for target in panel["targets"]), panel["title"]
    assert len(uids) == len(DASHBOARDS)


def metric_names(dashboard: dict[str, Any]) -> set[str]:
    """The series names the panels' queries select (``name{...}``)."""
    return {
        name
        for panel in panels(dashboard)
        for target in panel["targets"]
        for name in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", target["expr"])
    }


def test_the_semconv_service_dashboard_has_the_seed_ones_panels_on_the_conventions_names() -> None:
    seed, semconv = load(GRAFANA / "chat-turbo-service.json"), load(GRAFANA / "chat-turbo-service-semconv.json")
    layout = [(p["id"], p["type"], p["title"], p["gridPos"]) for p in seed["panels"]]
    assert [(p["id"], p["type"], p["title"], p["gridPos"]) for p in semconv["panels"]] == layout
    assert [v["name"] for v in semconv["templating"]["list"]] == [v["name"] for v in seed["templating"]["list"]]
    # Only the names the semantic conventions do not rename are shared; HTTP, database, Redis and process read
    # http_server_*, db_client_* and process_* (the system instrumentor's seed gauges would work too, but are not
    # what a semconv dashboard should show).
    assert metric_names(seed) & metric_names(semconv) == {
        "cache_hit_ratio", "cache_hits_total", "cache_misses_total", "python_gc_collections_total",
        "chat_turbo_metrics_series", "chat_turbo_metrics_exports_total",
    }  # fmt: skip
    assert {name.split("_")[0] for name in metric_names(semconv) - metric_names(seed)} == {"http", "db", "process"}


@pytest.mark.parametrize(("mode", "path"), CHECKS)
def test_every_panel_query_is_valid_and_returns_data(
    scraped_by_mode: dict[str, Scraped], mode: str, path: Path
) -> None:
    scraped = scraped_by_mode[mode]
    dashboard = load(path)
    problems = []
    checked = 0
    # A series the service starts late (the alert's notification counter: after the rule fires and the route's
    # group wait) may have had one scrape only, and increase() needs two: such a query is asked again, within the
    # test's patience. An invalid query fails at once.
    deadline = time.monotonic() + PATIENCE_S
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = substitute(target["expr"], scraped.substitutions)
            answer = scraped.prometheus.query(expr)
            while answer["status"] == "success" and not answer["data"]["result"] and time.monotonic() < deadline:
                time.sleep(0.5)
                answer = scraped.prometheus.query(expr)
            checked += 1
            if answer["status"] != "success":
                problems.append(f"{panel['title']!r}: {expr}: {answer.get('error')}")
            elif not answer["data"]["result"]:
                problems.append(f"{panel['title']!r}: {expr}: no data")
    assert checked >= 5
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(("mode", "path"), CHECKS)
def test_every_template_variable_lists_the_scraped_service(
    scraped_by_mode: dict[str, Scraped], mode: str, path: Path
) -> None:
    scraped = scraped_by_mode[mode]
    for variable in load(path)["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert match, variable["definition"]
        selector, label = substitute(match.group(1), scraped.substitutions), match.group(2)
        answer = scraped.prometheus.query(f"count by ({label}) ({selector})")
        assert answer["status"] == "success", answer
        found = {series["metric"][label] for series in answer["data"]["result"]}
        assert found == {scraped.substitutions[variable["name"]]}, variable["name"]


def test_the_shipped_rules_are_the_export_of_the_shipped_rule_file(tmp_path: Path) -> None:
    exported = tmp_path / "alert_rules.yml"
    assert main(["rules", "export", str(ROOT / "configs" / "alert_rules.toml"), "-o", str(exported)]) == 0
    assert (PROMETHEUS / "alert_rules.yml").read_text(encoding="utf-8") == exported.read_text(encoding="utf-8")


def test_promtool_accepts_the_exported_rules_and_the_scrape_config() -> None:
    promtool = require_tool("promtool")
    for command in (["check", "rules", str(PROMETHEUS / "alert_rules.yml")],
                    ["check", "config", str(PROMETHEUS / "prometheus.yml")]):  # fmt: skip
        result = subprocess.run([promtool, *command], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_loads_every_exported_rule_and_each_reads_scraped_data(scraped_by_mode: dict[str, Scraped]) -> None:
    scraped = scraped_by_mode["seed"]  # the shipped rules read the seed's names
    exported = yaml.safe_load((PROMETHEUS / "alert_rules.yml").read_text(encoding="utf-8"))
    rules = [rule for group in exported["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in scraped.prometheus.rules()} == {rule["alert"] for rule in rules}
    for rule in rules:
        # The rule's query without its threshold: valid, and there is data for it to compare.
        reading = re.sub(r"\s*(>=|<=|==|!=|>|<)\s*[-+0-9.eE]+$", "", rule["expr"])
        assert reading != rule["expr"], rule["expr"]
        answer = scraped.prometheus.query(reading)
        assert answer["status"] == "success", (rule["alert"], answer)
        assert answer["data"]["result"], f"{rule['alert']}: {reading} returns no data"
