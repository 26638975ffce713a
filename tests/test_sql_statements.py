"""Statement classification: operation and table with bounded cardinality; literals stripped."""

from __future__ import annotations

import pytest

from chat_turbo_metrics._sql import StatementClassifier, parse, strip_literals


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
