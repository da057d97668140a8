"""Supervised fine-tuning with QLoRA (or LoRA, or full fine-tuning): the trainer and the pipeline.

The notebook `03_qlora_sft_t4` and the command line run the same functions::

    python -m lora_lab.training.train --profile cpu                      # the whole pipeline, tiny model
    python -m lora_lab.training.train --profile t4 --max-steps 60        # a real 1.5B model on a T4
    torchrun --nproc_per_node 2 -m lora_lab.training.train --method lora # several processes (DDP)

Public API (stable; the rank-sweep and adapter lessons build on it):

- `sft(model, tokenizer, splits_or_train, profile, output_dir, ...)`: trl's `SFTTrainer` with
  explicit fp16/bf16, gradient checkpointing, paged 8-bit AdamW, checkpoints, resume, and an
  out-of-memory error that says what to change. Returns an `SFTResult`.
- `run_pipeline(profile, ...)`: notebook 03's sections, one named call each: `configure_run`
  (number format), `run_preflight` (will it fit?), data (`tokenize_splits`), `evaluate_before`,
  `sft`, `record_training` and `evaluate_after`, `save_and_reload_adapter` and
  `merge_and_check`, `record_memory` (predicted vs measured), `write_outputs` (metrics.json,
  loss.png). `main()` is its command line.
- `recipe(profile, hw)`: the `BitsAndBytesConfig`, `LoraConfig` and `SFTConfig` a run uses, built
  by the same functions as the run, with a reason for every value (`Recipe.table`) and as plain
  transformers/peft/trl code (`recipe_code`). Notebook 03 prints them.
- Reading results: `epoch_summary` / `epoch_verdict` (held-out loss per epoch against the rule of
  thumb "1-3 epochs") and `lora_vs_qlora_verdict`, so the notebook's sentences come from its numbers.
- Re-exported for the notebooks: `load_model_and_tokenizer`, `lora_config`, `decide_precision`
  (`lora_lab.training.models`).

Its neighbours: `lora_lab.training.sft_data` (tokenization, labels on the answer), `lora_lab.estimation.preflight`
(the memory estimate before a run, `WontFitError`, `TrainingOutOfMemory`), `lora_lab.figures.train_plots`
(`plot_loss`), `lora_lab.runtime.drive` (checkpoints on Google Drive), `lora_lab.runtime.compat` (library
workarounds).

Everything is seeded (`profile.seed`, or `seed=`): two runs on the same machine give the same
losses, scores and adapter weights."""

from __future__ import annotations

if __name__ == "__main__":  # the command: answer --help and bad flags before the heavy imports below
    from lora_lab.training.train_cli import build_parser, stop_quietly_while_starting

    stop_quietly_while_starting()
    build_parser().parse_args()

import contextlib
import gc
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_lab.estimation.preflight import (
    TrainingOutOfMemory,
    WontFitError,
    estimate_memory,
    oom_message,
    preflight_memory,
    world_size,
)
from lora_lab.figures.train_plots import plot_loss
from lora_lab.lessons import verdicts
from lora_lab.runtime import hardware, hub, profiles
from lora_lab.runtime.compat import keep_trainable_fp32
from lora_lab.runtime.drive import drive_dir_from_cli
from lora_lab.runtime.units import MIB
from lora_lab.training import checkpoints, data, evaluate, models, run_folder
from lora_lab.training.callbacks import (
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
from lora_lab.training.models import Precision, decide_precision, load_model_and_tokenizer, lora_config
from lora_lab.training.sft_data import DataReport, prepare_sft_data
from lora_lab.training.train_cli import build_parser

__all__ = [
    "Precision", "Recipe", "RunSetup", "SFTResult", "TrainingDiverged", "configure_run", "decide_precision",
    "epoch_summary", "epoch_verdict", "load_model_and_tokenizer", "lora_config", "lora_vs_qlora_verdict", "main",
    "recipe", "recipe_code", "run_pipeline", "sft", "sft_config_kwargs",
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
    sft_config: object = None  # the trl.SFTConfig the trainer ran with

    @property
    def eval_losses(self) -> list[tuple[float, float]]:
        """(epoch, held-out loss) at every evaluation the trainer ran (each epoch when given an eval set)."""
        return [(e["epoch"], e["eval_loss"]) for e in self.log_history if "eval_loss" in e]

    @property
    def losses(self) -> list[tuple[int, float]]:
        """(step, loss) at every logging step."""
        return [(e["step"], e["loss"]) for e in self.log_history if "loss" in e]


#: Why each `SFTConfig` argument has its value, one line each (notebook 03 prints them beside the values).
SFT_REASONS = {
    "output_dir": "checkpoints go here (checkpoint-N folders); on Colab a Google Drive folder survives a disconnect",
    "max_steps": "a fixed number of optimizer steps: the run's length does not depend on the dataset's size",
    "per_device_train_batch_size": "sequences per micro-step: what fits a T4 at max_length with checkpointing on",
    "gradient_accumulation_steps": "micro-steps per optimizer step: a larger effective batch without more memory",
    "learning_rate": "peak rate; LoRA wants about 10x a full fine-tune's (QLoRA paper: 2e-4 for 7B/13B)",
    "lr_scheduler_type": "how the rate falls after warmup",
    "warmup_steps": "a float below 1 is a share of max_steps: the rate ramps up while Adam's statistics settle",
    "weight_decay": "none: decaying the small LoRA matrices would only pull the update back to zero",
    "max_grad_norm": "clip the gradient norm: keeps fp16 and the first steps stable",
    "logging_nan_inf_filter": "off: a NaN or inf loss is logged as it is (the default logs the running mean instead), "
                              "so the divergence guard sees it",
    "optim": "paged 8-bit AdamW: states in 8 bits, paged to CPU RAM if a spike would run the GPU out of memory",
    "fp16": "passed explicitly, from the compute capability: a T4 (7.5) computes in fp16",
    "bf16": "passed explicitly: a T4 has no native bf16 (trl would switch bf16 on if neither flag were given)",
    "activation_checkpointing": "keep each layer's input only and recompute the rest in backward: less memory, ~30% more time",
    "activation_checkpointing_kwargs": "non-reentrant checkpointing works with the frozen (no-grad) base inputs",
    "max_length": "longest example in tokens; the data step drops longer ones whole instead of cutting answers",
    "packing": "off: exact packing needs flash-attention's variable-length kernels, which a T4 lacks",
    "padding_free": "off, for the same reason; batches of similar lengths cut the padding instead",
    "train_sampling_strategy": "group_by_length batches similar lengths together (less padding without packing)",
    "logging_steps": "loss, tokens/s and peak memory this often",
    "save_strategy": "checkpoints by step count ...",
    "save_steps": "... every this many optimizer steps",
    "save_total_limit": "... keeping only the newest few (disk on Colab is limited)",
    "save_only_model": "False keeps optimizer, scheduler and RNG states: needed to resume exactly after a disconnect",
    "seed": "model init and dropout: the same seed gives the same run",
    "data_seed": "data order, seeded separately",
    "report_to": "no wandb or tensorboard prompts",
    "include_num_input_tokens_seen": "count real (non-padding) tokens, for honest tokens per second",
    "disable_tqdm": "progress bars on",
    "eval_strategy": "\"epoch\": held-out loss after every epoch, the curve that shows when more epochs stop helping",
    "per_device_eval_batch_size": "evaluation batch: no gradients, so the training batch size fits",
    "dataloader_num_workers": "0: deterministic, and Colab has few cores",
    "dataloader_pin_memory": "pinned host memory speeds copies to a GPU (off without one)",
    "ddp_find_unused_parameters": "every LoRA matrix gets a gradient every step, so DDP need not search",
    "ddp_backend": "gloo when several CPU processes train together; None lets a GPU use nccl",
    "use_cpu": "only set for multi-process CPU runs (accelerate asks for it explicitly)",
    "eos_token": "None keeps the tokenizer's own eos (checked to differ from the pad token)",
}
#: Why each `BitsAndBytesConfig` argument has its value (notebook 03's recipe table).
BNB_REASONS = {
    "load_in_4bit": "every linear layer of the frozen base stored in 4 bits instead of 16 (embeddings and norms stay)",
    "bnb_4bit_quant_type": "NF4: 16 levels at normal quantiles, less rounding error than FP4 or INT4 (notebook 04)",
    "bnb_4bit_use_double_quant": "the per-block absmax scales in 8 bits too: 4.127 instead of 4.5 bits per weight",
    "bnb_4bit_compute_dtype": "weights are dequantized to this for each matmul: fp16 on a T4, which has no native bf16",
    "bnb_4bit_quant_storage": "only under FSDP: packed 4-bit weights stored in the compute dtype so they shard",
}
#: Why each `LoraConfig` argument has its value (notebook 03's recipe table).
LORA_REASONS = {
    "r": "rank of the update B @ A; QLoRA found rank mattered little once every linear layer is adapted",
    "lora_alpha": "the update is scaled by alpha / r: here 2, a common choice",
    "lora_dropout": "dropout on the adapted inputs (0.05 on the T4's real data; notebook 02 measures it)",
    "target_modules": "every linear layer but the output head: QLoRA needed all of them to match full fine-tuning",
    "bias": "biases stay frozen",
    "task_type": "wraps the model for causal LM: generate, save and merge work as usual",
    "use_rslora": "plain alpha / r scaling (rsLoRA's alpha / sqrt(r) is the alternative)",
}


def sft_config_kwargs(profile, output_dir, precision: Precision, *, max_steps: int | None = None,
                      learning_rate: float | None = None, seed: int | None = None,
                      eval_each_epoch: bool = False) -> dict:
    """The `SFTConfig` arguments of a run, every one set on purpose (nothing left to trl's defaults).

    `SFT_REASONS` says why each has its value.

    Args:
        eval_each_epoch: evaluate the trainer's `eval_dataset` after every epoch (held-out loss per epoch).

    Returns:
        A dict for `trl.SFTConfig(**kwargs)`; tests inspect it (e.g. fp16 on a T4).
    """
    seed = profile.seed if seed is None else seed
    distributed_cpu = world_size() > 1 and not torch.cuda.is_available()
    kwargs = dict(
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
        logging_nan_inf_filter=False,  # log a NaN/inf loss as it is, never the running mean in its place
        save_strategy="steps",  # checkpoints every save_steps ...
        save_steps=profile.save_steps,
        save_total_limit=profile.save_total_limit,  # ... keeping the newest few
        save_only_model=False,  # keep optimizer, scheduler and RNG states: needed for an exact resume
        seed=seed,  # model init, dropout
        data_seed=seed,  # data order
        report_to="none",  # no wandb/tensorboard prompts
        include_num_input_tokens_seen="non_padding",  # real tokens for tokens/s
        disable_tqdm=False,  # progress bars
        # Held-out loss after each epoch when an eval set is given; exact match runs before and after
        # (lora_lab.training.evaluate).
        eval_strategy="epoch" if eval_each_epoch else "no",
        dataloader_num_workers=0,  # deterministic and Colab-friendly
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned host memory speeds copies to a GPU; none here
        ddp_find_unused_parameters=False,  # every LoRA matrix gets a gradient every step
        ddp_backend="gloo" if distributed_cpu else None,  # CPU processes talk over gloo
        use_cpu=distributed_cpu,  # accelerate sets up multi-process CPU (DDP) only when asked explicitly
        eos_token=None,  # the tokenizer's own eos (checked distinct from pad)
    )
    if eval_each_epoch:
        kwargs["per_device_eval_batch_size"] = profile.batch_size  # no gradients: the training batch fits
    return kwargs


@dataclass
class Recipe:
    """The three configuration objects of a run, exactly as `load_model_and_tokenizer` and `sft` build them."""

    quantization: object  # transformers.BitsAndBytesConfig (None unless method == "qlora")
    lora: object  # peft.LoraConfig (None for a full fine-tune)
    sft: object  # trl.SFTConfig
    sft_kwargs: dict  # the arguments SFTConfig was built from (the ones the course sets)

    def table(self) -> list[tuple[str, str, object, str]]:
        """(config, field, value, why) for every argument the course sets, in the order they are built."""
        rows = []
        if self.quantization is not None:
            for name, why in BNB_REASONS.items():
                if name == "bnb_4bit_quant_storage" and not _quant_storage_set(self.quantization):
                    continue
                rows.append(("BitsAndBytesConfig", name, getattr(self.quantization, name), why))
        if self.lora is not None:
            rows += [("LoraConfig", name, getattr(self.lora, name), why) for name, why in LORA_REASONS.items()]
        rows += [("SFTConfig", name, value, SFT_REASONS[name]) for name, value in self.sft_kwargs.items()]
        return rows


def _quant_storage_set(config) -> bool:
    return getattr(config, "bnb_4bit_quant_storage", torch.uint8) not in (None, torch.uint8)


def recipe(profile, hw=None, *, method: str | None = None, output_dir="runs/sft", precision: Precision | None = None,
           max_steps: int | None = None, learning_rate: float | None = None, seed: int | None = None,
           eval_each_epoch: bool = False, fsdp: bool | None = None) -> Recipe:
    """The `BitsAndBytesConfig`, `LoraConfig` and `SFTConfig` a run of `profile` uses, built by the same
    functions as the run itself (`models.bnb_config`, `models.lora_config`, `sft_config_kwargs`).

    Args:
        profile: the run profile.
        hw: a hardware reading (default: as `models.hardware_for` decides); gives the number format.
        method: "qlora", "lora" or "full" (default: profile.method).
        output_dir: where the run writes checkpoints.
        precision: overrides the precision decided from `hw`.
        max_steps, learning_rate, seed, eval_each_epoch: as for `sft`.
        fsdp: store packed 4-bit weights in the compute dtype (default: detect an FSDP launch).
    """
    from trl import SFTConfig

    method = models.check_method(method or profile.method)
    precision = precision or decide_precision(hw or models.hardware_for(profile), method)
    fsdp = models.uses_fsdp() if fsdp is None else fsdp
    quantization = None
    if method == "qlora":
        quantization = models.bnb_config(precision, quant_storage=precision.torch_compute_dtype if fsdp else None)
    lora = None if method == "full" else lora_config(profile)
    kwargs = sft_config_kwargs(profile, output_dir, precision, max_steps=max_steps, learning_rate=learning_rate,
                               seed=seed, eval_each_epoch=eval_each_epoch)
    return Recipe(quantization=quantization, lora=lora, sft=SFTConfig(**kwargs), sft_kwargs=kwargs)


def _code_value(value) -> str:
    """`value` as Python source (torch dtypes as torch.float16 etc.)."""
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return repr(sorted(value))
    return repr(value)


def recipe_code(rec: Recipe, model_id: str) -> tuple[str, str]:
    """Plain transformers/peft/trl code that rebuilds a run from `rec`'s values, without lora_lab.

    Returns:
        (configs, run): the three configs as source (tests execute it and compare the objects), then
        the lines that load the model and train with them.
    """
    def call(name: str, pairs) -> str:
        return f"{name}(\n" + "".join(f"    {k}={_code_value(v)},\n" for k, v in pairs) + ")"

    lines = ["import torch", "from peft import LoraConfig", "from transformers import BitsAndBytesConfig",
             "from trl import SFTConfig", ""]
    if rec.quantization is not None:
        names = [n for n in BNB_REASONS if n != "bnb_4bit_quant_storage" or _quant_storage_set(rec.quantization)]
        lines.append("bnb_config = " + call("BitsAndBytesConfig", [(n, getattr(rec.quantization, n)) for n in names]))
    if rec.lora is not None:
        lines.append("lora_config = " + call("LoraConfig", [(n, getattr(rec.lora, n)) for n in LORA_REASONS]))
    lines.append("sft_config = " + call("SFTConfig", rec.sft_kwargs.items()))
    configs = "\n".join(lines)
    dtype = rec.quantization.bnb_4bit_compute_dtype if rec.quantization is not None else (
        torch.float16 if rec.sft_kwargs["fp16"] else torch.bfloat16 if rec.sft_kwargs["bf16"] else torch.float32)
    load = [f"model = AutoModelForCausalLM.from_pretrained({model_id!r}, dtype={dtype}, device_map={{'': 0}}"
            + (", quantization_config=bnb_config)" if rec.quantization is not None else ")")]
    if rec.quantization is not None:
        load.append("model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  "
                    "# norms to fp32")
    run = "\n".join([
        "from peft import prepare_model_for_kbit_training",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "from trl import SFTTrainer",
        "",
        f"tokenizer = AutoTokenizer.from_pretrained({model_id!r})",
        "new_pad = tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id",
        "if new_pad:  # pad = eos: masking the padding would mask every eos, and the model would never learn to stop",
        "    tokenizer.add_special_tokens({'pad_token': '<|pad|>'})",
        *load,
        "if new_pad:",
        "    model.resize_token_embeddings(len(tokenizer))  # one row for the new pad token",
        "# train_dataset / eval_dataset: rows in prompt/completion (or messages) form, answers ending in eos",
        "trainer = SFTTrainer(model=model, args=sft_config, train_dataset=train_dataset, eval_dataset=eval_dataset,",
        "                     processing_class=tokenizer" + (", peft_config=lora_config)" if rec.lora is not None else ")"),
        "# trl 1.16 casts a quantized model's LoRA matrices to bf16: cast them back to fp32 on a T4",
        "for p in trainer.model.parameters():",
        "    if p.requires_grad:",
        "        p.data = p.data.float()",
        "trainer.train()",
    ])
    return configs, run


def _last_checkpoint(folder) -> str | None:
    """The newest checkpoint in `folder` that holds everything resuming needs (`checkpoints.newest_complete`)."""
    return checkpoints.newest_complete(folder)[0]


#: The most held-out examples a run evaluates: each is generated token by token, so 2,000 already take
#: minutes on a GPU; more would also repeat the cpu profile's held-out schemas.
MAX_EVAL_SIZE = 2000


def check_settings(**values) -> None:
    """Refuse a non-positive or non-finite step count, rank, learning rate, eval size or max_length, and an
    eval size above `MAX_EVAL_SIZE`, naming the setting.

    `max_steps=0` would save an untrained adapter as if it were a result, and -1 silently means
    "train for the whole number of epochs" to the Trainer.

    Raises:
        ValueError: e.g. "max_steps must be a positive finite number, got 0".
    """
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is not None and (not value > 0 or not math.isfinite(value)):
            raise ValueError(f"{name} must be a positive finite number, got {value} (command line: {flag}).")
        if name == "eval_size" and value is not None and value > MAX_EVAL_SIZE:
            raise ValueError(f"eval_size {value} is more than the {MAX_EVAL_SIZE} held-out examples a run scores one "
                             f"by one (each is generated): ask for at most {MAX_EVAL_SIZE} ({flag}).")


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
        eval_dataset: optional held-out set (messages, or tokenized) for the trainer's own eval loss after
            every epoch (`SFTResult.eval_losses`).
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
    config = SFTConfig(**sft_config_kwargs(profile, output_dir, precision, max_steps=max_steps,
                                           learning_rate=learning_rate, seed=seed,
                                           eval_each_epoch=eval_dataset is not None))
    monitor, guard = TrainingMonitor(), DivergenceGuard()
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, eval_dataset=eval_dataset,
                         processing_class=tokenizer,
                         callbacks=[monitor, guard, checkpoints.run_info_callback(method, rank), *callbacks])
    keep_trainable_fp32(trainer.model)
    if precision.decided == "float16" and not precision.fp16:  # a T4 decision on the CPU: a rehearsal
        rehearse_loss_scaling(trainer)
    start_peak_measurement()  # empty the cache and reset the peaks: the evaluation before does not count
    start = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    except torch.OutOfMemoryError:
        step = trainer.state.global_step
        saved = _save_after_oom(trainer, output_dir)
        model_config = getattr(trainer.model, "config", None)
        seq_len = report.longest_kept if report else profile.max_length
        message, tips = oom_message(step, config.max_steps, saved, model_config, profile, method, precision,
                                     hw or hardware.detect(), seq_len)
        del trainer, output_dir
        free_gpu_memory()
        raise TrainingOutOfMemory(message, step, saved, tips) from None
    metrics = _train_metrics(trainer, output, monitor, time.perf_counter() - start, checkpoint, precision)
    metrics.update(skipped_steps=guard.skipped_steps, loss_scale=guard.loss_scale)  # fp16 loss scaling (else 0, None)
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
                     output_dir=str(output_dir), last_checkpoint=last, records=monitor.records, sft_config=config)


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
        # Moved out of the Trainer's checkpoint rotation, which would otherwise count it as the newest and
        # delete a real checkpoint of this run to make room; kept, not deleted, for a look.
        aside = output_dir / f"incomplete-{name}"
        n = 1
        while aside.exists():
            aside, n = output_dir / f"incomplete-{name}-{n}", n + 1
        (output_dir / name).rename(aside)
        print(f"resume: skipping {name} in {output_dir}: {why}; moved to {aside.name}")
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


def rehearse_loss_scaling(trainer) -> None:
    """Give a CPU rehearsal of an fp16 run the GradScaler the T4 run has (before `trainer.train()`).

    A T4 trains with fp16 autocast and accelerate's GradScaler: it scales the loss, unscales the
    gradients before clipping, and skips the optimizer step when they are not finite. The CPU runs
    fp32 (accelerate allows fp16 mixed precision only on accelerators), so a rehearsal would never
    exercise the scaler or `DivergenceGuard`'s count of skipped steps. This attaches
    `torch.amp.GradScaler("cpu")` where accelerate keeps its own, and unscales before clipping as
    accelerate does under fp16: the same skip decisions, on fp32 numbers.
    """
    accelerator = trainer.accelerator
    accelerator.scaler = torch.amp.GradScaler("cpu")
    clip = accelerator.clip_grad_norm_

    def unscale_then_clip(parameters, max_norm, norm_type=2):
        for optimizer in accelerator._optimizers:  # accelerate's own list, filled when train() prepares them
            accelerator.scaler.unscale_(optimizer.optimizer)
        return clip(parameters, max_norm, norm_type)

    accelerator.clip_grad_norm_ = unscale_then_clip


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
# Reading the results (notebook 03 prints these sentences from its own numbers)

#: The rule of thumb notebook 03 tests: "train 1-3 epochs; more overfits".
RULE_OF_THUMB_EPOCHS = 3
#: A held-out loss this much above its lowest value counts as "turned up" (not noise between evaluations).
TURN_UP_MARGIN = 0.02


def epoch_summary(curve: Sequence[tuple[float, float]]) -> dict:
    """Where a held-out loss curve is lowest and where it first turns up.

    Args:
        curve: (epoch, held-out loss) pairs, e.g. ``[(0.0, loss_before), *result.eval_losses]``.

    Returns:
        A dict: `curve` (sorted), `best` (epoch, loss) at the lowest loss, `last` (epoch, loss),
        `first_rise` (the first epoch whose loss is above the one before, or None), `turned_up`
        (the last loss is more than `TURN_UP_MARGIN` above the lowest), `epochs` (epochs evaluated
        after training started).
    """
    curve = sorted((float(e), float(loss)) for e, loss in curve)
    if not curve:
        raise ValueError("epoch_summary needs at least one (epoch, loss) pair: was an eval set given to sft?")
    best = min(curve, key=lambda point: point[1])
    first_rise = next((e for (_, prev), (e, loss) in zip(curve[:-1], curve[1:], strict=True) if loss > prev), None)
    last = curve[-1]
    return {"curve": curve, "best": best, "last": last, "first_rise": first_rise,
            "turned_up": last[1] > best[1] * (1 + TURN_UP_MARGIN), "epochs": sum(e > 0 for e, _ in curve)}


def _loss_at(curve, epoch: float) -> float | None:
    return next((loss for e, loss in curve if abs(e - epoch) < 1e-6), None)


def epoch_verdict(summary: dict) -> str:
    """A paragraph on the rule of thumb "1-3 epochs; more overfits", written from `epoch_summary`'s numbers."""
    (best_e, best), (last_e, last) = summary["best"], summary["last"]
    if summary["epochs"] < 2:
        return (f"This run evaluated {summary['epochs']} epoch(s) (it stopped at epoch {last_e:.2f}): too few to test "
                f"the rule of thumb. The held-out loss went from {summary['curve'][0][1]:.3f} to {last:.3f}.")
    limit = RULE_OF_THUMB_EPOCHS
    text = f"The held-out loss was lowest after epoch {best_e:.3g} ({best:.3f}); after the last, epoch {last_e:.3g}, " \
           f"it was {last:.3f}. "
    at_limit = _loss_at(summary["curve"], limit)
    if at_limit is not None:
        text += f"After epoch {limit} it was {at_limit:.3f}. "
    if summary["turned_up"] and best_e <= limit:
        text += (f"It turned up after epoch {best_e:.3g}: here the rule of thumb holds, and the epochs after it "
                 "overfit the training set.")
    elif summary["turned_up"]:
        text += (f"It turned up only after epoch {best_e:.3g}: on this task more than {limit} epochs helped before "
                 "overfitting set in.")
    elif best_e > limit:
        text += (f"It never turned up by more than {TURN_UP_MARGIN:.0%}: on this task and data size, training past "
                 f"epoch {limit} kept helping, so the rule of thumb would have stopped too early here. It is a "
                 "starting point; the held-out curve decides.")
    else:
        text += "It neither improved nor turned up after that."
    if summary["first_rise"] is not None and summary["first_rise"] < best_e:
        text += (f" (It rose once, at epoch {summary['first_rise']:.3g}, before falling again: one bump is not yet "
                 "overfitting.)")
    return text


#: The cpu profile's promise (notebook 03, `python -m lora_lab.training.train --profile cpu`): on held-out schemas,
#: exact match and execution match each rise by at least this much. Measured margins on two instruction
#: sets: benchmarks/results/cpu_flagship.md.
CPU_MIN_GAIN = 0.30


class GainBelowPromiseError(RuntimeError):
    """A run gained less than the course promises for it."""


def require_gain(before: dict, after: dict, min_gain: float = CPU_MIN_GAIN) -> str:
    """Check that exact match and execution match each rose by `min_gain`; return the sentence that says so.

    Args:
        before, after: `evaluate.summary` of the base's and the tuned model's held-out answers.
        min_gain: the smallest rise, as a fraction (0.30 = 30 points).

    Raises:
        GainBelowPromiseError: naming the score that fell short, its values and what to change.
    """
    said = []
    for name in ("exact_match", "execution_match"):
        if before.get(name) is None or after.get(name) is None:
            continue
        gain = after[name] - before[name]
        label = name.replace("_", " ")
        if gain < min_gain:
            raise GainBelowPromiseError(
                f"{label} rose {gain * 100:.0f} points ({before[name]:.0%} -> {after[name]:.0%}), below the "
                f"{min_gain * 100:.0f} the course promises: train longer (max_steps) or check the data and "
                "the learning rate.")
        said.append(f"{label} +{gain * 100:.0f} points ({before[name]:.0%} -> {after[name]:.0%})")
    if not said:
        raise ValueError("No exact match or execution match to compare: score the model with evaluate.summary.")
    return f"Held-out gain: {'; '.join(said)}: each at least the {min_gain * 100:.0f} points promised."


def lora_vs_qlora_verdict(comparison: dict, knowledge: dict, rehearsal: bool = False) -> str:
    """Why QLoRA and LoRA differ (or do not) on this run, chosen from what the run measured.

    The difference counts only by `lessons.verdicts` (bigger than the seed-to-seed spread, three seeds a side):
    a run with one seed per method states the scores and no winner.

    Args:
        comparison: method ("qlora", "lora") -> {"exact match": one value, or one per seed, "held-out loss"}
            after the same training.
        knowledge: "unquantized" and "NF4" -> the base model's score before fine-tuning
            (`quant.completion_loss`, with `accuracy`, or `quant.text_loss`).
        rehearsal: the numbers come from a stand-in with random weights (they mean nothing).
    """
    fp, nf4 = knowledge["unquantized"], knowledge["NF4"]
    if "accuracy" in fp:
        lost = (f"it answers {nf4['accuracy']:.1%} of its pretraining facts (unquantized: {fp['accuracy']:.1%}), "
                f"and its loss on the answers goes from {fp['loss']:.4f} to {nf4['loss']:.4f}")
        damaged = fp["accuracy"] - nf4["accuracy"] >= 0.02
    else:
        lost = f"its loss per token on held-out prose goes from {fp['loss']:.3f} to {nf4['loss']:.3f}"
        damaged = nf4["loss"] > fp["loss"] * 1.02
    base = f"Before any fine-tuning, the base rounded to NF4 was scored on what it learned in pretraining: {lost}."
    prefix = ("Rehearsal: the stand-in model has random weights, so these numbers only show that the path runs. "
              if rehearsal else "")
    if "qlora" not in comparison or "lora" not in comparison:
        return prefix + base + " Only one method was trained in this run (COMPARE_LORA off, or it did not fit)."

    def per_seed(value) -> list[float]:
        return list(value) if isinstance(value, (list, tuple)) else [value]

    v = verdicts.compare("QLoRA", per_seed(comparison["qlora"]["exact match"]), "LoRA",
                         per_seed(comparison["lora"]["exact match"]), metric="held-out exact match",
                         lower_is_better=False)
    text = (f"{prefix}Same data, steps and seeds: QLoRA reached {v.mean_a:.0%} held-out exact match, LoRA "
            f"{v.mean_b:.0%}. {base} {v.line(digits=2)} ")
    if v.better == "LoRA" and damaged and "accuracy" in fp:
        text += ("The held-out questions ask about exactly such facts, and an adapter trained to answer questions "
                 "cannot put back what the 4-bit base no longer knows: QLoRA's gap here comes from the knowledge the "
                 "rounded base lost, not from training the adapters.")
    elif v.better == "LoRA" and damaged:
        text += ("The rounded base lost some of what it knew, and the adapter trained on top of it reached a lower "
                 "score: a plausible cause of QLoRA's gap.")
    elif v.better == "LoRA":
        text += ("That loss is small, so lost knowledge does not explain the gap; what differs is training on top "
                 "of the rounded base.")
    elif v.better == "QLoRA":
        text += "QLoRA scored higher: the 4-bit base is not what limits it here."
    elif v.spread is None:
        text += "One seed per method cannot measure what the 4-bit base costs this task: that takes three each."
    else:
        text += ("The 4-bit base cost this task nothing these seeds can measure"
                 + (", although rounding changed what the base knows." if damaged else "."))
    return text


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
    with hub.hub_errors(path, "model"):
        model_config = AutoConfig.from_pretrained(path)
    return RunSetup(profile=profile, method=method, hw=hw, precision=precision, out=out, model_path=path,
                    model_config=model_config, fsdp=models.uses_fsdp(), say=say)


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
    run.say(f"before: eval loss {metrics['eval_loss_before']:.3f}, {_scores_line(rows, metrics, 'before')}")
    return rows


def _scores_line(rows: list[dict], metrics: dict, when: str) -> str:
    """Record execution match and valid SQL beside exact match (SQL tasks), and say all of them."""
    scores = evaluate.summary(rows)
    line = f"exact match {scores['exact_match']:.1%}"
    for name in ("execution_match", "valid_sql"):
        if scores[name] is not None:
            metrics[f"{name}_{when}"] = scores[name]
            line += f", {name.replace('_', ' ')} {scores[name]:.1%}"
    return line


def record_training(run: RunSetup, result: SFTResult, tokenizer, eval_set, metrics: dict) -> None:
    """Section 5's numbers: training metrics, eval loss after, and this process's train_metrics_rank<N>.json.

    Every process evaluates its own copy of the trained model: under DDP the copies must agree.
    """
    train_metrics = {k: result.metrics[k] for k in ("train_runtime_s", "train_tokens_per_s", "peak_memory_bytes",
                                                    "peak_memory_kind", "final_loss", "train_loss_mean", "global_step",
                                                    "skipped_steps", "loss_scale")}
    metrics.update(train_metrics)
    metrics["eval_loss_after"] = evaluate.eval_loss(result.model, tokenizer, eval_set, run.profile.max_length)
    rank_id = int(os.environ.get("RANK", 0))
    (run.out / f"train_metrics_rank{rank_id}.json").write_text(json.dumps(
        {**train_metrics, "eval_loss_after": metrics["eval_loss_after"],
         "trainable_hash": models.trainable_hash(result.model), "losses": result.losses}, indent=1))


def evaluate_after(run: RunSetup, model, tokenizer, eval_rows, metrics: dict) -> list[dict]:
    """Section 6: the tuned model's exact match (main process); returns its generations."""
    metrics["exact_match_after"], rows = evaluate.exact_match(model, tokenizer, eval_rows, **run.generation_kwargs)
    run.say(f"after:  eval loss {metrics['eval_loss_after']:.3f}, {_scores_line(rows, metrics, 'after')}")
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
    adapter_dir, adapter_bytes = models.save_adapter(model, tokenizer, run.out / "adapter", task=run.profile.task)
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
    """Section 7: merge into the base the adapter trained on (`models.merge_adapter`), compare logits with the
    trained model, score the merged model."""
    probe = evaluate.probe_batch(tokenizer, eval_rows["messages"], n=2)
    merged, report = models.merge_adapter(run.profile, adapter_dir, probe, method=run.method, hw=run.hw,
                                          model_path=run.model_path, out_dir=run.out / "merged", trained_model=model,
                                          tokenizer=tokenizer)
    metrics["merge"] = report.to_dict()
    metrics["exact_match_merged"], _ = evaluate.exact_match(merged, tokenizer, eval_rows, **run.generation_kwargs)
    run.say(f"merged into the {report.base} base ({report.dtype}): max |logit diff| vs the trained model {report.max_abs_diff:.2e} "
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
                 learning_rate: float | None = None, resume: bool = False, overwrite: bool = False,
                 seed: int | None = None, checkpoint_dir=None, merge: bool = True, n_show: int = 5,
                 callbacks: Sequence = (), verbose: bool = True) -> dict:
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
        overwrite: replace the run already in `output_dir` (without it, or `resume`, a folder holding
            another run's checkpoints or results is refused: `run_folder.claim`).
        seed: overrides profile.seed.
        checkpoint_dir: where checkpoints go (default: output_dir/checkpoints; a Drive folder on Colab).
        merge: merge the adapter into the base it trained on and check the logits against the trained model.
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
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else Path(output_dir) / "checkpoints"
    with contextlib.ExitStack() as held:
        if _is_main_process():  # the other processes of a multi-GPU run write into the same folder
            held.enter_context(run_folder.claim(output_dir, ckpt_dir, resume=resume, overwrite=overwrite,
                                                max_steps=max_steps or profile.max_steps))
        return _pipeline(profile, method=method, output_dir=output_dir, model_path=model_path, splits=splits,
                         loader=loader, hw=hw, rank=rank, max_steps=max_steps, learning_rate=learning_rate,
                         resume=resume, seed=seed, ckpt_dir=ckpt_dir, merge=merge, n_show=n_show,
                         callbacks=callbacks, verbose=verbose)


def _pipeline(profile, *, method, output_dir, model_path, splits, loader, hw, rank, max_steps, learning_rate, resume,
              seed, ckpt_dir, merge, n_show, callbacks, verbose) -> dict:
    """`run_pipeline`'s sections, once the output folder is held."""
    run = configure_run(profile, method=method, output_dir=output_dir, model_path=model_path, hw=hw, rank=rank,
                        seed=seed, verbose=verbose)  # 1. number format
    preflight = run_preflight(run, verbose)  # 2. will it fit?
    splits = splits if splits is not None else data.load_profile_dataset(run.profile, loader=loader)  # 3. data
    model, tokenizer = load_model_and_tokenizer(run.profile, run.method, hw=run.hw, model_path=run.model_path)
    train_set, train_report, eval_set, eval_report = tokenize_splits(run, tokenizer, splits, verbose)
    metrics: dict = {"profile": run.profile.name, "method": run.method, "model": run.model_path,
                     "dataset": run.profile.dataset_id, "dtype_decided": run.precision.decided,
                     "dtype_executed": run.precision.executed, "world_size": world_size()}
    if _is_main_process():
        rows_before = evaluate_before(run, model, tokenizer, eval_set, splits["eval"], metrics)  # 4. before
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


def _needs_gpu_message(profile) -> str | None:
    """Why a GPU profile should not start here (None when it may): no CUDA GPU for a Hub-sized model."""
    if profile.model_is_installed or torch.cuda.is_available():
        return None
    return (f"The {profile.name} profile trains {profile.model_id} on a CUDA GPU, and this machine has none "
            "(torch.cuda.is_available() is False): on the CPU it would take hours. Use --profile cpu (SmolLM2-135M-Instruct, "
            "installed with the course), run it on Colab with a T4 runtime, or pass --allow-cpu to try anyway.")


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
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C says how to resume
    checkpoint_dir = Path(args.checkpoint_dir or Path(args.output_dir) / "checkpoints")
    try:
        profile = profiles.get_profile(args.profile)
        if not args.allow_cpu and (problem := _needs_gpu_message(profile)):
            raise ValueError(problem)
        changes = {"n_eval": args.eval_size, "max_length": args.max_length, "model_id": args.model,
                   "batch_size": args.batch_size, "grad_accum": args.grad_accum,
                   "gradient_checkpointing": args.gradient_checkpointing}
        profile = profile.replace(**{k: v for k, v in changes.items() if v is not None})
        if args.dataset:
            profile = profile.replace(dataset_id=args.dataset, dataset_config=args.dataset_config, tasks=())
        if args.drive is not None:
            checkpoint_dir = drive_dir_from_cli(args.drive, Path(args.output_dir).name)
            print(f"checkpoints go to {checkpoint_dir}")
        metrics = run_pipeline(profile, method=args.method, output_dir=args.output_dir, rank=args.rank,
                               max_steps=args.max_steps, learning_rate=args.learning_rate, resume=args.resume,
                               overwrite=args.overwrite, seed=args.seed, checkpoint_dir=checkpoint_dir,
                               merge=not args.no_merge)
    except (WontFitError, TrainingOutOfMemory, ValueError, OSError, DatasetsError) as err:
        # Predictable failures (won't fit, out of memory, bad data or settings, missing files): a message,
        # no traceback.
        print(f"\n{type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{_interrupted_message(checkpoint_dir)}", file=sys.stderr)
        return 130
    if _is_main_process():
        summary = {k: metrics.get(k) for k in ("exact_match_before", "exact_match_after", "execution_match_before",
                                               "execution_match_after", "eval_loss_before", "eval_loss_after",
                                               "train_runtime_s", "adapter_bytes") if k in metrics}
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
