"""How a setting is declared: a field of a settings section, with what reads it, checks it and says what it means.

Each subsystem's settings are a frozen dataclass (a *section*: core, export, storage, alerting, datadog,
multiprocess) whose fields are declared with :func:`setting`; :class:`~chat_turbo_metrics.MonitoringConfig`
inherits every section. These declarations are the one table of settings: the parsing of files and variables,
the checks, ``environment_variables.py``, the ``config`` command's groups and the README's tables all read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, overload

from chat_turbo_metrics._core.config.values import parse_endpoint, parse_secret
from chat_turbo_metrics._core.secret import Secret, mask_url_password, mask_url_userinfo

T = TypeVar("T")
S = TypeVar("S", bound="Settings")
_KEY = "chat_turbo_metrics.setting"  # where a field's metadata holds its Setting
DEFAULT_SOURCE = "default"
# How much of a secret an error may show: nothing, a URL without its user info, a URL without its password.
Secrecy = Literal["whole", "userinfo", "password"]
# A check of a typed value: the problem (the end of the error message), or None when the value is fine.
Check = Callable[[Any], "str | None"]


class ConfigurationError(ValueError):
    """A setting has a value the pipeline cannot be built with; the message names both."""


class InvalidSetting(ConfigurationError):
    """A check of a setting failed; the source that set the value words the message (variable, file key, code)."""

    def __init__(self, setting: str, shown: str, why: str) -> None:
        super().__init__(f"{setting}={shown}: {why}")
        self.setting = setting
        self.why = why


def _as_typed(raw: str) -> Any:
    return raw


@dataclass(frozen=True)
class Variable:
    """An environment variable a setting is read from.

    Args:
        name: the variable.
        convert: the variable's text to what the setting's parser takes (milliseconds to seconds, a negation).
        empty_is_error: set but empty is a mistake (most empty variables count as unset, as OpenTelemetry says).
        unit: the unit of the variable's text when it differs from the setting's (``ms``), for the docs.
    """

    name: str
    convert: Callable[[str], Any] = _as_typed
    empty_is_error: bool = False
    unit: str = ""

    @property
    def ours(self) -> bool:
        """Declared by this package (``environment_variables.py``); ``OTEL_*`` ones are OpenTelemetry's."""
        return not self.name.startswith("OTEL_")


@dataclass(frozen=True)
class OtherVariable:
    """A variable read outside the settings (where the files are, OTLP headers), declared for the docs only."""

    names: tuple[str, ...]
    section: str
    meaning: str
    read_by: str = ""  # what reads it, when not the configuration

    @property
    def ours(self) -> bool:
        """Declared by this package; ``OTEL_*`` ones are OpenTelemetry's."""
        return not self.names[0].startswith("OTEL_")


@dataclass(frozen=True)
class Setting:
    """One row of the table: a field (also its TOML key), its parser, variables, checks and meaning."""

    parse: Callable[[Any], Any]  # a raw value (variable text, TOML value, code) -> the typed one, or ValueError
    meaning: str  # one line, Markdown (the README shows it as it is)
    variable: Variable | None = None  # its own variable (the seed's, Datadog's or ours)
    otel: tuple[Variable, ...] = ()  # OpenTelemetry's, weaker than ``variable``; a later one wins over an earlier
    secret: Secrecy | None = None
    checks: tuple[Check, ...] = ()
    shown_default: str = ""  # the default in words, when its value says little (None, "")
    name: str = ""  # the field; filled in from the section
    section: str = ""
    default: Any = None

    @property
    def variables(self) -> tuple[Variable, ...]:
        """Every variable it is read from, in the order they are applied (the last applied wins)."""
        return (*self.otel, self.variable) if self.variable is not None else self.otel

    def problem(self, value: Any) -> str | None:
        """What is wrong with the typed ``value``, or None."""
        for check in self.checks:
            found = check(value)
            if found is not None:
                return found
        return None

    def shown(self, raw: Any) -> str:
        """``raw`` as an error may quote it: a secret masked (a URL's password part only, when it can be told)."""
        if self.secret is None:
            return repr(raw)
        text = raw.reveal() if isinstance(raw, Secret) else str(raw)
        if self.secret == "userinfo":
            return repr(mask_url_userinfo(text))
        if self.secret == "password":
            # The URL with its password masked, if one can be told apart; the query (which may carry password=
            # or sslpassword=) never. Anything else is masked whole.
            base, query, _ = text.partition("?")
            masked = mask_url_password(base)
            if masked != base:
                return repr(masked + ("?***" if query else ""))
        return repr(Secret(text).masked())

    def wrap(self, value: Any) -> Any:
        """A secret given as plain text in code, as a :class:`Secret` (unchanged otherwise).

        Raises:
            ConfigurationError: the value cannot be a secret (not text), named with the setting.
        """
        if self.secret is None or value is None or isinstance(value, Secret):
            return value
        try:
            return (parse_endpoint if self.secret == "userinfo" else parse_secret)(value)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"{self.name}={self.shown(value)}: {error}") from None


@overload
def setting(
    default: T,
    *,
    parse: Callable[[Any], Any],
    meaning: str,
    variable: str | Variable | None = None,
    otel: tuple[str | Variable, ...] = (),
    secret: Secrecy | None = None,
    checks: tuple[Check, ...] = (),
    shown_default: str = "",
) -> T: ...
@overload
def setting(
    *,
    factory: Callable[[], T],
    parse: Callable[[Any], Any],
    meaning: str,
    variable: str | Variable | None = None,
    otel: tuple[str | Variable, ...] = (),
    secret: Secrecy | None = None,
    checks: tuple[Check, ...] = (),
    shown_default: str = "",
) -> T: ...
def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    parse: Callable[[Any], Any],
    meaning: str,
    variable: str | Variable | None = None,
    otel: tuple[str | Variable, ...] = (),
    secret: Secrecy | None = None,
    checks: tuple[Check, ...] = (),
    shown_default: str = "",
) -> Any:
    """Declare a field of a settings section (a ``dataclasses.field`` carrying its :class:`Setting`).

    Example:
        >>> @dataclass(frozen=True, kw_only=True)
        ... class ExampleSettings(Settings):
        ...     SECTION = "example"
        ...     port: int = setting(9464, parse=int, meaning="a port", variable="EXAMPLE_PORT",
        ...                         checks=(lambda port: None if 0 <= port <= 65535 else "not a port",))
        >>> ExampleSettings(port=8080).port
        8080
        >>> ExampleSettings(port=-1)
        Traceback (most recent call last):
        ...
        chat_turbo_metrics._core.config.declaration.InvalidSetting: port=-1: not a port
    """
    spec = Setting(
        parse=parse,
        meaning=meaning,
        variable=Variable(variable) if isinstance(variable, str) else variable,
        otel=tuple(Variable(name) if isinstance(name, str) else name for name in otel),
        secret=secret,
        checks=checks,
        shown_default=shown_default,
    )
    if factory is not None:
        return field(default_factory=factory, metadata={_KEY: spec})
    return field(default=default, metadata={_KEY: spec})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What every section has: where each setting came from, and the checks of each declared setting.

    A section checks its own settings when it is made (its fields' checks, then its own ``__post_init__`` for
    settings that only make sense together), so a consumer may take the one section it reads.
    """

    SECTION: ClassVar[str] = ""  # the subsystem's name (``config`` groups, README tables)
    TITLE: ClassVar[str] = ""  # what its settings are about, in a few words
    # Where each setting came from (a variable name, a file path or "code"); missing ones are defaults.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for item in settings_of(type(self)):
            value = getattr(self, item.name)
            wrapped = item.wrap(value)  # plain strings given to the constructor become secrets too
            if wrapped is not value:
                object.__setattr__(self, item.name, wrapped)
            why = item.problem(wrapped)
            if why is not None:
                raise InvalidSetting(item.name, item.shown(wrapped), why)

    def source(self, setting: str) -> str:
        """Where ``setting`` came from: ``"default"``, a file path, a variable name or ``"code"``."""
        return self.sources.get(setting, DEFAULT_SOURCE)

    def replace(self: S, **changes: Any) -> S:
        """Return a copy with ``changes`` applied (code-level overrides, validated like any other source)."""
        return apply(changes, "code", base=self)


def settings_of(cls: type[Settings]) -> tuple[Setting, ...]:
    """The declared settings of ``cls`` (a section, or a class made of sections), in field order."""
    found = _DECLARED.get(cls)
    if found is None:
        found = _DECLARED[cls] = _declared(cls)
    return found


# Classes are hashable, but mypy takes a dataclass's __hash__ for the class's own: a dict, not functools.cache.
_DECLARED: dict[type[Settings], tuple[Setting, ...]] = {}


def _declared(cls: type[Settings]) -> tuple[Setting, ...]:
    declared: list[Setting] = []
    owners = [owner for owner in reversed(cls.__mro__) if issubclass(owner, Settings) and "SECTION" in vars(owner)]
    by_name = {item.name: item for item in dataclasses.fields(cls)}
    for owner in owners:
        for name in vars(owner).get("__annotations__", {}):
            item = by_name.get(name)
            if item is None or _KEY not in item.metadata:
                continue
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            declared.append(dataclasses.replace(item.metadata[_KEY], name=name, section=owner.SECTION, default=default))
    return tuple(declared)


def variable_names(cls: type[Settings]) -> frozenset[str]:
    """Every variable the settings of ``cls`` are read from."""
    return frozenset(variable.name for item in settings_of(cls) for variable in item.variables)


def apply(values: Mapping[str, Any], source: str, base: S, typed: Mapping[str, str] | None = None) -> S:
    """Apply ``values`` (setting -> raw value) from ``source`` on top of ``base``, naming ``source`` in errors.

    ``typed`` holds what the user wrote when ``values`` were converted from it (a variable in milliseconds),
    so that an error quotes the user's text rather than the converted value.

    Raises:
        ConfigurationError: an unknown setting, or a value its parser or a check refuses.
    """
    declared = {item.name: item for item in settings_of(type(base))}
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        item = declared.get(key)
        if item is None:
            raise ConfigurationError(f"{source}: unknown setting {key!r} (known: {', '.join(sorted(declared))})")
        try:
            parsed[key] = item.parse(raw)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"{_where(base, source, key)}={item.shown(raw)}: {error}") from None
    try:
        return dataclasses.replace(base, **parsed, sources={**base.sources, **dict.fromkeys(parsed, source)})
    except InvalidSetting as error:
        if error.setting not in parsed:  # another setting made this one invalid; its own source is named
            raise ConfigurationError(f"{source}: {error}") from None
        shown = (typed or {}).get(error.setting, values[error.setting])
        where = _where(base, source, error.setting)
        raise ConfigurationError(f"{where}={declared[error.setting].shown(shown)}: {error.why}") from None


def _where(config: Settings, source: str, key: str) -> str:
    """A variable names itself; a file or code names the key: ``OTEL_X``, ``prod.toml: key``, ``code: key``."""
    return source if source in variable_names(type(config)) else f"{source}: {key}"


def setting_label(config: Settings, setting: str) -> str:
    """How an error should name ``setting``: its variable, ``<file>: <setting>``, or the setting itself."""
    source = config.source(setting)
    if source in (DEFAULT_SOURCE, "code"):
        return setting
    return _where(config, source, setting)
