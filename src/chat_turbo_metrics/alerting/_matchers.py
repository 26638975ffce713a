"""Label matchers as Alertmanager writes them (``severity="critical"``, ``service=~"api|web"``), parsed once.

Routes and inhibition rules select alerts with matchers. They are given either as a mapping (label -> value,
equality) or as strings with one of the operators ``=``, ``!=``, ``=~``, ``!~``; regular expressions are anchored
(they match the whole value), as in Alertmanager. A missing label matches as the empty string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_SYNTAX = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|([^"\s]*))\s*$')
_OPERATORS = ("=", "!=", "=~", "!~")


@dataclass(frozen=True)
class Matcher:
    """One condition on one label.

    Example:
        >>> Matcher.parse('severity=~"high|critical"').matches({"severity": "high"})
        True
        >>> Matcher("service", "!=", "db").matches({})
        True
    """

    label: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in _OPERATORS:
            raise ValueError(f"matcher operator {self.op!r}: expected one of {', '.join(_OPERATORS)}")
        if self.op in ("=~", "!~"):
            try:
                object.__setattr__(self, "_regex", re.compile(f"(?:{self.value})\\Z"))
            except re.error as error:
                raise ValueError(f"matcher {self.label}{self.op}{self.value!r}: bad regex: {error}") from None

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Parse ``label<op>"value"`` (quotes optional for values without spaces).

        Raises:
            ValueError: ``text`` is not a matcher.
        """
        found = _SYNTAX.match(text)
        if found is None:
            raise ValueError(f'matcher {text!r}: expected label="value" with =, !=, =~ or !~')
        label, op, quoted, bare = found.groups()
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        return cls(label, op, value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when ``labels`` satisfy this condition."""
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self._regex is not None  # compiled in __post_init__ for the regex operators
        hit = self._regex.match(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.label}{self.op}"{self.value}"'


Matchers = Mapping[str, str] | Iterable[str | Matcher] | None
"""What the public API accepts wherever alerts are selected (strings, or matchers already parsed)."""


def parse_matchers(matchers: Matchers, setting: str) -> tuple[Matcher, ...]:
    """Turn the public forms into :class:`Matcher` objects, at configuration time.

    Args:
        matchers: ``None`` (match everything), a mapping of equalities, or matcher strings.
        setting: the parameter's name, for the error message.

    Returns:
        The matchers; empty when every alert matches.

    Raises:
        ValueError: a matcher is malformed; the message names ``setting`` and the matcher.
    """
    if matchers is None:
        return ()
    if isinstance(matchers, str):
        matchers = (matchers,)
    try:
        if isinstance(matchers, Mapping):
            return tuple(Matcher(str(label), "=", str(value)) for label, value in matchers.items())
        return tuple(item if isinstance(item, Matcher) else Matcher.parse(item) for item in matchers)
    except ValueError as error:
        raise ValueError(f"{setting}: {error}") from None


def match_all(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    """True when every matcher holds (and always for no matchers)."""
    return all(matcher.matches(labels) for matcher in matchers)
