"""Local stand-ins for the t4 profile's Hub model and datasets, so CI can rehearse the t4 path on a CPU.

The rehearsal (`LORA_LAB_PROFILE=t4 LORA_LAB_REHEARSAL=1`, see `lora_lab.runtime.profiles.rehearsal_of`)
keeps every setting and decision of the `t4` profile and replaces only what would come from the
Hub:

- the model: a Qwen2-architecture causal LM (`Qwen2ForCausalLM`, grouped-query attention with
  q/k/v biases, tied embeddings, rope theta 1e6, as in Qwen2.5-1.5B) built from a scaled-down config
  with random weights, and a byte-level BPE tokenizer with Qwen2.5's ChatML chat template
  (``<|im_start|>role ... <|im_end|>``; eos ``<|im_end|>``, pad ``<|endoftext|>``);
- the datasets: a few dozen rows in the Hub datasets' own formats (`lora_lab.standins.standin_data`).

Random weights cannot answer anything, so a rehearsal's scores are 0 and its losses are those of
a random model: it checks that the t4 code path runs end to end, with the t4 decisions, not what
the real run learns.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lora_lab.runtime import units
from lora_lab.runtime.units import build_once, cache_dir
from lora_lab.standins.standin_data import gsm8k_rows, sql_rows
from lora_lab.training import data

#: Qwen2.5's ChatML chat template (its default system turn shortened): turns end with <|im_end|>.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EOS_TOKEN = "<|im_end|>"  # Qwen2.5-Instruct's end of turn, and its eos
PAD_TOKEN = "<|endoftext|>"  # Qwen2.5's pad token
#: The scaled-down Qwen2 (real Qwen2.5-1.5B: hidden 1536, 12 query / 2 key-value heads, MLP 8960, 28 layers).
STANDIN_SIZES = dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=1, intermediate_size=224,
                     num_hidden_layers=2)
STANDIN_VOCAB = 1024  # BPE vocabulary trained on the stand-in data and the course's own text


# ---------------------------------------------------------------------------------------------
# A Qwen2-architecture model with random weights and a ChatML tokenizer


def _corpus() -> list[str]:
    texts = []
    for row in sql_rows(200, seed=2):
        texts += [data.sql_prompt(row["question"], row["context"]), row["answer"]]
    texts += [r["question"] + "\n" + r["answer"] for r in gsm8k_rows(100, seed=3)]
    world = data.make_world(seed=0)
    for task in data.TASK_FAMILIES:
        for row in data.make_examples(task, world.entities[:60], 1, 0):
            texts += [m["content"] for m in row["messages"]]
    return texts


def build_tokenizer():
    """A byte-level BPE tokenizer (as Qwen2.5's) trained on the stand-in text, with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=STANDIN_VOCAB, special_tokens=[PAD_TOKEN, "<|im_start|>", EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                        chat_template=CHATML_TEMPLATE)
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = 1024
    return tokenizer


def standin_config(tokenizer):
    """Qwen2.5-1.5B's config (the course's copy) with its sizes scaled down to `STANDIN_SIZES`."""
    from transformers import Qwen2Config

    from lora_lab.estimation import vram

    real = vram.preset_config("Qwen/Qwen2.5-1.5B")
    keep = {k: real[k] for k in ("hidden_act", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "attention_dropout")}
    return Qwen2Config(**keep, **STANDIN_SIZES, vocab_size=len(tokenizer), max_position_embeddings=1024,
                       bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       use_sliding_window=False)


def _key() -> str:
    return units.cache_key({"sizes": STANDIN_SIZES, "vocab": STANDIN_VOCAB, "template": CHATML_TEMPLATE, "version": 1})


def ensure_standin_model(folder: str | os.PathLike | None = None) -> Path:
    """The stand-in model's folder (safetensors + tokenizer), built on first use (about a second)."""
    from transformers import GenerationConfig, Qwen2ForCausalLM

    target = Path(folder) if folder else cache_dir("rehearsal") / f"qwen2-standin-{_key()}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target

    def build(scratch: Path) -> None:
        tokenizer = build_tokenizer()
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(standin_config(tokenizer))
        model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                   pad_token_id=tokenizer.pad_token_id, do_sample=False)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)

    return build_once(target, build)


def report(profile) -> str:
    """The lines a notebook can print under a rehearsal: what ran as on a T4 and what did not."""
    from lora_lab.runtime.profiles import REHEARSAL_SKIPS

    if not profile.rehearsal:
        return ""
    return ("t4 REHEARSAL on this CPU: the t4 profile's settings and decisions, with local stand-ins.\n"
            "Not executed here:\n" + "\n".join(f"  - {line}" for line in REHEARSAL_SKIPS))
