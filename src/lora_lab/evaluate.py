"""Evaluate a causal LM the way the course reports it: greedy generations, exact match, eval loss.

- `generate`: greedy decoding from chat prompts (the tokenizer's chat template with
  ``add_generation_prompt=True``), batched with left padding, stopping at the eos token.
- `exact_match`: the share of held-out examples whose generated answer equals the reference,
  after light normalisation (case, spaces, a final full stop, thousands separators); for GSM8K-style
  solutions the final answer after ``####`` is compared.
- `eval_loss`: the mean cross-entropy over the tokens that carry loss in training (the assistant
  answer and its eos), computed from the same tokenization as training.
- `side_by_side`: a few prompts with the reference and two models' answers, for a table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from . import data, sft_data
from .units import MIB

#: Most bytes of logits `eval_loss` materialises at once (fp32 logits plus a float copy).
LOGITS_BUDGET_BYTES = 512 * MIB


def _as_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a string becomes one user message; a conversation loses a final
    assistant turn (that is the answer we want the model to produce)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = list(prompt)
    if not messages:
        raise ValueError("An empty conversation cannot be used as a prompt.")
    last_assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if last_assistant and last_assistant[-1] == len(messages) - 1:
        messages = messages[:-1]
    return messages


def tokenize_padded(tokenizer, texts: Sequence[str], side: str):
    """Tokenize chat-templated `texts` as one padded batch, padding on `side`.

    Left padding for generation (new tokens must follow the prompt directly), right padding for
    logit comparisons. The tokenizer's own setting is restored afterwards.
    """
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        return tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous


def probe_batch(tokenizer, conversations: Sequence, n: int | None = None, *, generation_prompt: bool = False) -> dict:
    """A small right-padded batch (input_ids, attention_mask) to compare two models' logits on.

    The one way the package builds such a batch (the merge checks of notebooks 03 and 05).

    Args:
        tokenizer: with a chat template and a pad token.
        conversations: chat message lists (a Dataset column works), or strings (user messages).
        n: use only the first `n` (None: all).
        generation_prompt: render prompts as generation sees them (the final assistant turn
            dropped, the generation prompt added) instead of whole conversations.
    """
    chosen = list(conversations)[:n]
    if generation_prompt:
        texts = [tokenizer.apply_chat_template(_as_messages(c), tokenize=False, add_generation_prompt=True)
                 for c in chosen]
    else:
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in chosen]
    enc = tokenize_padded(tokenizer, texts, "right")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence, max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
    """Greedy answers to `prompts`, one string each, special tokens removed.

    Args:
        model: a causal LM (PEFT or plain).
        tokenizer: its tokenizer, with a chat template and distinct eos and pad tokens.
        prompts: strings (each becomes a user message) or lists of chat messages.
        max_new_tokens: generation budget; generation stops earlier at eos.
        batch_size: prompts generated together (left-padded).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token: generation would never stop.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [_as_messages(p) for p in prompts[start : start + batch_size]]
            texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in chunk]
            enc = tokenize_padded(tokenizer, texts, "left").to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,  # greedy: the same prompt always gives the same answer
                eos_token_id=tokenizer.eos_token_id,  # stop at the end of the assistant turn
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += [s.strip() for s in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return outputs


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, no final full stop, no thousands separators in numbers."""
    text = " ".join(str(text).strip().lower().split())
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return text.rstrip(".").strip()


def final_answer(prediction: str) -> str:
    """The part of a prediction to compare: what follows '####' in a GSM8K-style solution, else all."""
    if "####" in prediction:
        return data.gsm8k_answer(prediction)
    return prediction


def exact_match(model, tokenizer, dataset, max_new_tokens: int = 16, batch_size: int = 16) -> tuple[float, list[dict]]:
    """Greedy-generate an answer for each example and compare it with the reference answer.

    Args:
        model: the model to evaluate.
        tokenizer: its tokenizer.
        dataset: rows with `messages` (the prompt is everything before the last assistant turn)
            and `answer` (the reference).
        max_new_tokens: generation budget per answer.
        batch_size: prompts per generate call.

    Returns:
        (score in [0, 1], rows): one dict per example with prompt, answer, prediction, correct.

    Raises:
        ValueError: for an empty dataset or one without `messages` and `answer`.
    """
    data.validate(dataset, "evaluation set")
    if "answer" not in dataset.column_names:
        raise ValueError("exact_match needs an 'answer' column with the reference answers.")
    prompts = [_as_messages(m) for m in dataset["messages"]]
    predictions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = []
    for prompt, answer, prediction in zip(prompts, dataset["answer"], predictions, strict=True):
        correct = normalise_answer(final_answer(prediction)) == normalise_answer(answer)
        rows.append({"prompt": prompt[-1]["content"], "answer": answer, "prediction": prediction, "correct": correct})
    return sum(r["correct"] for r in rows) / len(rows), rows


@torch.no_grad()
def eval_loss(model, tokenizer, dataset, max_length: int = 512, batch_size: int = 16) -> float:
    """Mean cross-entropy per loss-carrying token (assistant answer + eos) over `dataset`.

    The examples are tokenized exactly as for training (`lora_lab.sft_data.prepare_sft_data`), so the
    figure is comparable with the training loss. Examples longer than `max_length` are left out and
    reported, as in training.

    Args:
        model: the model to evaluate.
        tokenizer: its tokenizer.
        dataset: rows with `messages`, or already tokenized rows with `input_ids` and `labels`.
        max_length: longest example in tokens.
        batch_size: examples per forward pass.
    """
    if "input_ids" in dataset.column_names and "labels" in dataset.column_names:
        tokenized = dataset
    else:
        tokenized, report = sft_data.prepare_sft_data(tokenizer, dataset, max_length, name="evaluation set", verbose=False)
        if report.n_too_long:
            print(f"eval_loss: {report.n_too_long} of {report.n_examples} examples are longer than "
                  f"{max_length} tokens and were left out.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    total, count = 0.0, 0
    start = 0
    try:
        while start < len(tokenized):
            # The fp32 logits are batch x length x vocabulary: 16 x 512 x 152k would be 5 GB on a T4.
            # Take as many rows as keep them (and their float copy) under LOGITS_BUDGET_BYTES.
            longest_ahead = max(map(len, tokenized[start : start + batch_size]["input_ids"]))
            rows_fit = max(1, LOGITS_BUDGET_BYTES // (8 * longest_ahead * vocab))
            rows = tokenized[start : start + min(batch_size, rows_fit)]
            start += len(rows["input_ids"])
            batch = sft_data.pad_batch(tokenizer, rows["input_ids"], rows["labels"])
            ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                ignore_index=-100, reduction="sum",
            )
            total += loss.item()
            count += int((shift_labels != -100).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("No token of the evaluation set carries loss: nothing to measure.")
    return total / count


def side_by_side(rows_a: list[dict], rows_b: list[dict], n: int = 5, names=("base", "tuned")) -> list[dict]:
    """The first `n` examples with the reference and both models' answers (from `exact_match` rows)."""
    table = []
    for a, b in list(zip(rows_a, rows_b, strict=True))[:n]:
        table.append({"prompt": a["prompt"], "reference": a["answer"], names[0]: a["prediction"],
                      names[1]: b["prediction"]})
    return table


def format_table(rows: list[dict], width: int = 40) -> str:
    """A plain-text table of dicts (same keys), each cell cut to `width` characters."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])

    def cell(value) -> str:
        text = " ".join(str(value).split())
        return text if len(text) <= width else text[: width - 1] + "…"

    cells = [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [" | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
