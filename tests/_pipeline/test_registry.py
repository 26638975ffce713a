"""Exporters are found through entry points: ours (pyproject.toml) like any installed distribution's; ours win a name
another distribution also declares; an unknown or missing one is one configuration error listing the choices."""

from __future__ import annotations

import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig
from chat_turbo_metrics._pipeline.registry import available, build_metric_exporter, exporters
from chat_turbo_metrics.exporters.file import FileExporter
from chat_turbo_metrics.exporters.prometheus import PrometheusExporter

VARIABLE = "OTEL_METRICS_EXPORTER"


@pytest.fixture
def other_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution "other-exporters" declaring exporters, some under our names."""
    info = tmp_path / "other_exporters-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: other-exporters\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [opentelemetry_metrics_exporter]
            chat_turbo_file = other_exporters:Plain
            chat_turbo_prometheus = other_exporters:Plain
            plain = other_exporters:Plain
            configured = other_exporters:Configured
            missing = not_installed_anywhere:Exporter
            """
        )
    )
    (tmp_path / "other_exporters.py").write_text(
        textwrap.dedent(
            """\
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            class Plain(ConsoleMetricExporter):
                built_with = None

            class Configured(ConsoleMetricExporter):
                @classmethod
                def from_config(cls, config):
                    exporter = cls()
                    exporter.built_with = config
                    return exporter
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_prometheus_is_ours_though_opentelemetry_declares_it_too() -> None:
    declared = {ep.value for ep in entry_points(group="opentelemetry_metrics_exporter", name="prometheus")}
    assert any(value.startswith("opentelemetry.exporter.prometheus") for value in declared)
    exporter = build_metric_exporter("prometheus", MonitoringConfig(prometheus_port=0), VARIABLE)
    try:
        assert isinstance(exporter, PrometheusExporter)
    finally:
        exporter.shutdown()


def test_our_names_are_ours_when_another_distribution_declares_them(other_distribution: Path) -> None:
    assert {ep.dist.name for ep in entry_points(group="opentelemetry_metrics_exporter", name="chat_turbo_file")} == {
        "chat-turbo-metrics",
        "other-exporters",
    }
    found = exporters("metrics")
    assert found["chat_turbo_file"].value == "chat_turbo_metrics.exporters.file:FileExporter"
    assert found["prometheus"].value == "chat_turbo_metrics.exporters.prometheus:PrometheusExporter"
    assert "chat_turbo_prometheus" not in found  # served as "prometheus", not listed twice
    exporter = build_metric_exporter(
        "chat_turbo_file", MonitoringConfig(file_path=str(other_distribution / "m")), VARIABLE
    )
    try:
        assert isinstance(exporter, FileExporter)
    finally:
        exporter.shutdown()


def test_another_distributions_exporter_is_built_from_the_configuration_or_without_arguments(
    other_distribution: Path,
) -> None:
    config = MonitoringConfig()
    plain = build_metric_exporter("plain", config, VARIABLE)
    configured = build_metric_exporter("configured", config, VARIABLE)
    assert (type(plain).__name__, plain.built_with) == ("Plain", None)
    assert (type(configured).__name__, configured.built_with) == ("Configured", config)


def test_an_unknown_name_lists_every_choice() -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_metric_exporter("bogus", MonitoringConfig(), VARIABLE)
    message = str(caught.value)
    assert message.startswith(f"{VARIABLE}='bogus': unknown exporter")
    choices = available("metrics")
    assert {"prometheus", "chat_turbo_file", "chat_turbo_database", "datadog", "console", "otlp"} <= set(choices)
    assert message.endswith(", ".join(choices))


def test_an_exporter_whose_package_is_missing_names_the_distribution_to_install(other_distribution: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_metric_exporter("missing", MonitoringConfig(), VARIABLE)
    message = str(caught.value)
    assert "not_installed_anywhere" in message
    assert "pip install other-exporters" in message
    assert "Available:" in message
