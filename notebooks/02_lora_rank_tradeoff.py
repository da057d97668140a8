# %% [markdown]
# # 02 · The LoRA rank trade-off: measured, not folklore
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lora-lab/lora-lab/blob/main/notebooks/02_lora_rank_tradeoff.ipynb)

# %% tags=["colab-install"]
# Colab only: install the course's pinned packages (never torch or numpy: Colab's own stay) and lora_lab.
import subprocess
import sys

LORA_LAB_REPO = "lora-lab/lora-lab"  # set by `make colab-links REPO=owner/name REF=branch-or-tag`
LORA_LAB_REF = "main"  # the branch or tag of LORA_LAB_REPO that this notebook installs
if "google.colab" in sys.modules:
    base = f"https://raw.githubusercontent.com/{LORA_LAB_REPO}/{LORA_LAB_REF}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", f"{base}/colab/requirements.txt",
                    f"lora-lab @ git+https://github.com/{LORA_LAB_REPO}@{LORA_LAB_REF}"], check=True)

# %%
from lora_lab import hardware, models, profiles

hw = hardware.preflight()
profile = profiles.get_profile()
hw = models.hardware_for(profile, hw)  # a t4 rehearsal decides as on a T4 and executes on this CPU
print(profile.summary())

# %% [markdown]
# ## The question
#
# The syllabus this course grew from says: *rank 8 for style, 16-32 for complex tasks, and set
# alpha equal to the rank.* The sources say something less tidy:
#
# * **LoRA paper** (Hu et al., arXiv 2106.09685, Table 6): on GPT-3 WikiSQL with W_q and W_v
#   adapted, ranks 1, 2, 4, 8 and 64 score 73.4, 73.3, 73.7, 73.8 and 73.5: rank barely mattered.
# * **QLoRA** (Dettmers et al., arXiv 2305.14314, Appendix A): once *all* linear layers are adapted,
#   the rank was "unrelated to final performance"; which layers you adapt mattered more.
# * **Biderman et al. 2024** (arXiv 2405.09673): on code and maths, ranks 16-64 do not reach full
#   fine-tuning, whose weight updates have far higher rank.
# * **"LoRA Without Regret"** (Thinking Machines, 2025): low ranks fall off the full-fine-tuning loss
#   curve once their capacity runs out, and the rank needed grows with the dataset; MLP layers
#   matter more than attention at equal parameter count; the best LoRA learning rate is about
#   10x the full fine-tuning one.
#
# This notebook measures each of these on your machine: first the arithmetic, then a controlled
# experiment where we *know* the answer, then real fine-tuning runs, then merging. The summary at
# the end is computed from the results, not written in advance.
#
# On the `cpu` profile the runs use the course's tiny model with a 32-bit base and LoRA on top
# (method "lora"): QLoRA's 4-bit base is notebook 03's subject, and it would only slow these small
# runs down on a CPU. Results are cached under `~/.cache/lora_lab/rank/` (`LORA_LAB_CACHE` moves
# it); a second run only reads them.

# %% [markdown]
# ## 1. Parameter math
#
# LoRA replaces the update of a frozen `d_out x d_in` matrix W by `B @ A`, with `A` of shape
# `r x d_in` and `B` of shape `d_out x r`. One adapted matrix costs `r * (d_in + d_out)` parameters;
# an adapter costs that summed over every adapted matrix of every block. Its safetensors file holds
# those values at 4 bytes each (peft saves fp32 unless the adapter is cast) plus a small JSON header.
#
# We count for the architecture of the `t4` profile's model (Qwen2.5-1.5B; the Instruct variant
# has the same shapes), with LoRA on q and v only (the LoRA paper's choice) and on every linear
# layer of the blocks (QLoRA's choice, peft's `"all-linear"`, which leaves the output head out).

# %%
from lora_lab import rank, rank_plots, vram

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

# %% [markdown]
# Next, the file. We attach adapters of several ranks to the tiny model, save them with
# `save_pretrained` and compare the file with the prediction, in fp32 (peft's default) and cast to
# fp16 before saving.

# %%
import torch
from transformers import AutoModelForCausalLM

from lora_lab import tiny

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
exact = all(f["tensor_bytes"] == f["predicted_tensor_bytes"] for f in files)
print(f"\nPrediction equals the file minus its header in {sum(f['tensor_bytes'] == f['predicted_tensor_bytes'] for f in files)}"
      f" of {len(files)} files; the header is {min(f['header_bytes'] for f in files):,}-"
      f"{max(f['header_bytes'] for f in files):,} bytes.")

# %% [markdown]
# The arithmetic says two things the folklore hides. The choice of *targets* moves the count as
# much as the rank does (the two lines above are parallel and far apart), and the file size follows
# directly from the count: for a real model, an adapter is megabytes, not the base's gigabytes.

# %% [markdown]
# ## 2. A controlled experiment: recovering an update of known rank
#
# Real fine-tuning never tells us the "true" rank of the update it needs. So we make a task where we
# know it: one frozen linear layer `W0` (128 x 128), a target update `dW` of rank 8, and data
# `y = (W0 + dW) x + noise` with `x` drawn from a standard normal. We fit a peft LoRA adapter of
# rank r to the data with Adam and measure how far the learned update is from the true one,
# `||dW_fit - dW|| / ||dW||`. For inputs like these that distance *is* the excess held-out error of
# the fitted layer, so no separate test set is needed. We repeat with three dataset sizes.

# %%
RECOVERY = dict(d=128, true_rank=8, n_trains=[96, 1024, 16384], ranks=[1, 2, 4, 8, 16, 32, 64, 128],
                noise=1.0, steps=200, seed=0)
recovery = rank.cached("recovery", RECOVERY, lambda: rank.recovery_sweep(**RECOVERY))
fig = rank_plots.recovery(recovery, RECOVERY["true_rank"])
for n in RECOVERY["n_trains"]:
    sel = [r for r in recovery if r["n_train"] == n]
    best = min(sel, key=lambda r: r["error"])
    top = sel[-1]
    k = rank.knee([r["rank"] for r in sel], [r["error"] for r in sel])
    where = f"knee at r={k}" if best["error"] < 0.5 else "no clear knee: too little data to recover dW"
    print(f"{n:>6,} examples: {where}; best r={best['rank']} (error {best['error']:.3f}); r={top['rank']}: "
          f"error {top['error']:.3f}, {top['error'] - best['error']:+.3f} above the best")

# %% [markdown]
# Read the plot from left to right. Below the true rank, the adapter cannot represent the update and
# the error stays high whatever the data. At the true rank it drops sharply: that is the knee. Above
# it, extra rank has nothing left to learn except the noise. With fewer examples than the layer is
# wide, nothing is recovered well, and the spare directions fit the noise so the error *rises* with
# rank: a large rank overfits. With more data the whole curve sinks and the price of spare rank (the
# printed gap between r=128 and the best rank) shrinks, roughly as one over the square root of the
# number of examples: the curve flattens. This is one side of "the needed rank grows with the data"
# ("LoRA Without Regret"): more data makes spare rank cheap, and a real dataset that carries more
# directions worth learning than the rank allows leaves the adapter short of capacity.

# %% [markdown]
# ## 3. Scaling rules: alpha fixed, alpha = r, or rsLoRA?
#
# peft multiplies `B @ A` by a scale before adding it to the layer's output. Three rules are in use:
#
# | rule | scale | how to get it in peft |
# |---|---|---|
# | alpha fixed | alpha / r | `lora_alpha=alpha` (the same alpha for every rank) |
# | alpha = r | 1 | `lora_alpha=r` (the syllabus's "alpha equals rank") |
# | rsLoRA | alpha / sqrt(r) | `lora_alpha=alpha, use_rslora=True` (Kalajdzievski, arXiv 2312.03732) |
#
# The rule decides how far one optimizer step moves the update, and so where the best learning
# rate lies for each rank. We fit a target whose spectrum decays over all 128 directions (every rank
# has something to learn), for a short, fixed budget of Adam steps, at a grid of learning rates.

# %%
SCALING = dict(ranks=[2, 8, 32, 128], lrs=[5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2e-1, 5e-1], steps=60,
               alpha=8.0, n_train=4096, noise=0.5, seed=0, curve_lr=1e-2)
scaling = rank.cached("scaling", SCALING, lambda: rank.scaling_sweep(**SCALING))
fig = rank_plots.scaling(scaling)
for rule in scaling["best_lr"]:
    lrs = ", ".join(f"r={r}: {lr:g}" for r, lr in scaling["best_lr"][rule].items())
    at_best = {r: min(g["error"] for g in scaling["grid"] if g["rule"] == rule and g["rank"] == int(r))
               for r in scaling["best_lr"][rule]}
    print(f"{rule:<23} best LR {lrs}  (spread {scaling['spread'][rule]:.1f}x); "
          f"error at the best LR: r={SCALING['ranks'][0]} {at_best[str(SCALING['ranks'][0])]:.3f}, "
          f"r={SCALING['ranks'][-1]} {at_best[str(SCALING['ranks'][-1])]:.3f}")
fixed_lr = SCALING["curve_lr"]
for rule in scaling["best_lr"]:
    cells = {g["rank"]: g["error"] for g in scaling["grid"] if g["rule"] == rule and g["lr"] == fixed_lr}
    print(f"at one LR ({fixed_lr:g}), {rule:<23}: error r={SCALING['ranks'][0]} {cells[SCALING['ranks'][0]]:.3f}"
          f" -> r={SCALING['ranks'][-1]} {cells[SCALING['ranks'][-1]]:.3f}")

# %% [markdown]
# The two camps read this experiment differently, and both are right about something:
#
# * **"LoRA Without Regret"** argues that with the alpha / r rule and Adam, the first steps move the
#   model by about the same amount whatever the rank, so one learning rate serves every rank. Look at
#   the top-left panel and the printed spread: is the star at the same learning rate for every rank?
#   (Rank 2 cannot do better than its cap, so its curve is flat over a wide range and its star is
#   only weakly placed.)
# * **rsLoRA** argues that alpha / r shrinks each rank direction's step as r grows, so that at a
#   *given* learning rate a large rank learns no more than a small one, and proposes alpha / sqrt(r)
#   so that extra rank pays off. The bottom panels and the "at one LR" lines show it: at the same
#   learning rate, compare how much rank 128 gains over rank 2 under each rule.
#
# Both effects come from the same scale factor. If you tune the learning rate for each rank, the
# rule mostly decides *where* the best learning rate lies (compare the errors at each rule's best
# LR). If you pick one learning rate and sweep the rank, the rule decides whether the rank seems to
# matter. Neither paper's claim is a law: Adam, a short budget and this toy are assumptions. The
# syllabus's "alpha = r" is the rule under which the best learning rate moves most with the rank.
#
# The sweep below keeps alpha fixed (alpha / r) so that one learning rate is fair to every rank.

# %% [markdown]
# ## 4. Fine-tuning the course model, rank by rank
#
# Now real supervised fine-tuning: the profile's base model and task (on `cpu`: the tiny Llama and
# the `recall` task, whose held-out questions ask about entities the model saw only in
# pretraining). Every run has the same data order, steps and schedule. We train
#
# * LoRA on all linear layers at each rank of the plan, alpha fixed;
# * full fine-tuning as the baseline;
# * LoRA on attention only and on the MLP only, at ranks chosen so both have *exactly* the same
#   number of parameters (close to all-linear at the rank of the learning-rate sweep);
# * a small learning-rate sweep for one LoRA rank and for full fine-tuning.
#
# For each run: held-out loss on the answer tokens, greedy exact match (an answer counts when the
# model's greedy choice is right at every answer token and at the closing end-of-turn token, exactly
# the condition for greedy generation to reproduce it), trainable parameters, the memory of one
# training step counted by `lora_lab.memory.measure_step` (weights + gradients + optimizer states +
# activations saved for backward), and the median seconds per step. On `cpu` a plain PyTorch loop
# trains on one thread (trl's trainer costs more than these short runs themselves); on `t4` the same
# configurations run through `lora_lab.train.sft` with QLoRA and fewer ranks and steps.
# Seconds per step are measurements: they vary with whatever else runs on the machine.

# %%
plan = rank.PLANS[profile.name]
print(f"plan for '{profile.name}': ranks {plan.ranks}, {plan.steps} steps, LoRA lr {plan.lora_lr:g} with alpha "
      f"{plan.alpha:g}, full fine-tuning lr {plan.full_lr:g}")
sweep = rank.sft_sweep(profile, plan)
runs = sweep["runs"]
if sweep["baseline"]:
    print(f"\nbase model before fine-tuning: held-out loss {sweep['baseline']['eval_loss']:.3f}, "
          f"exact match {sweep['baseline']['exact_match']:.1%}")

# %%
estimates = []
for r in plan.ranks:
    est = vram.estimate(REAL, method="qlora", rank=r, target_modules="all-linear", batch_size=4, seq_len=512,
                        gradient_checkpointing=True, optimizer="paged_adamw_8bit", precision="fp16")
    estimates.append(dict(rank=r, trainable=est.trainable_params, total=est.total))
fig = rank_plots.tradeoff(runs, estimates, est_label=f"{REAL} QLoRA on a T4, estimate (MiB)")
# A GPU run the preflight skipped (full fine-tuning of the 1.5B model needs more than a T4) has no row.
full = next((r for r in runs if r["group"] == "full"), None)
ranked = sorted((r for r in runs if r["group"] == "rank"), key=lambda r: r["rank"])
print(f"estimated T4 memory (QLoRA, batch 4 x 512): r={plan.ranks[0]} {estimates[0]['total'] / 2**30:.2f} GiB, "
      f"r={plan.ranks[-1]} {estimates[-1]['total'] / 2**30:.2f} GiB")
print(f"measured per step: r={ranked[0]['rank']} {ranked[0]['memory'] / 2**20:.2f} MiB, "
      f"r={ranked[-1]['rank']} {ranked[-1]['memory'] / 2**20:.2f} MiB, full fine-tuning "
      + (f"{full['memory'] / 2**20:.2f} MiB" if full else "skipped by the preflight"))
for skipped in sweep.get("skipped", []):
    print(f"not started: {skipped['run']}: {skipped['note']}")

# %% [markdown]
# Reading the figure: moving right along the blue line buys held-out loss with parameters; the
# marker area is the measured memory of a step. The runs are short (the printed plan says how many
# steps), long enough to teach the answer format, which takes the held-out loss down from the base
# model's, but mostly too short to teach the model to retrieve held-out facts: exact match on 100
# questions moves by a few questions between runs, so compare the runs by held-out loss. The right panel shows why the memory axis is flat
# for LoRA on a real model: the frozen base and the activations dominate, and the adapter's weights,
# gradients and Adam states grow with r but stay small next to them.

# %%
good_rank, best_loss = rank.smallest_good_rank(runs, tol=0.02)
att = next(r for r in runs if r["group"] == "targets" and r["name"].startswith("attention"))
mlp = next(r for r in runs if r["group"] == "targets" and r["name"].startswith("mlp"))
print(f"best all-linear rank by held-out loss: r={min(ranked, key=lambda r: r['eval_loss'])['rank']} "
      f"(loss {best_loss:.3f}); smallest rank within 2% of it: r={good_rank}")
print(f"rank {ranked[0]['rank']}: loss {ranked[0]['eval_loss']:.3f}; rank {ranked[-1]['rank']}: loss "
      f"{ranked[-1]['eval_loss']:.3f}; full fine-tuning "
      + (f"({full['trainable']:,} parameters): loss {full['eval_loss']:.3f}" if full else "skipped"))
print(f"attention only ({att['name']}, {att['trainable']:,} parameters): loss {att['eval_loss']:.3f}, exact match "
      f"{att['exact_match']:.1%}")
print(f"MLP only       ({mlp['name']}, {mlp['trainable']:,} parameters): loss {mlp['eval_loss']:.3f}, exact match "
      f"{mlp['exact_match']:.1%}")

# %% [markdown]
# ### Where does LoRA's best learning rate sit?
#
# "LoRA Without Regret" reports the best LoRA learning rate at roughly 10x the best full
# fine-tuning one. Our sweep is coarse (a few points per method), so read the ratio as a range.

# %%
fig = rank_plots.lr_sweep(runs, plan.lr_rank)
lora_best, lora_loss = rank.best_lr(runs, "lora", plan.lr_rank)
full_best, full_loss = rank.best_lr(runs, "full") if full else (None, None)
print(f"best LR: LoRA r={plan.lr_rank} {lora_best:g} (loss {lora_loss:.3f}); "
      + (f"full fine-tuning {full_best:g} (loss {full_loss:.3f}); ratio {lora_best / full_best:.3g}x, measured on a "
         "grid of factor-3 steps" if full else "no full fine-tuning run to compare with"))

# %% [markdown]
# ## 5. Merging
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
# On a tiny model the adapter's two extra matrix products per layer are a visible share of the
# work; on a 1.5B model they are a small share, but they never vanish until you merge. Unmerged
# adapters are what let one base serve several adapters (notebook 05); merged, the model costs
# exactly what the base costs.

# %% [markdown]
# ## 6. What to pick
#
# The lines below are computed from this run's results and set next to the syllabus's advice.

# %%
summary = rank.Summary()
k_big = rank.knee([r["rank"] for r in recovery if r["n_train"] == RECOVERY["n_trains"][-1]],
                  [r["error"] for r in recovery if r["n_train"] == RECOVERY["n_trains"][-1]])
small = [r for r in recovery if r["n_train"] == RECOVERY["n_trains"][0]]
summary.add(f"Rank is a capacity: in the controlled task the error stops falling at r={k_big}, the true rank "
            f"{RECOVERY['true_rank']}; with {RECOVERY['n_trains'][0]} examples, r={small[-1]['rank']} is "
            f"{small[-1]['error'] / min(r['error'] for r in small):.1f}x worse than the best rank (overfitting).")
spreads = scaling["spread"]
summary.add("The best learning rate moved by " + ", ".join(f"{v:.1f}x under {k}" for k, v in spreads.items())
            + f" across ranks {SCALING['ranks'][0]}-{SCALING['ranks'][-1]}: the syllabus's alpha = r is the rule "
            + ("under which it moves most." if max(spreads, key=spreads.get) == rank.SCALING_RULES[1]
               else "we expected to move most, and here it did not."))
summary.add(f"On the course task the smallest all-linear rank within 2% of the best held-out loss is r={good_rank}; "
            f"r={ranked[0]['rank']} reached {ranked[0]['eval_loss']:.3f} vs {best_loss:.3f} for the best rank"
            + (f" and {full['eval_loss']:.3f} for full fine-tuning" if full else " (full fine-tuning was skipped)")
            + (f"; no rank closes the gap to full fine-tuning, which also trains the embeddings and norms that "
               f"all-linear LoRA leaves frozen (ranks {ranked[0]['rank']}-{ranked[-1]['rank']} span "
               f"{max(r['eval_loss'] for r in ranked) - best_loss:.3f} in loss)."
               if full and full["eval_loss"] < best_loss else "."))
summary.add(f"Targets: at equal parameters, MLP-only reached {mlp['eval_loss']:.3f} and attention-only "
            f"{att['eval_loss']:.3f} ({'MLP' if mlp['eval_loss'] < att['eval_loss'] else 'attention'} better by "
            f"{abs(mlp['eval_loss'] - att['eval_loss']):.3f}, the direction 'LoRA Without Regret' "
            f"{'found' if mlp['eval_loss'] < att['eval_loss'] else 'did not find'}; one seed, so a gap this small "
            "is a lead, not a result).")
if full:
    summary.add(f"Best LoRA learning rate {lora_best:g} vs full fine-tuning {full_best:g}: {lora_best / full_best:.3g}x "
                "(the literature's rule of thumb is about 10x).")
summary.add(f"Memory depends little on the rank for a real model: the estimate for {REAL} with QLoRA goes from "
            f"{estimates[0]['total'] / 2**30:.2f} to {estimates[-1]['total'] / 2**30:.2f} GiB "
            f"({estimates[-1]['total'] / estimates[0]['total'] - 1:+.0%}) from r={plan.ranks[0]} to r={plan.ranks[-1]}.")
summary.add(f"Merging is exact in fp32 (largest logit difference {merge['max_abs_diff']:.1e}) and removes the "
            f"unmerged adapter's {merge['unmerged_ms'] / merge['base_ms'] - 1:+.0%} forward-pass time.")
print(summary)

# %% [markdown]
# Against the syllabus: "rank 8 for style, 16-32 for complex tasks" holds as a starting point when
# every linear layer is adapted, because there the rank rarely decides much (LoRA paper Table 6,
# QLoRA Appendix A, and the rank sweep above). It fails in two directions: a task whose update
# needs more rank than you give it, or more data than a small rank can absorb, stays below full
# fine-tuning however you tune it (Biderman et al. 2024); and a large rank on a small dataset only
# adds noise (section 2). "alpha = r" is a convention with a cost: it moves the best learning rate
# with every rank change. What to do instead: adapt all linear layers, start around r=16 with alpha
# fixed, tune the learning rate once, and raise the rank only when the held-out loss says the
# adapter, not the data, is the limit.

# %% [markdown]
# ## Check your understanding
#
# Pick or type an answer and press Check. A wrong answer gets a hint; the answer is shown after
# three tries, or when you press Show answer.

# %%
from lora_lab import quiz

quiz.show(quiz.LORA_BASICS)

# %% [markdown]
# ## Exercises
#
# Each exercise says what a correct answer looks like. Put your answer in the variable it names,
# then run the check cell below it: `exercises.check` computes the expected answer with
# `lora_lab` and says which part to reconsider, without giving the answer away.

# %%
from lora_lab import exercises

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
from lora_lab import rank

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
from lora_lab import vram

qwen = vram.load_arch("Qwen/Qwen2.5-1.5B")
goal = vram.lora_params(qwen, 32, "all-linear")
per_rank = {s: vram.lora_params(qwen, 1, rank.target_modules(qwen, s)) for s in ("attention", "mlp")}
answer_02_3 = (round(goal / per_rank["attention"]), round(goal / per_rank["mlp"]))
for s, r in zip(("attention", "mlp"), answer_02_3, strict=True):
    print(f"{s}-only r={r}: {r * per_rank[s]:,} parameters; all-linear r=32: {goal:,}")
assert exercises.check("02.3", answer_02_3).correct, "the solution disagrees with its check"

# %%
exercises.check("02.3", answer_02_3)
