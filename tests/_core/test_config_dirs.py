"""Where ``configs/<environment>.toml`` is read from: CHAT_TURBO_CONFIG_DIR, the working directory, the package."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from chat_turbo_metrics import ConfigurationError, get_monitoring_config


def write_config(directory: Path, environment: str, text: str) -> Path:
    directory.mkdir(mode=0o755, exist_ok=True)
    path = directory / f"{environment}.toml"
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_the_config_directory_variable_wins_over_the_shipped_files(tmp_path: Path) -> None:
    path = write_config(tmp_path / "mine", "production", "service_name = 'chat-api'\nsampling_rate = 0.25\n")

    config = get_monitoring_config("production", env={"CHAT_TURBO_CONFIG_DIR": str(tmp_path / "mine")})

    assert (config.service_name, config.sampling_rate) == ("chat-api", 0.25)
    assert config.source("sampling_rate") == str(path)


def test_an_environment_missing_from_the_config_directory_comes_from_the_shipped_files(tmp_path: Path) -> None:
    write_config(tmp_path / "mine", "production", "sampling_rate = 0.25\n")

    config = get_monitoring_config("test", env={"CHAT_TURBO_CONFIG_DIR": str(tmp_path / "mine")})

    assert config.metrics_exporters == ()  # the shipped test.toml
    assert config.source("metrics_exporters").endswith(os.path.join("configs", "test.toml"))


def test_a_relative_config_directory_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path / "deploy", "staging", "sampling_rate = 0.5\n")
    monkeypatch.chdir(tmp_path)

    assert get_monitoring_config("staging", env={"CHAT_TURBO_CONFIG_DIR": "deploy"}).sampling_rate == 0.5


def test_a_config_directory_that_does_not_exist_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")

    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("production", env={"CHAT_TURBO_CONFIG_DIR": missing})

    assert str(caught.value).startswith(f"CHAT_TURBO_CONFIG_DIR={missing!r}: ")


def test_configs_in_the_working_directory_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "configs", "production", "sampling_rate = 0.125\n")
    monkeypatch.chdir(tmp_path)

    config = get_monitoring_config("production", env={})

    assert config.sampling_rate == 0.125
    assert config.source("sampling_rate") == str(path)


def test_the_config_directory_variable_wins_over_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path / "configs", "production", "sampling_rate = 0.125\n")
    write_config(tmp_path / "mine", "production", "sampling_rate = 0.75\n")
    monkeypatch.chdir(tmp_path)

    assert get_monitoring_config("production", env={"CHAT_TURBO_CONFIG_DIR": "mine"}).sampling_rate == 0.75


@pytest.mark.parametrize("what", ["directory", "file"])
def test_working_directory_configs_others_can_write_are_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, what: str
) -> None:
    path = write_config(tmp_path / "configs", "production", "sampling_rate = 0.125\n")
    (path.parent if what == "directory" else path).chmod(0o777 if what == "directory" else 0o666)
    monkeypatch.chdir(tmp_path)

    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.config"):
        config = get_monitoring_config("production", env={})

    assert config.sampling_rate != 0.125
    assert config.source("sampling_rate") != str(path)
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert str(path.parent if what == "directory" else path) in caplog.records[0].getMessage()


def test_a_working_directory_configs_symlink_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_config(tmp_path / "elsewhere", "production", "sampling_rate = 0.125\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "configs").symlink_to(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "app")

    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.config"):
        config = get_monitoring_config("production", env={})

    assert config.sampling_rate != 0.125
    assert len(caplog.records) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file away needs root")
def test_working_directory_configs_of_another_user_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path / "configs", "production", "sampling_rate = 0.125\n")
    os.chown(path.parent, 65534, 65534)
    monkeypatch.chdir(tmp_path)

    with caplog.at_level(logging.WARNING, logger="chat_turbo_metrics.config"):
        config = get_monitoring_config("production", env={})

    assert config.sampling_rate != 0.125
    assert "65534" in caplog.records[0].getMessage()


def test_an_unknown_environment_says_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigurationError) as caught:
        get_monitoring_config("staging", env={"CHAT_TURBO_CONFIG_DIR": str(tmp_path / "mine")})

    assert str(tmp_path / "mine") in str(caught.value)
    assert "production" in str(caught.value)  # a shipped one is listed as available
