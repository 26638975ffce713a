"""Variables an instrumentor distribution reads, declared with their check so that ``config`` checks them too."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from chat_turbo_metrics._core.config.declaration import ConfigurationError
from chat_turbo_metrics._core.secret import Secret


class EnvironmentVariable(str):
    """The name of a variable an instrumentor reads, carrying how its value is read and checked.

    Declare it as a constant of the module an ``opentelemetry_environment_variables`` entry point names, where
    OpenTelemetry's convention puts variable names: it stays the variable's name (a ``str``), and
    ``chat-turbo-metrics config`` shows its value and refuses one ``parse`` refuses, as it does the core's.

    Example:
        >>> def parse_mode(text: str) -> str:
        ...     if text.strip() not in ("on", "off"):
        ...         raise ValueError("expected on or off")
        ...     return text.strip()
        >>> MODE = EnvironmentVariable("EXAMPLE_MODE", parse=parse_mode, default="on")
        >>> MODE, MODE.read({"EXAMPLE_MODE": "off"}), MODE.read({})
        ('EXAMPLE_MODE', 'off', 'on')
        >>> MODE.read({"EXAMPLE_MODE": "maybe"})
        Traceback (most recent call last):
        ...
        chat_turbo_metrics._core.config.declaration.ConfigurationError: EXAMPLE_MODE='maybe': expected on or off

    Args:
        name: the variable.
        parse: its text to the value the instrumentor uses; raises ``ValueError`` saying what is wrong (without
            quoting a secret).
        default: the text that applies when the variable is unset or empty.
        secret: its value is never shown (``***``).
    """

    parse: Callable[[str], Any]
    default: str
    secret: bool

    def __new__(
        cls, name: str, *, parse: Callable[[str], Any], default: str = "", secret: bool = False
    ) -> EnvironmentVariable:
        variable = super().__new__(cls, name)
        variable.parse = parse
        variable.default = default
        variable.secret = secret
        return variable

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # Pickled (a dict keyed by it, sent to another process) as the plain name it stands for.
        return (str, (str(self),))

    def text(self, environ: Mapping[str, str] | None = None) -> str:
        """The variable's text in ``environ`` (default ``os.environ``), or the default when unset or empty."""
        raw = (os.environ if environ is None else environ).get(self, "")
        return raw if raw.strip() else self.default

    def shown(self, text: str) -> str:
        """``text`` as it may be shown: quoted, or masked for a secret."""
        return repr(Secret(text).masked() if self.secret else text)

    def read(self, environ: Mapping[str, str] | None = None) -> Any:
        """The parsed value of the variable in ``environ`` (default ``os.environ``), or of the default.

        Raises:
            ConfigurationError: ``parse`` refused the value; the message names the variable and the value.
        """
        text = self.text(environ)
        try:
            return self.parse(text)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"{self}={self.shown(text)}: {error}") from None
