# %% [markdown]
# # 00 · Preflight: what this course is and what your machine can do
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lora-lab/lora-lab/blob/main/notebooks/00_preflight.ipynb)

# %% tags=["colab-install"]
# Colab only: install the course's pinned packages (never torch or numpy: Colab's own stay) and lora_lab.
import subprocess
import sys

LORA_LAB_REPO = "lora-lab/lora-lab"  # set by `make colab-links REPO=owner/name`
if "google.colab" in sys.modules:
    base = f"https://raw.githubusercontent.com/{LORA_LAB_REPO}/main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", f"{base}/colab/requirements.txt",
                    f"lora-lab @ git+https://github.com/{LORA_LAB_REPO}"], check=True)

# %% [markdown]
# ## What this course is
#
# Five short lessons on fine-tuning a language model when the GPU is small or missing:
#
# | notebook | what you will see |
# |---|---|
# | 01 VRAM math | where every byte of a fine-tuning run goes, an estimator that predicts it, and a calculator that says whether *your* run fits |
# | 02 LoRA rank | what the rank buys: parameters, memory, time and held-out quality measured per rank, and where the folklore is wrong |
# | 03 QLoRA SFT | a complete QLoRA fine-tune with checks for the failures that hit Colab users (bf16 on a T4, masked labels, endless generation, lost sessions) |
# | 04 NF4 | 4-bit NormalFloat built from scratch and matched bit for bit against bitsandbytes |
# | 05 Adapters | one base model, several small adapters: swap, batch, merge and combine them |
#
# Every number the notebooks print is computed in the run you are watching, or cited with its
# source. The syllabus this course grew from contains some folklore; where the sources disagree
# with it, the notebooks say so.
#
# ## Your machine
#
# The first code cell of every notebook prints the same preflight table. Two rows matter most:
#
# * **compute capability**: a T4 is 7.5. bfloat16 runs natively only from 8.0 (Ampere) up.
#   `torch.cuda.is_bf16_supported()` answers True on a T4 anyway, because bf16 can be emulated;
#   so the course decides by capability: fp16 on a T4, bf16 on an A100/L4/H100, fp32 on a CPU.
# * **GPU memory free**: Colab's "16 GB" T4 reports about 14.7 GiB, and whatever earlier cells
#   still hold is gone too.

# %%
from lora_lab import hardware, profiles

hw = hardware.preflight()
profile = profiles.get_profile()
print()
print(profile.summary())
print("Picked because", profiles.why(profile))

# %% [markdown]
# ## Two profiles, one code path
#
# The same notebooks run in two settings, chosen by `lora_lab.profiles.get_profile()`:
#
# * **`t4`** (a CUDA GPU is present): a real instruct model and a real instruction dataset
#   from the Hugging Face Hub.
# * **`cpu`** (no GPU: laptops, CI): a tiny Llama that the course builds on this machine, with a
#   tokenizer it trains and data it generates. Nothing is downloaded.
#
# Set `LORA_LAB_PROFILE=cpu` (or `t4`) before starting Jupyter to choose by hand. Both profiles go
# through the same loading, 4-bit quantization, training and saving code; only the sizes differ.

# %%
for name in profiles.available():
    print(profiles.PROFILES[name].summary(), end="\n\n")

# %% [markdown]
# ## The `cpu` profile's base model, built here
#
# A lab makes a base model in three steps: train a tokenizer, define an architecture, pretrain
# on text. `lora_lab.tiny` does the same at toy scale: a byte-level BPE tokenizer, a Llama config
# (grouped-query attention, SwiGLU MLP, tied embeddings, like Llama 3.2 and Qwen2.5) and a short
# pretraining run on sentences about an invented world of a few hundred entities. It is built once
# and cached; later notebooks load it with `from_pretrained`, exactly like a Hub model.

# %%
import matplotlib.pyplot as plt
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_lab import data, tiny

tiny_path = tiny.ensure_tiny_model()
report = tiny.pretraining_report(tiny_path)
base = AutoModelForCausalLM.from_pretrained(tiny_path)
tokenizer = AutoTokenizer.from_pretrained(tiny_path)
print(f"{report['parameters']:,} parameters, {base.config.num_hidden_layers} layers, "
      f"hidden {base.config.hidden_size}, {base.config.num_attention_heads} query / "
      f"{base.config.num_key_value_heads} key-value heads, vocabulary {len(tokenizer)}")
print(f"pretraining: {report['recipe']['pretrain_steps']} steps in {report['seconds']} s, "
      f"final loss {report['final_loss']}, facts recalled {report['fact_recall']:.1%}")

steps, losses = zip(*report["losses"], strict=True)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(steps, losses, marker="o")
ax.set(xlabel="pretraining step", ylabel="loss", title="Tiny base model: pretraining", yscale="log")
plt.show()

# %% [markdown]
# ## The course tasks
#
# Fine-tuning data for the `cpu` profile comes in three families whose answers can be checked
# exactly. Each example is a chat conversation; the tokenizer's chat template turns it into
# tokens, ending every turn with the eos token `<|end|>` (which is *not* the pad token: a model
# trained with pad = eos never learns to stop).

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
# Pretraining taught the tiny model the facts; nothing taught it to answer. Ask it a question in
# chat form and it continues in the style it knows. Teaching the behaviour is what supervised
# fine-tuning (notebook 03) is for.

# %%
import torch

question = data.question_text(data.make_world().eval_entities[0], "city")
inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
with torch.no_grad():
    out = base.generate(**inputs, max_new_tokens=12, do_sample=False)
print("question:", question)
print("base model says:", repr(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)))

# %% [markdown]
# ## Check your understanding
#
# Pick or type an answer and press Check. A wrong answer gets a hint; the answer is shown after
# three tries, or when you press Show answer.

# %%
from lora_lab import quiz

quiz.show(quiz.PREFLIGHT)

# %% [markdown]
# ## Exercises
#
# Each exercise says what a correct answer looks like. Put your answer in the variable it names,
# then run the check cell below it: `exercises.check` computes the expected answer with
# `lora_lab` and says which part to reconsider, without giving the answer away.

# %%
from lora_lab import exercises

for ex in exercises.for_notebook("00"):
    print(f"Exercise {ex.id} ({ex.minutes} min): {ex.title}")

# %% [markdown]
# ### Exercise 00.1: Compute dtype of an L4 and a V100
#
# An NVIDIA L4 has compute capability 8.9, a V100 7.0. Which dtype does the course compute in on
# each? Use `lora_lab.hardware`.
#
# **A correct answer:** `answer_00_1` is a dict {"L4": dtype, "V100": dtype} with dtype names such as "float16".

# %% tags=["solution"]
from lora_lab import hardware

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

from lora_lab import data, tiny

template_tokenizer = AutoTokenizer.from_pretrained(tiny.ensure_tiny_model())
recall = next(r for r in data.course_splits(data.TASK_FAMILIES, n_eval=30)["train"] if r["task"] == "recall")
bare = sum(len(template_tokenizer(m["content"])["input_ids"]) for m in recall["messages"])
templated = len(template_tokenizer.apply_chat_template(recall["messages"], tokenize=True, return_dict=True)["input_ids"])
answer_00_2 = templated - bare
print(f"bare: {bare} tokens, templated: {templated} tokens, the template adds {answer_00_2}")
assert exercises.check("00.2", answer_00_2).correct, "the solution disagrees with its check"

# %%
exercises.check("00.2", answer_00_2)
