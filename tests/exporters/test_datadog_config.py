"""Datadog configuration (DD_* variables, one configuration path), key hygiene and OTEL_METRICS_EXPORTER=datadog
end to end in a subprocess under ``opentelemetry-instrument``."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from datadog_intake import DD_KEY, DROP, Answer, DatadogIntake, points, running_intake, total
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from test_datadog_delivery import _counts

from chat_turbo_metrics import ConfigurationError, PerformanceMonitor, Secret, get_monitoring_config
from chat_turbo_metrics.__main__ import main
from chat_turbo_metrics.exporters import DataDogExporter
from chat_turbo_metrics.exporters.datadog import EnvironmentDataDogExporter
from conftest import require_tool


@pytest.fixture
def intake() -> Iterator[DatadogIntake]:
    with running_intake() as server:
        yield server


def _env(intake: DatadogIntake, **more: str) -> dict[str, str]:
    return {
        "OTEL_METRICS_EXPORTER": "datadog",
        "DD_API_KEY": DD_KEY,
        "CHAT_TURBO_DATADOG_ENDPOINT": intake.url,
        **more,
    }


# --- configuration ------------------------------------------------------------------------------------


def test_dd_variables_fill_the_datadog_settings() -> None:
    env = {
        "DD_API_KEY": f"  {DD_KEY} ",
        "DD_SITE": "DatadogHQ.eu",
        "DD_ENV": "prod",
        "DD_SERVICE": "chat-api",
        "DD_VERSION": "2.1.0",
        "DD_TAGS": "team:chat, region:eu  canary",
        "DD_HOSTNAME": "web-1",
        "CHAT_TURBO_DATADOG_ENDPOINT": "https://proxy.internal:8443/datadog",
        "CHAT_TURBO_DATADOG_HISTOGRAM_BUCKETS": "true",
    }
    config = get_monitoring_config("test", env=env)
    assert config.datadog_api_key == Secret(DD_KEY)
    assert config.datadog_site == "datadoghq.eu"
    assert (config.datadog_env, config.datadog_service, config.datadog_version) == ("prod", "chat-api", "2.1.0")
    assert config.datadog_tags == ("team:chat", "region:eu", "canary")
    assert config.datadog_host == "web-1"
    assert config.datadog_endpoint == Secret("https://proxy.internal:8443/datadog")
    assert config.datadog_histogram_buckets is True
    assert DataDogExporter.from_config(config).series_url == "https://proxy.internal:8443/datadog/api/v2/series"


def test_site_gives_the_intake_url() -> None:
    config = get_monitoring_config("test", env={"DD_API_KEY": DD_KEY, "DD_SITE": "us5.datadoghq.com"})
    assert DataDogExporter.from_config(config).series_url == "https://api.us5.datadoghq.com/api/v2/series"
    assert DataDogExporter(DD_KEY).series_url == "https://api.datadoghq.com/api/v2/series"


def test_a_bad_site_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"DD_SITE.*'https://datadoghq.com'"):
        get_monitoring_config("test", env={"DD_SITE": "https://datadoghq.com"})


def test_missing_api_key_with_the_datadog_exporter_names_dd_api_key() -> None:
    config = get_monitoring_config("test", env={"OTEL_METRICS_EXPORTER": "datadog"})
    with pytest.raises(ConfigurationError, match="DD_API_KEY"):
        PerformanceMonitor(config)


@pytest.mark.parametrize(
    "endpoint",
    ["http://intake.example.com", "http://10.0.0.8:8080", "ftp://127.0.0.1", "127.0.0.1:8080", "https://x/?a=1"],
)
def test_endpoints_that_are_not_https_or_loopback_http_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigurationError, match="endpoint"):
        DataDogExporter(DD_KEY, endpoint=endpoint)


def test_a_bad_endpoint_variable_is_named_in_the_error() -> None:
    env = {"DD_API_KEY": DD_KEY, "CHAT_TURBO_DATADOG_ENDPOINT": "http://intake.example.com"}
    with pytest.raises(ConfigurationError, match=r"^CHAT_TURBO_DATADOG_ENDPOINT='http://intake.example.com': plain"):
        DataDogExporter.from_config(get_monitoring_config("test", env=env))


@pytest.mark.parametrize(
    ("endpoint", "series_url"),
    [
        ("http://127.0.0.1:9", "http://127.0.0.1:9/api/v2/series"),
        ("http://localhost:9/", "http://localhost:9/api/v2/series"),
        ("http://[::1]:9", "http://[::1]:9/api/v2/series"),
        ("https://proxy.example/dd", "https://proxy.example/dd/api/v2/series"),
    ],
)
def test_https_and_loopback_http_endpoints_are_accepted(endpoint: str, series_url: str) -> None:
    assert DataDogExporter(DD_KEY, endpoint=endpoint).series_url == series_url


@pytest.mark.parametrize("key", ["", "   ", "abc def", "key\nX-Injected: 1", "clé"])
def test_malformed_keys_fail_at_configuration_without_showing_the_key(key: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        DataDogExporter(key)
    assert "DD_API_KEY" in str(raised.value)
    assert not key.strip() or key.strip() not in str(raised.value)


def test_the_registry_builds_it_from_the_configuration(intake: DatadogIntake) -> None:
    config = get_monitoring_config("test", env=_env(intake, DD_ENV="staging"))
    monitor = PerformanceMonitor(config)
    try:
        assert monitor.pipeline is not None
        [exporter] = monitor.pipeline.exporters
        assert isinstance(exporter, DataDogExporter)
        monitor.increment_counter("jobs")
        assert monitor.force_flush()
    finally:
        monitor.shutdown()
    first, final = points(intake.accepted_series(), "jobs")  # the flush, then shutdown's last (empty) delta
    assert (first["points"][0]["value"], final["points"][0]["value"]) == (1, 0)
    assert "env:staging" in first["tags"]


def test_entry_point_builds_it_from_the_environment(intake: DatadogIntake, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _env(intake).items():
        monkeypatch.setenv(name, value)
    [entry_point] = entry_points(group="opentelemetry_metrics_exporter", name="datadog")
    exporter_class = entry_point.load()
    assert exporter_class is EnvironmentDataDogExporter
    assert issubclass(exporter_class, MetricExporter)  # what the plain SDK configurator requires
    exporter = exporter_class()
    assert exporter.series_url == f"{intake.url}/api/v2/series"


def test_app_key_is_accepted_and_neither_sent_nor_kept(intake: DatadogIntake) -> None:
    exporter = DataDogExporter(DD_KEY, app_key="appkey-5ecret-0000", endpoint=intake.url)
    assert exporter.export(MetricsData([])) is MetricExportResult.SUCCESS
    assert "appkey-5ecret-0000" not in repr(vars(exporter))


# --- the key never shows ------------------------------------------------------------------------------


def test_the_key_appears_in_no_log_error_repr_or_config_output(
    intake: DatadogIntake,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = DataDogExporter(DD_KEY, endpoint=intake.url, retry_initial_s=0.01, retry_max_s=0.02)
    # What a debugger or a crash reporter dumping the objects would show.
    texts = [
        repr(exporter),
        str(exporter),
        repr(vars(exporter)),
        repr(vars(exporter._sender)),
        repr(vars(exporter._intake)),
    ]
    echo = f'{{"errors":["Forbidden: API key {DD_KEY} is invalid"]}}'
    intake.answer(
        Answer(500), Answer(DROP), Answer(429, {"Retry-After": "0"}), Answer(403, body=echo), Answer(400, body=echo)
    )
    with caplog.at_level(logging.DEBUG):
        exporter.export(_counts(2))
        exporter.export(_counts(2))
        exporter.shutdown()
        exporter.export(_counts(1))
    assert [r.status for r in intake.requests] == [500, 429, 403, 400]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.exc_info) for record in caplog.records if record.exc_info]
    assert any("Forbidden: API key *** is invalid" in text for text in texts)  # the intake's text, key masked
    config = get_monitoring_config("test", env={"DD_API_KEY": DD_KEY})
    texts += [repr(config), str(config)]
    for name, value in _env(intake).items():
        monkeypatch.setenv(name, value)
    assert main(["config"]) == 0
    texts.append(capsys.readouterr().out)
    assert re.search(r"datadog_api_key +=.*\*\*\*.*\(DD_API_KEY\)", texts[-1])  # shown, masked, with its source
    with pytest.raises(ConfigurationError) as raised:
        get_monitoring_config("test", env={"DD_API_KEY": DD_KEY, "CHAT_TURBO_DATADOG_HISTOGRAM_BUCKETS": "maybe"})
    texts.append(str(raised.value))
    with pytest.raises(ConfigurationError) as raised:
        DataDogExporter(DD_KEY, endpoint="http://intake.example.com")
    texts.append(str(raised.value))
    leaks = [text for text in texts if DD_KEY in text]
    assert leaks == []


PROXY_PASSWORD = "pr0xy-Pa55w0rd"


def _basic_login(received: list[Any]) -> set[str]:
    """The user:password pairs the intake received as Basic authentication."""
    prefix = "Basic "
    values = {r.headers.get("Authorization", "") for r in received}
    return {base64.b64decode(value.removeprefix(prefix)).decode() for value in values if value.startswith(prefix)}


def test_endpoint_user_info_is_sent_as_basic_authentication(intake: DatadogIntake) -> None:
    host = intake.url.removeprefix("http://")
    exporter = DataDogExporter(DD_KEY, endpoint=f"http://metrics:{PROXY_PASSWORD}%40eu@{host}")

    assert exporter.export(_counts(1)) is MetricExportResult.SUCCESS
    assert _basic_login(intake.requests) == {f"metrics:{PROXY_PASSWORD}@eu"}  # percent-decoded, as curl sends it
    assert exporter.series_url == f"{intake.url}/api/v2/series"


def test_endpoint_password_shows_in_no_config_doctor_repr_log_or_error(
    intake: DatadogIntake,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = intake.url.replace("http://", f"http://metrics:{PROXY_PASSWORD}@")
    env = {**_env(intake), "CHAT_TURBO_DATADOG_ENDPOINT": endpoint, "CHAT_TURBO_ENV": "test"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = get_monitoring_config()
    texts = [repr(config), str(config)]
    for command in (["config"], ["doctor"], ["doctor", "--json"]):
        main(command)
        texts.append(capsys.readouterr().out)
    assert f"http://***@{intake.url.removeprefix('http://')}" in texts[2]  # config shows the endpoint, masked
    assert json.loads(texts[4])["config"]["datadog_endpoint"] == endpoint.replace(f"metrics:{PROXY_PASSWORD}", "***")
    exporter = DataDogExporter.from_config(config)
    texts += [repr(exporter), exporter.series_url, repr(vars(exporter._intake))]
    intake.answer(Answer(500), Answer(429, {"Retry-After": "0"}), Answer(400, body="no"))
    with caplog.at_level(logging.DEBUG):
        exporter.export(_counts(2))
        exporter.export(_counts(2))
    texts += [record.getMessage() for record in caplog.records]
    assert len(intake.requests) >= 3
    for bad in (f"http://metrics:{PROXY_PASSWORD}@intake.example.com", f"https://metrics:{PROXY_PASSWORD}@x/?q=1"):
        bad_env = {"DD_API_KEY": DD_KEY, "CHAT_TURBO_DATADOG_ENDPOINT": bad}
        with pytest.raises(ConfigurationError) as raised:
            DataDogExporter.from_config(get_monitoring_config("test", env=bad_env))
        texts.append(str(raised.value))
    assert [text for text in texts if PROXY_PASSWORD in text] == []


# --- OTEL_METRICS_EXPORTER=datadog end to end --------------------------------------------------------

APP = textwrap.dedent(
    """
    from chat_turbo_metrics import PerformanceMonitor

    monitor = PerformanceMonitor.get_instance()
    monitor.increment_counter("messages_sent", {"channel": "public"}, value=3)
    monitor.record_gauge("active_connections", 12)
    for value in (0.02, 0.2):
        monitor.record_histogram("http_request_duration_seconds", value, {"method": "GET"})
    print("recorded")
    """
)


def test_otel_metrics_exporter_datadog_under_opentelemetry_instrument(intake: DatadogIntake, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_", "PERFORMANCE_", "DD_"))}
    env.update(
        _env(
            intake,
            CHAT_TURBO_ENV="test",
            OTEL_SERVICE_NAME="chat-api",
            OTEL_METRIC_EXPORT_INTERVAL="600000",
            DD_ENV="e2e",
            DD_VERSION="1.0.0",
            DD_TAGS="team:chat",
            PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        )
    )
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    command = [
        str(instrument if instrument.exists() else require_tool("opentelemetry-instrument")),
        sys.executable,
        str(app),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "recorded" in result.stdout
    assert DD_KEY not in result.stdout + result.stderr
    series = intake.accepted_series()  # sent by the exit-time shutdown
    expected_tags = {"service:chat-api", "env:e2e", "version:1.0.0", "team:chat"}
    [count] = points(series, "messages_sent", "channel:public")
    assert (count["type"], count["points"][0]["value"]) == (1, 3)
    assert expected_tags <= set(count["tags"])
    assert points(series, "active_connections")[0]["points"][0]["value"] == 12
    assert total(series, "http_request_duration_seconds.count", "method:get") == 2


def test_exported_lazily_from_chat_turbo_metrics_exporters() -> None:
    code = (
        "import sys, chat_turbo_metrics, chat_turbo_metrics.exporters as e\n"
        "assert 'chat_turbo_metrics.exporters.datadog' not in sys.modules\n"
        "from chat_turbo_metrics.exporters import DataDogExporter\n"
        "assert DataDogExporter.__module__ == 'chat_turbo_metrics.exporters.datadog._exporter'\n"
        "assert 'DataDogExporter' in e.__all__\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
