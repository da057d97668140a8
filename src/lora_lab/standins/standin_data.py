"""The t4 rehearsal's datasets: a few dozen rows in the Hub datasets' own formats, written locally.

b-mc2/sql-create-context (`question`, `context`, `answer`; a train split only, like the Hub's) and
openai/gsm8k (`question`, `answer` ending in ``#### N``; train and test) are written to JSONL
files and read back with `datasets.load_dataset("json", ...)`, so the t4 path's real normalising
code (`lora_lab.training.data`) runs on them. Kept apart from `lora_lab.standins.rehearsal` (the stand-in model),
which builds its tokenizer from these rows and the course's text.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from lora_lab.runtime.units import cache_dir

SQL_ID = "b-mc2/sql-create-context"
GSM8K_ID = "openai/gsm8k"


# ---------------------------------------------------------------------------------------------
# Data in the Hub datasets' formats

def sql_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` text-to-SQL rows shaped like b-mc2/sql-create-context's (question, context, answer): the
    cpu profile's own generator (`lora_lab.standins.sql_task`), over all of its tables."""
    from lora_lab.standins.sql_task import TABLES, make_rows

    return make_rows(TABLES, n, seed)


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
