"""Supervised fine-tuning in plain PyTorch: labels on the answer only, right padding, the training loop.

Notebook 03 shows this file before it trains with trl's `SFTTrainer` (`lora_lab.training.train`), which
gets the same labels from `lora_lab.training.sft_data` (tokenization with the chat template calls
`answer_labels`). Notebook 02's rank sweep trains with `train_loop` itself.

The ideas, in order:

1. `answer_labels`: the loss is only on the answer. Render the prompt alone (ending with the
   generation prompt) and the whole conversation; the answer is where the two token lists part.
   Every earlier position gets the label -100, which PyTorch's cross-entropy ignores.
2. `pad_right`: examples of different lengths become one rectangle. Padding goes on the right
   (real tokens keep positions 0..n-1, as in training), the attention mask is 0 there, and its
   labels are -100, so padding never carries loss.
3. `train_loop`: AdamW, a linear warm-up then linear decay, gradient clipping at 1.0, and optional
   gradient accumulation that gives the same step as one big batch.
4. `loss_and_greedy_match`: held-out loss per answer token, and whether greedy decoding would
   reproduce every answer token, both from one teacher-forced pass.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator, Sequence

import torch

IGNORE_INDEX = -100  # the label cross-entropy skips: prompt and padding positions


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def answer_labels(prompt_ids: Sequence[int], full_ids: Sequence[int]) -> list[int]:
    """Labels for `full_ids` (prompt and answer): -100 up to where the prompt alone stops matching,
    the token ids from there on (the answer and its end-of-turn token)."""
    start = common_prefix(prompt_ids, full_ids)
    return [IGNORE_INDEX] * start + list(full_ids[start:])


def pad_right(ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int) -> dict:
    """Right-pad token lists into a batch of `torch.long` tensors: input_ids, attention_mask, labels.

    Padding positions get `pad_id` as input, 0 in the attention mask and -100 as label.
    """
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} examples but {len(labels)} label lists")
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    target = torch.full_like(input_ids, IGNORE_INDEX)
    mask = torch.zeros_like(input_ids)
    for row, (x, y) in enumerate(zip(ids, labels, strict=True)):
        if len(x) != len(y):
            raise ValueError(f"example {row}: {len(x)} tokens but {len(y)} labels")
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        target[row, : len(y)] = torch.tensor(y, dtype=torch.long)
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": target}


def shuffled_batches(ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], *, batch_size: int,
                     steps: int, pad_id: int, seed: int) -> Iterator[dict]:
    """`steps` padded batches in a seeded order: each pass over the data is a fresh shuffle."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            more = list(range(len(ids)))
            rng.shuffle(more)
            order += more
        chosen, order = order[:batch_size], order[batch_size:]
        yield pad_right([ids[i] for i in chosen], [labels[i] for i in chosen], pad_id)


def answer_tokens(batch: dict) -> int:
    """Tokens that carry loss (the model predicts position t+1 from t, so the first label never does)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def linear_warmup_then_decay(steps: int, warmup_steps: int):
    """The learning-rate factor for step s: rises to 1 over `warmup_steps`, then falls to 0 at `steps`."""
    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return max(0.0, (steps - s) / max(1, steps - warmup_steps))
    return factor


def train_loop(model, train_set, *, steps: int, lr: float, batch_size: int, pad_id: int, warmup_steps: int = 5,
               seed: int = 0, grad_accum: int = 1, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Train the parameters of `model` that require gradients on `train_set` (columns `input_ids`, `labels`).

    The loss is the model's own causal-LM loss over the answer tokens. With `grad_accum` > 1 each batch
    is split into that many micro-batches whose gradients add up before the optimizer step; each
    micro-batch's mean loss is weighted by its share of the batch's answer tokens, so the step equals
    the step without accumulation. `optimizer` replaces the default AdamW at `lr` (e.g. one with a
    learning rate per parameter group); the schedule scales every group's rate alike.

    Returns:
        losses [(step, loss)], seconds_per_step (median after the first step), seconds.
    """
    if batch_size % grad_accum:
        raise ValueError(f"batch_size {batch_size} must be a multiple of grad_accum {grad_accum}.")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_then_decay(steps, warmup_steps))
    micro = batch_size // grad_accum
    batches = shuffled_batches(train_set["input_ids"], train_set["labels"], batch_size=batch_size, steps=steps,
                               pad_id=pad_id, seed=seed)
    model.train()
    losses, times = [], []
    start = time.perf_counter()
    device = next(model.parameters()).device
    for step, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        began = time.perf_counter()
        batch_tokens, step_loss = answer_tokens(batch), 0.0
        for i in range(grad_accum):
            part = {k: v[i * micro: (i + 1) * micro] for k, v in batch.items()}
            loss = model(**part).loss * (answer_tokens(part) / batch_tokens)
            loss.backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
        losses.append((step + 1, round(step_loss, 5)))
    model.eval()
    return dict(losses=losses, seconds_per_step=statistics.median(times[1:] or times),
                seconds=time.perf_counter() - start)


@torch.no_grad()
def loss_and_greedy_match(model, eval_set, pad_id: int, batch_size: int = 50) -> tuple[float, float]:
    """Held-out loss per answer token and greedy exact match, from one teacher-forced pass.

    An example matches when the most likely token at every answer position (the answer and its
    closing end-of-turn token) is the reference token: exactly when greedy decoding reproduces the
    answer and stops. (`lora_lab.training.evaluate.exact_match` generates instead, and also forgives
    case and spacing.)

    Returns:
        (mean cross-entropy per answer token, share of examples matched).
    """
    model.eval()
    device = next(model.parameters()).device
    total, count, matched = 0.0, 0, 0
    n = len(eval_set)
    for start in range(0, n, batch_size):
        rows = eval_set[start: start + batch_size]
        batch = {k: v.to(device) for k, v in pad_right(rows["input_ids"], rows["labels"], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logits, labels = logits[:, :-1], batch["labels"][:, 1:]
        scored = labels != IGNORE_INDEX
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                   ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int(scored.sum())
        right = (logits.argmax(-1) == labels) | ~scored
        matched += int(right.all(dim=1).sum())
    return total / count, matched / n
