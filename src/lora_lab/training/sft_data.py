"""SFT data preparation: chat template, labels on the answer only, checked per example; and padding.

Training (`lora_lab.training.train`), evaluation (`lora_lab.training.evaluate`) and the rank sweep (`lora_lab.experiments.rank`)
all tokenize chat data here, so a loss in one is comparable with a loss in another:

- `check_tokenizer`: refuse a tokenizer whose model would never learn to stop.
- `prepare_sft_data`: the chat template applied, labels (-100 elsewhere) only on the last
  assistant answer and its eos, over-long examples counted and dropped whole; a `DataReport`.
- `pad_batch`: `lora_lab.lessons.sft.pad_right` with the tokenizer's pad token, the one way the
  package pads tokenized examples into a batch (right padding, -100 under the padded labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from lora_lab.lessons import sft
from lora_lab.training import data

__all__ = ["DataReport", "check_tokenizer", "pad_batch", "prepare_sft_data"]


@dataclass
class DataReport:
    """What tokenization did to a dataset (printed before training; saved in metrics.json)."""

    name: str  # "train", "eval", ...
    n_examples: int  # examples given
    n_kept: int  # examples kept (all but the over-long ones)
    n_too_long: int  # examples longer than max_length: dropped whole, never cut mid-answer
    max_length: int  # the limit in tokens
    longest: int  # tokens of the longest example given
    longest_kept: int  # tokens of the longest example kept (sets the padded batch's peak memory)
    loss_tokens_min: int  # fewest loss-carrying tokens in a kept example (never 0: that is an error)
    loss_tokens_mean: float  # mean loss-carrying tokens per kept example
    tokens_total: int  # tokens in the kept examples
    too_long_examples: list = field(default_factory=list)  # indices of the first dropped examples (up to 10)

    def summary(self) -> str:
        text = (f"{self.name}: {self.n_kept} of {self.n_examples} examples kept; tokens carrying loss per example: "
                f"min {self.loss_tokens_min}, mean {self.loss_tokens_mean:.1f}; longest example {self.longest_kept} tokens")
        if self.n_too_long:
            text += (f"; {self.n_too_long} longer than max_length={self.max_length} (longest {self.longest}) were "
                     f"dropped whole, not cut mid-answer (e.g. #{', #'.join(map(str, self.too_long_examples[:3]))})")
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def check_tokenizer(tokenizer) -> None:
    """Refuse a tokenizer that would train a model that never stops.

    Raises:
        ValueError: no chat template, no eos, or pad equal to eos.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("The tokenizer has no chat template: set tokenizer.chat_template before training on chat data.")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token: the model could never learn to stop.")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            f"pad token {tokenizer.pad_token!r} is missing or equal to eos {tokenizer.eos_token!r}: padding would "
            "mask the eos label and the model would never learn to stop. Use lora_lab.training.models.ensure_pad_token(...)."
        )


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                        return_dict=True)
    return list(out["input_ids"])


def prepare_sft_data(tokenizer, dataset, max_length: int, name: str = "train", verbose: bool = True):
    """Tokenize chat examples with labels on the last assistant answer only, and check every one.

    Each example is split before its last assistant message (`data.to_prompt_completion`). The
    prompt is rendered with ``add_generation_prompt=True`` and the whole conversation without; the
    answer's tokens are where the two diverge, exactly as trl's prompt/completion tokenization
    does. Labels are -100 on the prompt and the token ids on the answer (which ends with eos).

    Args:
        tokenizer: with a chat template and distinct eos and pad tokens.
        dataset: rows with `messages` (`lora_lab.training.data` schema).
        max_length: longest example in tokens; longer ones are counted and dropped whole.
        name: for messages.
        verbose: print the report.

    Returns:
        (a `datasets.Dataset` with `input_ids` and `labels`, a `DataReport`).

    Raises:
        ValueError: bad data (see `data.validate`), a tokenizer without chat template or with
            pad == eos, an example whose answer carries no loss (a template that hides the
            assistant turn), an answer that does not end in eos, or no example short enough.
    """
    from datasets import Dataset

    data.validate(dataset, f"{name} set")
    check_tokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    input_ids, labels, lengths, loss_counts, too_long = [], [], [], [], []
    longest = 0
    for i, row in enumerate(dataset):
        messages = row["messages"]
        last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        prompt_ids = _ids(tokenizer, messages[:last], add_generation_prompt=True)
        full_ids = _ids(tokenizer, messages[: last + 1], add_generation_prompt=False)
        answer = sft.answer_labels(prompt_ids, full_ids)
        start = answer.count(sft.IGNORE_INDEX)
        n_loss = len(full_ids) - start
        if n_loss <= 0:
            raise ValueError(
                f"Example {i} of the {name} set: no token carries loss. The chat template renders the "
                f"conversation with the answer {messages[last]['content'][:40]!r} as no longer than the prompt "
                "alone, so the assistant's answer is hidden (or rendered before the generation prompt). Fix the "
                "chat template so the assistant turn is rendered after the generation prompt."
            )
        if eos not in full_ids[start:]:
            raise ValueError(
                f"Example {i} of the {name} set: the answer's tokens do not contain the eos token "
                f"{tokenizer.eos_token!r}, so the model would never learn to stop. Make the chat template end the "
                "assistant turn with the tokenizer's eos token, or set tokenizer.eos_token to its end-of-turn token."
            )
        longest = max(longest, len(full_ids))
        if len(full_ids) > max_length:
            too_long.append(i)
            continue
        input_ids.append(full_ids)
        labels.append(answer)
        lengths.append(len(full_ids))
        loss_counts.append(n_loss)
    if not input_ids:
        raise ValueError(f"Every example of the {name} set is longer than max_length={max_length} tokens "
                         f"(longest {longest}): raise max_length or shorten the data.")
    report = DataReport(
        name=name, n_examples=len(dataset), n_kept=len(input_ids), n_too_long=len(too_long), max_length=max_length,
        longest=longest, longest_kept=max(lengths), loss_tokens_min=min(loss_counts),
        loss_tokens_mean=sum(loss_counts) / len(loss_counts), tokens_total=sum(lengths),
        too_long_examples=too_long[:10],
    )
    if verbose:
        print(report.summary())
    return Dataset.from_dict({"input_ids": input_ids, "labels": labels}), report


def pad_batch(tokenizer, ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> dict:
    """`lora_lab.lessons.sft.pad_right` with the tokenizer's pad token (which must exist)."""
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token: use lora_lab.training.models.ensure_pad_token(...).")
    return sft.pad_right(ids, labels, tokenizer.pad_token_id)
