"""Scores that mean something: final numbers of free-form maths, and SQL with prose around it."""

import pytest
from datasets import Dataset, DatasetDict

from lora_lab.lessons import scoring
from lora_lab.training import data, evaluate

# Free-form solutions as instruct models write them, with the number each should be scored on.
SOLUTIONS = [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72 clips.\n#### 72", "72"),
    ("To find the total, we add 48 and 24.\n\n48 + 24 = 72\n\nSo Natalia sold **72 clips** altogether.", "72"),
    ("First, May: 48 / 2 = 24. Then 48 + 24 = 72.\n\nThe answer is 72.", "72"),
    ("Step 1: 12 * 3 = 36\nStep 2: 36 - 4 = 32\n\nThe final answer is: $32", "32"),
    ("We compute $\\frac{50}{2} = 25$, so the total is $\\boxed{25}$.", "25"),
    ("The total is \\boxed{\\$1,250.00} for the year.", "1250"),
    ("Weng earns 12/60 = $0.2 per minute, so for 50 minutes she earns 0.2 x 50 = $10.00", "10"),
    ("She has 1,234 marbles left.", "1234"),
    ("Answer: -3.50", "-3.5"),
    ("The answer is 18 dollars, since 3 + 15 = 18. Check: 18 - 15 = 3.", "18"),
    ("#### 1,000", "1000"),
    ("I'm not sure how to solve this problem.", ""),
]


@pytest.mark.parametrize(("solution", "expected"), SOLUTIONS)
def test_final_answer_reads_free_form_solutions(solution, expected):
    assert scoring.final_answer(solution) == expected


def test_gsm8k_score_compares_numbers_not_wording():
    reference = "She sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert evaluate.score("gsm8k", "So Natalia sold **72 clips** altogether.", "72")["correct"]
    assert evaluate.score("gsm8k", "The answer is 72.0", reference)["correct"]
    assert not evaluate.score("gsm8k", "The answer is 71.", reference)["correct"]
    assert not evaluate.score("gsm8k", "I cannot answer that.", "72")["correct"]


CONTEXT = "CREATE TABLE head (age INTEGER, name VARCHAR, born_state VARCHAR)"
REFERENCE = 'SELECT COUNT(*) FROM head WHERE age > 56'

# Realistic outputs: fences, prefixes, explanations before and after, and case/spacing differences.
SQL_OUTPUTS = [
    ("SELECT COUNT(*) FROM head WHERE age > 56", True, True),
    ("select count( * ) from HEAD where age>56;", True, True),
    ("```sql\nSELECT COUNT(*)\nFROM head\nWHERE age > 56;\n```\n\nThis counts the heads older than 56.", True, True),
    ("SQL: SELECT COUNT(*) FROM head WHERE age > 56", True, True),
    ("Here is the query:\n\nSELECT COUNT(*) FROM head WHERE age > 56\n\nIt counts rows with age above 56.", True, True),
    ("SELECT COUNT(*) FROM head WHERE age > 56. This query counts the department heads.", True, True),
    ("SELECT COUNT(*) FROM head WHERE age >= 56", False, True),  # valid SQL, different query
    ("SELECT COUNT(*) FROM heads WHERE age > 56", False, False),  # no such table
    ("SELECT COUNT(*) FROM head WHERE height > 56", False, False),  # no such column
    ("I think you should count the heads older than 56.", False, False),  # no SQL at all
]


@pytest.mark.parametrize(("output", "correct", "valid"), SQL_OUTPUTS)
def test_sql_score_handles_prose_around_the_query(output, correct, valid):
    verdict = evaluate.score("sql", output, REFERENCE, CONTEXT)
    assert verdict["correct"] is correct, verdict
    assert verdict["valid_sql"] is valid, verdict


def test_sql_string_literals_keep_their_case_and_quotes_normalise():
    context = "CREATE TABLE t (name VARCHAR, city VARCHAR)"
    ref = 'SELECT city FROM t WHERE name = "Ben Smith"'
    assert evaluate.score("sql", "SELECT city FROM t WHERE name = 'Ben Smith'", ref, context)["correct"]
    assert not evaluate.score("sql", "SELECT city FROM t WHERE name = 'ben smith'", ref, context)["correct"]
    # A full stop inside a literal is not the end of a sentence.
    assert scoring.extract_sql('SELECT a FROM t WHERE b = "St. Louis". Done.') == 'SELECT a FROM t WHERE b = "St. Louis"'


def test_sqlite_check_uses_the_examples_own_tables_and_reports_the_error():
    ok, err = evaluate.sqlite_accepts("SELECT name FROM head ORDER BY age", CONTEXT)
    assert ok and err == ""
    ok, err = evaluate.sqlite_accepts("SELEC name FROM head", CONTEXT)
    assert not ok and "syntax" in err


def test_course_answers_are_compared_as_written():
    assert evaluate.score("recall", "Orange.", "orange")["correct"]
    assert not evaluate.score("recall", "the answer is 3", "3")["correct"]  # no number extraction for words


def sql_rows(n):
    return [{"question": f"How many heads are older than {50 + i}?", "context": CONTEXT,
             "answer": f"SELECT COUNT(*) FROM head WHERE age > {50 + i}"} for i in range(n)]


def test_sql_create_context_is_normalised_into_the_chat_schema():
    raw = DatasetDict(train=Dataset.from_list(sql_rows(30)))
    splits = data.load_hub_dataset("b-mc2/sql-create-context", n_eval=5, loader=lambda *a: raw)
    row = splits["eval"][0]
    assert row["task"] == "sql" and row["context"] == CONTEXT and row["answer"].startswith("SELECT")
    user = row["messages"][0]["content"]
    assert CONTEXT in user and "Question:" in user and row["messages"][-1]["content"] == row["answer"]
    assert len(splits["train"]) == 25
    data.validate(splits["train"])


def test_exact_match_scores_sql_rows_by_their_task(tiny_model_path):
    """The pipeline's exact_match picks the SQL scorer from the rows' task, with the rows' context."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = DatasetDict(train=Dataset.from_list(sql_rows(12)))
    splits = data.load_hub_dataset("b-mc2/sql-create-context", n_eval=3, loader=lambda *a: raw)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    score, rows = evaluate.exact_match(model, tok, splits["eval"], max_new_tokens=4)
    assert score == 0.0  # the tiny model writes no SQL
    assert all("valid_sql" in r and r["valid_sql"] is False for r in rows)
    assert evaluate.valid_sql_rate(rows) == 0.0
