"""``OTEL_SEMCONV_STABILITY_OPT_IN`` read as opentelemetry-python-contrib reads it, in the one place every
instrumentor asks (``chat_turbo_metrics.instrumentation.semconv_mode``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat_turbo_metrics import ConfigurationError, MonitoringConfig
from chat_turbo_metrics._core.config.sources import get_monitoring_config
from chat_turbo_metrics._core.semconv import ignored_tokens, opt_in_mode, parse_opt_in
from chat_turbo_metrics.instrumentation import SemconvMode, semconv_mode
from conftest import make_config

SEED, SEMCONV, BOTH = SemconvMode.SEED, SemconvMode.SEMCONV, SemconvMode.BOTH


@pytest.mark.parametrize(
    ("text", "http", "database"),
    [
        ("", SEED, SEED),
        ("   ", SEED, SEED),
        ("http", SEMCONV, SEED),
        ("database", SEED, SEMCONV),
        ("http/dup", BOTH, SEED),
        ("database/dup", SEED, BOTH),
        ("http,database/dup", SEMCONV, BOTH),
        (" http/dup , database ", BOTH, SEMCONV),
        # contrib: /dup has precedence over the stable token, whichever comes first
        ("http,http/dup", BOTH, SEED),
        ("http/dup,http", BOTH, SEED),
        # contrib compares tokens as written: no case folding, no partial match
        ("HTTP,Database", SEED, SEED),
        ("https,http/duplicate,db", SEED, SEED),
        # other signals' and other libraries' tokens select nothing here, and are no error
        ("messaging,gen_ai_latest_experimental,k8s", SEED, SEED),
        (",,http,,", SEMCONV, SEED),
    ],
)
def test_the_environment_is_read_as_contrib_reads_it(text: str, http: SemconvMode, database: SemconvMode) -> None:
    env = {"OTEL_SEMCONV_STABILITY_OPT_IN": text}
    assert (semconv_mode("http", environ=env), semconv_mode("database", environ=env)) == (http, database)
    config = get_monitoring_config(env={**env, "CHAT_TURBO_ENV": "test"})
    tokens = config.semconv_stability_opt_in
    assert (opt_in_mode(tokens, "http"), opt_in_mode(tokens, "database")) == (http, database)


def test_unset_is_the_seed_names() -> None:
    assert semconv_mode("http", environ={}) is SEED
    assert MonitoringConfig().semconv_stability_opt_in == ()


def test_modes_say_which_sets() -> None:
    assert [(mode.seed, mode.semconv) for mode in (SEED, SEMCONV, BOTH)] == [(True, False), (False, True), (True, True)]


def test_the_tokens_are_kept_and_the_unknown_ones_named() -> None:
    tokens = parse_opt_in(" http/dup, messaging ,HTTP")
    assert tokens == ("http/dup", "messaging", "HTTP")
    assert ignored_tokens(tokens) == ("messaging", "HTTP")


def test_a_monitor_follows_its_configuration(monitor_factory: object) -> None:
    from_code = monitor_factory(semconv_stability_opt_in=("database/dup",))  # type: ignore[operator]
    assert semconv_mode("database", from_code) is BOTH
    assert semconv_mode("http", from_code) is SEED
    replaced = from_code.config.replace(semconv_stability_opt_in="http, database")
    assert replaced.semconv_stability_opt_in == ("http", "database")
    assert replaced.source("semconv_stability_opt_in") == "code"


def test_a_monitor_wins_over_the_environment(monitor_factory: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    monitor = monitor_factory()  # type: ignore[operator]
    assert semconv_mode("http") is SEMCONV  # no monitor: os.environ
    assert semconv_mode("http", monitor) is SEED  # the monitor's own configuration (from code, not the env)


def test_a_file_sets_it(tmp_path: Path) -> None:
    (tmp_path / "staging.toml").write_text('semconv_stability_opt_in = "http/dup,database"\n')
    config = get_monitoring_config(env={"CHAT_TURBO_ENV": "staging", "CHAT_TURBO_CONFIG_DIR": str(tmp_path)})
    tokens = config.semconv_stability_opt_in
    assert (opt_in_mode(tokens, "http"), opt_in_mode(tokens, "database")) == (BOTH, SEMCONV)


def test_the_variable_wins_over_a_file(tmp_path: Path) -> None:
    (tmp_path / "staging.toml").write_text('semconv_stability_opt_in = "http/dup"\n')
    env = {"CHAT_TURBO_ENV": "staging", "CHAT_TURBO_CONFIG_DIR": str(tmp_path), "OTEL_SEMCONV_STABILITY_OPT_IN": "http"}
    config = get_monitoring_config(env=env)
    assert opt_in_mode(config.semconv_stability_opt_in, "http") is SEMCONV
    assert config.source("semconv_stability_opt_in") == "OTEL_SEMCONV_STABILITY_OPT_IN"


@pytest.mark.parametrize("bad", [42, ["http", 3], {"http": True}])
def test_a_value_that_is_not_tokens_is_refused_at_configuration(bad: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MonitoringConfig().replace(semconv_stability_opt_in=bad)
    assert "semconv_stability_opt_in" in str(caught.value)
    assert repr(bad) in str(caught.value)
    with pytest.raises(ConfigurationError) as built:
        make_config(semconv_stability_opt_in="http")  # the constructor takes the typed value: a tuple
    assert "semconv_stability_opt_in='http'" in str(built.value)
