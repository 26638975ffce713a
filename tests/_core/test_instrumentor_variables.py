"""``EnvironmentVariable``: the name of an instrumentor's variable, carrying how its value is read and checked."""

from __future__ import annotations

import pickle

import pytest

from chat_turbo_metrics import ConfigurationError
from chat_turbo_metrics.instrumentation import EnvironmentVariable


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError("expected a TCP port")
    return port


PORT = EnvironmentVariable("VENDOR_PORT", parse=_port, default="8125")
TOKEN = EnvironmentVariable("VENDOR_TOKEN", parse=lambda text: text.strip() or None, secret=True)


def test_it_is_the_variable_name() -> None:
    assert PORT == "VENDOR_PORT"
    assert {PORT: 1} == {"VENDOR_PORT": 1}
    assert pickle.loads(pickle.dumps({PORT: 1})) == {"VENDOR_PORT": 1}


def test_unset_or_blank_reads_the_default() -> None:
    assert PORT.read({}) == 8125
    assert PORT.read({"VENDOR_PORT": "  "}) == 8125
    assert PORT.read({"VENDOR_PORT": "9125"}) == 9125


@pytest.mark.parametrize("value", ["0", "http", "1e3"])
def test_a_refused_value_names_the_variable_and_the_value(value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PORT.read({"VENDOR_PORT": value})
    assert str(caught.value).startswith(f"VENDOR_PORT={value!r}: ")


def test_a_secret_is_never_quoted() -> None:
    def refuse(text: str) -> str:
        raise ValueError("expected a token from the vendor's console")

    secret = EnvironmentVariable("VENDOR_TOKEN", parse=refuse, secret=True)
    with pytest.raises(ConfigurationError) as caught:
        secret.read({"VENDOR_TOKEN": "tok-s3cr3t"})
    assert "s3cr3t" not in str(caught.value)
    assert str(caught.value).startswith("VENDOR_TOKEN='***': ")
    assert TOKEN.shown("tok-s3cr3t") == "'***'"
