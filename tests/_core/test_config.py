"""Configuration: sources, precedence, bad values, secrets."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from chat_turbo_metrics import (
    ConfigurationError,
    MonitoringConfig,
    Secret,
    get_monitoring_config,
    load_config_file,
)
from chat_turbo_metrics._core.config import LONGEST_RETENTION_DAYS, LONGEST_S, config_dirs


@pytest.mark.parametrize("environment", ["development", "production", "test"])
def test_each_shipped_environment_file_loads(environment: str) -> None:
    config = get_monitoring_config(environment, env={})
    assert config.environment == environment
    assert config.enabled


def test_environment_files_differ_where_they_should() -> None:
    development = get_monitoring_config("development", env={})
    production = get_monitoring_config("production", env={})
    test = get_monitoring_config("test", env={})
    assert test.metrics_exporters == ()
    assert production.retention_days == 30
    assert development.export_interval_s < production.export_interval_s


def test_defaults_select_only_what_needs_no_extra_package_or_collector() -> None:
    assert MonitoringConfig().metrics_exporters == ("prometheus",)
    assert MonitoringConfig().traces_exporters == ()


def test_chat_turbo_env_chooses_the_file() -> None:
    assert get_monitoring_config(env={"CHAT_TURBO_ENV": "production"}).environment == "production"


def test_unknown_environment_names_the_available_files() -> None:
    with pytest.raises(ConfigurationError, match=r"staging.*available: development, production, test"):
        get_monitoring_config("staging", env={})


def test_environment_overrides_file() -> None:
    config = get_monitoring_config("production", env={"METRICS_RETENTION_DAYS": "5"})
    assert config.retention_days == 5


def test_otel_variables_override_file() -> None:
    env = {"OTEL_SERVICE_NAME": "chat-api", "OTEL_METRIC_EXPORT_INTERVAL": "2500", "OTEL_METRICS_EXPORTER": "console"}
    config = get_monitoring_config("production", env=env)
    assert config.service_name == "chat-api"
    assert config.export_interval_s == 2.5
    assert config.metrics_exporters == ("console",)


def test_seed_variable_wins_over_its_otel_twin_with_a_warning_naming_both(caplog: pytest.LogCaptureFixture) -> None:
    env = {"METRICS_PROMETHEUS_PORT": "9100", "OTEL_EXPORTER_PROMETHEUS_PORT": "9200"}
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.config"):
        config = get_monitoring_config("test", env=env)
    assert config.prometheus_port == 9100
    assert "METRICS_PROMETHEUS_PORT" in caplog.text
    assert "OTEL_EXPORTER_PROMETHEUS_PORT" in caplog.text


def test_agreeing_twins_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    env = {"PERFORMANCE_MONITORING_ENABLED": "false", "OTEL_SDK_DISABLED": "true"}
    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.config"):
        config = get_monitoring_config("test", env=env)
    assert not config.enabled
    assert caplog.text == ""


def test_otel_sdk_disabled_turns_monitoring_off() -> None:
    assert not get_monitoring_config("test", env={"OTEL_SDK_DISABLED": "true"}).enabled


def test_code_overrides_win_over_environment() -> None:
    config = get_monitoring_config("test", env={"METRICS_SAMPLING_RATE": "0.5"}, sampling_rate=0.25)
    assert config.sampling_rate == 0.25


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("METRICS_SAMPLING_RATE", "1.5"),
        ("METRICS_SAMPLING_RATE", "0"),
        ("METRICS_PROMETHEUS_PORT", "abc"),
        ("METRICS_PROMETHEUS_PORT", "70000"),
        ("METRICS_RETENTION_DAYS", "-1"),
        ("PERFORMANCE_MONITORING_ENABLED", "maybe"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
        ("OTEL_RESOURCE_ATTRIBUTES", "k" * 256 + "=x"),  # tag key limits apply to resource attributes
        ("OTEL_RESOURCE_ATTRIBUTES", ",".join(f"k{i}=v" for i in range(129))),
        ("OTEL_RESOURCE_ATTRIBUTES", "team=" + "v" * 2049),
        ("OTEL_RESOURCE_ATTRIBUTES", b"team=caf\xe9".decode("utf-8", "surrogateescape")),  # not UTF-8 bytes
        ("OTEL_SERVICE_NAME", b"caf\xe9".decode("utf-8", "surrogateescape")),
        ("METRICS_RECORDING", "turbo"),
        ("METRICS_RETENTION_DAYS", "inf"),
        ("METRICS_RETENTION_DAYS", "nan"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "-5"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "0"),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "no-such-host.invalid"),
        ("METRICS_FILE_PATH", ""),
        ("METRICS_SHUTDOWN_TIMEOUT", "0"),
        ("METRICS_SHUTDOWN_TIMEOUT", "inf"),
        # Finite but past what a thread's wait, a timedelta or a nanosecond column can hold: each of these was
        # accepted and then killed the export thread, failed every export or every retention pass.
        ("OTEL_METRIC_EXPORT_INTERVAL", "1e400"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1e20"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "1e400"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "1e308"),
        ("METRICS_RETENTION_DAYS", "1e308"),
        ("METRICS_RETENTION_DAYS", "1e12"),
        ("METRICS_SHUTDOWN_TIMEOUT", "1e308"),
        ("METRICS_SERIES_IDLE_TIMEOUT", "1e308"),
        # An export every 1e-300 ms is a thread spinning on a core.
        ("OTEL_METRIC_EXPORT_INTERVAL", "1e-300"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "nan"),
    ],
)
def test_bad_value_error_names_variable_and_value_as_typed(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("test", env={variable: value})
    # The message starts with the variable and the user's own text (milliseconds stay milliseconds).
    assert str(caught.value).startswith(f"{variable}={value!r}: ")


def test_shutdown_timeout_comes_from_its_variable_file_or_code() -> None:
    assert get_monitoring_config("test").shutdown_timeout_s == 5.0
    assert get_monitoring_config("test", env={"METRICS_SHUTDOWN_TIMEOUT": "1.5"}).shutdown_timeout_s == 1.5
    assert get_monitoring_config("test", shutdown_timeout_s=2).shutdown_timeout_s == 2.0
    with pytest.raises(ConfigurationError, match="shutdown_timeout_s"):
        MonitoringConfig(shutdown_timeout_s=-1)


def test_empty_variable_is_ignored() -> None:
    assert get_monitoring_config("test", env={"METRICS_SAMPLING_RATE": ""}).sampling_rate == 1.0


def test_file_path_variable_enables_file_export() -> None:
    config = get_monitoring_config("test", env={"METRICS_FILE_PATH": "/tmp/m.jsonl"})
    assert config.file_path == "/tmp/m.jsonl"
    assert "chat_turbo_file" in config.metrics_exporters


def test_explicit_exporter_list_is_not_extended_by_file_path() -> None:
    env = {"METRICS_FILE_PATH": "/tmp/m.jsonl", "OTEL_METRICS_EXPORTER": "prometheus"}
    assert get_monitoring_config("test", env=env).metrics_exporters == ("prometheus",)


def test_none_means_no_exporters() -> None:
    assert get_monitoring_config("test", env={"OTEL_METRICS_EXPORTER": "none"}).metrics_exporters == ()


def test_resource_attributes_are_parsed() -> None:
    config = get_monitoring_config("test", env={"OTEL_RESOURCE_ATTRIBUTES": "team=chat, region=eu"})
    assert config.resource_attributes == {"team": "chat", "region": "eu"}


def test_resource_attributes_given_in_code_are_checked_like_tags() -> None:
    assert MonitoringConfig(resource_attributes={"k" * 255: "v" * 2048}).resource_attributes
    for bad in ({"k" * 256: "x"}, {"": "x"}, {"team": "caf\udce9"}, {f"k{i}": "v" for i in range(129)}):
        with pytest.raises(ConfigurationError, match=r"^resource_attributes="):
            MonitoringConfig(resource_attributes=bad)


def test_file_with_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("sampling_rat = 0.5\n")
    with pytest.raises(ConfigurationError, match=r"bad\.toml.*'sampling_rat'"):
        load_config_file(path)


def test_file_with_bad_value_names_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('prometheus_port = "http"\n')
    with pytest.raises(ConfigurationError, match=r"prometheus_port='http'"):
        load_config_file(path)


def test_file_views_become_view_configs(tmp_path: Path) -> None:
    path = tmp_path / "views.toml"
    path.write_text('[views.api_request_duration]\nbuckets = [0.1, 1.0]\nattribute_keys = ["method"]\n')
    (view,) = load_config_file(path).views
    assert view.instrument == "api_request_duration"
    assert view.buckets == (0.1, 1.0)
    assert view.attribute_keys == ("method",)


def test_slack_webhook_url_never_shows_in_repr_or_errors() -> None:
    token = "T000/B000/XXXXSECRETXXXX"
    config = get_monitoring_config("test", env={"ALERT_SLACK_WEBHOOK_URL": f"https://hooks.slack.com/services/{token}"})
    assert isinstance(config.alert_slack_webhook_url, Secret)
    assert config.alert_slack_webhook_url.reveal().endswith(token)
    assert token not in repr(config)
    assert token not in str(config)
    with pytest.raises(ConfigurationError) as caught:
        config.replace(alert_slack_webhook_url=123)
    assert token not in str(caught.value)


def test_configs_ship_inside_the_package_or_checkout() -> None:
    assert any((directory / "production.toml").is_file() for directory in config_dirs())


def test_secrets_given_as_plain_strings_to_the_constructor_are_wrapped() -> None:
    config = MonitoringConfig(
        database_url="postgresql://chat:PW-s3cr3t@db/metrics",
        alert_slack_webhook_url="https://hooks.slack.com/services/T0/B0/TOKEN-s3cr3t",
    )
    assert isinstance(config.database_url, Secret)
    assert isinstance(config.alert_slack_webhook_url, Secret)
    assert config.database_url.reveal() == "postgresql://chat:PW-s3cr3t@db/metrics"
    assert "s3cr3t" not in repr(config)
    assert "s3cr3t" not in repr(config.replace(sampling_rate=0.5))


def test_a_file_error_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "prod.toml"
    path.write_text("retention_days = inf\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config_file(path)
    assert str(caught.value).startswith(f"{path}: retention_days=inf: ")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("export_interval_s", "1e300"),
        ("export_timeout_s", "1e300"),
        ("shutdown_timeout_s", "1e300"),
        ("series_idle_timeout_s", "1e300"),
        ("file_rotation_interval_s", "1e300"),
        ("retention_days", "1e300"),
        ("export_interval_s", "1e-9"),
    ],
)
def test_a_duration_past_its_bound_in_a_file_names_the_file_key_and_value(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "prod.toml"
    path.write_text(f"{key} = {value}\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config_file(path)
    assert str(caught.value).startswith(f"{path}: {key}={float(value)!r}: ")


def test_the_longest_accepted_durations_build_a_pipeline_that_exports_and_stops(tmp_path: Path) -> None:
    from chat_turbo_metrics import PerformanceMonitor

    longest = get_monitoring_config(
        "test",
        env={
            "OTEL_METRIC_EXPORT_INTERVAL": repr(LONGEST_S * 1000),
            "OTEL_METRIC_EXPORT_TIMEOUT": repr(LONGEST_S * 1000),
            "METRICS_RETENTION_DAYS": repr(LONGEST_RETENTION_DAYS),
            "METRICS_SHUTDOWN_TIMEOUT": repr(LONGEST_S),
            "METRICS_SERIES_IDLE_TIMEOUT": repr(LONGEST_S),
            "METRICS_FILE_PATH": str(tmp_path / "metrics.jsonl"),
            "METRICS_DATABASE_URL": f"sqlite:///{tmp_path / 'metrics.db'}",
        },
        metrics_exporters=("chat_turbo_file", "chat_turbo_database"),
        file_rotation_interval_s=LONGEST_S,
    )
    failures: list[BaseException] = []
    previous, threading.excepthook = threading.excepthook, lambda args: failures.append(args.exc_value)
    try:
        monitor = PerformanceMonitor(longest)
        monitor.increment_counter("messages_sent")
        assert monitor.force_flush(10)
        monitor.shutdown(10)
    finally:
        threading.excepthook = previous
    assert failures == []
    assert '"messages_sent"' in (tmp_path / "metrics.jsonl").read_text()


def test_otel_milliseconds_with_a_unit_are_refused_saying_the_unit() -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("test", env={"OTEL_METRIC_EXPORT_INTERVAL": "10s"})
    assert str(caught.value).startswith("OTEL_METRIC_EXPORT_INTERVAL='10s': ")
    assert "milliseconds" in str(caught.value)


@pytest.mark.parametrize("missing", ["ALERT_EMAIL_HOST", "ALERT_EMAIL_FROM", "ALERT_EMAIL_TO"])
def test_email_alerts_enabled_without_server_sender_or_recipients_fail_naming_both(missing: str) -> None:
    env = {
        "ALERT_EMAIL_ENABLED": "true",
        "ALERT_EMAIL_HOST": "smtp.example.com",
        "ALERT_EMAIL_FROM": "alerts@example.com",
        "ALERT_EMAIL_TO": "oncall@example.com",
    }
    assert get_monitoring_config("test", env=env).alert_email_enabled
    del env[missing]
    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("test", env=env)
    assert str(caught.value).startswith("ALERT_EMAIL_ENABLED=True: ")
    assert missing in str(caught.value)


def test_email_enabled_in_a_file_may_get_its_server_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "mail.toml").write_text("alert_email_enabled = true\n")
    env = {
        "CHAT_TURBO_CONFIG_DIR": str(tmp_path),
        "ALERT_EMAIL_HOST": "smtp.example.com",
        "ALERT_EMAIL_FROM": "alerts@example.com",
        "ALERT_EMAIL_TO": "oncall@example.com",
    }
    assert get_monitoring_config("mail", env=env).alert_email_host == "smtp.example.com"
    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("mail", env={"CHAT_TURBO_CONFIG_DIR": str(tmp_path)})
    assert str(caught.value).startswith(f"{tmp_path / 'mail.toml'}: alert_email_enabled=True: ")


def test_code_errors_name_the_setting_not_a_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("test", env={}, file_path=" ")
    assert str(caught.value) == "code: file_path=' ': must be a file path, not empty"


def test_sources_say_where_each_setting_came_from() -> None:
    config = get_monitoring_config("production", env={"OTEL_METRICS_EXPORTER": "console"}, sampling_rate=0.5)
    assert config.source("metrics_exporters") == "OTEL_METRICS_EXPORTER"
    assert config.source("sampling_rate") == "code"
    assert config.source("retention_days").endswith("production.toml")
    assert config.source("recording") == "default"
    assert config.source("environment") == "code"


def test_file_path_variable_is_the_source_of_the_file_exporter() -> None:
    config = get_monitoring_config("test", env={"METRICS_FILE_PATH": "/tmp/m.jsonl"})
    assert config.source("metrics_exporters") == "METRICS_FILE_PATH"


def test_an_exporter_named_in_code_is_not_blamed_on_a_variable() -> None:
    from chat_turbo_metrics import PerformanceMonitor

    for config in (
        MonitoringConfig(metrics_exporters=("bogus",)),
        get_monitoring_config("test", env={}).replace(metrics_exporters=("bogus",)),
    ):
        with pytest.raises(ConfigurationError) as caught:
            PerformanceMonitor(config)
        assert str(caught.value).startswith("metrics_exporters='bogus': unknown exporter")


@pytest.mark.parametrize(("typed", "mode"), [("0640", 0o640), ("600", 0o600), ("0o644", 0o644)])
def test_file_mode_variable_is_octal(typed: str, mode: int) -> None:
    assert get_monitoring_config("test", env={"METRICS_FILE_MODE": typed}).file_mode == mode


@pytest.mark.parametrize("typed", ["0666", "0700", "0400", "rw-r-----", "0o1600", "9"])
def test_file_mode_others_could_write_or_execute_is_refused_naming_the_variable(typed: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("test", env={"METRICS_FILE_MODE": typed})
    assert str(caught.value).startswith(f"METRICS_FILE_MODE={typed!r}: ")


@pytest.mark.parametrize("buckets", ["[nan]", "[inf]", "[1.0, 0.5]", "[1.0, 1.0]", '["a"]', "[true]"])
def test_view_buckets_the_sdk_would_drop_every_value_for_are_refused_naming_the_file(
    tmp_path: Path, buckets: str
) -> None:
    path = tmp_path / "views.toml"
    path.write_text(f"[views.api_request_duration]\nbuckets = {buckets}\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config_file(path)
    assert str(caught.value).startswith(f"{path}: views=")
