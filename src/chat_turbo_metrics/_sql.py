"""What a SQL statement does and to which table, with bounded label cardinality; literals stripped.

A small tokenizer, not a SQL parser: the first keyword at nesting depth 0 is the operation (a CTE's
``WITH`` is skipped to the statement it introduces), the first name after ``FROM``/``INTO``/``UPDATE``/
``TABLE``/``JOIN`` is the table. Operations outside a fixed set and tables past a fixed number of distinct
names become ``other``, so labels stay bounded whatever the application sends.
"""

from __future__ import annotations

import re
import threading

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
# Order matters: comments and quoted strings first, so nothing inside them is taken for a keyword.
_TOKEN = re.compile(
    r"""(?P<comment>--[^\n]*|/\*.*?\*/)
      | (?P<string>'(?:[^']|'')*')
      | (?P<quoted>"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\])
      | (?P<number>\b\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b)
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_"`][A-Za-z0-9_$"`]*)*)
      | (?P<open>\()
      | (?P<close>\))""",
    re.VERBOSE | re.DOTALL,
)
_LITERAL = re.compile(
    r"""--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|(?<![A-Za-z0-9_$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b""", re.DOTALL
)


def strip_literals(statement: str) -> str:
    """``statement`` with string and number literals and comments replaced by ``?``, whitespace collapsed.

    Example:
        >>> strip_literals("SELECT * FROM users WHERE name = 'bob' AND age > 42")
        'SELECT * FROM users WHERE name = ? AND age > ?'
    """
    return " ".join(_LITERAL.sub(_placeholder, statement).split())


def _placeholder(match: re.Match[str]) -> str:
    return "" if match.group().startswith(("--", "/*")) else "?"


def _unquote(name: str) -> str:
    return "".join(ch for ch in name if ch not in '"`[]').lower()


def parse(statement: str) -> tuple[str, str | None]:
    """(operation, table or None) of ``statement``; the operation is lower case, ``other`` if unknown.

    Example:
        >>> parse("WITH t AS (SELECT 1) INSERT INTO audit.log SELECT * FROM t")
        ('insert', 'audit.log')
    """
    depth, operation, table, want_table, in_cte = 0, None, None, False, False
    for match in _TOKEN.finditer(statement):
        kind = match.lastgroup
        if kind == "open":
            depth += 1
            want_table = False  # a subquery or a column list, not a name
        elif kind == "close":
            depth -= 1
        elif kind in ("word", "quoted") and depth == 0:
            word = match.group()
            lower = word.lower()
            if operation is None:
                if lower == "with":
                    in_cte, operation = True, ""
                    continue
                operation = lower
            elif in_cte and lower in ("select", "insert", "update", "delete", "merge"):
                in_cte, operation = False, lower
            if want_table and (kind == "quoted" or lower not in _SKIP_AFTER_TABLE):
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

    def table_label(self, table: str) -> str:
        """``table`` if it fits in the bound of distinct tables, else ``other``."""
        with self._lock:
            if table in self._tables:
                return table
            if len(self._tables) < self._max_tables:
                self._tables.add(table)
                return table
        return OTHER
