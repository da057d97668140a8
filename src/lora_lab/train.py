"""Supervised fine-tuning with QLoRA (or LoRA, or full fine-tuning), end to end, in one module.

The notebook `03_qlora_sft_t4` and the command line run the same functions::

    python -m lora_lab.train --profile cpu                      # the whole pipeline, tiny model
    python -m lora_lab.train --profile t4 --max-steps 60        # a real 1.5B model on a T4
    torchrun --nproc_per_node 2 -m lora_lab.train --method lora # several processes (DDP)

Public API (stable; the rank-sweep and adapter lessons build on it):

- `load_model_and_tokenizer(profile, method="qlora", hw=None, model_path=None)`: the base model
  ready for PEFT (4-bit NF4 + double quantization for QLoRA; dtype from `lora_lab.hardware`).
- `lora_config(profile, r=None, alpha=None, targets=None, dropout=None, use_rslora=False)`.
- `prepare_sft_data(tokenizer, dataset, max_length)`: chat template applied, labels only on the
  assistant answer (and its eos), checked per example; over-long examples counted and dropped.
- `sft(model, tokenizer, splits_or_train, profile, output_dir, ...)`: trl's `SFTTrainer` with
  explicit fp16/bf16, gradient checkpointing, paged 8-bit AdamW, checkpoints, resume, and an
  out-of-memory error that says what to change. Returns an `SFTResult`.
- `run_pipeline(profile, ...)`: preflight, data, evaluation before and after, training, adapter
  save/reload check, merge into a 16-bit base with a logit check, predicted vs measured memory,
  `metrics.json`. `main()` is its command line.

Everything is seeded (`profile.seed`, or `seed=`): two runs on the same machine give the same
losses, scores and adapter weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import data, evaluate, hardware, models, profiles, vram
from .callbacks import (
    DivergenceGuard,
    TrainingDiverged,
    TrainingMonitor,
    compare_memory,
    measure_cpu_step,
    peak_memory,
    peak_readings,
    start_peak_measurement,
)
from .models import Precision, decide_precision, load_model_and_tokenizer, lora_config

__all__ = [
    "DataReport", "Precision", "SFTResult", "TrainingDiverged", "TrainingOutOfMemory", "WontFitError", "decide_precision",
    "estimate_memory", "load_model_and_tokenizer", "lora_config", "main", "plot_loss", "prepare_sft_data",
    "preflight_memory", "run_pipeline", "sft", "sft_config_kwargs",
]

GIB = 2**30


# ---------------------------------------------------------------------------------------------
# Errors a learner can act on


class WontFitError(ValueError):
    """The memory estimate for the chosen settings exceeds the GPU: we stop before loading anything."""


class TrainingOutOfMemory(RuntimeError):
    """Training ran out of memory; the message says what to change and which checkpoint survives.

    Attributes:
        step: optimizer steps completed before the failure.
        last_checkpoint: the newest checkpoint folder on disk (None if none was written).
        suggestions: changes that the estimator says would fit.
    """

    def __init__(self, message: str, step: int, last_checkpoint: str | None, suggestions: list[str]):
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint
        self.suggestions = suggestions


# ---------------------------------------------------------------------------------------------
# Data: chat template, labels on the answer only, checked per example


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
            "mask the eos label and the model would never learn to stop. Use lora_lab.models.ensure_pad_token(...)."
        )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


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
        dataset: rows with `messages` (`lora_lab.data` schema).
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
        start = _common_prefix(prompt_ids, full_ids)
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
        labels.append([-100] * start + full_ids[start:])
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


# ---------------------------------------------------------------------------------------------
# Memory: the estimator before anything heavy, and its prediction beside the measurement


def _estimator_precision(precision: Precision, method: str) -> str:
    if precision.executed == "float32":
        return "fp32"
    if method == "full":
        return "mixed"
    return "fp16" if precision.executed == "float16" else "bf16"


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def estimate_memory(model_config, profile, method: str, precision: Precision, *, rank: int | None = None,
                    seq_len: int | None = None, batch_size: int | None = None, device: str | None = None,
                    fsdp: bool = False):
    """`lora_lab.vram.estimate` for this run's settings (per GPU when several processes train).

    Args:
        model_config: a transformers config (or anything `vram.load_arch` reads).
        profile: the run profile (batch, rank, targets, optimizer, checkpointing, dropout).
        method: "qlora", "lora" or "full".
        precision: the run's `Precision` (the decided dtype when `device` is "cuda").
        rank: LoRA rank (default: the profile's).
        seq_len: the longest padded sequence (default: profile.max_length, the worst case).
        batch_size: sequences per micro-step (default: the profile's).
        device: "cuda" or "cpu" (default: cuda unless the run executes in fp32 without a GPU).
        fsdp: weights, gradients and optimizer states sharded over the processes.
    """
    on_cuda = device == "cuda" if device else precision.executed != "float32" or torch.cuda.is_available()
    if on_cuda and precision.executed == "float32" and precision.decided != "float32":
        # Estimating for the GPU this run is meant for (e.g. a T4 reading on a CPU test machine).
        cap = (7, 5) if precision.decided == "float16" else (8, 0)
        precision = models.precision_for("cuda", cap, method)
    n = _world_size()
    return vram.estimate(
        model_config,
        method=method,
        rank=profile.lora_r if rank is None else rank,
        lora_alpha=profile.lora_alpha,
        target_modules=profile.lora_targets,
        batch_size=profile.batch_size if batch_size is None else batch_size,
        seq_len=profile.max_length if seq_len is None else seq_len,
        gradient_checkpointing=profile.gradient_checkpointing,
        optimizer=profile.optimizer,
        precision=_estimator_precision(precision, method),
        lora_dropout=profile.lora_dropout,
        num_gpus=n if fsdp else 1,
        sharding="fsdp" if fsdp and n > 1 else None,
        device="cuda" if on_cuda else "cpu",
    )


def usable_gpu_bytes(hw: hardware.Hardware) -> int | None:
    """What the GPU offers a run: torch's total for the card (14.74 GiB on a Colab T4); None on the CPU."""
    return hw.gpu_total_bytes if hw.device_type == "cuda" else None


def preflight_memory(model_config, profile, method: str, hw: hardware.Hardware, precision: Precision, *,
                     rank: int | None = None, fsdp: bool = False, verbose: bool = True):
    """Estimate the run's peak GPU memory before loading anything, and stop if it cannot fit.

    Returns:
        The `MemoryEstimate` (for the worst case: every batch padded to profile.max_length).

    Raises:
        WontFitError: the estimate exceeds the GPU's usable memory; the message carries the
            estimator's suggestions (shorter sequences, smaller batch, QLoRA, a bigger GPU...).
    """
    device = "cuda" if hw.device_type == "cuda" else "cpu"
    est = estimate_memory(model_config, profile, method, precision, rank=rank, device=device, fsdp=fsdp)
    usable = usable_gpu_bytes(hw)
    if usable is None:
        if verbose:
            print(f"preflight: no GPU; the tensors of one step need about {est.peak_allocated / GIB:.3f} GiB of RAM "
                  f"(estimate for batch {profile.batch_size} x {profile.max_length} tokens, {method}).")
        return est
    kwargs = dict(est.settings)
    for key in ("model", "num_gpus"):
        kwargs.pop(key, None)
    kwargs = {k: v for k, v in kwargs.items() if k in _ESTIMATE_ARGS and v is not None}
    if not est.fits(usable):
        tips = vram.suggestions(model_config, usable, **kwargs)
        raise WontFitError(
            f"This run will not fit: the estimate is {est.total / GIB:.1f} GiB for {method} with batch "
            f"{profile.batch_size} x {profile.max_length} tokens, and {hw.gpu_name} offers {usable / GIB:.1f} GiB. "
            + ("Try: " + "; ".join(tips) + "." if tips else "No single change fits: pick a smaller model.")
        )
    if verbose:
        print(f"preflight: estimated peak {est.total / GIB:.2f} GiB of {usable / GIB:.2f} GiB usable on {hw.gpu_name} "
              f"({(usable - est.total) / GIB:.2f} GiB to spare; worst case: every batch {profile.max_length} tokens)")
        if hw.gpu_free_bytes is not None and hw.gpu_free_bytes < est.total:
            print(f"WARNING: only {hw.gpu_free_bytes / GIB:.1f} GiB is free right now: restart the runtime to free "
                  "memory held by earlier cells before training.")
    return est


_ESTIMATE_ARGS = {"method", "rank", "lora_alpha", "target_modules", "batch_size", "seq_len", "gradient_checkpointing",
                  "optimizer", "precision", "double_quant", "attention", "lora_dropout", "sharding", "device"}


def _oom_message(step: int, max_steps: int, last_checkpoint: str | None, model_config, profile, method: str,
                 precision: Precision, hw: hardware.Hardware, seq_len: int) -> tuple[str, list[str]]:
    """An out-of-memory message built from the estimator: what it predicted and what would fit."""
    tips: list[str] = []
    est = None
    try:
        est = estimate_memory(model_config, profile, method, precision, seq_len=seq_len, device="cuda")
        usable = usable_gpu_bytes(hw) or est.total
        # The run did not fit in practice, whatever the estimate said: ask what cuts the step's own
        # memory (everything but the CUDA context) by 15%.
        fixed = vram.CUDA_CONTEXT_BYTES
        budget = fixed + int(0.85 * (min(usable, est.total) - fixed))
        kwargs = {k: v for k, v in est.settings.items() if k in _ESTIMATE_ARGS and v is not None}
        kwargs.pop("sharding", None)
        tips = vram.suggestions(model_config, budget, **kwargs)
    except Exception as err:  # the estimator cannot read this model: fall back to general advice
        tips = [f"(estimator unavailable: {err})"]
    tips = tips or [f"batch {max(1, profile.batch_size // 2)} with gradient accumulation {profile.grad_accum * 2}",
                    f"max_length {max(64, seq_len // 2)}"]
    lines = [f"Out of memory at step {step + 1} of {max_steps}."]
    if est is not None:
        lines.append(f"The estimator predicted {est.total / GIB:.2f} GiB for batch {profile.batch_size} x {seq_len} tokens "
                     f"({method}, {est.settings.get('precision')}).")
    lines.append("Checkpoint kept: " + (f"{last_checkpoint} (continue with resume=True / --resume)."
                                        if last_checkpoint else "none yet (no step was saved before the failure)."))
    lines.append("Try: " + "; ".join(tips) + ". Restarting the runtime also frees memory held by earlier cells.")
    return "\n".join(lines), tips


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class SFTResult:
    """What `sft` returns."""

    model: object  # the trained model (a PeftModel for lora/qlora), in eval mode
    log_history: list  # the trainer's log entries (loss, learning_rate, tokens_per_s, peak_memory_bytes, ...)
    metrics: dict  # train_runtime_s, train_tokens_per_s, peak_memory_bytes, peak_memory_kind, final_loss, ...
    data_report: DataReport | None  # what tokenization kept and dropped
    output_dir: str  # where checkpoints were written
    last_checkpoint: str | None  # newest checkpoint folder
    records: list = field(default_factory=list)  # TrainingMonitor records, one per logging step

    @property
    def losses(self) -> list[tuple[int, float]]:
        """(step, loss) at every logging step."""
        return [(e["step"], e["loss"]) for e in self.log_history if "loss" in e]


def sft_config_kwargs(profile, output_dir, precision: Precision, *, max_steps: int | None = None,
                      learning_rate: float | None = None, seed: int | None = None) -> dict:
    """The `SFTConfig` arguments of a run, every one set on purpose (nothing left to trl's defaults).

    Returns:
        A dict for `trl.SFTConfig(**kwargs)`; tests inspect it (e.g. fp16 on a T4).
    """
    seed = profile.seed if seed is None else seed
    distributed_cpu = _world_size() > 1 and not torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir),  # checkpoints go here (checkpoint-N folders)
        max_steps=profile.capped_steps(profile.max_steps if max_steps is None else max_steps),  # optimizer steps
        per_device_train_batch_size=profile.batch_size,  # sequences per micro-step and process
        gradient_accumulation_steps=profile.grad_accum,  # micro-steps per optimizer step
        learning_rate=profile.learning_rate if learning_rate is None else learning_rate,  # peak LR
        lr_scheduler_type=profile.lr_scheduler,  # shape of the LR over the run
        warmup_steps=profile.warmup_ratio,  # a float < 1 is a share of max_steps
        weight_decay=0.0,  # none on LoRA matrices
        max_grad_norm=1.0,  # clip gradients (stabilises fp16 and early steps)
        optim=profile.optimizer,  # paged 8-bit AdamW keeps the optimizer state small
        fp16=precision.fp16,  # explicit: trl would pick bf16 if neither were set (fails on a T4)
        bf16=precision.bf16,  # explicit, from compute capability
        # Gradient (activation) checkpointing: keep each layer's input only, recompute the rest in backward.
        # transformers 5.24 renamed gradient_checkpointing* to activation_checkpointing*.
        activation_checkpointing=profile.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},  # non-reentrant: works with frozen inputs
        max_length=profile.max_length,  # our data is already within it; trl would cut, we drop instead
        packing=False,  # packing needs flash-attention's varlen kernels for exactness (not on a T4/CPU)
        padding_free=False,  # same reason; length-grouped batches cut padding instead (profile.group_by_length)
        train_sampling_strategy="group_by_length" if profile.group_by_length else "random",
        logging_steps=profile.logging_steps,  # loss, tokens/s and peak memory this often
        save_strategy="steps",  # checkpoints every save_steps ...
        save_steps=profile.save_steps,
        save_total_limit=profile.save_total_limit,  # ... keeping the newest few
        save_only_model=False,  # keep optimizer, scheduler and RNG states: needed for an exact resume
        seed=seed,  # model init, dropout
        data_seed=seed,  # data order
        report_to="none",  # no wandb/tensorboard prompts
        include_num_input_tokens_seen="non_padding",  # real tokens for tokens/s
        disable_tqdm=False,  # progress bars
        eval_strategy="no",  # evaluation runs before and after, with exact match (lora_lab.evaluate)
        dataloader_num_workers=0,  # deterministic and Colab-friendly
        ddp_find_unused_parameters=False,  # every LoRA matrix gets a gradient every step
        ddp_backend="gloo" if distributed_cpu else None,  # CPU processes talk over gloo
        use_cpu=distributed_cpu,  # accelerate sets up multi-process CPU (DDP) only when asked explicitly
        eos_token=None,  # the tokenizer's own eos (checked distinct from pad)
    )


def keep_trainable_fp32(model) -> int:
    """Cast trainable parameters back to fp32 after `SFTTrainer.__init__`; return how many were cast.

    trl 1.16 converts the LoRA matrices of every quantized model to bf16, whatever `fp16`/`bf16`
    say. On a T4 (no native bf16) that puts bf16 matmuls back into the fp16 run we chose on
    purpose, and anywhere it rounds each update to bf16's 8-bit mantissa: with small learning-rate
    steps many updates vanish. On the tiny model it cost QLoRA a large share of its held-out exact
    match, and it made a resumed run drift from an uninterrupted one. fp32 adapters with fp16/bf16
    autocast are ordinary mixed precision, and what `lora_lab.vram` assumes (peft's default).
    """
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            cast += 1
    return cast


def _last_checkpoint(folder) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if Path(folder).is_dir() else None


def _as_train_dataset(splits_or_train):
    from datasets import DatasetDict

    if isinstance(splits_or_train, (DatasetDict, dict)):
        if "train" not in splits_or_train:
            raise ValueError("The splits have no 'train' split.")
        return splits_or_train["train"]
    return splits_or_train


def sft(model, tokenizer, splits_or_train, profile, output_dir, *, method: str = "qlora", lora=None,
        max_steps: int | None = None, learning_rate: float | None = None, resume: bool = False,
        seed: int | None = None, callbacks: Sequence = (), eval_dataset=None, hw=None,
        verbose: bool = True) -> SFTResult:
    """Fine-tune `model` on chat data with trl's SFTTrainer.

    Args:
        model: from `load_model_and_tokenizer`; for lora/qlora LoRA is attached here unless it
            is already a PeftModel.
        tokenizer: its tokenizer.
        splits_or_train: a DatasetDict (its `train` split is used) or a Dataset with `messages`
            (or already tokenized with `input_ids` and `labels`).
        profile: the run profile (batch, steps, LR, LoRA, optimizer, logging and saving).
        output_dir: checkpoints are written here (checkpoint-N folders).
        method: "qlora", "lora" or "full".
        lora: a `peft.LoraConfig` (default `lora_config(profile)`).
        max_steps: overrides profile.max_steps.
        learning_rate: overrides profile.learning_rate.
        resume: continue from the newest checkpoint in `output_dir` (fresh start if there is none).
        seed: overrides profile.seed (LoRA init, data order).
        callbacks: extra `TrainerCallback`s.
        eval_dataset: optional held-out set (messages) for the trainer's own eval loss at save steps.
        hw: a hardware reading for out-of-memory advice (default: detect).
        verbose: print the data report and resume notes.

    Returns:
        An `SFTResult`: the trained model, the log history and the metrics.

    Raises:
        ValueError: bad data (see `prepare_sft_data`) or method.
        TrainingOutOfMemory: the GPU ran out; checkpoints on disk are kept (and one is written
            for the last completed step when possible), and the message says what to change.
    """
    from trl import SFTConfig, SFTTrainer

    models.check_method(method)
    seed = profile.seed if seed is None else seed
    precision = getattr(model, "lora_lab_precision", None) or decide_precision(hw or hardware.detect(), method)
    train = _as_train_dataset(splits_or_train)
    report = None
    if not ("input_ids" in train.column_names and "labels" in train.column_names):
        train, report = prepare_sft_data(tokenizer, train, profile.max_length, "train", verbose=verbose)
    if eval_dataset is not None and "input_ids" not in eval_dataset.column_names:
        eval_dataset, _ = prepare_sft_data(tokenizer, eval_dataset, profile.max_length, "eval", verbose=verbose)
    if method != "full" and not models.is_peft_model(model):
        model = models.attach_lora(model, lora or lora_config(profile), seed=seed)
    output_dir = Path(output_dir)
    kwargs = sft_config_kwargs(profile, output_dir, precision, max_steps=max_steps, learning_rate=learning_rate,
                               seed=seed)
    if eval_dataset is not None:
        kwargs.update(eval_strategy="steps", eval_steps=profile.save_steps, per_device_eval_batch_size=profile.batch_size)
    config = SFTConfig(**kwargs)
    monitor = TrainingMonitor()
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, eval_dataset=eval_dataset,
                         processing_class=tokenizer, callbacks=[monitor, DivergenceGuard(), *callbacks])
    keep_trainable_fp32(trainer.model)
    checkpoint = _last_checkpoint(output_dir) if resume else None
    if verbose and resume:
        print(f"resuming from {checkpoint}" if checkpoint else f"resume: no checkpoint in {output_dir}, starting fresh")
    start_peak_measurement()  # empty the cache and reset the peaks: the evaluation before does not count
    start = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    except torch.OutOfMemoryError:
        step = trainer.state.global_step
        saved = _save_after_oom(trainer, output_dir)
        model_config = getattr(trainer.model, "config", None)
        seq_len = report.longest_kept if report else profile.max_length
        message, tips = _oom_message(step, config.max_steps, saved, model_config, profile, method, precision,
                                     hw or hardware.detect(), seq_len)
        del trainer, output_dir
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise TrainingOutOfMemory(message, step, saved, tips) from None
    runtime = time.perf_counter() - start
    peak, kind = peak_memory()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tokens = trainer.state.num_input_tokens_seen - monitor.tokens_at_start  # this call's real tokens, all processes
    metrics = {
        "train_runtime_s": round(runtime, 2),
        "train_tokens_per_s": round(tokens / max(runtime, 1e-9), 1),
        "train_tokens": int(tokens),
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
        **{f"peak_{k}_bytes": v for k, v in peak_readings().items()},  # CUDA allocator peaks (None on the CPU)
        "final_loss": losses[-1] if losses else None,
        "train_loss_mean": output.metrics.get("train_loss"),
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint,
        "precision": precision.to_dict(),
    }
    trained = trainer.model
    trained.eval()
    log_history = list(trainer.state.log_history)
    last = _last_checkpoint(output_dir)
    # Free the optimizer and the trainer's references before evaluation (a T4 needs the room).
    trainer.optimizer = None
    trainer.lr_scheduler = None
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return SFTResult(model=trained, log_history=log_history, metrics=metrics, data_report=report,
                     output_dir=str(output_dir), last_checkpoint=last, records=monitor.records)


def _save_after_oom(trainer, output_dir) -> str | None:
    """After an out-of-memory error, keep the last completed step as a checkpoint if it is not saved yet."""
    last = _last_checkpoint(output_dir)
    step = trainer.state.global_step
    if step == 0 or (last and last.endswith(f"checkpoint-{step}")):
        return last
    try:
        trainer.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # Trainer's own checkpoint writer (private API): model, optimizer, scheduler, RNG and state,
        # exactly what resume_from_checkpoint reads back.
        trainer._save_checkpoint(trainer.model, trial=None)
        return _last_checkpoint(output_dir)
    except Exception as err:  # saving can fail too when memory is gone; keep the older checkpoint
        print(f"(could not save the step-{step} state after the error: {type(err).__name__}; keeping {last})")
        return last


# ---------------------------------------------------------------------------------------------
# Plots and Drive


def plot_loss(log_history, ax=None, title: str = "training loss"):
    """Plot the training loss per logging step (and eval loss if logged); return the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
    else:
        fig = ax.figure
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if train:
        ax.plot(*zip(*train, strict=True), marker="o", ms=3, label="train")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="s", ms=3, label="eval")
    ax.set(xlabel="optimizer step", ylabel="loss (answer tokens)", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def drive_checkpoint_dir(run_name: str, mount: bool = True) -> Path | None:
    """A checkpoint folder on Google Drive (Colab only, opt-in), mounting Drive if asked; else None.

    Checkpoints on Drive survive a Colab disconnect: rerun with resume=True and training continues
    from the newest one.
    """
    root = Path("/content/drive/MyDrive")
    if not root.exists() and mount and hardware.in_colab():
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount("/content/drive")
    if not root.exists():
        return None
    folder = root / "lora-lab" / run_name / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------------------------------------
# The whole pipeline


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def trainable_hash(model) -> str:
    """SHA-256 of the trainable parameters (the adapter), in name order: equal hashes, equal adapters."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def probe_batch(tokenizer, dataset, n: int = 4) -> dict:
    """A small padded batch of the first `n` full conversations, for logit comparisons (merge check)."""
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in dataset["messages"][:n]]
    enc = evaluate.tokenize_padded(tokenizer, texts, "right")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def run_pipeline(profile, *, method: str | None = None, output_dir="runs/sft", model_path=None, splits=None,
                 loader=None, hw=None, rank: int | None = None, max_steps: int | None = None,
                 learning_rate: float | None = None, resume: bool = False, seed: int | None = None,
                 checkpoint_dir=None, merge: bool = True, n_show: int = 5, callbacks: Sequence = (),
                 verbose: bool = True) -> dict:
    """Preflight, data, evaluation before, SFT, evaluation after, adapter save/reload, merge, metrics.json.

    Args:
        profile: the run profile.
        method: "qlora", "lora" or "full" (default: profile.method).
        output_dir: where metrics.json, loss.png, the adapter and the merged model go.
        model_path: overrides profile.model_id (a folder or Hub id).
        splits: a DatasetDict with `train` and `eval` (default: `data.load_profile_dataset`).
        loader: stands in for `datasets.load_dataset` when the profile reads a Hub dataset.
        hw: a hardware reading (default: detect). A T4 reading on a CPU machine records the T4's
            dtype decision and runs in fp32.
        rank: LoRA rank override.
        max_steps: optimizer steps override.
        learning_rate: peak learning rate override.
        resume: continue from the newest checkpoint.
        seed: overrides profile.seed.
        checkpoint_dir: where checkpoints go (default: output_dir/checkpoints; a Drive folder on Colab).
        merge: merge the adapter into a 16-bit base and check the logits.
        n_show: examples in the base-vs-tuned table.
        callbacks: extra trainer callbacks.
        verbose: print progress and reports.

    Returns:
        The metrics dict written to output_dir/metrics.json (see the issue's list of keys), with
        `table` (base vs tuned generations) and `log_history` beside it.

    Raises:
        WontFitError: the preflight estimate exceeds the GPU.
        TrainingOutOfMemory: training ran out of memory (checkpoints kept).
        ValueError: bad data, method or tokenizer.
    """
    from transformers import AutoConfig

    say = print if verbose else (lambda *a, **k: None)
    method = models.check_method(method or profile.method)
    if rank is not None:
        profile = profile.replace(lora_r=rank)
    if seed is not None:
        profile = profile.replace(seed=seed)
    hw = hw or profiles.hardware_for(profile)  # a t4 rehearsal plans as on a T4
    precision = decide_precision(hw, method)
    say(f"method {method} | {precision.note}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = str(model_path) if model_path is not None else models.tiny.resolve_model_path(profile.model_id)
    model_config = AutoConfig.from_pretrained(path)
    fsdp = models._uses_fsdp()
    preflight = preflight_memory(model_config, profile, method, hw, precision, fsdp=fsdp, verbose=verbose)

    splits = splits if splits is not None else data.load_profile_dataset(profile, loader=loader)
    model, tokenizer = load_model_and_tokenizer(profile, method, hw=hw, model_path=path)
    train_set, train_report = prepare_sft_data(tokenizer, splits["train"], profile.max_length, "train", verbose)
    eval_set, eval_report = prepare_sft_data(tokenizer, splits["eval"], profile.max_length, "eval", verbose)
    main = _is_main_process()
    em_kwargs = dict(max_new_tokens=profile.max_new_tokens, batch_size=profile.eval_batch_size)

    metrics: dict = {"profile": profile.name, "method": method, "model": path, "dataset": profile.dataset_id,
                     "dtype_decided": precision.decided, "dtype_executed": precision.executed,
                     "world_size": _world_size()}
    if main:
        metrics["eval_loss_before"] = evaluate.eval_loss(model, tokenizer, eval_set, profile.max_length)
        metrics["exact_match_before"], rows_before = evaluate.exact_match(model, tokenizer, splits["eval"], **em_kwargs)
        say(f"before: eval loss {metrics['eval_loss_before']:.3f}, exact match {metrics['exact_match_before']:.1%}")

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out / "checkpoints"
    result = sft(model, tokenizer, train_set, profile, ckpt_dir, method=method, max_steps=max_steps,
                 learning_rate=learning_rate, resume=resume, seed=profile.seed, callbacks=callbacks, hw=hw,
                 verbose=verbose)
    model = result.model
    train_metrics = {k: result.metrics[k] for k in ("train_runtime_s", "train_tokens_per_s", "peak_memory_bytes",
                                                    "peak_memory_kind", "final_loss", "train_loss_mean", "global_step")}
    metrics.update(train_metrics)
    # Every process evaluates its own copy of the trained model: under DDP the copies must agree.
    metrics["eval_loss_after"] = evaluate.eval_loss(model, tokenizer, eval_set, profile.max_length)
    rank_id = int(os.environ.get("RANK", 0))
    (out / f"train_metrics_rank{rank_id}.json").write_text(json.dumps(
        {**train_metrics, "eval_loss_after": metrics["eval_loss_after"], "trainable_hash": trainable_hash(model),
         "losses": result.losses}, indent=1))
    if not main:
        return metrics

    metrics["exact_match_after"], rows_after = evaluate.exact_match(model, tokenizer, splits["eval"], **em_kwargs)
    say(f"after:  eval loss {metrics['eval_loss_after']:.3f}, exact match {metrics['exact_match_after']:.1%}")
    table = evaluate.side_by_side(rows_before, rows_after, n=n_show)

    # Predicted peak for the batches this run really had (longest kept example), beside the measurement.
    on_gpu = precision.executed != "float32"
    est = estimate_memory(model_config, profile, method, precision, seq_len=train_report.longest_kept,
                          device="cuda" if on_gpu else "cpu", fsdp=fsdp)
    metrics["predicted_peak_bytes"] = int(est.reserved if on_gpu else est.peak_allocated)
    metrics["predicted_peak_kind"] = "vram.estimate().reserved" if on_gpu else "vram.estimate(device='cpu').peak_allocated"
    metrics["preflight_total_bytes"] = int(preflight.total)
    # Like with like: allocated with allocated, reserved with reserved; on the CPU, the step's tensor bytes.
    cpu_step = None if on_gpu else measure_cpu_step(model, train_set, profile, tokenizer.pad_token_id)
    readings = {k: result.metrics.get(f"peak_{k}_bytes") for k in ("allocated", "reserved")}
    metrics["memory_check"] = compare_memory(est, readings, cpu_step)

    if method == "full":
        full_dir = out / "model"
        model.save_pretrained(full_dir, safe_serialization=True)
        tokenizer.save_pretrained(full_dir)
        metrics.update(adapter_dir=None, adapter_bytes=None, model_dir=str(full_dir),
                       model_bytes=models.folder_bytes(full_dir, "*.safetensors"))
    else:
        adapter_dir, adapter_bytes = models.save_adapter(model, tokenizer, out / "adapter")
        metrics.update(adapter_dir=str(adapter_dir), adapter_bytes=adapter_bytes)
        say(f"adapter saved to {adapter_dir}: {adapter_bytes / 2**20:.2f} MiB")
        # Reload into a fresh base: the same greedy generations.
        reloaded, _ = models.load_adapter(profile, adapter_dir, method, hw=hw, model_path=path)
        k = min(len(splits["eval"]), profile.reload_check_examples)
        prompts = list(splits["eval"]["messages"][:k])
        ours = [r["prediction"] for r in rows_after[:k]]
        theirs = evaluate.generate(reloaded, tokenizer, prompts, max_new_tokens=profile.max_new_tokens)
        metrics["reload_same_generations"] = ours == theirs
        metrics["reload_checked_examples"] = k
        say(f"reloaded adapter: {sum(a == b for a, b in zip(ours, theirs, strict=True))} of {k} greedy generations identical")
        del reloaded
        gc.collect()
        if merge:
            probe = probe_batch(tokenizer, splits["eval"], n=2)
            merged, report = models.merge_adapter(profile, adapter_dir, probe, method=method, hw=hw, model_path=path,
                                                  out_dir=out / "merged", trained_model=model)
            metrics["merge"] = report.to_dict()
            metrics["exact_match_merged"], _ = evaluate.exact_match(merged, tokenizer, splits["eval"], **em_kwargs)
            say(f"merged into a {report.dtype} base: max |logit diff| vs unmerged {report.max_abs_diff:.2e} "
                f"(tolerance {report.tolerance:.0e}: {'ok' if report.ok else 'TOO LARGE'}); exact match "
                f"{metrics['exact_match_merged']:.1%}")
            del merged
            gc.collect()

    metrics["data"] = {"train": train_report.to_dict(), "eval": eval_report.to_dict()}
    metrics["table"] = table
    metrics["log_history"] = result.log_history
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    fig = plot_loss(result.log_history, title=f"{profile.name}: {method} training loss")
    fig.savefig(out / "loss.png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    say(metrics["memory_check"]["summary"])
    say(f"metrics written to {out / 'metrics.json'}")
    return metrics


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lora_lab.train",
        description="QLoRA/LoRA/full SFT, end to end: preflight, train, evaluate, save, reload, merge, metrics.json.")
    parser.add_argument("--profile", choices=profiles.available(), default=None,
                        help="run profile (default: $LORA_LAB_PROFILE, else t4 with a GPU, else cpu)")
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the profile's)")
    parser.add_argument("--dataset", default=None, help="dataset Hub id or local path (default: the profile's)")
    parser.add_argument("--dataset-config", default=None, help="the dataset's configuration name")
    parser.add_argument("--method", choices=models.METHODS, default=None, help="default: the profile's (qlora)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the profile's)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the profile's)")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the profile's)")
    parser.add_argument("--output-dir", default="runs/sft", help="where metrics.json, adapter and merged model go")
    parser.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: OUTPUT_DIR/checkpoints)")
    parser.add_argument("--drive", action="store_true", help="on Colab, checkpoints to Google Drive (mounts it)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--no-merge", action="store_true", help="skip merging into a 16-bit base")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline from the command line; exit 0 on success, 2 on a predictable failure."""
    args = build_parser().parse_args(argv)
    profile = profiles.get_profile(args.profile)
    if args.dataset:
        profile = profile.replace(dataset_id=args.dataset, dataset_config=args.dataset_config, tasks=())
    if args.model:
        profile = profile.replace(model_id=args.model)
    checkpoint_dir = args.checkpoint_dir
    if args.drive:
        drive = drive_checkpoint_dir(Path(args.output_dir).name)
        if drive is None:
            print("--drive: Google Drive is only available on Colab; checkpoints stay local.")
        checkpoint_dir = drive or checkpoint_dir
    try:
        metrics = run_pipeline(profile, method=args.method, output_dir=args.output_dir, rank=args.rank,
                               max_steps=args.max_steps, learning_rate=args.learning_rate, resume=args.resume,
                               seed=args.seed, checkpoint_dir=checkpoint_dir, merge=not args.no_merge)
    except (WontFitError, TrainingOutOfMemory, ValueError, OSError) as err:
        # Predictable failures (won't fit, out of memory, bad data, missing files): a message, no traceback.
        print(f"\n{type(err).__name__}: {err}", file=sys.stderr)
        return 2
    if _is_main_process():
        summary = {k: metrics.get(k) for k in ("exact_match_before", "exact_match_after", "eval_loss_before",
                                               "eval_loss_after", "train_runtime_s", "adapter_bytes")}
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
