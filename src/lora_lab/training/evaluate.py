"""Evaluate a causal LM the way the course reports it: greedy generations, exact match, eval loss.

- `generate`: greedy decoding from chat prompts (the tokenizer's chat template with
  ``add_generation_prompt=True``), batched with left padding, stopping at the eos token.
- `exact_match`: the share of held-out examples whose generated answer matches the reference,
  scored by task (`score`): course answers after light normalisation (case, spaces, a final full
  stop, thousands separators); GSM8K by the final number of a free-form solution (`final_answer`);
  SQL by normalised exact match, with `sqlite3` checking the query against the example's own
  CREATE TABLE statements (`extract_sql`, `normalise_sql`, `sqlite_accepts`) and comparing its
  result with the reference's on seeded rows (execution match, `lora_lab.standins.sql_task`).
- `eval_loss`: the mean cross-entropy over the tokens that carry loss in training (the assistant
  answer and its eos), computed from the same tokenization as training.
- `side_by_side`: a few prompts with the reference and two models' answers, for a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lora_lab.lessons import scoring
from lora_lab.runtime.units import MIB
from lora_lab.training import data, sft_data

#: Most bytes of logits `eval_loss` materialises at once (fp32 logits plus a float copy).
LOGITS_BUDGET_BYTES = 512 * MIB


def as_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a string becomes one user message; a conversation loses a final
    assistant turn (that is the answer we want the model to produce)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = list(prompt)
    if not messages:
        raise ValueError("An empty conversation cannot be used as a prompt.")
    last_assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if last_assistant and last_assistant[-1] == len(messages) - 1:
        messages = messages[:-1]
    return messages


def tokenize_padded(tokenizer, texts: Sequence[str], side: str):
    """Tokenize chat-templated `texts` as one padded batch, padding on `side`.

    Left padding for generation (new tokens must follow the prompt directly), right padding for
    logit comparisons. The tokenizer's own setting is restored afterwards.
    """
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        return tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous


def probe_batch(tokenizer, conversations: Sequence, n: int | None = None, *, generation_prompt: bool = False) -> dict:
    """A small right-padded batch (input_ids, attention_mask) to compare two models' logits on.

    The one way the package builds such a batch (the merge checks of notebooks 03 and 05).

    Args:
        tokenizer: with a chat template and a pad token.
        conversations: chat message lists (a Dataset column works), or strings (user messages).
        n: use only the first `n` (None: all).
        generation_prompt: render prompts as generation sees them (the final assistant turn
            dropped, the generation prompt added) instead of whole conversations.
    """
    chosen = list(conversations)[:n]
    if generation_prompt:
        texts = [tokenizer.apply_chat_template(as_messages(c), tokenize=False, add_generation_prompt=True)
                 for c in chosen]
    else:
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in chosen]
    enc = tokenize_padded(tokenizer, texts, "right")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence, max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
    """Greedy answers to `prompts`, one string each, special tokens removed.

    Args:
        model: a causal LM (PEFT or plain).
        tokenizer: its tokenizer, with a chat template and distinct eos and pad tokens.
        prompts: strings (each becomes a user message) or lists of chat messages.
        max_new_tokens: generation budget; generation stops earlier at eos.
        batch_size: prompts generated together (left-padded).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token: generation would never stop.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [as_messages(p) for p in prompts[start : start + batch_size]]
            texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in chunk]
            enc = tokenize_padded(tokenizer, texts, "left").to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,  # greedy: the same prompt always gives the same answer
                # Plain greedy whatever the model's generation_config.json ships: its values fill every
                # field left at its default, and a repetition penalty would punish repeating the table and
                # column names of the prompt, which SQL must do. Only explicit values override them.
                repetition_penalty=1.0,
                no_repeat_ngram_size=0,
                eos_token_id=tokenizer.eos_token_id,  # stop at the end of the assistant turn
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += [s.strip() for s in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return outputs


# ---------------------------------------------------------------------------------------------
# Scoring by task: what "the same answer" means for course answers, maths and SQL
# (the normalisations themselves are lesson code: `lora_lab.lessons.scoring`)

#: Task names `score` knows; any other task (the course families) is compared as written.
SCORED_TASKS = ("course", "gsm8k", "sql")


def sqlite_accepts(sql: str, context: str) -> tuple[bool, str]:
    """(True, "") when sqlite3 prepares and runs `sql` against the tables `context` creates.

    `context` is the example's own CREATE TABLE statements; the tables are empty, so the query
    runs in microseconds. Returns (False, sqlite's error message) otherwise.
    """
    import sqlite3

    if not sql.strip():
        return False, "no SQL query found in the answer"
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(context)
        steps = [0]

        def budget():  # a runaway query (recursive CTE) is cut off, not waited for
            steps[0] += 1
            return 1 if steps[0] > 1000 else 0

        conn.set_progress_handler(budget, 1000)
        conn.execute(sql).fetchall()
        return True, ""
    except (sqlite3.Error, sqlite3.Warning, ValueError) as err:
        return False, str(err)
    finally:
        conn.close()


def score(task: str | None, prediction: str, reference: str, context: str | None = None) -> dict:
    """Whether `prediction` answers like `reference` for a task, and what was compared.

    Args:
        task: "gsm8k" (final numbers compared), "sql" (normalised SQL compared; `valid_sql` says
            whether sqlite3 accepts the prediction against `context`), anything else: the answers
            compared as written, after `normalise_answer`.
        prediction: the model's full answer.
        reference: the dataset's answer.
        context: SQL only: the example's CREATE TABLE statements.

    Returns:
        {"correct": bool, "extracted": what was compared} plus, for SQL, "valid_sql", "sql_error" and
        "execution_match" (the same result as the reference on seeded rows: `sql_task.execution_match`).
    """
    if task == "gsm8k":
        got = scoring.final_answer(prediction)
        want = scoring.final_answer(reference)  # a bare number ("18") or a whole GSM8K solution ("... #### 18")
        return {"correct": bool(got) and got == want, "extracted": got}
    if task == "sql":
        from lora_lab.standins.sql_task import execution_match

        got = scoring.extract_sql(prediction)
        want = scoring.extract_sql(reference) or reference
        valid, error = sqlite_accepts(got, context or "")
        return {"correct": bool(got) and scoring.normalise_sql(got) == scoring.normalise_sql(want),
                "extracted": got, "valid_sql": valid, "sql_error": error,
                "execution_match": valid and execution_match(got, want, context or "")["match"]}
    return {"correct": scoring.normalise_answer(prediction) == scoring.normalise_answer(reference), "extracted": prediction}


def exact_match(model, tokenizer, dataset, max_new_tokens: int = 16, batch_size: int = 16,
                task: str | None = None) -> tuple[float, list[dict]]:
    """Greedy-generate an answer for each example and score it against the reference (`score`).

    Args:
        model: the model to evaluate.
        tokenizer: its tokenizer.
        dataset: rows with `messages` (the prompt is everything before the last assistant turn)
            and `answer` (the reference); a `task` column picks each row's scoring, and SQL rows
            carry their CREATE TABLE statements in `context`.
        max_new_tokens: generation budget per answer.
        batch_size: prompts per generate call.
        task: score every row as this task (default: each row's `task`, else as written).

    Returns:
        (score in [0, 1], rows): one dict per example with prompt, answer, prediction, correct
        (and, for SQL, valid_sql, sql_error and execution_match).

    Raises:
        ValueError: for an empty dataset or one without `messages` and `answer`.
    """
    data.validate(dataset, "evaluation set")
    if "answer" not in dataset.column_names:
        raise ValueError("exact_match needs an 'answer' column with the reference answers.")
    prompts = [as_messages(m) for m in dataset["messages"]]
    predictions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    tasks = [task] * len(dataset) if task or "task" not in dataset.column_names else dataset["task"]
    contexts = dataset["context"] if "context" in dataset.column_names else [None] * len(dataset)
    rows = []
    for prompt, answer, prediction, row_task, context in zip(prompts, dataset["answer"], predictions, tasks, contexts,
                                                             strict=True):
        verdict = score(row_task, prediction, answer, context)
        row = {"prompt": prompt[-1]["content"], "answer": answer, "prediction": prediction,
               "correct": verdict["correct"]}
        if "valid_sql" in verdict:
            row.update(valid_sql=verdict["valid_sql"], sql_error=verdict["sql_error"],
                       execution_match=verdict["execution_match"])
        rows.append(row)
    return sum(r["correct"] for r in rows) / len(rows), rows


def summary(rows: Sequence[dict]) -> dict:
    """The scores of `exact_match` rows: exact_match, and for SQL rows execution_match and valid_sql
    (None for rows that are not SQL)."""
    return {"exact_match": sum(r["correct"] for r in rows) / len(rows) if rows else None,
            "execution_match": execution_match_rate(rows), "valid_sql": valid_sql_rate(rows)}


def execution_match_rate(rows: Sequence[dict]) -> float | None:
    """Share of `exact_match` rows whose SQL returned the reference's result (`sql_task.execution_match`);
    None when the rows are not SQL."""
    flags = [r["execution_match"] for r in rows if "execution_match" in r]
    return sum(flags) / len(flags) if flags else None


def valid_sql_rate(rows: Sequence[dict]) -> float | None:
    """Share of `exact_match` rows whose SQL sqlite3 accepted; None when the rows are not SQL."""
    flags = [r["valid_sql"] for r in rows if "valid_sql" in r]
    return sum(flags) / len(flags) if flags else None


@torch.no_grad()
def eval_loss(model, tokenizer, dataset, max_length: int = 512, batch_size: int = 16) -> float:
    """Mean cross-entropy per loss-carrying token (assistant answer + eos) over `dataset`.

    The examples are tokenized exactly as for training (`lora_lab.training.sft_data.prepare_sft_data`), so the
    figure is comparable with the training loss. Examples longer than `max_length` are left out and
    reported, as in training.

    Args:
        model: the model to evaluate.
        tokenizer: its tokenizer.
        dataset: rows with `messages`, or already tokenized rows with `input_ids` and `labels`.
        max_length: longest example in tokens.
        batch_size: examples per forward pass.
    """
    if "input_ids" in dataset.column_names and "labels" in dataset.column_names:
        tokenized = dataset
    else:
        tokenized, report = sft_data.prepare_sft_data(tokenizer, dataset, max_length, name="evaluation set", verbose=False)
        if report.n_too_long:
            print(f"eval_loss: {report.n_too_long} of {report.n_examples} examples are longer than "
                  f"{max_length} tokens and were left out.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    total, count = 0.0, 0
    start = 0
    try:
        while start < len(tokenized):
            # The fp32 logits are batch x length x vocabulary: 16 x 512 x 152k would be 5 GB on a T4.
            # Take as many rows as keep them (and their float copy) under LOGITS_BUDGET_BYTES.
            longest_ahead = max(map(len, tokenized[start : start + batch_size]["input_ids"]))
            rows_fit = max(1, LOGITS_BUDGET_BYTES // (8 * longest_ahead * vocab))
            rows = tokenized[start : start + min(batch_size, rows_fit)]
            start += len(rows["input_ids"])
            batch = sft_data.pad_batch(tokenizer, rows["input_ids"], rows["labels"])
            ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                ignore_index=-100, reduction="sum",
            )
            total += loss.item()
            count += int((shift_labels != -100).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("No token of the evaluation set carries loss: nothing to measure.")
    return total / count


@torch.no_grad()
def forgetting(model, tokenizer) -> dict:
    """What fine-tuning changed outside its task: a peft model scored with its adapter off (the base) and on.

    Two probes a real model learned in pretraining and the SQL task never shows: the loss per token on
    the course's held-out prose (`quant.heldout_text`), and the general facts of `quant.general_facts`
    (a fact is known when every answer token is the model's top choice).

    Returns:
        prose_before, prose_after: `quant.text_loss`; facts: how many facts there are; known_before: how many
        the base completes; kept: how many of those the tuned model still completes; gained: facts it
        completes that the base did not; facts_loss_before, facts_loss_after: `quant.completion_loss` losses.
    """
    from lora_lab.experiments import quant

    texts = quant.heldout_text()
    prompts, answers = quant.general_facts()
    with model.disable_adapter():
        prose_before = quant.text_loss(model, tokenizer, texts)
        facts_before = quant.completion_loss(model, tokenizer, prompts, answers)
    prose_after = quant.text_loss(model, tokenizer, texts)
    facts_after = quant.completion_loss(model, tokenizer, prompts, answers)
    known = (facts_before["margins"] > 0).tolist()
    still = (facts_after["margins"] > 0).tolist()
    return dict(prose_before=prose_before, prose_after=prose_after, facts=len(prompts), known_before=sum(known),
                kept=sum(k and s for k, s in zip(known, still, strict=True)),
                gained=sum(s and not k for k, s in zip(known, still, strict=True)),
                facts_loss_before=facts_before["loss"], facts_loss_after=facts_after["loss"])


def side_by_side(rows_a: list[dict], rows_b: list[dict], n: int = 5, names=("base", "tuned")) -> list[dict]:
    """The first `n` examples with the reference and both models' answers (from `exact_match` rows)."""
    table = []
    for a, b in list(zip(rows_a, rows_b, strict=True))[:n]:
        table.append({"prompt": a["prompt"], "reference": a["answer"], names[0]: a["prediction"],
                      names[1]: b["prediction"]})
    return table


def format_table(rows: list[dict], width: int = 40) -> str:
    """A plain-text table of dicts (same keys), each cell cut to `width` characters."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])

    def cell(value) -> str:
        text = " ".join(str(value).split())
        return text if len(text) <= width else text[: width - 1] + "…"

    cells = [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [" | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)

# ---------------------------------------------------------------------------------------------
# `python -m lora_lab.training.evaluate --adapter DIR --dataset FILE`: score a trained adapter on your own rows
#
# The rows are read like `--dataset` of `lora_lab.training.train` (one .jsonl/.json/.parquet file), in
# b-mc2/sql-create-context's columns (`question`, `context`, `answer`) or as chat `messages`, and scored
# with the course's prompt format and scorer (`exact_match`): for SQL, exact match after normalising,
# execution match in sqlite3, and the share of valid queries. The base model and the base with the
# adapter answer the same prompts, greedily, side by side. The base is the one the adapter records
# (`adapter_config.json`'s `base_model_name_or_path`, a local folder for the models the course
# installs), loaded as it was for training (`lora_lab_adapter.json`'s `method`: a 4-bit NF4 base for
# QLoRA), so nothing is downloaded for an adapter the course trained. Bad input ends with one line
# saying what to change and exit code 2.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lora_lab.training.evaluate",
        description="Score a LoRA adapter and its base model on your own rows, side by side.")
    parser.add_argument("--adapter", required=True, help="an adapter folder written by lora_lab.training.train (or peft)")
    parser.add_argument("--dataset", required=True,
                        help="one .jsonl/.json/.parquet file: question/context/answer rows (text-to-SQL) or chat "
                             "'messages'")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    parser.add_argument("--method", choices=("qlora", "lora"), default=None,
                        help="how to load the base (default: as the adapter was trained, else lora)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="generation budget per answer")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    return parser


def adapter_info(adapter_dir: str | Path) -> dict:
    """What the adapter folder says about its base: {"base_model", "method", "task"}.

    Raises:
        ValueError: no adapter there, or its base model cannot be found.
    """
    from lora_lab.training.models import ADAPTER_INFO_FILE, require_whole_safetensors

    folder = Path(adapter_dir)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} holds no adapter_config.json: pass the adapter folder that training wrote "
                         "(e.g. runs/sft/adapter).")
    require_whole_safetensors(folder / "adapter_model.safetensors")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        extra_file = folder / ADAPTER_INFO_FILE
        extra = json.loads(extra_file.read_text(encoding="utf-8")) if extra_file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{folder}: its adapter description is not valid JSON ({err}).") from None
    if not isinstance(config, dict) or not isinstance(extra, dict):
        raise ValueError(f"{folder}: adapter_config.json and {ADAPTER_INFO_FILE} must each hold one JSON object.")
    base = config.get("base_model_name_or_path") or extra.get("base_model")
    if not base:
        raise ValueError(f"{config_file} names no base model (base_model_name_or_path).")
    looks_local = str(base).startswith(("/", ".", "~")) or Path(base).exists()
    if looks_local and not Path(base).expanduser().is_dir():
        raise ValueError(f"The adapter's base model folder {base} does not exist on this machine: retrain, or set "
                         f"base_model_name_or_path in {config_file} to the base model's folder.")
    return {"base_model": str(base), "method": extra.get("method"), "task": extra.get("task")}


def read_rows(path: str | Path, limit: int | None = None):
    """The rows of one data file in the course's schema (messages, answer, task, context for SQL)."""
    from lora_lab.training import data

    rows = data.normalise(data.read_data_file(path), str(path))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}.")
        rows = rows.select(range(min(limit, len(rows))))
    data.validate(rows, str(path))
    return rows


def score_side_by_side(adapter_dir, rows, *, method: str | None = None, max_new_tokens: int = 64,
                       batch_size: int = 16) -> dict:
    """The base model's and the adapter's scores on `rows`, and the answers of both.

    Returns:
        {"base_model", "method", "n", "base": {...}, "adapter": {...}, "rows": [...]}, each score
        dict holding exact_match and, for SQL rows, execution_match and valid_sql.
    """
    from peft import PeftModel

    from lora_lab.runtime import profiles
    from lora_lab.training import models

    info = adapter_info(adapter_dir)
    method = method or info["method"] or "lora"
    if method not in ("qlora", "lora"):
        raise ValueError(f"The adapter records method {method!r}: pass --method qlora or --method lora.")
    profile = profiles.get_profile()
    base, tokenizer = models.load_model_and_tokenizer(profile, method, model_path=info["base_model"],
                                                      for_training=False)
    kwargs = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
    scores = {}
    _, rows_base = exact_match(base, tokenizer, rows, **kwargs)
    scores["base"] = summary(rows_base)
    tuned = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()
    _, rows_tuned = exact_match(tuned, tokenizer, rows, **kwargs)
    scores["adapter"] = summary(rows_tuned)
    table = side_by_side(rows_base, rows_tuned, n=len(rows_base), names=("base", "adapter"))
    return {"base_model": info["base_model"], "method": method, "n": len(rows_base), **scores, "rows": table}


def report(result: dict, n_show: int = 5) -> str:
    """The scores as lines a person reads, with a few answers side by side."""
    lines = [f"{result['n']} rows; base {result['base_model']} loaded for {result['method']}"]
    for name in ("exact_match", "execution_match", "valid_sql"):
        if result["base"].get(name) is not None:
            lines.append(f"{name.replace('_', ' '):<16} base {result['base'][name]:6.1%}   "
                         f"adapter {result['adapter'][name]:6.1%}")
    return "\n".join(lines) + "\n\n" + format_table(result["rows"][:n_show])


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 with the scores, 2 with one line on bad input, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        adapter_info(args.adapter)  # a bad adapter folder fails here, before any model loads
        rows = read_rows(args.dataset, args.limit)
        for name in ("max_new_tokens", "batch_size"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1.")
        result = score_side_by_side(args.adapter, rows, method=args.method, max_new_tokens=args.max_new_tokens,
                                    batch_size=args.batch_size)
    except (ValueError, OSError) as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted: nothing was written.", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=1) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
