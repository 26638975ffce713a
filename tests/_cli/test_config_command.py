"""``chat-turbo-metrics config``: validates as configure() would, one setting a line with its source, secrets masked."""

from __future__ import annotations

import dataclasses
import io
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig, PerformanceMonitor, ViewConfig
from chat_turbo_metrics._cli.config import check_as_configure_would, declared_variable_groups, run_config_command
from chat_turbo_metrics.instrumentation import EnvironmentVariable
from conftest import clean_env, directory_listing, old_file_history

TOKEN = "XXXXSECRETTOKENXXXX"


def groups(env: dict[str, str], environment: str | None = "test") -> dict[str, dict[str, tuple[str, str]]]:
    """group title -> setting -> (value text, source), from the command's output."""
    out = io.StringIO()
    run_config_command(environment, env, out)
    parsed: dict[str, dict[str, tuple[str, str]]] = {}
    for line in out.getvalue().splitlines():
        if line.startswith("# "):
            group = parsed.setdefault(line[2:], {})
        elif line:
            setting, _, rest = line.partition(" = ")
            value, _, source = rest.rpartition("  (")
            assert setting.strip() not in group
            group[setting.strip()] = (value, source.rstrip(")"))
    return parsed


def lines(env: dict[str, str], environment: str | None = "test") -> dict[str, tuple[str, str]]:
    """setting -> (value text, source) of every setting (not the variables of other distributions)."""
    found = groups(env, environment)
    return {
        name: shown
        for title, group in found.items()
        if not title.startswith("variables of ")
        for name, shown in group.items()
    }


def test_each_setting_is_printed_once_with_its_value_and_source() -> None:
    env = {"METRICS_SAMPLING_RATE": "0.5", "OTEL_SERVICE_NAME": "chat-api"}
    shown = lines(env)

    assert shown["sampling_rate"] == ("0.5", "METRICS_SAMPLING_RATE")
    assert shown["service_name"] == ("'chat-api'", "OTEL_SERVICE_NAME")
    assert shown["recording"] == ("'fast'", "default")
    assert shown["export_interval_s"][1].startswith("file ")
    assert shown["export_interval_s"][1].endswith("test.toml")
    assert "sources" not in shown
    assert len(shown) == len(dataclasses.fields(MonitoringConfig)) - 1  # every setting but "sources"
    assert shown["shutdown_timeout_s"] == ("5.0", "default")


def test_the_default_database_url_is_shown_as_the_sqlite_file_it_is() -> None:
    value, source = lines({})["database_url"]

    assert value.startswith("sqlite:///chat_turbo_metrics.db")
    assert source == "default"


def test_secrets_are_masked() -> None:
    env = {
        "ALERT_SLACK_WEBHOOK_URL": f"https://hooks.slack.com/services/T0/B0/{TOKEN}",
        "METRICS_DATABASE_URL": f"sqlite:///{TOKEN}.db",
    }
    shown = lines(env)

    assert shown["alert_slack_webhook_url"] == ("https://hooks.slack.com/***", "ALERT_SLACK_WEBHOOK_URL")
    assert shown["database_url"][1] == "METRICS_DATABASE_URL"
    assert TOKEN not in repr(shown)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"OTEL_METRICS_EXPORTER": "bogus"}, "OTEL_METRICS_EXPORTER='bogus': unknown exporter"),
        ({"OTEL_TRACES_EXPORTER": "zipkinx"}, "OTEL_TRACES_EXPORTER='zipkinx': unknown exporter"),
        ({"METRICS_SAMPLING_RATE": "2"}, "METRICS_SAMPLING_RATE='2': must be > 0 and <= 1"),
    ],
)
def test_a_setting_configure_would_refuse_fails_with_its_error(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        lines(env)

    assert str(raised.value).startswith(error)


def run_command(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``chat-turbo-metrics config`` in ``directory`` with only ``env`` as monitoring variables."""
    return subprocess.run(
        [sys.executable, "-m", "chat_turbo_metrics", "config"],
        env=clean_env(**env),
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_exits_non_zero_with_the_error_and_prints_no_settings(tmp_path: Path) -> None:
    result = run_command(tmp_path, OTEL_METRICS_EXPORTER="bogus")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("configuration error: OTEL_METRICS_EXPORTER='bogus': unknown exporter")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ALERT_EMAIL_ENABLED", "true"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1e400"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "10s"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "1e400"),
        ("METRICS_RETENTION_DAYS", "1e308"),
    ],
)
def test_the_command_refuses_what_used_to_fail_only_later(tmp_path: Path, variable: str, value: str) -> None:
    result = run_command(tmp_path, CHAT_TURBO_ENV="test", **{variable: value})

    assert result.returncode == 2
    assert result.stdout == ""
    assert variable in result.stderr.splitlines()[0]  # named with the value: ALERT_EMAIL_ENABLED=True, ...
    assert value.lower() in result.stderr.splitlines()[0].lower()


def test_the_command_prints_the_resolved_settings_without_binding_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:  # the exporter is built and checked, never started: a taken port is fine
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "chat_turbo_metrics", "config", "--environment", "production"],
            env=clean_env(METRICS_PROMETHEUS_PORT=str(port), OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 0, result.stderr
    # Settings are padded to the longest name, so compare with the padding squeezed out.
    shown = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert f"prometheus_port = {port} (METRICS_PROMETHEUS_PORT)" in shown
    (exporters,) = [line for line in shown if line.startswith("metrics_exporters ")]
    assert exporters.startswith("metrics_exporters = ('prometheus',) (file ")
    assert exporters.endswith("production.toml)")
    assert "environment = 'production' (code)" in shown


def test_a_view_the_sdk_refuses_fails_as_configure_would() -> None:
    config = MonitoringConfig(metrics_exporters=(), views=(ViewConfig(instrument="*_latency", name="latency"),))

    with pytest.raises(ConfigurationError) as from_configure:
        PerformanceMonitor(config)
    with pytest.raises(ConfigurationError) as from_command:
        check_as_configure_would(config)

    assert str(from_command.value) == str(from_configure.value)
    assert "wildcard" in str(from_command.value)


def test_the_command_deletes_no_rotated_file_a_shorter_retention_would_and_writes_nothing(tmp_path: Path) -> None:
    # The service keeps 30 days; the shell that runs the command resolves 1 day. Checking must not apply it.
    before = old_file_history(tmp_path, rotations=3, age_days=8)
    env = clean_env(
        CHAT_TURBO_ENV="development",
        OTEL_METRICS_EXPORTER="chat_turbo_file,chat_turbo_database",
        METRICS_FILE_PATH=str(tmp_path / "metrics.jsonl"),
        METRICS_RETENTION_DAYS="1",
    )
    result = subprocess.run(
        [sys.executable, "-m", "chat_turbo_metrics", "config"],
        env=env,
        cwd=tmp_path,  # where the default SQLite database would be created
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert len([name for name in before if name.startswith("metrics.jsonl.2")]) == 3
    assert directory_listing(tmp_path) == before


def test_settings_are_grouped_by_subsystem_each_once() -> None:
    found = groups({"DD_API_KEY": TOKEN, "METRICS_MULTIPROCESS_GAUGES": "max"})
    sections = [title.partition(":")[0] for title in found if not title.startswith("variables of ")]

    assert sections == ["core", "export", "storage", "alerting", "datadog", "multiprocess"]
    by_section = {title.partition(":")[0]: group for title, group in found.items()}
    assert by_section["datadog"]["datadog_api_key"] == ("***", "DD_API_KEY")
    assert by_section["multiprocess"]["multiprocess_gauges"] == ("{'*': 'max'}", "METRICS_MULTIPROCESS_GAUGES")
    assert set(by_section["storage"]) == {
        "retention_days",
        "file_path",
        "file_max_bytes",
        "file_rotation_interval_s",
        "file_mode",
        "database_url",
    }
    listed = [name for section in sections for name in by_section[section]]
    assert sorted(listed) == sorted(
        field.name for field in dataclasses.fields(MonitoringConfig) if field.name != "sources"
    )


def test_a_variable_the_http_instrumentors_declare_is_shown_and_checked() -> None:
    (http,) = [group for title, group in groups({"CHAT_TURBO_HTTP_METRIC_NAMES": "semconv"}).items() if "http" in title]
    assert http["CHAT_TURBO_HTTP_METRIC_NAMES"] == ("'semconv'", "CHAT_TURBO_HTTP_METRIC_NAMES")
    assert http["CHAT_TURBO_HTTP_EXCLUDED_PATHS"] == ("''", "default")

    for variable, value in (
        ("CHAT_TURBO_HTTP_METRIC_NAMES", "prometheus"),
        ("CHAT_TURBO_HTTP_EXCLUDED_PATHS", "/a, b"),
    ):
        with pytest.raises(ConfigurationError) as raised:
            groups({variable: value})
        assert str(raised.value).startswith(f"{variable}={value!r}: ")


def test_any_distribution_may_declare_variables_the_command_checks_secrets_masked() -> None:
    def parse_key(text: str) -> str:
        if len(text) != 8:
            raise ValueError(f"expected 8 characters, got {len(text)}")
        return text

    module = types.ModuleType("vendor_env")
    module.VENDOR_API_KEY = EnvironmentVariable("VENDOR_API_KEY", parse=parse_key, default="00000000", secret=True)
    module.VENDOR_PLAIN = "VENDOR_PLAIN"  # a plain name (OpenTelemetry's convention): nothing to check

    shown = declared_variable_groups({"VENDOR_API_KEY": "s3cr3t-k"}, [("vendor", module)])
    assert shown == {"variables of vendor": [("VENDOR_API_KEY", "'***'", "VENDOR_API_KEY")]}
    assert declared_variable_groups({}, [("vendor", module)])["variables of vendor"][0][2] == "default"
    with pytest.raises(ConfigurationError) as raised:
        declared_variable_groups({"VENDOR_API_KEY": "s3cr3t", "VENDOR_PLAIN": "anything"}, [("vendor", module)])
    assert str(raised.value).startswith("VENDOR_API_KEY='***': expected 8 characters, got 6")
    assert "s3cr3t" not in str(raised.value)
