"""The t4 rehearsal's datasets: a few dozen rows in the Hub datasets' own formats, written locally.

b-mc2/sql-create-context (`question`, `context`, `answer`; a train split only, like the Hub's) and
openai/gsm8k (`question`, `answer` ending in ``#### N``; train and test) are written to JSONL
files and read back with `datasets.load_dataset("json", ...)`, so the t4 path's real normalising
code (`lora_lab.data`) runs on them. Kept apart from `lora_lab.rehearsal` (the stand-in model),
which builds its tokenizer from these rows and the course's text.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from .units import cache_dir

SQL_ID = "b-mc2/sql-create-context"
GSM8K_ID = "openai/gsm8k"


# ---------------------------------------------------------------------------------------------
# Data in the Hub datasets' formats

_TABLES = [
    ("head", [("name", "VARCHAR"), ("born_state", "VARCHAR"), ("age", "INTEGER")]),
    ("department", [("name", "VARCHAR"), ("budget_in_billions", "INTEGER"), ("num_employees", "INTEGER")]),
    ("farm", [("farm_id", "INTEGER"), ("total_horses", "INTEGER"), ("cows", "INTEGER")]),
    ("city", [("official_name", "VARCHAR"), ("status", "VARCHAR"), ("population", "INTEGER")]),
    ("singer", [("name", "VARCHAR"), ("country", "VARCHAR"), ("age", "INTEGER")]),
    ("table_name_12", [("player", "VARCHAR"), ("school", "VARCHAR"), ("round", "INTEGER")]),
]
_NAMES = ["Ben", "Ana", "Lima", "Oslo", "Rome", "Sam", "Kim", "Tokyo"]


def sql_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` text-to-SQL rows shaped like b-mc2/sql-create-context's (question, context, answer)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        table, columns = _TABLES[i % len(_TABLES)]
        context = f"CREATE TABLE {table} ({', '.join(f'{c} {t}' for c, t in columns)})"
        text_cols = [c for c, t in columns if t == "VARCHAR"]
        num_cols = [c for c, t in columns if t == "INTEGER"]
        kind = rng.randrange(3)
        num = rng.choice(num_cols)
        value = rng.randint(2, 90)
        if kind == 0:
            q, a = (f"How many {table} rows have {num.replace('_', ' ')} greater than {value}?",
                    f"SELECT COUNT(*) FROM {table} WHERE {num} > {value}")
        elif kind == 1 and text_cols:
            col, name = rng.choice(text_cols), rng.choice(_NAMES)
            q, a = (f"What is the {num.replace('_', ' ')} of the {table} whose {col.replace('_', ' ')} is {name}?",
                    f'SELECT {num} FROM {table} WHERE {col} = "{name}"')
        else:
            q, a = (f"What is the average {num.replace('_', ' ')} of all {table} entries?",
                    f"SELECT AVG({num}) FROM {table}")
        rows.append({"question": q, "context": context, "answer": a})
    return rows


def gsm8k_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` grade-school maths rows shaped like openai/gsm8k's (a worked answer ending in '#### N')."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, price = rng.randint(3, 40), rng.randint(2, 30), rng.randint(2, 9)
        total = (a + b) * price
        rows.append({
            "question": f"Mia buys {a} pens on Monday and {b} pens on Tuesday. Each pen costs ${price}. "
                        "How much does she spend?",
            "answer": f"She buys {a} + {b} = <<{a}+{b}={a + b}>>{a + b} pens.\n"
                      f"They cost {a + b} * {price} = <<{a + b}*{price}={total}>>{total} dollars.\n#### {total:,}",
        })
    return rows


def write_standin_dataset(dataset_id: str, folder: str | os.PathLike | None = None) -> Path:
    """Write the stand-in of `dataset_id` as JSONL split files; return their folder.

    Raises:
        ValueError: for a dataset the rehearsal has no stand-in for.
    """
    splits = {SQL_ID: {"train": sql_rows(48)},  # the Hub dataset has a train split only
              GSM8K_ID: {"train": gsm8k_rows(40), "test": gsm8k_rows(12, seed=1)}}
    if dataset_id not in splits:
        raise ValueError(f"The rehearsal has no local stand-in for {dataset_id!r}: use {SQL_ID} or {GSM8K_ID}.")
    out = Path(folder) if folder else cache_dir("rehearsal") / dataset_id.replace("/", "__")
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits[dataset_id].items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def load_standin_dataset(dataset_id: str, config: str | None = None):
    """Stands in for `datasets.load_dataset(dataset_id, config)` in a rehearsal: the local JSONL files."""
    from datasets import load_dataset

    folder = write_standin_dataset(dataset_id)
    files = {p.stem: str(p) for p in sorted(folder.glob("*.jsonl"))}
    return load_dataset("json", data_files=files)
