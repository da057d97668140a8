"""Supervised fine-tuning with QLoRA (or LoRA, or full fine-tuning): the trainer and the pipeline.

The notebook `03_qlora_sft_t4` and the command line run the same functions::

    python -m lora_lab.train --profile cpu                      # the whole pipeline, tiny model
    python -m lora_lab.train --profile t4 --max-steps 60        # a real 1.5B model on a T4
    torchrun --nproc_per_node 2 -m lora_lab.train --method lora # several processes (DDP)

Public API (stable; the rank-sweep and adapter lessons build on it):

- `sft(model, tokenizer, splits_or_train, profile, output_dir, ...)`: trl's `SFTTrainer` with
  explicit fp16/bf16, gradient checkpointing, paged 8-bit AdamW, checkpoints, resume, and an
  out-of-memory error that says what to change. Returns an `SFTResult`.
- `run_pipeline(profile, ...)`: notebook 03's sections, one named call each: `configure_run`
  (number format), `run_preflight` (will it fit?), data (`tokenize_splits`), `evaluate_before`,
  `sft`, `record_training` and `evaluate_after`, `save_and_reload_adapter` and
  `merge_and_check`, `record_memory` (predicted vs measured), `write_outputs` (metrics.json,
  loss.png). `main()` is its command line.
- Re-exported for the notebooks: `load_model_and_tokenizer`, `lora_config`, `decide_precision`
  (`lora_lab.models`).

Its neighbours: `lora_lab.sft_data` (tokenization, labels on the answer), `lora_lab.preflight`
(the memory estimate before a run, `WontFitError`, `TrainingOutOfMemory`), `lora_lab.train_plots`
(`plot_loss`), `lora_lab.drive` (checkpoints on Google Drive), `lora_lab.compat` (library
workarounds).

Everything is seeded (`profile.seed`, or `seed=`): two runs on the same machine give the same
losses, scores and adapter weights."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoints, data, evaluate, hardware, models, profiles
from .callbacks import (
    DivergenceGuard,
    TrainingDiverged,
    TrainingMonitor,
    compare_memory,
    free_gpu_memory,
    measure_cpu_step,
    peak_memory,
    peak_readings,
    start_peak_measurement,
)
from .compat import keep_trainable_fp32
from .drive import DRIVE_ROOT, drive_dir_from_cli
from .models import Precision, decide_precision, load_model_and_tokenizer, lora_config
from .preflight import (
    TrainingOutOfMemory,
    WontFitError,
    _oom_message,
    _world_size,
    estimate_memory,
    preflight_memory,
)
from .sft_data import DataReport, prepare_sft_data
from .train_plots import plot_loss
from .units import MIB

__all__ = [
    "Precision", "RunSetup", "SFTResult", "TrainingDiverged", "configure_run", "decide_precision", "load_model_and_tokenizer",
    "lora_config", "main", "run_pipeline", "sft", "sft_config_kwargs",
]


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
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned host memory speeds copies to a GPU; none here
        ddp_find_unused_parameters=False,  # every LoRA matrix gets a gradient every step
        ddp_backend="gloo" if distributed_cpu else None,  # CPU processes talk over gloo
        use_cpu=distributed_cpu,  # accelerate sets up multi-process CPU (DDP) only when asked explicitly
        eos_token=None,  # the tokenizer's own eos (checked distinct from pad)
    )


def _last_checkpoint(folder) -> str | None:
    """The newest checkpoint in `folder` that holds everything resuming needs (`checkpoints.newest_complete`)."""
    return checkpoints.newest_complete(folder)[0]


def check_settings(**values) -> None:
    """Refuse a non-positive step count, rank, learning rate, eval size or max_length, naming the setting.

    `max_steps=0` would save an untrained adapter as if it were a result, and -1 silently means
    "train for the whole number of epochs" to the Trainer.

    Raises:
        ValueError: e.g. "max_steps must be a positive number, got 0".
    """
    for name, value in values.items():
        if value is not None and not value > 0:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} must be a positive number, got {value} (command line: {flag}).")


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
    rank = _adapter_rank(model, method, lora, profile)
    check_settings(max_steps=profile.max_steps if max_steps is None else max_steps,
                   learning_rate=profile.learning_rate if learning_rate is None else learning_rate,
                   rank=rank, max_length=profile.max_length)
    output_dir = Path(output_dir)
    checkpoint = _resume_point(output_dir, method, rank, verbose) if resume else None
    seed = profile.seed if seed is None else seed
    precision = getattr(model, "lora_lab_precision", None) or decide_precision(hw or hardware.detect(), method)
    train, report, eval_dataset = _tokenized(tokenizer, splits_or_train, eval_dataset, profile, verbose)
    if method != "full" and not models.is_peft_model(model):
        model = models.attach_lora(model, lora or lora_config(profile), seed=seed)
    kwargs = sft_config_kwargs(profile, output_dir, precision, max_steps=max_steps, learning_rate=learning_rate,
                               seed=seed)
    if eval_dataset is not None:
        kwargs.update(eval_strategy="steps", eval_steps=profile.save_steps, per_device_eval_batch_size=profile.batch_size)
    config = SFTConfig(**kwargs)
    monitor = TrainingMonitor()
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, eval_dataset=eval_dataset,
                         processing_class=tokenizer,
                         callbacks=[monitor, DivergenceGuard(), checkpoints.run_info_callback(method, rank), *callbacks])
    keep_trainable_fp32(trainer.model)
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
        free_gpu_memory()
        raise TrainingOutOfMemory(message, step, saved, tips) from None
    metrics = _train_metrics(trainer, output, monitor, time.perf_counter() - start, checkpoint, precision)
    trained = trainer.model
    trained.eval()
    log_history = list(trainer.state.log_history)
    last = _last_checkpoint(output_dir)
    # Free the optimizer and the trainer's references before evaluation (a T4 needs the room).
    trainer.optimizer = None
    trainer.lr_scheduler = None
    del trainer
    free_gpu_memory()
    return SFTResult(model=trained, log_history=log_history, metrics=metrics, data_report=report,
                     output_dir=str(output_dir), last_checkpoint=last, records=monitor.records)


def _adapter_rank(model, method: str, lora, profile) -> int | None:
    """The LoRA rank this run trains (None for full fine-tuning): the model's own, the given config's, the profile's."""
    if method == "full":
        return None
    if models.is_peft_model(model):
        return next(iter(model.peft_config.values())).r
    return lora.r if lora is not None else profile.lora_r


def _resume_point(output_dir: Path, method: str, rank: int | None, verbose: bool) -> str | None:
    """The newest complete checkpoint to resume from (None: start fresh), saying which ones were skipped and why.

    Raises:
        ValueError: the checkpoint was trained with another method or rank (the message names both).
    """
    checkpoint, skipped = checkpoints.newest_complete(output_dir)
    for name, why in skipped:
        print(f"resume: skipping {name} in {output_dir}: {why}")
    if checkpoint:
        checkpoints.check_compatible(checkpoint, method, rank)
    if verbose:
        print(f"resuming from {checkpoint}" if checkpoint else
              f"resume: no complete checkpoint in {output_dir}, starting fresh")
    return checkpoint


def _tokenized(tokenizer, splits_or_train, eval_dataset, profile, verbose: bool):
    """The train set (and optional eval set) tokenized with labels on the answers, unless they already are.

    Returns:
        (train, its DataReport or None when it came tokenized, eval_dataset or None).
    """
    train = _as_train_dataset(splits_or_train)
    report = None
    if not ("input_ids" in train.column_names and "labels" in train.column_names):
        train, report = prepare_sft_data(tokenizer, train, profile.max_length, "train", verbose=verbose)
    if eval_dataset is not None and "input_ids" not in eval_dataset.column_names:
        eval_dataset, _ = prepare_sft_data(tokenizer, eval_dataset, profile.max_length, "eval", verbose=verbose)
    return train, report, eval_dataset


def _train_metrics(trainer, output, monitor, runtime: float, checkpoint: str | None, precision: Precision) -> dict:
    """What `SFTResult.metrics` holds: time, real tokens per second, peak memory, losses, steps."""
    peak, kind = peak_memory()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tokens = trainer.state.num_input_tokens_seen - monitor.tokens_at_start  # this call's real tokens, all processes
    return {
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
# The whole pipeline: notebook 03's sections, one named call each


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def _quiet(*args, **kwargs) -> None:
    """`print`'s stand-in when a run is not verbose."""


@dataclass
class RunSetup:
    """What every step of `run_pipeline` needs to know about the run (notebook 03, section 1)."""

    profile: object  # the run profile, with rank and seed overrides applied
    method: str  # "qlora", "lora" or "full"
    hw: hardware.Hardware  # the hardware reading
    precision: Precision  # the dtype decision (decided for the GPU, executed here)
    out: Path  # where metrics.json, loss.png, the adapter and the merged model go
    model_path: str  # the base model's folder or Hub id
    model_config: object  # its transformers config (read before any weight is loaded)
    fsdp: bool  # weights sharded over processes (FSDP)
    say: Callable  # print, or a no-op when not verbose

    @property
    def generation_kwargs(self) -> dict:
        """`evaluate.exact_match`'s budget: answer length and prompts per generate call."""
        return dict(max_new_tokens=self.profile.max_new_tokens,
                    batch_size=self.profile.eval_batch_size)


def configure_run(profile, *, method=None, output_dir="runs/sft", model_path=None, hw=None, rank=None, seed=None,
                  verbose: bool = True) -> RunSetup:
    """Section 1: the method, the number format from the hardware, the output folder, the model's config."""
    from transformers import AutoConfig

    say = print if verbose else _quiet
    method = models.check_method(method or profile.method)
    if rank is not None:
        profile = profile.replace(lora_r=rank)
    if seed is not None:
        profile = profile.replace(seed=seed)
    hw = hw or models.hardware_for(profile)  # a t4 rehearsal plans as on a T4
    precision = decide_precision(hw, method)
    say(f"method {method} | {precision.note}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = str(model_path) if model_path is not None else models.tiny.resolve_model_path(profile.model_id)
    return RunSetup(profile=profile, method=method, hw=hw, precision=precision, out=out, model_path=path,
                    model_config=AutoConfig.from_pretrained(path), fsdp=models._uses_fsdp(), say=say)


def run_preflight(run: RunSetup, verbose: bool = True):
    """Section 2: will it fit? The estimate against the GPU before anything heavy is loaded."""
    return preflight_memory(run.model_config, run.profile, run.method, run.hw, run.precision, fsdp=run.fsdp,
                            verbose=verbose)


def tokenize_splits(run: RunSetup, tokenizer, splits, verbose: bool = True):
    """Section 3: both splits tokenized with labels on the answers, and what that kept and dropped.

    Returns:
        (train_set, train_report, eval_set, eval_report).
    """
    train_set, train_report = prepare_sft_data(tokenizer, splits["train"], run.profile.max_length, "train", verbose)
    eval_set, eval_report = prepare_sft_data(tokenizer, splits["eval"], run.profile.max_length, "eval", verbose)
    return train_set, train_report, eval_set, eval_report


def evaluate_before(run: RunSetup, model, tokenizer, eval_set, eval_rows, metrics: dict) -> list[dict]:
    """Section 4: the base model's eval loss and exact match; returns its generations."""
    metrics["eval_loss_before"] = evaluate.eval_loss(model, tokenizer, eval_set, run.profile.max_length)
    metrics["exact_match_before"], rows = evaluate.exact_match(model, tokenizer, eval_rows, **run.generation_kwargs)
    run.say(f"before: eval loss {metrics['eval_loss_before']:.3f}, exact match {metrics['exact_match_before']:.1%}")
    return rows


def record_training(run: RunSetup, result: SFTResult, tokenizer, eval_set, metrics: dict) -> None:
    """Section 5's numbers: training metrics, eval loss after, and this process's train_metrics_rank<N>.json.

    Every process evaluates its own copy of the trained model: under DDP the copies must agree.
    """
    train_metrics = {k: result.metrics[k] for k in ("train_runtime_s", "train_tokens_per_s", "peak_memory_bytes",
                                                    "peak_memory_kind", "final_loss", "train_loss_mean", "global_step")}
    metrics.update(train_metrics)
    metrics["eval_loss_after"] = evaluate.eval_loss(result.model, tokenizer, eval_set, run.profile.max_length)
    rank_id = int(os.environ.get("RANK", 0))
    (run.out / f"train_metrics_rank{rank_id}.json").write_text(json.dumps(
        {**train_metrics, "eval_loss_after": metrics["eval_loss_after"],
         "trainable_hash": models.trainable_hash(result.model), "losses": result.losses}, indent=1))


def evaluate_after(run: RunSetup, model, tokenizer, eval_rows, metrics: dict) -> list[dict]:
    """Section 6: the tuned model's exact match (main process); returns its generations."""
    metrics["exact_match_after"], rows = evaluate.exact_match(model, tokenizer, eval_rows, **run.generation_kwargs)
    run.say(f"after:  eval loss {metrics['eval_loss_after']:.3f}, exact match {metrics['exact_match_after']:.1%}")
    return rows


def record_memory(run: RunSetup, preflight, train_report: DataReport, result: SFTResult, train_set, tokenizer,
                  metrics: dict) -> None:
    """Section 8: the estimator's peak for the batches this run really had (longest kept example), beside
    the measurement of the same kind: allocated with allocated, reserved with reserved; on the CPU, the
    tensor bytes one step holds (never the process's RSS)."""
    on_gpu = run.precision.executed != "float32"
    est = estimate_memory(run.model_config, run.profile, run.method, run.precision,
                          seq_len=train_report.longest_kept, device="cuda" if on_gpu else "cpu", fsdp=run.fsdp)
    metrics["predicted_peak_bytes"] = int(est.reserved if on_gpu else est.peak_allocated)
    metrics["predicted_peak_kind"] = "vram.estimate().reserved" if on_gpu else "vram.estimate(device='cpu').peak_allocated"
    metrics["preflight_total_bytes"] = int(preflight.total)
    cpu_step = None if on_gpu else measure_cpu_step(result.model, train_set, run.profile, tokenizer.pad_token_id)
    readings = {k: result.metrics.get(f"peak_{k}_bytes") for k in ("allocated", "reserved")}
    metrics["memory_check"] = compare_memory(est, readings, cpu_step)


def save_full_model(run: RunSetup, model, tokenizer, metrics: dict) -> None:
    """Section 7 for full fine-tuning: the whole model, as safetensors."""
    full_dir = run.out / "model"
    model.save_pretrained(full_dir, safe_serialization=True)
    tokenizer.save_pretrained(full_dir)
    metrics.update(adapter_dir=None, adapter_bytes=None, model_dir=str(full_dir),
                   model_bytes=models.folder_bytes(full_dir, "*.safetensors"))


def save_and_reload_adapter(run: RunSetup, model, tokenizer, eval_rows, rows_after, metrics: dict) -> Path:
    """Section 7: save the adapter, reload it onto a fresh base, and check the greedy generations agree."""
    adapter_dir, adapter_bytes = models.save_adapter(model, tokenizer, run.out / "adapter")
    metrics.update(adapter_dir=str(adapter_dir), adapter_bytes=adapter_bytes)
    run.say(f"adapter saved to {adapter_dir}: {adapter_bytes / MIB:.2f} MiB")
    reloaded, _ = models.load_adapter(run.profile, adapter_dir, run.method, hw=run.hw, model_path=run.model_path)
    k = min(len(eval_rows), run.profile.reload_check_examples)
    prompts = list(eval_rows["messages"][:k])
    ours = [r["prediction"] for r in rows_after[:k]]
    theirs = evaluate.generate(reloaded, tokenizer, prompts, max_new_tokens=run.profile.max_new_tokens)
    metrics["reload_same_generations"] = ours == theirs
    metrics["reload_checked_examples"] = k
    run.say(f"reloaded adapter: {sum(a == b for a, b in zip(ours, theirs, strict=True))} of {k} greedy generations "
            "identical")
    del reloaded
    gc.collect()
    return adapter_dir


def merge_and_check(run: RunSetup, model, tokenizer, adapter_dir, eval_rows, metrics: dict) -> None:
    """Section 7: merge into a 16-bit base, compare logits with the unmerged adapter, score the merged model."""
    probe = evaluate.probe_batch(tokenizer, eval_rows["messages"], n=2)
    merged, report = models.merge_adapter(run.profile, adapter_dir, probe, method=run.method, hw=run.hw,
                                          model_path=run.model_path, out_dir=run.out / "merged", trained_model=model)
    metrics["merge"] = report.to_dict()
    metrics["exact_match_merged"], _ = evaluate.exact_match(merged, tokenizer, eval_rows, **run.generation_kwargs)
    run.say(f"merged into a {report.dtype} base: max |logit diff| vs unmerged {report.max_abs_diff:.2e} "
            f"(tolerance {report.tolerance:.0e}: {'ok' if report.ok else 'TOO LARGE'}); exact match "
            f"{metrics['exact_match_merged']:.1%}")
    del merged
    gc.collect()


def write_outputs(run: RunSetup, result: SFTResult, metrics: dict) -> None:
    """metrics.json and loss.png in the output folder."""
    import matplotlib.pyplot as plt

    (run.out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    fig = plot_loss(result.log_history, title=f"{run.profile.name}: {run.method} training loss")
    fig.savefig(run.out / "loss.png", dpi=100)
    plt.close(fig)
    run.say(metrics["memory_check"]["summary"])
    run.say(f"metrics written to {run.out / 'metrics.json'}")


def run_pipeline(profile, *, method: str | None = None, output_dir="runs/sft", model_path=None, splits=None,
                 loader=None, hw=None, rank: int | None = None, max_steps: int | None = None,
                 learning_rate: float | None = None, resume: bool = False, seed: int | None = None,
                 checkpoint_dir=None, merge: bool = True, n_show: int = 5, callbacks: Sequence = (),
                 verbose: bool = True) -> dict:
    """Preflight, data, evaluation before, SFT, evaluation after, adapter save/reload, merge, metrics.json.

    Each step is one call, in the order of notebook 03's sections.

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
        The metrics dict written to output_dir/metrics.json, with `table` (base vs tuned
        generations) and `log_history` beside it.

    Raises:
        WontFitError: the preflight estimate exceeds the GPU.
        TrainingOutOfMemory: training ran out of memory (checkpoints kept).
        ValueError: bad data, method or tokenizer.
    """
    check_settings(rank=rank, max_steps=max_steps, learning_rate=learning_rate, eval_size=profile.n_eval,
                   max_length=profile.max_length)
    run = configure_run(profile, method=method, output_dir=output_dir, model_path=model_path, hw=hw, rank=rank,
                        seed=seed, verbose=verbose)  # 1. number format
    preflight = run_preflight(run, verbose)  # 2. will it fit?
    splits = splits if splits is not None else data.load_profile_dataset(run.profile, loader=loader)  # 3. data
    model, tokenizer = load_model_and_tokenizer(run.profile, run.method, hw=run.hw, model_path=run.model_path)
    train_set, train_report, eval_set, eval_report = tokenize_splits(run, tokenizer, splits, verbose)
    metrics: dict = {"profile": run.profile.name, "method": run.method, "model": run.model_path,
                     "dataset": run.profile.dataset_id, "dtype_decided": run.precision.decided,
                     "dtype_executed": run.precision.executed, "world_size": _world_size()}
    if _is_main_process():
        rows_before = evaluate_before(run, model, tokenizer, eval_set, splits["eval"], metrics)  # 4. before
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else run.out / "checkpoints"
    result = sft(model, tokenizer, train_set, run.profile, ckpt_dir, method=run.method, max_steps=max_steps,
                 learning_rate=learning_rate, resume=resume, seed=run.profile.seed, callbacks=callbacks, hw=run.hw,
                 verbose=verbose)  # 5. training
    model = result.model
    record_training(run, result, tokenizer, eval_set, metrics)
    if not _is_main_process():
        return metrics
    rows_after = evaluate_after(run, model, tokenizer, splits["eval"], metrics)  # 6. after training
    table = evaluate.side_by_side(rows_before, rows_after, n=n_show)
    record_memory(run, preflight, train_report, result, train_set, tokenizer, metrics)  # 8. predicted and measured memory
    if run.method == "full":  # 7. save, reload, merge
        save_full_model(run, model, tokenizer, metrics)
    else:
        adapter_dir = save_and_reload_adapter(run, model, tokenizer, splits["eval"], rows_after, metrics)
        if merge:
            merge_and_check(run, model, tokenizer, adapter_dir, splits["eval"], metrics)
    metrics.update(data={"train": train_report.to_dict(), "eval": eval_report.to_dict()}, table=table,
                   log_history=result.log_history)
    write_outputs(run, result, metrics)
    return metrics


# ---------------------------------------------------------------------------------------------
# Command line


def _positive(kind):
    """An argparse type: a number of `kind` (int or float) above zero, else a message naming the value."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            noun = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lora_lab.train",
        description="QLoRA/LoRA/full SFT, end to end: preflight, train, evaluate, save, reload, merge, metrics.json.")
    parser.add_argument("--profile", choices=profiles.available(), default=None,
                        help="run profile (default: $LORA_LAB_PROFILE, else t4 with a GPU, else cpu)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run a GPU profile (t4) without a CUDA GPU anyway (slow: hours for a 1.5B model)")
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the profile's)")
    parser.add_argument("--dataset", default=None,
                        help="dataset Hub id, local folder, or one .jsonl/.json/.parquet file (default: the profile's)")
    parser.add_argument("--dataset-config", default=None, help="the dataset's configuration name")
    parser.add_argument("--eval-size", type=_positive(int), default=None,
                        help="held-out examples for evaluation (default: the profile's)")
    parser.add_argument("--max-length", type=_positive(int), default=None,
                        help="longest example in tokens; longer ones are dropped whole (default: the profile's)")
    parser.add_argument("--method", choices=models.METHODS, default=None, help="default: the profile's (qlora)")
    parser.add_argument("--rank", type=_positive(int), default=None, help="LoRA rank (default: the profile's)")
    parser.add_argument("--max-steps", type=_positive(int), default=None,
                        help="optimizer steps (default: the profile's)")
    parser.add_argument("--learning-rate", type=_positive(float), default=None, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the profile's)")
    parser.add_argument("--output-dir", default="runs/sft", help="where metrics.json, adapter and merged model go")
    parser.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: OUTPUT_DIR/checkpoints)")
    parser.add_argument("--drive", nargs="?", const="", default=None, metavar="MOUNTED_PATH",
                        help="checkpoints to Google Drive, which a notebook cell must have mounted first "
                             f"(default path: {DRIVE_ROOT}/lora-lab/RUN/checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--no-merge", action="store_true", help="skip merging into a 16-bit base")
    return parser


def _needs_gpu_message(profile) -> str | None:
    """Why a GPU profile should not start here (None when it may): no CUDA GPU for a Hub-sized model."""
    if profile.is_local or torch.cuda.is_available():
        return None
    return (f"The {profile.name} profile trains {profile.model_id} on a CUDA GPU, and this machine has none "
            "(torch.cuda.is_available() is False): on the CPU it would take hours. Use --profile cpu (the course's "
            "tiny model), run it on Colab with a T4 runtime, or pass --allow-cpu to try anyway.")


def _interrupted_message(checkpoint_dir: Path) -> str:
    """One line after Ctrl-C: the checkpoint that survives and how to continue from it."""
    last = _last_checkpoint(checkpoint_dir)
    if last is None:
        return (f"Interrupted before the first checkpoint was saved in {checkpoint_dir}: rerun the same command to "
                "start again.")
    return (f"Interrupted. The newest complete checkpoint is {last}: rerun the same command with --resume to "
            "continue from it.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline from the command line; exit 0 on success, 2 on a predictable failure, 130 on Ctrl-C."""
    from datasets.exceptions import DatasetsError

    args = build_parser().parse_args(argv)
    checkpoint_dir = Path(args.checkpoint_dir or Path(args.output_dir) / "checkpoints")
    try:
        profile = profiles.get_profile(args.profile)
        if not args.allow_cpu and (problem := _needs_gpu_message(profile)):
            raise ValueError(problem)
        changes = {"n_eval": args.eval_size, "max_length": args.max_length, "model_id": args.model}
        profile = profile.replace(**{k: v for k, v in changes.items() if v is not None})
        if args.dataset:
            profile = profile.replace(dataset_id=args.dataset, dataset_config=args.dataset_config, tasks=())
        if args.drive is not None:
            checkpoint_dir = drive_dir_from_cli(args.drive, Path(args.output_dir).name)
            print(f"checkpoints go to {checkpoint_dir}")
        metrics = run_pipeline(profile, method=args.method, output_dir=args.output_dir, rank=args.rank,
                               max_steps=args.max_steps, learning_rate=args.learning_rate, resume=args.resume,
                               seed=args.seed, checkpoint_dir=checkpoint_dir, merge=not args.no_merge)
    except (WontFitError, TrainingOutOfMemory, ValueError, OSError, DatasetsError) as err:
        # Predictable failures (won't fit, out of memory, bad data or settings, missing files): a message,
        # no traceback.
        print(f"\n{type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{_interrupted_message(checkpoint_dir)}", file=sys.stderr)
        return 130
    if _is_main_process():
        summary = {k: metrics.get(k) for k in ("exact_match_before", "exact_match_after", "eval_loss_before",
                                               "eval_loss_after", "train_runtime_s", "adapter_bytes")}
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
