"""Memory before and after a training run: the preflight that stops a run that cannot fit, and the
out-of-memory message for one that ran out anyway.

- `estimate_memory`: `lora_lab.estimation.vram.estimate` for a run's settings (profile, method, precision,
  several processes).
- `preflight_memory`: that estimate against the GPU's usable memory, before loading anything;
  raises `WontFitError` with the estimator's suggestions.
- `oom_message` (`oom_message`): what the estimator predicted and which changes would fit, for
  `TrainingOutOfMemory`.
"""

from __future__ import annotations

import os

import torch

from lora_lab.estimation import vram
from lora_lab.lessons import step_memory
from lora_lab.runtime import hardware
from lora_lab.runtime.units import GIB
from lora_lab.training import models
from lora_lab.training.models import Precision

__all__ = ["TrainingOutOfMemory", "WontFitError", "estimate_memory", "preflight_memory", "usable_gpu_bytes"]


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
# Memory: the estimator before anything heavy, and its prediction beside the measurement


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def estimate_memory(model_config, profile, method: str, precision: Precision, *, rank: int | None = None,
                    seq_len: int | None = None, batch_size: int | None = None, device: str | None = None,
                    fsdp: bool = False):
    """`lora_lab.estimation.vram.estimate` for this run's settings (per GPU when several processes train).

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
    n = world_size()
    lora = {} if method == "full" else dict(  # full fine-tuning has no adapters (vram warns if given them)
        rank=profile.lora_r if rank is None else rank, lora_alpha=profile.lora_alpha,
        target_modules=profile.lora_targets, lora_dropout=profile.lora_dropout)
    return vram.estimate(
        model_config,
        method=method,
        **lora,
        batch_size=profile.batch_size if batch_size is None else batch_size,
        seq_len=profile.max_length if seq_len is None else seq_len,
        gradient_checkpointing=profile.gradient_checkpointing,
        optimizer=profile.optimizer,
        precision=vram.training_precision(method, precision.executed),
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


#: The settings cell of notebook 03 (and `python -m lora_lab.training.train`'s flags): what the out-of-memory advice
#: names, so that a learner changes exactly the variable the advice is about.
SETTING_NAMES = {"batch_size": ("BATCH_SIZE", "--batch-size"), "grad_accum": ("GRAD_ACCUM", "--grad-accum"),
                 "max_length": ("MAX_LENGTH", "--max-length"),
                 "gradient_checkpointing": ("GRADIENT_CHECKPOINTING", "--gradient-checkpointing")}


def _setting(**values) -> str:
    """`BATCH_SIZE = 2, GRAD_ACCUM = 8`: the settings cell's assignments for these profile fields."""
    return ", ".join(f"{SETTING_NAMES[name][0]} = {value!r}" for name, value in values.items())


def settings_that_fit(model_config, profile, budget: int, **kwargs) -> list[str]:
    """Changes of the settings cell that the estimator says fit `budget` bytes, one per line of advice.

    Each names the variables to change: gradient checkpointing on, a smaller batch with more
    accumulation (the same effective batch), a shorter maximum length; then what else fits (another
    method, a bigger GPU) in the estimator's words.
    """
    tips = []
    checkpointing = kwargs.get("gradient_checkpointing", True)
    if not checkpointing and vram.estimate(model_config, **{**kwargs, "gradient_checkpointing": True}).fits(budget):
        tips.append(_setting(gradient_checkpointing=True))
    batch = kwargs.get("batch_size", profile.batch_size)
    if batch > 1:
        fits = vram.max_batch_size_that_fits(model_config, budget, upper=batch, **kwargs)
        if 0 < fits < batch:  # the largest batch that fits and divides the effective batch: the same updates
            smaller = max(b for b in range(1, fits + 1) if profile.effective_batch % b == 0)
            accum = profile.effective_batch // smaller
            tips.append(_setting(batch_size=smaller, grad_accum=accum) + f" (effective batch {smaller * accum} as before)")
    seq = kwargs.get("seq_len", profile.max_length)
    longest = vram.max_seq_len_that_fits(model_config, budget, upper=seq, **kwargs)
    if 64 <= longest < seq:
        tips.append(_setting(max_length=longest - longest % 64) + " (longer examples are dropped, not cut)")
    covered = ("gradient checkpointing", "seq ", "batch ")
    tips += [t for t in vram.suggestions(model_config, budget, **kwargs) if not t.startswith(covered)]
    return tips


def oom_message(step: int, max_steps: int, last_checkpoint: str | None, model_config, profile, method: str,
                 precision: Precision, hw: hardware.Hardware, seq_len: int) -> tuple[str, list[str]]:
    """An out-of-memory message built from the estimator: what it predicted and which settings would fit."""
    tips: list[str] = []
    est = None
    try:
        on_gpu = hw.device_type == "cuda"  # the same device as the preflight's estimate, so the two agree
        est = estimate_memory(model_config, profile, method, precision, seq_len=seq_len,
                              device="cuda" if on_gpu else "cpu")
        usable = usable_gpu_bytes(hw) or est.total
        # The run did not fit in practice, whatever the estimate said: ask what cuts the step's own
        # memory (everything but the CUDA context) by 15%.
        fixed = step_memory.CUDA_CONTEXT_BYTES if on_gpu else 0
        budget = fixed + int(0.85 * (min(usable, est.total) - fixed))
        kwargs = {k: v for k, v in est.settings.items() if k in _ESTIMATE_ARGS and v is not None}
        kwargs.pop("sharding", None)
        tips = settings_that_fit(model_config, profile, budget, **kwargs)
    except Exception as err:  # the estimator cannot read this model: fall back to general advice
        tips = [f"(estimator unavailable: {err})"]
    half = max(1, profile.batch_size // 2)
    tips = tips or [_setting(batch_size=half, grad_accum=-(-profile.effective_batch // half)),
                    _setting(max_length=max(64, seq_len // 2))]
    lines = [f"Out of memory at step {step + 1} of {max_steps}."]
    if est is not None:
        run = f"batch {profile.batch_size} x {seq_len} tokens ({method}, {est.settings.get('precision')})"
        if hw.device_type == "cuda":
            lines.append(f"The estimator predicted {est.total / GIB:.2f} GiB for {run}.")
        else:  # the preflight's own figure: the tensors of one step, in RAM
            lines.append(f"The estimator predicted {est.peak_allocated / GIB:.3f} GiB of RAM for {run} (no GPU here).")
    lines.append("Checkpoint kept: " + (f"{last_checkpoint} (set RESUME = True in notebook 03 and run it again from the top, or add --resume to the command)."
                                        if last_checkpoint else "none yet (no step was saved before the failure)."))
    lines.append("Try, in notebook 03's settings cell (or the same flags of `python -m lora_lab.training.train`, e.g. "
                 f"{SETTING_NAMES['batch_size'][1]}): " + "; ".join(tips)
                 + ". Restarting the runtime also frees memory held by earlier cells.")
    return "\n".join(lines), tips
