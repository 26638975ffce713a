"""What a SQL statement does and to which table, with bounded label cardinality; literals stripped.

A small tokenizer, not a SQL parser: the first keyword at nesting depth 0 is the operation (a CTE's
``WITH`` is skipped to the statement it introduces), the first name after ``FROM``/``INTO``/``UPDATE``/
``TABLE``/``JOIN`` is the table. Operations outside a fixed set and tables past a fixed number of distinct
names become ``other``, so labels stay bounded whatever the application sends.

Where a quoted string ends depends on the database: a backslash escapes the quote in MySQL strings and in
PostgreSQL's ``E'...'`` strings, and not in standard ones (``'C:\\'`` is complete there). The tokenizer reads
every string both ways; where the two readings part, or a string, a dollar-quoted string or a comment never
ends, nothing from there on is trusted: it is one opaque literal, so that no literal ever reaches a label.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

OTHER = "other"
_MAX_CACHED_LENGTH = 4096
OPERATIONS = frozenset(
    {
        "select", "insert", "update", "delete", "merge", "upsert", "replace", "create", "drop", "alter",
        "truncate", "begin", "commit", "rollback", "savepoint", "release", "pragma", "set", "show",
        "explain", "analyze", "vacuum", "copy", "grant", "revoke", "call", "values",
    }
)  # fmt: skip
_TABLE_AFTER = frozenset({"from", "into", "update", "table", "join"})
_SKIP_AFTER_TABLE = frozenset({"if", "not", "exists", "only", "temporary", "temp"})
# Order matters: comments and quoted text first, so nothing inside them is taken for a keyword.
_TOKEN = re.compile(
    r"""(?P<comment>--[^\n]*|/\*.*?\*/)
      | (?P<dollar>\$(?P<tag>(?:[A-Za-z_][A-Za-z0-9_]*)?)\$.*?\$(?P=tag)\$)
      | (?P<quote>[EeNnBbXx]?'|")
      | (?P<quoted>`[^`]*`|\[[^\]]*\])
      | (?P<number>(?<![A-Za-z0-9_$.])-?(?:0[xX][0-9A-Fa-f]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\b)
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_"`][A-Za-z0-9_$"`]*)*)
      | (?P<open>\()
      | (?P<close>\))
      | (?P<opaque>/\*|\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)""",
    re.VERBOSE | re.DOTALL,
)
# Each quote read the standard way ('' escapes a quote) and the backslash way (\' too).
_READINGS = {
    quote: (
        re.compile(f"{quote}(?:[^{quote}]|{quote}{quote})*{quote}"),
        re.compile(f"{quote}(?:[^{quote}\\\\]|{quote}{quote}|\\\\.)*{quote}", re.DOTALL),
    )
    for quote in "'\""
}
Token = tuple[str, int, int]  # (kind, start, end); kinds: comment, literal, name, number, word, open, close


def tokens(statement: str) -> Iterator[Token]:
    r"""The tokens of ``statement`` that matter, in order; an ``opaque`` one, if any, runs to the end and is last.

    Example:
        >>> statement = r"SELECT E'it\'s' FROM t"  # PostgreSQL's escape string: a backslash escapes
        >>> [statement[start:end] for kind, start, end in tokens(statement)]
        ['SELECT', "E'it\\'s'", 'FROM', 't']
        >>> statement = r"SELECT 'C:\' AS dir FROM t"  # complete in PostgreSQL, not in MySQL
        >>> [(kind, statement[start:end]) for kind, start, end in tokens(statement)][1:]
        [('opaque', "'C:\\' AS dir FROM t")]
    """
    position = 0
    while (match := _TOKEN.search(statement, position)) is not None:
        kind, start, end = match.lastgroup or "", match.start(), match.end()
        if kind == "dollar":
            kind = "literal"
        elif kind == "quote":
            quote = match.group()[-1]
            standard, backslash = (reading.match(statement, end - 1) for reading in _READINGS[quote])
            if match.group()[0] in "Ee":  # E'...': PostgreSQL, where a backslash always escapes
                standard = backslash
            if standard is None or backslash is None or standard.end() != backslash.end():
                kind = "opaque"  # the databases disagree where it ends, or it never ends
            else:
                kind, end = ("literal" if quote == "'" else "name"), standard.end()
        elif kind == "quoted":
            kind = "name"
        if kind == "opaque":
            yield kind, start, len(statement)
            return
        yield kind, start, end
        position = end


def strip_literals(statement: str, double_quoted_strings: bool = False) -> str:
    r"""``statement`` with string and number literals and comments replaced by ``?``, whitespace collapsed.

    Where the databases would read a string differently (see :func:`tokens`), the rest of the statement is one
    ``?``: no part of a literal is ever kept.

    Args:
        statement: the SQL text.
        double_quoted_strings: ``"..."`` is a string, not a name (MySQL, whose names are quoted with backticks).

    Example:
        >>> strip_literals("SELECT * FROM users WHERE name = 'bob' AND age > 42")
        'SELECT * FROM users WHERE name = ? AND age > ?'
        >>> strip_literals(r"SELECT * FROM users WHERE note = 'it\'s' AND card = '4111111111111111'")
        'SELECT * FROM users WHERE note = ?'
    """
    parts, last = [], 0
    for kind, start, end in tokens(statement):
        parts.append(statement[last:start])
        if kind == "comment":
            parts.append(" ")
        elif kind in ("literal", "number", "opaque") or (
            kind == "name" and double_quoted_strings and statement[start] == '"'
        ):
            parts.append("?")
        else:
            parts.append(statement[start:end])
        last = end
    parts.append(statement[last:])
    return " ".join("".join(parts).split())


def _unquote(name: str) -> str:
    return "".join(ch for ch in name if ch not in '"`[]').lower()


def parse(statement: str) -> tuple[str, str | None]:
    """(operation, table or None) of ``statement``; the operation is lower case, ``other`` if unknown.

    Example:
        >>> parse("WITH t AS (SELECT 1) INSERT INTO audit.log SELECT * FROM t")
        ('insert', 'audit.log')
    """
    depth, operation, table, want_table, in_cte = 0, None, None, False, False
    for kind, start, end in tokens(statement):
        if kind == "opaque":
            break  # nothing after it can be told from a literal
        if kind == "open":
            depth += 1
            want_table = False  # a subquery or a column list, not a name
        elif kind == "close":
            depth -= 1
        elif kind in ("word", "name") and depth == 0:
            word = statement[start:end]
            lower = word.lower()
            if operation is None:
                if lower == "with":
                    in_cte, operation = True, ""
                    continue
                operation = lower
            elif in_cte and lower in ("select", "insert", "update", "delete", "merge"):
                in_cte, operation = False, lower
            if want_table and (kind == "name" or lower not in _SKIP_AFTER_TABLE):
                if lower not in OPERATIONS:
                    table = _unquote(word)
                want_table = False
            elif table is None and not in_cte and lower in _TABLE_AFTER:
                want_table = True
            if table is not None and operation:
                break
    op = operation if operation in OPERATIONS else OTHER
    return op, table


class StatementClassifier:
    """Maps statements to ``(operation, table)`` labels with at most ``max_tables`` distinct tables.

    Results are cached per statement text (applications repeat the same statements), bounded too.

    Example:
        >>> classifier = StatementClassifier(max_tables=1)
        >>> classifier.classify("SELECT * FROM users WHERE id = ?")
        ('select', 'users')
        >>> classifier.classify("DELETE FROM orders")
        ('delete', 'other')
    """

    def __init__(self, max_tables: int = 100, max_statements: int = 2048) -> None:
        """Args:
        max_tables: distinct table labels before new tables are labelled ``other``.
        max_statements: statement texts whose classification is cached.
        """
        self._max_tables = max_tables
        self._max_statements = max_statements
        self._tables: set[str] = set()
        self._cache: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def classify(self, statement: str) -> tuple[str, str]:
        """The ``(operation, table)`` labels of ``statement``; ``other`` where unknown or over the bound."""
        found = self._cache.get(statement)
        if found is not None:
            return found
        operation, table = parse(statement)
        with self._lock:
            if table is None:
                table = OTHER
            elif table not in self._tables:
                if len(self._tables) < self._max_tables:
                    self._tables.add(table)
                else:
                    table = OTHER
            # Long statements (literals inlined, bulk VALUES lists) are parsed each time, never kept.
            if len(self._cache) < self._max_statements and len(statement) <= _MAX_CACHED_LENGTH:
                self._cache[statement] = (operation, table)
        return operation, table
