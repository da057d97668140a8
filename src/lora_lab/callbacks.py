"""Trainer callbacks of the course: a monitor (loss, tokens/s, peak memory) and two fault injectors.

`TrainingMonitor` adds, at every logging step, the throughput since the previous log and the peak
memory so far to the trainer's `log_history` (and keeps its own list of records for plots).
`StopAtStep` ends training after a given step, like a Colab disconnect after a checkpoint;
`SimulateOutOfMemory` raises the same `torch.OutOfMemoryError` a real GPU would, so the notebook
and the tests can show the out-of-memory path on any machine.
"""

from __future__ import annotations

import resource
import sys
import time

import torch
from transformers import TrainerCallback


def peak_memory() -> tuple[int, str]:
    """(bytes, what they are): the CUDA caching allocator's peak, or this process's peak RSS on the CPU.

    On a GPU the figure is `torch.cuda.max_memory_reserved()`, what `vram.estimate(...).reserved`
    predicts. On the CPU it is the resident set of the whole Python process (interpreter, libraries,
    dataset): an upper bound on the tensors, not comparable with a GPU estimate.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_reserved()), "cuda_max_memory_reserved"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_process_peak_rss"


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
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
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
