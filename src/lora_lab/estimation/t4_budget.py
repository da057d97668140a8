"""How long each notebook takes on a free Colab T4: a step-time model with its sources, and the budgets.

No T4 has run the course yet, so every minute here is a prediction, and each figure it rests on says
where it comes from: a published measurement, a datasheet, or an assumption named as one.
`make gpu-check` on a T4 measures the main figure (training tokens per second at the 03 run's real
shapes) and `benchmarks/gpu_check.py` writes it next to this model's.

A notebook's time is its install, its model download, and each training run it starts:

    run time = model load + steps x tokens per step / training tokens per second
               + held-out evaluation (loss, and greedy generation of the answers)

Tokens per step are the run's effective batch times the mean tokenized length of its task's examples
(`tokens_per_example`: the course's rows in each dataset's format, rendered with Qwen2.5's chat
template; a notebook on a T4 prints the figure of its real tokenized data next to it).

`python -m lora_lab.tooling.course t4-plan` prints each run's predicted peak memory and minutes, and
each notebook's total against `BUDGET_MINUTES`, the budgets the README and the instructor guide state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

__all__ = ["BUDGET_MINUTES", "FIGURES", "Figure", "NotebookTime", "notebook_times", "run_seconds",
           "tokens_per_example"]


@dataclass(frozen=True)
class Figure:
    """One number of the model, with what it is and where it comes from."""

    value: float
    unit: str
    source: str


FIGURES = {
    "train_tokens_per_s": Figure(
        250, "tokens/s",
        "Qwen2.5-1.5B-Instruct QLoRA (fp16, paged AdamW) trained at 500-628 tokens/s on an RTX 4060 "
        "(arXiv 2509.12229); a T4 is an older, 70 W Turing card against the 4060's 115 W Ada (NVIDIA's "
        "datasheets), so the plan takes half the lower figure until `make gpu-check` on a T4 measures it"),
    "generate_step_s": Figure(
        0.06, "s per generated token of one batch",
        "assumption: greedy decoding of a 4-bit 1.5B model is bound by reading its ~1 GB of weights per "
        "token; a T4 reads 320 GB/s (datasheet), and bitsandbytes' dequantization and Python overhead "
        "take most of the step"),
    "download_bytes_per_s": Figure(
        40e6, "bytes/s", "assumption: a Hub download on Colab, planned low (Colab publishes no figure)"),
    "model_bytes": Figure(
        3.09e9, "bytes", "Qwen2.5-1.5B-Instruct's model.safetensors on the Hugging Face Hub"),
    "install_s": Figure(
        90, "s", "assumption: the install cell's pip install of colab/requirements.txt (about 150 MB of "
                 "wheels) and the package from GitHub"),
    "load_s": Figure(
        30, "s", "assumption: reading the downloaded weights and quantizing them to NF4 on the GPU"),
    "export_s": Figure(
        240, "s", "assumption: notebook 06's GGUF conversion of the 3 GB fp16 model, its q8_0 copy, and "
                  "llama.cpp's check on Colab's 2 CPU cores"),
    "cells_s": Figure(
        60, "s", "assumption: a notebook's cells that neither train nor generate (estimates, plots, "
                 "small tensors)"),
}

#: What each notebook may take on a Colab T4, in minutes, install and download included (class settings:
#: 03 without COMPARE_LORA and without the optional 7B run).
BUDGET_MINUTES = {"00": 5, "01": 5, "02": 20, "03": 20, "04": 5, "05": 20, "06": 15, "07": 20}

#: Qwen2.5-Instruct's default system turn (its chat template adds it when a conversation has none).
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@cache
def tokens_per_example(task: str, n: int = 200) -> float:
    """Mean tokens of one training example of `task` ("sql" or a course family) in Qwen2.5's chat layout.

    The rows are the course's own in each dataset's format (`standin_data.sql_rows` for
    b-mc2/sql-create-context, `data.make_examples` for the course families), rendered as ChatML
    with Qwen2.5's default system turn, and counted with SmolLM2's byte-level BPE tokenizer, which
    is installed with the course (Qwen2.5's is on the Hub only).
    """
    from transformers import AutoTokenizer

    from lora_lab.standins import smollm2
    from lora_lab.standins.standin_data import sql_rows
    from lora_lab.training import data

    if task == "sql":
        turns = [(data.sql_prompt(r["question"], r["context"]), r["answer"]) for r in sql_rows(n, seed=5)]
    elif task in data.TASK_FAMILIES:
        world = data.make_world(seed=0)
        rows = data.make_examples(task, world.entities[:n], 1, 0)
        turns = [(row["messages"][0]["content"], row["messages"][-1]["content"]) for row in rows]
    else:
        raise ValueError(f"No token count for task {task!r}: use 'sql' or one of {', '.join(data.TASK_FAMILIES)}.")
    tokenizer = AutoTokenizer.from_pretrained(smollm2.ensure_model(verbose=False))
    texts = [f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
             f"<|im_start|>assistant\n{a}<|im_end|>\n" for q, a in turns]
    return sum(len(ids) for ids in tokenizer(texts)["input_ids"]) / len(texts)


def train_seconds(steps: int, effective_batch: int, example_tokens: float) -> float:
    """Training time of `steps` optimizer steps: tokens over the planned training throughput."""
    return steps * effective_batch * example_tokens / FIGURES["train_tokens_per_s"].value


def eval_seconds(n_eval: int, batch: int, new_tokens: int, example_tokens: float) -> float:
    """A held-out evaluation: the loss (a forward pass, a third of a training step's work) and greedy
    generation of `new_tokens` per answer in batches of `batch`."""
    loss = n_eval * example_tokens / (3 * FIGURES["train_tokens_per_s"].value)
    return loss + math.ceil(n_eval / batch) * new_tokens * FIGURES["generate_step_s"].value


def run_seconds(steps: int, effective_batch: int, example_tokens: float, *, n_eval: int, eval_batch: int,
                new_tokens: int, evaluations: int = 1, loads: int = 1) -> float:
    """One training run: model loads, training, and `evaluations` held-out evaluations."""
    return (loads * FIGURES["load_s"].value + train_seconds(steps, effective_batch, example_tokens)
            + evaluations * eval_seconds(n_eval, eval_batch, new_tokens, example_tokens))


@dataclass(frozen=True)
class NotebookTime:
    """A notebook's predicted minutes on a T4: what it is made of, and its budget."""

    notebook: str
    parts: dict  # name -> seconds (install, download, each run, cells)
    budget_minutes: float

    @property
    def minutes(self) -> float:
        return sum(self.parts.values()) / 60

    @property
    def fits(self) -> bool:
        return self.minutes <= self.budget_minutes

    def line(self) -> str:
        parts = ", ".join(f"{name} {s / 60:.1f}" for name, s in self.parts.items())
        verdict = "within" if self.fits else "OVER"
        return (f"notebook {self.notebook}: {self.minutes:4.1f} min predicted, {verdict} its budget of "
                f"{self.budget_minutes:g} min ({parts})")


def notebook_times(runs) -> dict[str, NotebookTime]:
    """Each notebook's predicted minutes from the t4 plan's runs (`tooling.course.t4_plan()`).

    Every notebook installs; those that load the 1.5B model download it (each Colab notebook is a new
    runtime). Optional runs (03's LoRA comparison and 7B run) are not in a notebook's budget.
    """
    from lora_lab.experiments import adapters
    from lora_lab.runtime import profiles

    t4 = profiles.PROFILES["t4"]
    sql = tokens_per_example("sql")
    install, cells = FIGURES["install_s"].value, FIGURES["cells_s"].value
    download = FIGURES["model_bytes"].value / FIGURES["download_bytes_per_s"].value
    parts = {nb: {"install": install, "cells": cells} for nb in BUDGET_MINUTES}
    for nb in ("02", "03", "04", "05", "06", "07"):  # the notebooks that load the real model on a T4
        parts[nb]["download"] = download
    parts["04"]["load"] = FIGURES["load_s"].value
    parts["06"]["GGUF export and check"] = FIGURES["export_s"].value
    recipes = adapters.default_recipes(t4)
    for run in runs:
        if not run.runs or run.optional:
            continue
        accum = run.grad_accum * run.estimate_kwargs["batch_size"]
        if run.notebook == "05":
            recipe = recipes[run.run]
            task_tokens = sql if run.run == "sql" else tokens_per_example(run.run)
            seconds = run_seconds(recipe.max_steps, accum, task_tokens, n_eval=0, eval_batch=1, new_tokens=0,
                                  evaluations=0)
        else:
            seconds = run_seconds(run.steps, accum, sql, n_eval=run.n_eval, eval_batch=t4.eval_batch_size,
                                  new_tokens=t4.max_new_tokens, evaluations=run.evaluations)
        parts[run.notebook][f"{run.run} run"] = seconds
    # 05 scores the base and each specialist on every task's held-out examples (adapters.held_out_size each).
    tasks = list(recipes)
    parts["05"]["score table"] = (1 + len(tasks)) * sum(
        eval_seconds(adapters.held_out_size(t4), t4.eval_batch_size, adapters.max_new_tokens_for(t4, t),
                     sql if t == "sql" else tokens_per_example(t)) for t in tasks)
    return {nb: NotebookTime(nb, p, BUDGET_MINUTES[nb]) for nb, p in parts.items()}
