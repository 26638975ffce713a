"""Statement classification: operation and table with bounded cardinality; literals stripped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_turbo_metrics._core.sql import parse
from chat_turbo_metrics.instrumentation import StatementClassifier, strip_literals


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM users WHERE id = ?", ("select", "users")),
        ("  select a.id from Users a join orders o on o.uid = a.id", ("select", "users")),
        ('INSERT INTO "Messages" (body) VALUES (%s)', ("insert", "messages")),
        ("UPDATE public.accounts SET balance = balance - 1", ("update", "public.accounts")),
        ("DELETE FROM sessions WHERE expires < now()", ("delete", "sessions")),
        ("CREATE TABLE IF NOT EXISTS audit (id int)", ("create", "audit")),
        ("DROP TABLE IF EXISTS audit", ("drop", "audit")),
        ("-- a comment with FROM secrets\nSELECT 1", ("select", None)),
        ("/* FROM x */ SELECT * FROM real_table", ("select", "real_table")),
        ("SELECT * FROM t WHERE s = 'FROM fake'", ("select", "t")),
        ("WITH recent AS (SELECT * FROM m) DELETE FROM archive", ("delete", "archive")),
        ("select * from (select * from inner_t) alias", ("select", None)),
        ("BEGIN", ("begin", None)),
        ("frobnicate the database", ("other", None)),
        ("", ("other", None)),
    ],
)
def test_parse_finds_operation_and_table(statement: str, expected: tuple[str, str | None]) -> None:
    assert parse(statement) == expected


def test_tables_past_the_bound_are_other_and_known_ones_stay() -> None:
    classifier = StatementClassifier(max_tables=2)
    labels = [classifier.classify(f"SELECT * FROM t{i}")[1] for i in range(5)]
    assert labels == ["t0", "t1", "other", "other", "other"]
    assert classifier.classify("INSERT INTO t1 VALUES (1)") == ("insert", "t1")


def test_classification_cache_is_bounded() -> None:
    classifier = StatementClassifier(max_tables=1000, max_statements=10)
    for i in range(100):
        classifier.classify(f"SELECT {i} FROM t")
    assert len(classifier._cache) == 10


def test_strip_literals_removes_values_and_comments_keeps_placeholders_and_names() -> None:
    statement = "SELECT * FROM t9 WHERE a = 'x''y' AND b > -42 AND c = 1.5e3 AND d = :d AND e = %s /* secret */"
    assert strip_literals(statement) == "SELECT * FROM t9 WHERE a = ? AND b > ? AND c = ? AND d = :d AND e = %s"


def test_long_statements_are_classified_but_never_cached() -> None:
    classifier = StatementClassifier()
    statement = "INSERT INTO bulk VALUES " + ", ".join(f"({i})" for i in range(2000))
    assert classifier.classify(statement) == ("insert", "bulk")
    assert classifier._cache == {}


SECRET = "4111111111111111"


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        # PostgreSQL's escape string: \' does not end it; the table is the one after it.
        (rf"SELECT E'\' FROM acct_{SECRET} ', id FROM users", "users"),
        (rf"SELECT e'it\'s \\ FROM acct_{SECRET}' FROM users", "users"),
        # MySQL reads \' as a quote inside the string, standard SQL as its end: unknowable, nothing after is used.
        (rf"SELECT 'x\' FROM acct_{SECRET} ', id FROM users", None),
        (rf"SELECT 'C:\' AS dir FROM t WHERE a = 'acct_{SECRET}'", None),
        (rf'SELECT "x\" FROM acct_{SECRET} ", id FROM users', None),
        # Dollar-quoted strings (PostgreSQL), tagged or not.
        (f"SELECT $$ FROM acct_{SECRET} $$ AS note FROM users", "users"),
        (f"SELECT $q$ it's FROM acct_{SECRET} $q$ AS note FROM users", "users"),
        # Never ends: everything after is a literal.
        (f"SELECT * FROM users WHERE a = 'acct_{SECRET} FROM x", "users"),
        (f"SELECT 1 /* FROM acct_{SECRET}", None),
        (f"SELECT $$ FROM acct_{SECRET}", None),
        # Numbers the old pattern split.
        (f"SELECT * FROM users WHERE k = 0x{SECRET} AND f = .{SECRET}", "users"),
    ],
)
def test_a_literal_never_becomes_the_table_or_stays_in_the_statement(statement: str, table: str | None) -> None:
    assert parse(statement)[1] == table
    assert SECRET not in strip_literals(statement)
    assert SECRET not in strip_literals(statement, double_quoted_strings=True)


def test_backslashes_that_every_database_reads_alike_keep_the_rest_of_the_statement() -> None:
    assert strip_literals(r"SELECT 'a\\b' AS p FROM t WHERE n = 'O''Brien'") == "SELECT ? AS p FROM t WHERE n = ?"
    assert parse(r"SELECT 'a\\b' AS p FROM t") == ("select", "t")


def test_double_quoted_strings_of_mysql_are_stripped_when_the_dialect_says_so() -> None:
    statement = f'SELECT `id` FROM `users` WHERE note = "acct_{SECRET}"'
    assert strip_literals(statement, double_quoted_strings=True) == "SELECT `id` FROM `users` WHERE note = ?"
    assert strip_literals('SELECT "Id" FROM "Users"') == 'SELECT "Id" FROM "Users"'  # elsewhere: names


_PIECES = ["'", '"', "\\", " ", "$", "a", "FROM ", "--", "/*", "*/", "\n", SECRET]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=12).map("".join)


def _literal(content: str, style: str) -> str:
    """``content`` written as a string literal one database reads back exactly."""
    if style == "standard":  # PostgreSQL (standard_conforming_strings), SQLite
        return "'" + content.replace("'", "''") + "'"
    if style == "backslash":  # MySQL
        return "'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if style == "escape":
        return "E'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if style == "mysql_double":
        return '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'
    tag = "$t$"  # dollar-quoted: any content without the tag
    return tag + content.replace("$t$", "") + tag


@settings(max_examples=400, deadline=None)
@given(
    contents=st.lists(_TEXT, min_size=1, max_size=3),
    styles=st.lists(st.sampled_from(["standard", "backslash", "escape", "mysql_double", "dollar"]), min_size=3),
)
def test_no_literal_of_any_dialect_ever_reaches_a_label(contents: list[str], styles: list[str]) -> None:
    literals = [_literal(f"{content}{SECRET}", style) for content, style in zip(contents, styles, strict=False)]
    statement = f"SELECT {', '.join(literals)} FROM chat_notes WHERE id = {literals[-1]}"
    operation, table = parse(statement)

    assert operation == "select"
    assert table in ("chat_notes", None)  # None: a reading differs between databases, nothing after it is used
    assert SECRET not in strip_literals(statement, double_quoted_strings="mysql_double" in styles)
