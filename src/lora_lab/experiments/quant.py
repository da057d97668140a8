"""4-bit quantization in models: what NF4, FP4 and INT4 do to weights, layers and a model's loss (notebook 04).

The quantizer itself is lesson code: `lora_lab.lessons.code_books` (the 16 levels) and
`lora_lab.lessons.nf4` (block-wise quantize, dequantize, double quantization, storage). This module
measures with it: error and level usage on real weights, what 4-bit storage does to a small
update, low-rank compensation (LoftQ), whole models quantized in place, and the held-out losses
that compare the formats.
"""

from __future__ import annotations

import contextlib
import math

import torch

from lora_lab.lessons import sft
from lora_lab.lessons.code_books import code_book
from lora_lab.lessons.nf4 import DEFAULT_BLOCKSIZE, TINY, blocks_of, dequantize, quantize, round_trip


def relative_rmse(x: torch.Tensor, approx: torch.Tensor) -> float:
    """Root-mean-square error relative to the root-mean-square of `x`: ||x - approx|| / ||x||."""
    x, approx = x.double().reshape(-1), approx.double().reshape(-1)
    return float((x - approx).norm() / x.norm())


def block_normalized(x: torch.Tensor, blocksize: int = DEFAULT_BLOCKSIZE) -> torch.Tensor:
    """Every value divided by its block's absmax (flattened): what the code book has to cover."""
    blocks, _ = blocks_of(x.reshape(-1).float(), blocksize)
    return (blocks / blocks.abs().amax(dim=1, keepdim=True).clamp(min=TINY)).reshape(-1)[: x.numel()]


def level_usage(x: torch.Tensor, fmt: str = "nf4", blocksize: int = DEFAULT_BLOCKSIZE) -> torch.Tensor:
    """Share of the values of `x` that land on each level, levels in increasing order.

    Codes that mean the same value (FP4's and INT4's +0 and -0) are counted together under the
    first, so the result has one entry per distinct level.
    """
    code = code_book(fmt)
    q = quantize(x, fmt, blocksize)
    values = code[q.codes()]
    levels = code.unique()  # sorted, +0 and -0 merged
    counts = torch.bucketize(values, levels).bincount(minlength=len(levels)).double()
    return counts / counts.sum()


def rounding_of_update(w: torch.Tensor, update: torch.Tensor, fmt: str = "nf4",
                       blocksize: int = DEFAULT_BLOCKSIZE) -> dict:
    """What happens to a small change of a weight if the weight is stored in 4 bits.

    Args:
        w: the weight.
        update: a change to it, e.g. one optimizer step.
        fmt: 4-bit format.
        blocksize: values per absmax block.

    Returns:
        ``changed``: share of 4-bit codes that differ after adding the update; ``error``: relative
        RMSE between the update and the change the 4-bit weights actually show (1.0 means all
        of it was lost).
    """
    before, after = quantize(w, fmt, blocksize), quantize(w + update, fmt, blocksize)
    changed = float((before.codes() != after.codes()).double().mean())
    seen = dequantize(after).float() - dequantize(before).float()
    return {"changed": changed, "error": relative_rmse(update, seen)}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def quantizable_linears(model) -> dict[str, torch.nn.Linear]:
    """The `nn.Linear` layers a 4-bit load quantizes: all but the output head.

    transformers keeps the output head (and anything tied to it) in 16/32 bits, as do norms and
    embeddings, which are not `nn.Linear`.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head and m.weight is not getattr(head, "weight", None)}


def low_rank(w: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation of `w` (truncated SVD, Eckart-Young), in fp32."""
    u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def lowrank_compensated(w: torch.Tensor, rank: int, fmt: str = "nf4", init: str = "loftq", iters: int = 5,
                        blocksize: int = DEFAULT_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `w` into a 4-bit part and a 16/32-bit low-rank part that corrects its rounding.

    QLoRA starts the adapters at zero, so training begins from the rounded weights Q(W). Two
    initialisations use the adapter to start closer to W instead:

    * ``"pissa"`` (PiSSA, arXiv 2404.02948): the adapter takes W's top `rank` singular
      directions, L = SVD_r(W), and only the residual W - L is quantized. The residual has a
      smaller range than W, so its blocks round more finely.
    * ``"loftq"`` (LoftQ, arXiv 2310.08659): alternate Q = q(W - L) and L = SVD_r(W - Q), starting
      from L = 0, so the adapter fits the quantization error itself.

    Args:
        w: a 2-D weight.
        rank: adapter rank.
        fmt: 4-bit format of the frozen part.
        init: "loftq" or "pissa".
        iters: LoftQ alternations (ignored for PiSSA).
        blocksize: values per absmax block.

    Returns:
        (dequantized frozen part, low-rank part); their sum is what the layer computes with at step 0.
    """
    w = w.float()
    if init == "pissa":
        lr = low_rank(w, rank)
        return round_trip(w - lr, fmt, blocksize), lr
    if init != "loftq":
        raise ValueError(f"init must be 'loftq' or 'pissa' (got {init!r}).")
    lr = torch.zeros_like(w)
    for _ in range(iters):
        q = round_trip(w - lr, fmt, blocksize)
        lr = low_rank(w - q, rank)
    return q, lr


@torch.no_grad()
def quantize_model_(model, fmt: str = "nf4", blocksize: int = DEFAULT_BLOCKSIZE, double_quant: bool = False,
                    rank: int = 0, init: str = "loftq", iters: int = 5) -> dict[str, float]:
    """Replace every quantizable linear weight of `model` by its 4-bit round trip, in place.

    The model stays an ordinary float model, so any format (INT4 too, which bitsandbytes does not
    offer) can be tried on it, and its weights equal those a real 4-bit load dequantizes to.
    With `rank` > 0 each weight becomes Q + L from `lowrank_compensated`: what a QLoRA layer with
    a LoftQ- or PiSSA-initialised adapter computes before training.

    Args:
        model: a transformers causal LM (modified in place).
        fmt: "nf4", "fp4" or "int4".
        blocksize: values per absmax block.
        double_quant: quantize the absmax values too.
        rank: adapter rank for low-rank compensation (0: none, plain QLoRA).
        init: "loftq" or "pissa" (with `rank` > 0).
        iters: LoftQ alternations.

    Returns:
        Relative RMSE of each replaced weight, by module name.
    """
    errors = {}
    for name, linear in quantizable_linears(model).items():
        w = linear.weight
        if rank:
            q, lr = lowrank_compensated(w.data, rank, fmt, init, iters, blocksize)
            approx = (q + lr).to(w.dtype)
        else:
            approx = round_trip(w.data, fmt, blocksize, double_quant)
        errors[name] = relative_rmse(w.data, approx)
        w.data.copy_(approx)
    return errors


@contextlib.contextmanager
def quantized(model, fmt: str = "nf4", blocksize: int = DEFAULT_BLOCKSIZE, double_quant: bool = False,
              rank: int = 0, init: str = "loftq", iters: int = 5):
    """Context in which `model`'s linear weights are 4-bit round trips; restored on exit.

    Cheaper than copying the model once per format: only the linear weights are saved (on the CPU).
    Arguments as in `quantize_model_`.

    Yields:
        The relative RMSE of each replaced weight, by module name.
    """
    saved = {name: m.weight.detach().to("cpu", copy=True) for name, m in quantizable_linears(model).items()}
    try:
        yield quantize_model_(model, fmt, blocksize, double_quant, rank, init, iters)
    finally:
        with torch.no_grad():
            for name, m in quantizable_linears(model).items():
                m.weight.copy_(saved[name].to(m.weight.device))


#: Facts per forward pass of `completion_loss` (the notebook's preflight checks this batch).
FACT_BATCH = 400


def fact_prompts(world=None) -> tuple[list[str], list[str]]:
    """Every fact of the course world split into a prompt and its answer word.

    "the color of mipoka is orange ." gives ("the color of mipoka is", " orange"): the answer is
    what the tiny model memorised, so the loss on it measures remembered knowledge, not the
    unpredictable entity names.
    """
    from lora_lab.training import data

    world = world or data.make_world()
    prompts, answers = [], []
    for entity in world.entities:
        for attribute in data.ATTRIBUTES:
            value = getattr(entity, attribute)
            sentence = data.fact_text(entity, attribute)
            prompts.append(sentence[: sentence.rindex(value)].rstrip())
            answers.append(" " + value)
    return prompts, answers


@torch.no_grad()
def completion_loss(model, tokenizer, prompts: list[str], completions: list[str],
                    batch_size: int = FACT_BATCH) -> dict:
    """Cross-entropy of each completion given its prompt, and how sure the model is of it.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompts: the conditioning texts.
        completions: what should follow each prompt (scored token by token).
        batch_size: examples per forward pass.

    Returns:
        ``loss``: mean cross-entropy per completion token (nats); ``accuracy``: share of
        completions whose every token is the model's top choice; ``margins``: per completion,
        the smallest gap (in logits) between the right token and the best wrong one over its
        tokens (negative when the model gets it wrong).
    """
    device = next(model.parameters()).device
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        rows.append((p + c, len(p)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count, correct, margins = 0.0, 0, 0, []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        batch = sft.pad_right([seq for seq, _ in chunk], [seq for seq, _ in chunk], pad)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits.float().cpu()
        for r, (seq, start) in enumerate(chunk):
            pred = logits[r, start - 1 : len(seq) - 1]  # positions predicting the completion tokens
            target = torch.tensor(seq[start:])
            total += torch.nn.functional.cross_entropy(pred, target, reduction="sum").item()
            count += len(target)
            right = pred.gather(1, target.view(-1, 1)).squeeze(1)
            wrong = pred.scatter(1, target.view(-1, 1), float("-inf")).amax(dim=1)
            margin = float((right - wrong).min())
            margins.append(margin)
            correct += margin > 0
    return {"loss": total / count, "accuracy": correct / len(rows), "margins": torch.tensor(margins)}


#: The course's own prose that notebook 04 scores a real model on (package data, so a pip install has it).
HELDOUT_TEXT = "texts/heldout.txt"
#: Texts per forward pass of `text_loss` (the notebook's preflight checks this batch).
TEXT_BATCH = 4
#: Tokens kept per text by `text_loss`: the course's paragraphs are shorter, so nothing is cut.
TEXT_MAX_LENGTH = 256


def heldout_text() -> list[str]:
    """Paragraphs of ordinary English the course ships, for scoring a real model's quantized weights.

    A real model (the t4 profile's Qwen2.5-1.5B-Instruct) has never seen the course world's invented
    facts, but it knows English: its loss on prose written for this course, which was not in its
    training data, shows how much of that knowledge each 4-bit format keeps. Read through the
    installed package (`importlib.resources`), so it works from a pip install on Colab too.

    Returns:
        The non-empty paragraphs of ``lora_lab/texts/heldout.txt``, in order.
    """
    from importlib import resources

    text = resources.files("lora_lab").joinpath(HELDOUT_TEXT).read_text(encoding="utf-8")
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


GENERAL_FACTS = "texts/general_facts.tsv"


def general_facts() -> tuple[list[str], list[str]]:
    """General knowledge as sentence completions ("The capital of France is" -> " Paris"), written for the course.

    A real model learned facts like these in pretraining; notebook 03 asks which of them it still completes
    after fine-tuning on SQL (`lora_lab.training.evaluate.forgetting`). Read like `heldout_text`.

    Returns:
        (prompts, answers), each answer with its leading space, for `completion_loss`.
    """
    from importlib import resources

    text = resources.files("lora_lab").joinpath(GENERAL_FACTS).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [prompt for prompt, _ in rows], [" " + answer for _, answer in rows]


@torch.no_grad()
def text_loss(model, tokenizer, texts: list[str], max_length: int = TEXT_MAX_LENGTH,
              batch_size: int = TEXT_BATCH) -> dict:
    """Mean next-token cross-entropy of `model` over `texts` (each cut to `max_length` tokens).

    Every token after a text's first is predicted from those before it; padding is masked out, so
    the result does not depend on `batch_size`. The mean is over all predicted tokens together
    (a long paragraph weighs more than a short one), as a perplexity is usually reported.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        texts: the texts to score.
        max_length: tokens kept per text (also what bounds the memory of one forward pass).
        batch_size: texts per forward pass.

    Returns:
        ``loss``: mean cross-entropy per predicted token (nats); ``perplexity``: exp(loss);
        ``tokens``: how many tokens were predicted.
    """
    device = next(model.parameters()).device
    rows = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        batch = sft.pad_right(chunk, chunk, pad)  # every token is a target; padding is not
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        targets = batch["labels"][:, 1:].to(device)
        total += torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                                   ignore_index=sft.IGNORE_INDEX, reduction="sum").item()
        count += sft.answer_tokens(batch)
    if count == 0:
        raise ValueError("text_loss needs at least one text of two or more tokens.")
    return {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count}


def comparison_bytes(model, batch_size: int, seq_len: int) -> int:
    """GPU memory notebook 04's format comparison may need, from `lora_lab.estimation.vram.estimate`.

    The notebook holds the model in 16 bits, loads a 4-bit copy beside it, and runs forward passes
    of `batch_size` x `seq_len` tokens. The estimator predicts training steps, so we ask it for the
    closest step that holds at least as much: a 16-bit LoRA step of rank 1 on one projection (plain
    SGD, gradient checkpointing on) at that batch, which adds a sliver of adapter gradients and
    one recomputed layer to what a forward pass keeps, plus the weights of the 4-bit copy from a
    QLoRA estimate of the same model. An upper bound, by design.

    Args:
        model: what `vram.estimate` takes (a preset name, a config folder...).
        batch_size: sequences per forward pass.
        seq_len: tokens per sequence.

    Returns:
        Bytes: the 16-bit step's total plus the 4-bit copy's weights.
    """
    from lora_lab.estimation import vram

    step = dict(rank=1, target_modules=["q_proj"], batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=True,
                optimizer="sgd", precision="fp16", autocast=False)
    sixteen = vram.estimate(model, method="lora", **step)
    four = vram.estimate(model, method="qlora", **step)
    return int(sixteen.total + four.weights)


def comparison_preflight(model, batch_size: int, seq_len: int, hw) -> int:
    """Check `comparison_bytes` against the GPU memory free right now; stop before loading if it won't fit.

    Args:
        model: what `vram.estimate` takes for the model about to be loaded (the real model, not a stand-in).
        batch_size: sequences per scoring forward pass.
        seq_len: tokens per sequence.
        hw: the `lora_lab.runtime.hardware` reading; without a CUDA GPU nothing is loaded on one, so only the
            estimate is printed.

    Returns:
        The estimate in bytes.

    Raises:
        WontFitError: the estimate exceeds the GPU memory free at this moment (message says what to do).
    """
    from lora_lab.estimation.gpu_runs import free_bytes_now
    from lora_lab.estimation.preflight import WontFitError
    from lora_lab.runtime.units import GIB

    need = comparison_bytes(model, batch_size, seq_len)
    if hw.device_type != "cuda":
        print(f"preflight: no GPU; on one, the 16-bit model, its 4-bit copy and a scoring batch of {batch_size} x "
              f"{seq_len} tokens would need at most {need / GIB:.2f} GiB (estimator).")
        return need
    free = free_bytes_now(hw)
    if need > free:
        raise WontFitError(
            f"The format comparison needs up to {need / GIB:.2f} GiB (16-bit model + 4-bit copy + a batch of "
            f"{batch_size} x {seq_len} tokens) and {free / GIB:.2f} GiB of GPU memory is free now. Restart the "
            "runtime to free what earlier notebooks hold (Runtime > Restart session), or use a bigger GPU.")
    print(f"preflight: the comparison needs at most {need / GIB:.2f} GiB; {free / GIB:.2f} GiB is free: runs.")
    return need


def kurtosis(x: torch.Tensor) -> float:
    """Excess kurtosis of the values of `x`: 0 for a normal distribution, larger for heavy tails."""
    x = x.double().reshape(-1)
    z = (x - x.mean()) / x.std()
    return float((z**4).mean() - 3)
