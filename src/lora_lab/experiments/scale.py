"""Beyond one GPU: what fits with DDP and with FSDP, an accelerate FSDP config, and an FSDP2 check.

- `fit_table`: the estimator's per-GPU figures on 1 GPU, with DDP (every GPU holds everything) and
  with FSDP (weights, gradients and optimizer states split over the GPUs).
- `accelerate_fsdp_config`: the accelerate config file for an FSDP-QLoRA run on Kaggle's 2 x T4,
  with the settings bitsandbytes documents, each with its reason.
- `fsdp_check` (also `python -m lora_lab.experiments.scale fsdp-check` under torchrun): trains LoRA (and QLoRA)
  on the tiny model with FSDP2's `fully_shard` over gloo on CPU processes, and records the losses,
  so that a test can compare them with a single-process run on the same global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lora_lab.estimation import vram

#: The multi-GPU settings compared in notebook 06: (label, GPU name in vram.GPUS, number of GPUs, the GPU's
#: compute capability, which sets the recipe's precision: fp16 on a T4, bf16 on an A100).
SETUPS = (("1 x T4", "Colab T4", 1, (7, 5)), ("2 x T4", "Colab T4", 2, (7, 5)),
          ("8 x A100 80GB", "A100 80GB", 8, (8, 0)))

#: Upstream report of 4-bit weights changing under FSDP (the class of bug the QLoRA check probes).
BNB_FSDP_ISSUE = "https://github.com/bitsandbytes-foundation/bitsandbytes/issues/1945"
#: Where bitsandbytes documents FSDP-QLoRA (`bnb_4bit_quant_storage`) and PEFT its accelerate config.
BNB_FSDP_DOC = "https://huggingface.co/docs/bitsandbytes/main/fsdp_qlora"
PEFT_FSDP_DOC = ("https://huggingface.co/docs/peft/main/en/accelerate/fsdp"
                 "#use-peft-qlora-and-fsdp-for-finetuning-large-models-on-multiple-gpus")


@dataclass
class Fit:
    """Per-GPU memory of one training step in one setup."""

    model: str
    method: str
    setup: str  # e.g. "2 x T4"
    parallel: str  # "single", "DDP" or "FSDP"
    precision: str  # the estimator's precision of the recipe the course trains with ("mixed", "fp16", "bf16")
    per_gpu_gib: float  # estimated total per GPU
    usable_gib: float  # what one GPU of the setup offers
    fits: bool


def fit_table(models=("Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-7B", "meta-llama/Llama-2-13b-hf"),
              methods=("full", "lora", "qlora"), setups=SETUPS, **estimate_kwargs) -> list[Fit]:
    """The estimator's per-GPU total for each model x method x setup, single GPU, DDP and FSDP.

    Each row uses the precision the course trains with on that GPU (`vram.training_precision`): full
    fine-tuning keeps fp32 weights under autocast, LoRA and QLoRA a 16-bit base. DDP replicates
    everything on each GPU and adds its gradient buckets (only the throughput grows); FSDP divides
    weights, gradients and optimizer states by the number of GPUs, while activations stay per GPU.
    Extra keyword arguments go to `vram.estimate` (batch_size, seq_len, ...).
    """
    from lora_lab.runtime.hardware import compute_dtype_for

    kwargs = {"batch_size": 1, "seq_len": 1024, **estimate_kwargs}
    rows = []
    for model in models:
        for method in methods:
            for label, gpu_name, n, capability in setups:
                gpu = vram.GPUS[gpu_name]
                usable = gpu.usable_bytes / vram.GIB
                precision = vram.training_precision(method, compute_dtype_for("cuda", capability))
                choices = [("single", None)] if n == 1 else [("DDP", None), ("FSDP", "fsdp")]
                for parallel, sharding in choices:
                    est = vram.estimate(model, method=method, num_gpus=n, sharding=sharding,
                                        **{"precision": precision, **kwargs})
                    rows.append(Fit(model, method, label, parallel, est.settings["precision"],
                                    est.total / vram.GIB, usable, est.fits(gpu)))
    return rows


def format_fit_table(rows: list[Fit]) -> str:
    """The table as text: one line per model and method, one column per setup."""
    columns = []
    for r in rows:
        if (r.setup, r.parallel) not in columns:
            columns.append((r.setup, r.parallel))
    head = f"{'model':<28}{'method':<7}" + "".join(f"{s + ' ' + p:>22}" for s, p in columns)
    lines = [head, "-" * len(head)]
    keys = []
    for r in rows:
        if (r.model, r.method) not in keys:
            keys.append((r.model, r.method))
    for model, method in keys:
        cells = {(r.setup, r.parallel): r for r in rows if r.model == model and r.method == method}
        line = f"{model:<28}{method:<7}"
        for col in columns:
            r = cells[col]
            line += f"{r.per_gpu_gib:>15.1f} GiB {'ok' if r.fits else '--':>2}"
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------- accelerate config

#: FSDP-QLoRA settings for accelerate, each with the reason it is there.
FSDP_QLORA_SETTINGS = {
    "distributed_type": ("FSDP", "shard weights, gradients and optimizer states instead of replicating them"),
    "fsdp_config.fsdp_version": (2, "FSDP2 (`fully_shard`): per-parameter sharding, frozen and trainable "
                                    "parameters of different dtypes may share a module"),
    "fsdp_config.fsdp_auto_wrap_policy": ("TRANSFORMER_BASED_WRAP", "one FSDP unit per decoder layer: gather "
                                          "one layer's weights at a time"),
    "fsdp_config.fsdp_cpu_ram_efficient_loading": (True, "only rank 0 reads the checkpoint, the others start "
                                                   "empty and receive it: the host RAM holds one copy, not one per GPU "
                                                   "(needs fsdp_sync_module_states, which accelerate sets with it)"),
    "fsdp_config.fsdp_offload_params": (False, "keep shards on the GPU; True moves them to CPU RAM (slower, "
                                        "for models that do not fit even sharded)"),
    "fsdp_config.fsdp_reshard_after_forward": (True, "free each gathered layer after its forward (ZeRO-3 "
                                               "behaviour): the memory saving the estimator assumes"),
    "fsdp_config.fsdp_state_dict_type": ("SHARDED_STATE_DICT", "each rank saves its own shard: no "
                                         "rank gathers the whole model to write a checkpoint"),
    "mixed_precision": ("fp16", "a T4 (compute capability 7.5) has no native bf16: fp16 autocast"),
    "num_processes": (2, "one process per GPU"),
}

#: The model-side settings that go with it (BitsAndBytesConfig / from_pretrained), with reasons.
FSDP_QLORA_MODEL_SETTINGS = {
    "bnb_4bit_quant_storage": ("torch.float16", "pack the 4-bit weights in the model's dtype: FSDP flattens and "
                               "shards floating tensors of one dtype together (bitsandbytes doc)"),
    "dtype": ("torch.float16", "the same dtype for every other weight, so that the Linear4bit layers are "
              "wrapped like the others and not one by one (bitsandbytes doc)"),
    "bnb_4bit_compute_dtype": ("torch.float16", "dequantize to fp16 for the matmuls: no bf16 on a T4"),
}


def accelerate_fsdp_config(num_processes: int = 2, mixed_precision: str = "fp16") -> dict:
    """The accelerate config (as a dict) for FSDP-QLoRA on `num_processes` GPUs of one machine."""
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be a positive whole number (one per GPU), got {num_processes!r}.")
    config = {"compute_environment": "LOCAL_MACHINE", "machine_rank": 0, "num_machines": 1,
              "main_training_function": "main", "rdzv_backend": "static", "same_network": True, "use_cpu": False,
              "fsdp_config": {}}
    for key, (value, _) in FSDP_QLORA_SETTINGS.items():
        if key.startswith("fsdp_config."):
            config["fsdp_config"][key.split(".", 1)[1]] = value
        else:
            config[key] = value
    config["num_processes"] = num_processes
    config["mixed_precision"] = mixed_precision
    return config


def write_accelerate_fsdp_config(path: str | os.PathLike, num_processes: int = 2,
                                 mixed_precision: str = "fp16") -> Path:
    """Write the config as YAML with one comment per setting; use it with
    `accelerate launch --config_file PATH -m lora_lab.training.train --profile t4 --method qlora`."""
    config = accelerate_fsdp_config(num_processes, mixed_precision)
    why = {k.split(".")[-1]: reason for k, (_, reason) in FSDP_QLORA_SETTINGS.items()}

    def fmt(value):
        return json.dumps(value) if isinstance(value, (bool, int)) or value is None else str(value)

    lines = [f"# FSDP-QLoRA on {num_processes} GPUs, written by lora_lab.experiments.scale.write_accelerate_fsdp_config.",
             f"# Sources: {BNB_FSDP_DOC} and {PEFT_FSDP_DOC}",
             "# Model side (lora_lab.training.models does it when accelerate launches with FSDP):"]
    lines += [f"#   {k} = {v}: {reason}" for k, (v, reason) in FSDP_QLORA_MODEL_SETTINGS.items()]
    for key, value in config.items():
        if key == "fsdp_config":
            lines.append("fsdp_config:")
            for sub, subvalue in value.items():
                lines.append(f"  {sub}: {fmt(subvalue)}  # {why[sub]}")
        else:
            comment = f"  # {why[key]}" if key in why else ""
            lines.append(f"{key}: {fmt(value)}{comment}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


# --------------------------------------------------------------------------- the FSDP2 check


def _fixed_batch(vocab_size: int, global_batch: int, seq_len: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab_size, (global_batch, seq_len), generator=g)  # no special tokens, no padding


def fsdp_check(method: str = "lora", steps: int = 4, global_batch: int = 4, seq_len: int = 32, seed: int = 0) -> dict:
    """Train LoRA on the tiny model for a few steps; under torchrun with FSDP2 across the processes.

    Each of the W processes takes its contiguous 1/W of a fixed global batch; FSDP2 averages the
    gradients, so with equal-length sequences the update equals a single process's on the whole
    batch. After training, the same forward pass runs twice in eval mode without an update: a model
    whose frozen weights stay put gives the same loss both times.

    Returns:
        {"method", "world_size", "losses": global mean loss per step, "repeat": the two repeated losses}.
    """
    import torch
    import torch.distributed as dist

    from lora_lab.runtime import profiles
    from lora_lab.standins import tiny
    from lora_lab.training import models

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # torchrun's env:// rendezvous; left open for the next check
    torch.manual_seed(seed)
    profile = profiles.get_profile("tiny")
    model, _ = models.load_model_and_tokenizer(profile, method, model_path=tiny.ensure_tiny_model(verbose=False),
                                               for_training=False, fsdp=True)
    model = models.attach_lora(model, models.lora_config(profile, r=4, alpha=8, targets="all-linear", dropout=0.0),
                               seed=seed)
    batch = _fixed_batch(model.config.vocab_size, global_batch, seq_len, seed)
    per = global_batch // world
    local = batch[rank * per:(rank + 1) * per]
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def global_loss(loss):
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        return float(value)

    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=local, labels=local).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(global_loss(loss))
    model.eval()  # as an evaluation after training would: eval mode, no gradients
    with torch.no_grad():
        repeat = [global_loss(model(input_ids=local, labels=local).loss) for _ in range(2)]
    if world > 1:
        dist.barrier()
    return {"method": method, "world_size": world, "losses": losses, "repeat": repeat}


FSDP_CHECK_METHODS = ("lora", "qlora")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def _writable_file(text: str) -> Path:
    path = Path(text)
    if not text.strip() or path.is_dir():
        raise argparse.ArgumentTypeError(f"must be a file path to write, got {text!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(path.parent)!r} does not exist")
    return path


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in FSDP_CHECK_METHODS]
    if not methods or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(FSDP_CHECK_METHODS)} (comma-separated), got {text!r}")
    return methods


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.experiments.scale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("fsdp-check", help="train a few LoRA steps (FSDP2 when launched by torchrun)")
    check.add_argument("--methods", type=_methods, default="lora,qlora", help="comma-separated: lora, qlora")
    check.add_argument("--steps", type=_positive_int, default=4)
    check.add_argument("--out", type=_writable_file, required=True, help="JSON file written by rank 0")
    config = sub.add_parser("accelerate-config", help="write the FSDP-QLoRA accelerate config")
    config.add_argument("--out", type=_writable_file, default="fsdp_qlora_2xT4.yaml")
    config.add_argument("--num-processes", type=_positive_int, default=2)
    args = parser.parse_args(argv)
    if args.command == "accelerate-config":
        print(write_accelerate_fsdp_config(args.out, args.num_processes))
        return 0
    results = [fsdp_check(method, steps=args.steps) for method in args.methods]
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out).write_text(json.dumps(results, indent=1))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
