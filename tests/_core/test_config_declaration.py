"""The one declaration of settings: every setting declared once, in one section, and each section usable alone."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, Secret, get_monitoring_config
from chat_turbo_metrics._core.config import (
    AlertingSettings,
    CoreSettings,
    DatadogSettings,
    ExportSettings,
    MultiprocessSettings,
    StorageSettings,
)
from chat_turbo_metrics._core.config.declaration import settings_of
from chat_turbo_metrics._core.config.table import BY_NAME, SECTIONS, SETTINGS, VARIABLES


def test_every_field_is_declared_once_in_exactly_one_section() -> None:
    fields = [field.name for field in dataclasses.fields(MonitoringConfig) if field.name != "sources"]
    assert [item.name for item in SETTINGS] == fields
    owners = Counter(item.name for section in SECTIONS for item in settings_of(section))
    assert set(owners) == set(fields)
    assert set(owners.values()) == {1}
    assert [section.SECTION for section in SECTIONS] == [
        "core",
        "export",
        "storage",
        "alerting",
        "datadog",
        "multiprocess",
    ]


def test_every_setting_says_what_it_means_and_how_it_is_read() -> None:
    for item in SETTINGS:
        assert item.meaning.strip(), item.name
        assert item.section in {section.SECTION for section in SECTIONS}
        assert callable(item.parse)
    assert len(VARIABLES) == len(set(VARIABLES))  # no variable feeds two settings
    assert BY_NAME["prometheus_port"].variable is not None
    assert BY_NAME["prometheus_port"].variable.name == "METRICS_PROMETHEUS_PORT"
    assert [var.name for var in BY_NAME["prometheus_port"].otel] == ["OTEL_EXPORTER_PROMETHEUS_PORT"]
    secrets = {item.name for item in SETTINGS if item.secret}
    assert secrets == {
        "database_url",
        "alert_slack_webhook_url",
        "alert_email_password",
        "datadog_api_key",
        "datadog_endpoint",
    }


def test_every_default_passes_its_own_checks() -> None:
    for item in SETTINGS:
        assert item.problem(item.default) is None, item.name


def test_a_monitoring_config_is_every_section() -> None:
    config = MonitoringConfig(file_path="/var/lib/chat/metrics.jsonl", datadog_site="datadoghq.eu")
    for section in (CoreSettings, ExportSettings, StorageSettings, AlertingSettings, DatadogSettings):
        assert isinstance(config, section)
    assert isinstance(config, MultiprocessSettings)


@pytest.mark.parametrize(
    ("section", "changes", "setting"),
    [
        (CoreSettings, {"sampling_rate": 0.0}, "sampling_rate"),
        (ExportSettings, {"export_interval_s": 1e-9}, "export_interval_s"),
        (StorageSettings, {"file_path": " "}, "file_path"),
        (AlertingSettings, {"alert_email_port": 0}, "alert_email_port"),
        (MultiprocessSettings, {"multiprocess_group": "a b"}, "multiprocess_group"),
    ],
)
def test_a_section_made_alone_checks_its_settings(section: type, changes: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        section(**changes)
    assert str(caught.value).startswith(f"{setting}=")
    with pytest.raises(ConfigurationError):
        MonitoringConfig(**changes)


def test_a_section_wraps_its_secrets_and_replace_checks_like_any_source() -> None:
    datadog = DatadogSettings(datadog_api_key="k" * 32, datadog_endpoint="https://user:pw-s3cr3t@proxy.example")
    assert isinstance(datadog.datadog_api_key, Secret)
    assert "s3cr3t" not in repr(datadog)
    changed = datadog.replace(datadog_site="DatadogHQ.eu")
    assert changed.datadog_site == "datadoghq.eu"  # parsed as a file or variable would be
    assert changed.source("datadog_site") == "code"
    with pytest.raises(ConfigurationError, match=r"^code: datadog_site='https://x': "):
        datadog.replace(datadog_site="https://x")


def test_settings_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        MonitoringConfig(False)  # type: ignore[misc]


def test_the_email_login_check_runs_on_the_alerting_section_and_the_whole_config() -> None:
    insecure = {
        "alert_email_enabled": True,
        "alert_email_host": "smtp.example.com",
        "alert_email_tls": "none",
        "alert_email_username": "bot",
        "alert_email_password": "pw",
    }
    for made in (AlertingSettings, MonitoringConfig):
        with pytest.raises(ConfigurationError, match=r"^alert_email_tls='none': "):
            made(**insecure)
        assert made(**insecure, alert_email_allow_insecure_auth=True).alert_email_tls == "none"


def test_variables_apply_in_declared_order_otel_first(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",  # the later twin wins
        "OTEL_SDK_DISABLED": "true",
        "PERFORMANCE_MONITORING_ENABLED": "true",  # the setting's own variable wins, with a warning
    }
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.config"):
        config = get_monitoring_config("test", env=env)
    assert config.otlp_protocol == "http/protobuf"
    assert config.source("otlp_protocol") == "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
    assert config.enabled
    assert config.source("enabled") == "PERFORMANCE_MONITORING_ENABLED"
    (warning,) = [record.getMessage() for record in caplog.records]
    assert "PERFORMANCE_MONITORING_ENABLED" in warning
    assert "OTEL_SDK_DISABLED" in warning
