"""OTLP header variables: a malformed one fails at configuration naming the variable, and no token is logged."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chat_turbo_metrics import ConfigurationError
from chat_turbo_metrics._cli.config import run_config_command
from chat_turbo_metrics._core.otlp_headers import check_otlp_headers
from conftest import clean_env, require_tool

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.Zm9v"
SLIP = f"Authorization: Bearer {TOKEN}"  # a colon where OTLP wants "="


@pytest.mark.parametrize(
    "value",
    ["authorization=Bearer%20abc", "a=b,c=d", " api-key = some value , x-tenant=t1 ", "a=b,,c=d", "k=v=w"],
)
def test_well_formed_headers_pass(value: str) -> None:
    check_otlp_headers({"OTEL_EXPORTER_OTLP_HEADERS": value}, "metrics")


@pytest.mark.parametrize(
    ("value", "position", "shown"),
    [
        (SLIP, 1, "Authorization: ***"),
        (f"x-tenant=t1,{SLIP}", 2, "Authorization: ***"),
        (f'authorization="Bearer {TOKEN}"', 1, "authorization= ***"),
        (f"Bearer {TOKEN}", 1, "***"),
    ],
)
def test_a_malformed_header_fails_naming_the_variable_and_position_without_the_value(
    value: str, position: int, shown: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        check_otlp_headers({"OTEL_EXPORTER_OTLP_HEADERS": value}, "metrics")

    message = str(raised.value)
    assert message.startswith(f"OTEL_EXPORTER_OTLP_HEADERS: header {position} ({shown!r})")
    assert TOKEN not in message


def test_the_signal_variable_is_checked_instead_of_the_shared_one_as_the_exporter_reads_it() -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": SLIP, "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "authorization=ok"}

    check_otlp_headers(env, "metrics")  # the metrics exporter never reads the shared variable here
    with pytest.raises(ConfigurationError, match=r"^OTEL_EXPORTER_OTLP_HEADERS: "):
        check_otlp_headers(env, "traces")
    with pytest.raises(ConfigurationError, match=r"^OTEL_EXPORTER_OTLP_TRACES_HEADERS: "):
        check_otlp_headers({**env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS": SLIP}, "traces")


def test_config_fails_naming_the_variable_and_logs_no_token(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The OTLP exporter reads os.environ itself, so the variable has to be there.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", SLIP)
    env = {"OTEL_METRICS_EXPORTER": "otlp"}

    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigurationError) as raised:
        run_config_command("test", env, io.StringIO())

    assert str(raised.value).startswith("OTEL_EXPORTER_OTLP_HEADERS: ")
    assert [record for record in caplog.records if TOKEN[:12] in record.getMessage()] == []


def test_the_config_command_exits_2_and_prints_no_token(tmp_path: Path) -> None:
    env = clean_env(OTEL_METRICS_EXPORTER="otlp", OTEL_EXPORTER_OTLP_HEADERS=SLIP)
    done = subprocess.run(
        [sys.executable, "-m", "chat_turbo_metrics", "config"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert "OTEL_EXPORTER_OTLP_HEADERS" in done.stderr
    assert TOKEN[:12] not in done.stdout + done.stderr


APP = textwrap.dedent(
    """
    import chat_turbo_metrics
    monitor = chat_turbo_metrics.PerformanceMonitor.get_instance()
    monitor.increment_counter("messages_sent", {"channel": "public"})
    print("recorded", [type(e).__name__ for e in monitor.pipeline.exporters], flush=True)
    monitor.shutdown()
    """
)


@pytest.mark.parametrize(
    ("signal_env", "variable"),
    [
        ({"OTEL_METRICS_EXPORTER": "otlp,console"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"OTEL_METRICS_EXPORTER": "console", "OTEL_TRACES_EXPORTER": "otlp"}, "OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
    ],
)
def test_opentelemetry_instrument_starts_without_the_exporter_and_logs_no_token(
    tmp_path: Path, signal_env: dict[str, str], variable: str
) -> None:
    tool = require_tool_beside_python("opentelemetry-instrument")
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = clean_env(CHAT_TURBO_ENV="test", OTEL_METRIC_EXPORT_INTERVAL="600000", **signal_env, **{variable: SLIP})
    done = subprocess.run(
        [tool, sys.executable, str(app)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert "recorded ['ConsoleMetricExporter']" in done.stdout  # the rest of the pipeline started
    assert variable in done.stderr  # the error says which variable to fix
    assert TOKEN[:12] not in done.stdout + done.stderr


def require_tool_beside_python(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else require_tool(name)


def test_an_otlp_exporter_the_application_builds_itself_logs_the_header_masked(tmp_path: Path) -> None:
    build = (
        "import chat_turbo_metrics\n"
        "from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter\n"
        "OTLPMetricExporter()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", build],
        env=clean_env(OTEL_EXPORTER_OTLP_HEADERS=f"x-tenant=t1,{SLIP}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "Authorization: ***" in done.stderr  # OpenTelemetry's own warning, the header's value masked
    assert TOKEN[:12] not in done.stderr
