"""Trainer callbacks of the course: a monitor (loss, tokens/s, peak memory), a divergence guard, and two
fault injectors; plus the memory readings that stand next to the estimator's prediction.

`TrainingMonitor` adds, at every logging step, the throughput since the previous log and the peak
memory so far to the trainer's `log_history` (and keeps its own list of records for plots).
`StopAtStep` ends training after a given step, like a Colab disconnect after a checkpoint;
`SimulateOutOfMemory` raises the same `torch.OutOfMemoryError` a real GPU would, so the notebook
and the tests can show the out-of-memory path on any machine. `DivergenceGuard` stops a run whose
loss (or whose weights, before a checkpoint) stops being finite, so no adapter of it is saved.

Memory readings compare like with like: `start_peak_measurement` empties the CUDA cache and resets
the peaks right before training (so the evaluation before training does not count);
`peak_readings` returns `max_memory_allocated` and `max_memory_reserved`; `compare_memory` puts
the estimator's allocated figure beside the measured allocated one and its reserved beside
reserved. On the CPU there is no allocator: the estimate is compared with the tensor bytes one
training step holds (`lora_lab.memory.measure_step`), never with the process's RSS.
"""

from __future__ import annotations

import gc
import math
import resource
import sys
import time

import torch
from transformers import TrainerCallback


def peak_memory() -> tuple[int, str]:
    """(bytes, what they are): the CUDA caching allocator's peak, or this process's peak RSS on the CPU.

    On a GPU the figure is `torch.cuda.max_memory_reserved()`, what `vram.estimate(...).reserved`
    predicts. On the CPU it is the resident set of the whole Python process (interpreter, libraries,
    dataset): an upper bound on the tensors, for the log only, never compared with an estimate
    (`compare_memory` uses the step's tensor bytes instead).
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_reserved()), "cuda_max_memory_reserved"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_process_peak_rss"


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def start_peak_measurement() -> None:
    """Free what earlier cells left in the CUDA cache, then reset the peaks: call right before training.

    Without `empty_cache` the blocks the evaluation before training reserved stay reserved, and
    `max_memory_reserved` after training reports them too. Also collects Python garbage first, so
    that tensors nothing refers to any more are returned to the cache before it is emptied.
    """
    gc.collect()
    if _cuda_in_use():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def free_gpu_memory() -> None:
    """Between runs: drop unreferenced tensors and hand the cached blocks back to the GPU."""
    gc.collect()
    if _cuda_in_use():
        torch.cuda.empty_cache()


def peak_readings() -> dict:
    """The CUDA allocator's peaks since `start_peak_measurement`: allocated and reserved, in bytes.

    Returns {"allocated": None, "reserved": None} on the CPU (no allocator to ask: measure the step's
    tensors with `lora_lab.memory.measure_step` instead).
    """
    if _cuda_in_use():
        torch.cuda.synchronize()
        return {"allocated": int(torch.cuda.max_memory_allocated()), "reserved": int(torch.cuda.max_memory_reserved())}
    return {"allocated": None, "reserved": None}


def compare_memory(estimate, readings: dict | None = None, cpu_step=None) -> dict:
    """The estimator's figures beside the matching measurements, and a sentence saying so.

    Args:
        estimate: a `vram.MemoryEstimate` for the run's real batch shape.
        readings: `peak_readings()` after a GPU run.
        cpu_step: on the CPU, a `memory.MeasuredMemory` of one training step (its `total` is the sum
            of the tensors the step held: weights, gradients, optimizer states, saved activations).

    Returns:
        A dict with `predicted_allocated_bytes`, `measured_allocated_bytes`, `predicted_reserved_bytes`,
        `measured_reserved_bytes` (GPU) or `predicted_tensor_bytes`, `measured_tensor_bytes` (CPU),
        and `summary`.
    """
    gib = 2**30
    readings = readings or {}
    if readings.get("allocated") is not None:
        out = {"predicted_allocated_bytes": int(estimate.peak_allocated),
               "measured_allocated_bytes": int(readings["allocated"]),
               "predicted_reserved_bytes": int(estimate.reserved),
               "measured_reserved_bytes": int(readings["reserved"])}
        out["summary"] = (
            f"peak allocated: predicted {out['predicted_allocated_bytes'] / gib:.2f} GiB, measured "
            f"{out['measured_allocated_bytes'] / gib:.2f} GiB (torch.cuda.max_memory_allocated); peak reserved: "
            f"predicted {out['predicted_reserved_bytes'] / gib:.2f} GiB, measured "
            f"{out['measured_reserved_bytes'] / gib:.2f} GiB (torch.cuda.max_memory_reserved)")
        return out
    if cpu_step is not None:
        predicted = estimate.weights + estimate.gradients + estimate.optimizer_states + estimate.activations
        out = {"predicted_tensor_bytes": int(predicted), "measured_tensor_bytes": int(cpu_step.total)}
        out["summary"] = (
            f"tensors of one training step: predicted {predicted / gib:.4f} GiB (weights + gradients + optimizer "
            f"states + saved activations), measured {cpu_step.total / gib:.4f} GiB (lora_lab.memory.measure_step). "
            "The process's RSS also holds the interpreter, libraries and data: it is not comparable.")
        return out
    return {"summary": "no measurement to compare with (no GPU, and no CPU step measured)"}


def measure_cpu_step(model, train_set, profile, pad_id: int):
    """The tensor bytes one training step of `model` holds on the CPU, measured without changing it.

    Takes the `profile.batch_size` longest tokenized examples (the worst batch of the run) and runs
    `lora_lab.memory.measure_step` with the profile's optimizer at learning rate 0, so the trained
    weights stay as they are. Returns a `memory.MeasuredMemory`, or None on a GPU run.
    """
    from . import memory

    if next(model.parameters()).device.type != "cpu":
        return None
    lengths = [len(x) for x in train_set["input_ids"]]
    longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[: profile.batch_size]
    rows = train_set.select(longest)
    width = max(lengths[i] for i in longest)
    ids = torch.full((len(longest), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (x, y) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    optimizer = memory.make_optimizer(model, "adamw" if profile.optimizer == "adamw_torch" else profile.optimizer,
                                      lr=0.0)
    was_training = model.training
    try:
        return memory.measure_step(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, optimizer)
    finally:
        model.train(was_training)


class TrainingDiverged(ValueError):
    """The loss (or a trainable weight) stopped being finite; nothing of this run is saved as a result.

    Attributes:
        step: the optimizer step at which it was seen.
    """

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def divergence_message(step: int, what: str, learning_rate: float, fp16: bool, max_grad_norm: float | None) -> str:
    """What went wrong and what to change, from the run's own settings."""
    tips = [f"a lower learning rate (this run: {learning_rate:g}; try {learning_rate / 4:g})"]
    if fp16:
        tips.append("a GPU with native bf16 (compute capability 8.0 or newer: L4, A100, H100), whose range does not "
                    "overflow like fp16's")
    if max_grad_norm and max_grad_norm > 0:
        tips.append(f"stronger gradient clipping (max_grad_norm {max_grad_norm:g}; try {max_grad_norm / 3:.2g})")
    else:
        tips.append("gradient clipping (max_grad_norm=1.0)")
    return (f"Training diverged at step {step}: {what}. The run was stopped; no adapter of it was saved as a "
            "result or merged (checkpoints written before the divergence are kept). Try: " + "; ".join(tips) + ".")


class DivergenceGuard(TrainerCallback):
    """Stop training as soon as the logged loss is NaN or infinite, and before saving non-finite weights.

    The trainer logs, then saves, in the same step: raising from `on_log` keeps the step's checkpoint
    from being written. At save steps whose loss is not logged, `on_step_end` checks every trainable
    parameter first. The exception (`TrainingDiverged`) ends `trainer.train()`, so nothing after it in
    the pipeline (adapter save, reload, merge) runs.
    """

    def _stop(self, args, step: int, what: str):
        raise TrainingDiverged(divergence_message(step, what, args.learning_rate, bool(args.fp16),
                                                  getattr(args, "max_grad_norm", None)), step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._stop(args, state.global_step, f"the training loss is {loss}")

    def _check_weights(self, args, state, model):
        for name, param in model.named_parameters():
            if param.requires_grad and not torch.isfinite(param.detach()).all():
                self._stop(args, state.global_step, f"the trainable weight {name} holds NaN or inf values")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save and model is not None:
            self._check_weights(args, state, model)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:  # the last steps may have been neither logged nor saved
            self._check_weights(args, state, model)


class TrainingMonitor(TrainerCallback):
    """Log loss, tokens/s and peak memory at every logging step.

    Tokens are the non-padding input tokens the trainer counted
    (`include_num_input_tokens_seen="non_padding"`), summed over all processes.

    Attributes:
        records: one dict per logging step: step, loss, learning_rate, tokens_per_s, peak_memory_bytes.
    """

    def __init__(self):
        self.records: list[dict] = []
        self._t = None
        self._tokens = 0
        self.tokens_at_start = 0  # tokens already seen when this train() call began (resume)
        self.started = None  # perf_counter() when this train() call began

    def on_train_begin(self, args, state, control, **kwargs):
        start_peak_measurement()
        self._t = self.started = time.perf_counter()
        self._tokens = self.tokens_at_start = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or self._t is None:
            return
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen
        rate = (tokens - self._tokens) / max(now - self._t, 1e-9)
        self._t, self._tokens = now, tokens
        peak, kind = peak_memory()
        record = {"step": state.global_step, "loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
                  "tokens_per_s": round(rate, 1), "peak_memory_bytes": peak, "peak_memory_kind": kind}
        self.records.append(record)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(tokens_per_s=record["tokens_per_s"], peak_memory_bytes=peak)


class StopAtStep(TrainerCallback):
    """End training cleanly after `step` (checkpoints already written stay): a simulated disconnect."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = state.global_step % args.save_steps == 0
        return control


class SimulateOutOfMemory(TrainerCallback):
    """Raise `torch.OutOfMemoryError` at the start of step `step + 1`, as a GPU that ran out would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (simulated by lora_lab.callbacks.SimulateOutOfMemory)"
            )
