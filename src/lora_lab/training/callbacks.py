"""Trainer callbacks of the course: a monitor (loss, tokens/s, peak memory), a divergence guard, and two
fault injectors; plus the memory readings that stand next to the estimator's prediction.

`TrainingMonitor` adds, at every logging step, the throughput since the previous log and the peak
memory so far to the trainer's `log_history` (and keeps its own list of records for plots).
`StopAtStep` ends training after a given step, like a Colab disconnect after a checkpoint;
`SimulateOutOfMemory` raises the same `torch.OutOfMemoryError` a real GPU would, and
`InjectGradientOverflow` makes the gradients overflow as fp16 ones do, so the notebook and the tests can
show both failure paths on any machine. `DivergenceGuard` stops a run whose loss (or whose weights,
before a checkpoint) stops being finite, or whose fp16 steps the GradScaler keeps skipping, so no
adapter of it is saved.

Memory readings compare like with like: `start_peak_measurement` empties the CUDA cache and resets
the peaks right before training (so the evaluation before training does not count);
`peak_readings` returns `max_memory_allocated` and `max_memory_reserved`; `compare_memory` puts
the estimator's allocated figure beside the measured allocated one and its reserved beside
reserved. On the CPU there is no allocator: the estimate is compared with the tensor bytes one
training step holds (`lora_lab.estimation.memory.measure_step`), never with the process's RSS.
"""

from __future__ import annotations

import gc
import math
import resource
import sys
import time

import torch
from transformers import TrainerCallback

from lora_lab.lessons import sft


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
    tensors with `lora_lab.estimation.memory.measure_step` instead).
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
            f"states + saved activations), measured {cpu_step.total / gib:.4f} GiB (lora_lab.estimation.memory.measure_step). "
            "The process's RSS also holds the interpreter, libraries and data: it is not comparable.")
        return out
    return {"summary": "no measurement to compare with (no GPU, and no CPU step measured)"}


def measure_cpu_step(model, train_set, profile, pad_id: int):
    """The tensor bytes one training step of `model` holds on the CPU, measured without changing it.

    Takes the `profile.batch_size` longest tokenized examples (the worst batch of the run) and runs
    `lora_lab.estimation.memory.measure_step` with the profile's optimizer at learning rate 0, so the trained
    weights stay as they are. Returns a `memory.MeasuredMemory`, or None on a GPU run.
    """
    from lora_lab.estimation import memory

    if next(model.parameters()).device.type != "cpu":
        return None
    lengths = [len(x) for x in train_set["input_ids"]]
    longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[: profile.batch_size]
    rows = train_set.select(longest)
    batch = sft.pad_right(rows["input_ids"], rows["labels"], pad_id)
    optimizer = memory.make_optimizer(model, "adamw" if profile.optimizer == "adamw_torch" else profile.optimizer,
                                      lr=0.0)
    was_training = model.training
    try:
        return memory.measure_step(model, batch, optimizer)
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
    """What went wrong and what to change, from the run's own settings (on a T4: what a T4 can do)."""
    tips = [f"a lower learning rate (this run: {learning_rate:g}; try {learning_rate / 4:g})"]
    if max_grad_norm and max_grad_norm > 0.3:
        tips.append(f"stronger gradient clipping (max_grad_norm {max_grad_norm:g}; try 0.3)")
    elif max_grad_norm and max_grad_norm > 0:
        tips.append(f"stronger gradient clipping (max_grad_norm {max_grad_norm:g}; try {max_grad_norm / 3:.2g})")
    else:
        tips.append("gradient clipping (max_grad_norm=0.3)")
    if fp16:
        tips += ["trainable (LoRA) weights in fp32 with fp16 only inside autocast, as the course keeps them "
                 "(lora_lab.runtime.compat.keep_trainable_fp32): never cast the adapters themselves to fp16",
                 "the QLoRA paper's settings, which were tuned without bf16 in mind: lr 2e-4, max_grad_norm 0.3 "
                 "(github.com/artidoro/qlora, qlora.py)",
                 "or, if you have one, a GPU with native bf16 (compute capability 8.0 or newer: L4, A100)"]
    return (f"Training diverged at step {step}: {what}. The run was stopped; no adapter of it was saved as a "
            "result or merged (checkpoints written before the divergence are kept). Try: " + "; ".join(tips) + ".")


#: fp16 loss scaling: optimizer steps the GradScaler may skip in a row (each halves the scale) before the
#: run is stopped. A few skips at the start are normal: the scaler starts at 2**16 and halves until the
#: scaled gradients fit fp16. Eight in a row means the scale fell 256-fold and the gradients still overflow.
MAX_SKIPPED_IN_A_ROW = 8
#: ... and the share of all steps skipped once `SKIP_SHARE_AFTER` steps have run: above it the adapter
#: barely moved, and scoring it would report a run that did not train.
MAX_SKIPPED_SHARE = 0.2
SKIP_SHARE_AFTER = 20
#: A loss scale below this means fp16 cannot hold the gradients even unscaled.
MIN_LOSS_SCALE = 1.0


class DivergenceGuard(TrainerCallback):
    """Stop training as soon as it stops training for real, before anything of it is saved.

    Three signs, each checked at the end of every optimizer step (the trainer logs, then saves, after
    `on_step_end` and `on_log`, so raising there keeps that step's checkpoint from being written):

    - the logged loss is NaN or infinite (`logging_nan_inf_filter=False` in the course's `SFTConfig`:
      with transformers' default a non-finite loss is replaced in the log by the running mean);
    - fp16 loss scaling: the GradScaler skipped too many optimizer steps (`MAX_SKIPPED_IN_A_ROW` in a
      row, or more than `MAX_SKIPPED_SHARE` of them), or its scale collapsed below `MIN_LOSS_SCALE`.
      A skipped step leaves the weights finite and unchanged, so without this count a run of skipped
      steps ends with an adapter that barely moved, scored as if it had trained;
    - a trainable parameter holds NaN or inf (checked before each checkpoint and at the end).

    The exception (`TrainingDiverged`) ends `trainer.train()`, so nothing after it in the pipeline
    (adapter save, reload, merge) runs. `skipped_steps` and `loss_scale` are kept for the run's metrics.
    """

    def __init__(self):
        self.skipped_steps = 0  # optimizer steps the GradScaler skipped (non-finite gradients)
        self.skipped_in_a_row = 0
        self.loss_scale: float | None = None  # the GradScaler's scale after the last step (None: no scaler)

    def _stop(self, args, step: int, what: str):
        raise TrainingDiverged(divergence_message(step, what, args.learning_rate, bool(args.fp16) or (
            self.loss_scale is not None), getattr(args, "max_grad_norm", None)), step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._stop(args, state.global_step, f"the training loss is {loss}")

    def _check_weights(self, args, state, model):
        for name, param in model.named_parameters():
            if param.requires_grad and not torch.isfinite(param.detach()).all():
                self._stop(args, state.global_step, f"the trainable weight {name} holds NaN or inf values")

    def _check_loss_scaling(self, args, state, optimizer):
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer under fp16
        if scaler is None or not scaler.is_enabled():
            return
        self.loss_scale = float(scaler.get_scale())
        if getattr(optimizer, "step_was_skipped", False):
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
        else:
            self.skipped_in_a_row = 0
        step = state.global_step
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            self._stop(args, step, f"fp16 gradients overflowed {self.skipped_in_a_row} optimizer steps in a row "
                       f"(the GradScaler skipped each one; loss scale now {self.loss_scale:g})")
        if step >= SKIP_SHARE_AFTER and self.skipped_steps > MAX_SKIPPED_SHARE * step:
            self._stop(args, step, f"the GradScaler skipped {self.skipped_steps} of {step} optimizer steps "
                       "(fp16 gradients overflowed): the adapter barely trained")
        if self.loss_scale < MIN_LOSS_SCALE:
            self._stop(args, step, f"the fp16 loss scale collapsed to {self.loss_scale:g}: the gradients overflow "
                       "fp16 even unscaled")

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if optimizer is not None:
            self._check_loss_scaling(args, state, optimizer)
        if control.should_save and model is not None:
            self._check_weights(args, state, model)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:  # the last steps may have been neither logged nor saved
            self._check_weights(args, state, model)


class InjectGradientOverflow(TrainerCallback):
    """From optimizer step `step + 1` on, turn one trainable gradient into inf: what an fp16 overflow does.

    A fault injector, like `SimulateOutOfMemory`: a tensor hook multiplies the gradient of the first
    trainable parameter by infinity during backward, before the GradScaler looks for non-finite
    gradients, so the scaler skips the step exactly as it would after a real overflow.
    """

    def __init__(self, step: int):
        self.step = step
        self._handle = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step >= self.step and self._handle is None and model is not None:
            param = next(p for p in model.parameters() if p.requires_grad)
            self._handle = param.register_hook(lambda grad: grad * math.inf)

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


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
                "CUDA out of memory. Tried to allocate 2.00 GiB (simulated by lora_lab.training.callbacks.SimulateOutOfMemory)"
            )
