"""The cpu profile's generated text-to-SQL task, and execution match (no model needed)."""

import re
import sqlite3

import pytest

from lora_lab.standins import sql_task
from lora_lab.training import data, evaluate

CONTEXT = "CREATE TABLE player (name VARCHAR, team VARCHAR, points INTEGER)"
REFERENCE = 'SELECT name FROM player WHERE points > 12 AND team = "Hawks"'


def table_of(row):
    return row["context"].split()[2]


@pytest.fixture(scope="module")
def splits():
    return sql_task.make_sql_splits(n_train=600, n_eval=120, seed=0)


def test_the_same_meaning_written_differently_matches():
    same = 'select name from player where team = "Hawks" and 12 < points'
    assert sql_task.execution_match(same, REFERENCE, CONTEXT)["match"]
    assert not evaluate.score("sql", same, REFERENCE, CONTEXT)["correct"]  # exact match says no
    assert evaluate.score("sql", same, REFERENCE, CONTEXT)["execution_match"]


def test_order_counts_only_when_the_reference_sorts():
    unordered = "SELECT name FROM player WHERE points > 3"
    assert sql_task.execution_match("SELECT name FROM player WHERE points > 3 ORDER BY name DESC", unordered,
                                    CONTEXT)["match"]
    ordered = "SELECT name FROM player ORDER BY points DESC"
    assert sql_task.execution_match(ordered, ordered, CONTEXT)["match"]
    assert not sql_task.execution_match("SELECT name FROM player ORDER BY points ASC", ordered, CONTEXT)["match"]


def test_a_query_that_fails_is_neither_valid_nor_a_match():
    result = sql_task.execution_match("SELECT nme FROM player", REFERENCE, CONTEXT)
    assert result == {"match": False, "valid": False, "error": "no such column: nme"}
    assert sql_task.execution_match("", REFERENCE, CONTEXT)["valid"] is False


@pytest.mark.parametrize("wrong", [
    'SELECT name FROM player WHERE points >= 12 AND team = "Hawks"',  # >= for >
    'SELECT name FROM player WHERE points > 13 AND team = "Hawks"',  # another number
    'SELECT name FROM player WHERE points > 12 AND team = "Bears"',  # another string
    'SELECT name FROM player WHERE points > 12 OR team = "Hawks"',  # OR for AND
    'SELECT team FROM player WHERE points > 12 AND team = "Hawks"',  # another column
])
def test_a_valid_but_wrong_query_does_not_match(wrong):
    result = sql_task.execution_match(wrong, REFERENCE, CONTEXT)
    assert result["valid"] and not result["match"]


def test_the_filled_rows_hold_the_literals_and_their_neighbours():
    conn = sql_task.filled_database(CONTEXT, REFERENCE, seed=0)
    points = {row[0] for row in conn.execute("SELECT points FROM player")}
    teams = {row[0] for row in conn.execute("SELECT team FROM player")}
    assert {11, 12, 13} & points and "Hawks" in teams
    assert len(points) == sql_task.FILL_ROWS  # distinct numbers: ORDER BY has no ties to break


def test_literals_with_quotes_round_trip():
    sql = """SELECT a FROM t WHERE name = "Sam O'Brien" AND city = 'St. John''s' AND n > 2.5"""
    assert sql_task.literals(sql) == (["Sam O'Brien", "St. John's"], [2.5])
    context = "CREATE TABLE t (a INTEGER, name VARCHAR, city VARCHAR, n REAL)"
    assert sql_task.execution_match(sql, sql, context)["match"]


def test_held_out_schemas_never_appear_in_training(splits):
    train_tables = {table_of(r) for r in splits["train"]}
    eval_tables = {table_of(r) for r in splits["eval"]}
    assert eval_tables == set(sql_task.EVAL_TABLES) and not train_tables & eval_tables
    assert len(train_tables) == len(sql_task.TABLES) - len(sql_task.EVAL_TABLES)


def test_splits_are_seeded_sized_and_varied(splits):
    assert (len(splits["train"]), len(splits["eval"])) == (600, 120)
    assert sql_task.make_sql_splits(600, 120, seed=0) == splits
    assert sql_task.make_sql_splits(600, 120, seed=1)["train"] != splits["train"]
    shapes = {re.sub(r"\b\d+(\.\d+)?\b|\"[^\"]*\"", "?", r["answer"]).split(" FROM ")[0] for r in splits["train"]}
    assert len(shapes) >= 10  # SELECT col, COUNT(*), AVG(...), COUNT(DISTINCT ...), ...
    assert len({r["question"] for r in splits["train"]}) >= 0.95 * len(splits["train"])
    assert any("'" in r["answer"] for r in splits["train"])  # an apostrophe inside a string value
    with pytest.raises(ValueError, match="at least one row"):
        sql_task.make_sql_splits(0, 5)


def test_every_reference_runs_and_most_return_rows(splits):
    rows = splits["train"] + splits["eval"]
    empty = 0
    for row in rows:
        conn = sql_task.filled_database(row["context"], row["answer"], seed=0)
        result = conn.execute(row["answer"]).fetchall()  # raises if a generated query is not valid SQL
        empty += result in ([], [(0,)], [(None,)])
        assert sql_task.execution_match(row["answer"], row["answer"], row["context"])["match"]
    assert empty <= 0.1 * len(rows)


def test_a_changed_operator_or_value_changes_the_result_for_nearly_every_row(splits):
    changed = distinguished = 0
    for row in splits["eval"]:
        mutant = re.sub(r"(>=|<=|!=|>|<)", lambda m: {">": ">=", "<": "<=", ">=": ">", "<=": "<", "!=": "="}[m.group()],
                        row["answer"], count=1)
        if mutant == row["answer"]:
            mutant = re.sub(r'"([^"]*)"', '"nobody"', row["answer"], count=1)
        if mutant == row["answer"]:
            continue
        changed += 1
        distinguished += not sql_task.execution_match(mutant, row["answer"], row["context"])["match"]
    assert changed >= 40 and distinguished >= 0.9 * changed


def test_the_rows_read_like_the_hub_dataset_through_the_same_code():
    generated = data.course_sql_dataset(20, 5, seed=0)
    splits = data.load_hub_dataset("lora-lab/course-sql", None, 5, 0, lambda _id: generated)
    row = splits["eval"][0]
    assert row["task"] == "sql" and row["context"].startswith("CREATE TABLE")
    source = next(r for r in generated["test"] if f"Question: {r['question']}\n" in row["messages"][0]["content"])
    assert row["messages"][0]["content"] == data.sql_prompt(source["question"], source["context"])
    assert {table_of(r) for r in splits["eval"]} <= set(sql_task.EVAL_TABLES)


def test_a_runaway_query_is_cut_off():
    runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
    result = sql_task.execution_match(runaway, "SELECT COUNT(*) FROM player", CONTEXT)
    assert not result["match"] and not result["valid"] and "interrupt" in result["error"]
    assert isinstance(sql_task.filled_database(CONTEXT, REFERENCE, 0), sqlite3.Connection)
