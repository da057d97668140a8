"""GPU check: real training steps against the estimator, and the t4 rehearsal at full size under a T4's cap.

For any CUDA machine, with no Hub access (nothing is downloaded):

1. Estimator cases. Every shipped preset up to 8B parameters (`src/lora_lab/configs/*.json`) is built
   at full depth with random weights, as the course trains it: QLoRA (NF4 with double quantization,
   `prepare_model_for_kbit_training`), LoRA, and full fine-tuning where the estimator says it fits;
   LoRA r=16 on all linear layers, paged 8-bit AdamW, fp16 autocast with a gradient scaler below
   compute capability 8.0 and bf16 from 8.0 (`lora_lab.training.models.precision_for`). For a few sequence
   lengths, with gradient checkpointing on and off, one real training step runs after
   `empty_cache` and `reset_peak_memory_stats`; its `max_memory_allocated` is set beside the
   estimate's `peak_allocated` and its `max_memory_reserved` beside the estimate's `reserved`.
2. The t4 rehearsal at full size, the timing case of notebook 03's run: Qwen2.5-1.5B's real architecture
   (random weights, saved and loaded through the course's own QLoRA loader) trained with the t4
   profile's settings by `lora_lab.training.train.sft` on SQL rows of the task's real lengths, under
   `torch.cuda.set_per_process_memory_fraction` capped at 14.74 GiB (a Colab T4's usable memory):
   step time, training tokens per second (beside the figure `lora_lab.estimation.t4_budget` plans with) and peak
   memory. On a T4 this is the measurement that replaces the plan's throughput.

Writes `benchmarks/results/gpu_check_<gpu>.csv` and prints one summary line per case. Cases are
planned from the estimate so that the run stays within `--budget-s` (default 420 s; the target is at
most 8 minutes on one H100-class GPU); cases that do not fit the time or the card are reported as
skipped. Without a CUDA GPU it prints one line and exits with status 2.

    .venv/bin/python benchmarks/gpu_check.py            # make gpu-check
    .venv/bin/python benchmarks/gpu_check.py --quick    # three presets, one length
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import sys
import time
from dataclasses import dataclass

from lora_lab.estimation import vram
from lora_lab.runtime.units import GIB

#: A Colab T4's usable memory, the cap of the rehearsal case.
T4_CAP_BYTES = int(14.74 * GIB)
SEQ_LENS = (256, 1024)  # tokens per sequence of the estimator cases (batch 2)
BATCH = 2
METHODS = ("qlora", "lora", "full")
MAX_PARAMS = 8.1e9  # "presets up to 8B"
RANK, ALPHA, DROPOUT, OPTIMIZER = 16, 32, 0.05, "paged_adamw_8bit"  # the t4 profile's recipe
QUICK_PRESETS = ("Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "Qwen/Qwen2.5-1.5B")
RESULTS = os.path.join(os.path.dirname(__file__), "results")
NEEDS_CUDA = "gpu_check needs a CUDA GPU (torch.cuda.is_available() is False here); run it on a GPU machine."
CSV_FIELDS = ("kind", "model", "method", "seq_len", "batch_size", "gradient_checkpointing", "precision", "status",
              "predicted_peak_allocated", "measured_peak_allocated", "error_allocated", "predicted_reserved",
              "measured_reserved", "error_reserved", "step_s", "note")


@dataclass(frozen=True)
class Case:
    """One estimator case: a preset, a method, a length and checkpointing on or off."""

    model: str
    method: str
    seq_len: int
    gradient_checkpointing: bool
    precision: str  # the estimator's precision: "fp16"/"bf16" for (Q)LoRA, "mixed" for full
    predicted_total: int  # vram.estimate(...).total: what the card must hold
    build_bytes: int  # the most the model takes while it is built (QLoRA: its 16-bit weights first)

    def estimate_kwargs(self) -> dict:
        lora = {} if self.method == "full" else dict(rank=RANK, lora_alpha=ALPHA, target_modules="all-linear",
                                                     lora_dropout=DROPOUT)  # full fine-tuning has no adapters
        return dict(method=self.method, **lora, batch_size=BATCH, seq_len=self.seq_len,
                    gradient_checkpointing=self.gradient_checkpointing, optimizer=OPTIMIZER,
                    precision=self.precision, device="cuda")


def precision_for(method: str, capability: tuple[int, int]) -> str:
    if method == "full":
        return "mixed"
    return "bf16" if capability >= (8, 0) else "fp16"


def presets(quick: bool = False) -> list[str]:
    """Shipped presets up to 8B parameters, smallest first."""
    names = QUICK_PRESETS if quick else vram.preset_names()
    sized = [(vram.load_arch(n).total_params, n) for n in names]
    return [n for p, n in sorted(sized) if p <= MAX_PARAMS]


def plan_cases(gpu_bytes: int, capability: tuple[int, int], *, quick: bool = False,
               seq_lens=SEQ_LENS) -> tuple[list[Case], list[tuple[str, str]]]:
    """(cases to run, [(case label, why skipped)]): every case whose estimate and build fit the card."""
    cases, skipped = [], []
    for model in presets(quick):
        n_params = vram.load_arch(model).total_params
        for method in METHODS:
            prec = precision_for(method, capability)
            build = n_params * (4 if method == "full" else 2)
            for seq in (seq_lens[:1] if quick else seq_lens):
                for ckpt in (True, False):
                    probe = Case(model, method, seq, ckpt, prec, 0, build)
                    total = vram.estimate(model, **probe.estimate_kwargs()).total
                    case = Case(model, method, seq, ckpt, prec, int(total), int(build))
                    if total > 0.9 * gpu_bytes or build > 0.9 * gpu_bytes:
                        skipped.append((label(case), f"estimate {total / GIB:.1f} GiB does not fit "
                                                     f"{gpu_bytes / GIB:.1f} GiB"))
                    else:
                        cases.append(case)
    return cases, skipped


def label(case: Case) -> str:
    return (f"{case.model} {case.method} seq {case.seq_len} ckpt {'on' if case.gradient_checkpointing else 'off'} "
            f"{case.precision}")


def summary_line(row: dict) -> str:
    """One line per case for the log."""
    if row["status"] != "ok":
        return f"{row['kind']:<9} {row['model']:<34} {row['method']:<5} {row['status']}: {row['note']}"
    return (f"{row['kind']:<9} {row['model']:<34} {row['method']:<5} seq {row['seq_len']:>4} "
            f"ckpt {'on ' if row['gradient_checkpointing'] else 'off'} allocated {row['measured_peak_allocated'] / GIB:6.2f}"
            f" GiB (est {row['predicted_peak_allocated'] / GIB:6.2f}, {row['error_allocated']:+.1%})  reserved "
            f"{row['measured_reserved'] / GIB:6.2f} GiB (est {row['predicted_reserved'] / GIB:6.2f}, "
            f"{row['error_reserved']:+.1%})  {row['step_s']:.2f} s/step")


def write_csv(rows: list[dict], path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    return path


def _row(kind: str, case_fields: dict, est, allocated: int | None, reserved: int | None, step_s: float | None,
         status="ok", note="") -> dict:
    row = dict(kind=kind, status=status, note=note, batch_size=BATCH, **case_fields)
    if est is not None and allocated is not None:
        row.update(predicted_peak_allocated=int(est.peak_allocated), measured_peak_allocated=int(allocated),
                   error_allocated=est.peak_allocated / allocated - 1, predicted_reserved=int(est.reserved),
                   measured_reserved=int(reserved), error_reserved=est.reserved / reserved - 1, step_s=step_s)
    return row


# ---------------------------------------------------------------------------------------------
# CUDA only from here


def _free():
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def build_model(model_name: str, method: str, capability: tuple[int, int]):
    """The preset at full depth with random weights, set up as the course trains it; on the GPU."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_lab.training import models

    precision = models.precision_for("cuda", capability, method)
    cfg_dict = vram.preset_config(model_name)
    cfg = AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if not k.startswith("_")})
    attention = "eager" if cfg_dict.get("model_type") == "gemma2" else "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=precision.torch_load_dtype, attn_implementation=attention)
    if method == "qlora":
        compute = getattr(torch, precision.bnb_compute_dtype)
        # Every linear layer of the blocks to NF4 with double quantization (the course's BitsAndBytesConfig),
        # one at a time so the 16-bit weights are freed as they go; the output head stays 16-bit.
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Linear) and "lm_head" not in f"{name}.{child_name}":
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=compute, compress_statistics=True, quant_type="nf4",
                                          device="meta")
                    q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                                 quant_type="nf4").to("cuda")
                    if child.bias is not None:
                        q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                    setattr(module, child_name, q)
                    del child
        _free()
        model.is_loaded_in_4bit = True
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.config.use_cache = False
    if method != "full":
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
        for p in model.parameters():  # fp32 adapters with 16-bit autocast (lora_lab.runtime.compat.keep_trainable_fp32)
            if p.requires_grad:
                p.data = p.data.float()
    return model, precision


def train_step(model, precision, vocab: int, seq_len: int, checkpointing: bool) -> tuple[int, int, float]:
    """One optimizer step of batch BATCH x seq_len in the course's recipe; (peak allocated, peak reserved, s)."""
    import torch

    from lora_lab.estimation import memory

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    batch = {k: v.cuda() for k, v in memory.random_batch(vocab, BATCH, seq_len, pad_last=seq_len // 8).items()}
    optimizer = memory.make_optimizer(model, OPTIMIZER)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.fp16)
    _free()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=precision.torch_compute_dtype):
        loss = model(**batch).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    del optimizer, batch, loss
    _free()
    return int(allocated), int(reserved), seconds


def run_cases(cases: list[Case], capability, deadline: float) -> list[dict]:
    import torch

    rows = []
    by_model: dict[tuple[str, str], list[Case]] = {}
    for case in cases:
        by_model.setdefault((case.model, case.method), []).append(case)
    # QLoRA for every preset first, then LoRA, then full: a spent time budget cuts the least telling cases.
    order = sorted(by_model.items(), key=lambda item: METHODS.index(item[0][1]))
    for (name, method), group in order:
        fields = [dict(model=c.model, method=c.method, seq_len=c.seq_len,
                       gradient_checkpointing=c.gradient_checkpointing, precision=c.precision) for c in group]
        if time.perf_counter() > deadline:
            rows += [_row("estimate", f, None, None, None, None, "skipped", "time budget spent") for f in fields]
            continue
        model, done = None, 0
        try:
            model, precision = build_model(name, method, capability)
            vocab = vram.preset_config(name)["vocab_size"]
            for case, f in zip(group, fields, strict=True):
                est = vram.estimate(case.model, **case.estimate_kwargs())
                try:
                    allocated, reserved, seconds = train_step(model, precision, vocab, case.seq_len,
                                                              case.gradient_checkpointing)
                    rows.append(_row("estimate", f, est, allocated, reserved, round(seconds, 3)))
                except torch.OutOfMemoryError:
                    _free()
                    rows.append(_row("estimate", f, est, None, None, None, "oom",
                                     f"out of memory; estimate was {est.total / GIB:.2f} GiB"))
                done += 1
                print(summary_line(rows[-1]), flush=True)
        except Exception as err:  # a model that cannot be built here: record and go on
            rows += [_row("estimate", f, None, None, None, None, "error", f"{type(err).__name__}: {err}"[:200])
                     for f in fields[done:]]
            print(f"{name} {method}: {type(err).__name__}: {err}", flush=True)
        finally:
            del model
            _free()
    return rows


def rehearsal_full_size(workdir: str, steps: int = 10) -> dict:
    """The t4 profile's QLoRA run through lora_lab.training.train.sft on Qwen2.5-1.5B's real architecture, capped at 14.74 GiB."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_lab.estimation import t4_budget
    from lora_lab.runtime import hardware, profiles
    from lora_lab.standins import rehearsal, standin_data
    from lora_lab.training import data, models, train

    folder = os.path.join(workdir, "qwen2.5-1.5b-random")
    cfg_dict = vram.preset_config("Qwen/Qwen2.5-1.5B")
    cfg = AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if not k.startswith("_")})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(folder)
    rehearsal.build_tokenizer().save_pretrained(folder)  # ChatML, ids within the real vocabulary
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, T4_CAP_BYTES / total))
    fields = dict(model="Qwen/Qwen2.5-1.5B (t4 profile)", method="qlora", seq_len=512, gradient_checkpointing=True,
                  precision="")
    try:
        hw = hardware.detect()
        profile = profiles.PROFILES["t4"].replace(model_id=folder, max_steps=steps, logging_steps=1, save_steps=steps + 1)
        fields["precision"] = "fp16" if models.decide_precision(hw, "qlora").fp16 else "bf16"
        # The 03 run's shapes: its batch, accumulation, length cap and checkpointing, on rows of the SQL task's
        # real lengths (lora_lab.estimation.t4_budget plans with their token count); the tokens/s measured here is what
        # replaces the plan's figure.
        rows = standin_data.sql_rows(profile.effective_batch * steps)
        from datasets import Dataset

        splits = data.normalise(Dataset.from_list(rows), standin_data.SQL_ID)
        model, tokenizer = train.load_model_and_tokenizer(profile, "qlora", hw=hw, model_path=folder)
        result = train.sft(model, tokenizer, splits, profile, os.path.join(workdir, "ckpt"), hw=hw, verbose=False)
        est = vram.estimate("Qwen/Qwen2.5-1.5B", method="qlora", rank=profile.lora_r, lora_alpha=profile.lora_alpha,
                            target_modules="all-linear", batch_size=profile.batch_size,
                            seq_len=result.data_report.longest_kept, gradient_checkpointing=True,
                            optimizer=profile.optimizer, precision=fields["precision"], lora_dropout=profile.lora_dropout)
        fields["seq_len"] = result.data_report.longest_kept
        step_s = result.metrics["train_runtime_s"] / max(1, result.metrics["global_step"])
        row = _row("rehearsal", fields, est, result.metrics["peak_allocated_bytes"],
                   result.metrics["peak_reserved_bytes"], round(step_s, 3),
                   note=f"capped at {T4_CAP_BYTES / GIB:.2f} GiB; {result.metrics['global_step']} steps of batch "
                        f"{profile.batch_size}x{profile.grad_accum}; {result.metrics['train_tokens_per_s']:.0f} training "
                        f"tokens/s (lora_lab.estimation.t4_budget plans a T4 at "
                        f"{t4_budget.FIGURES['train_tokens_per_s'].value:g})")
    except torch.OutOfMemoryError as err:
        row = _row("rehearsal", fields, None, None, None, None, "oom", str(err).splitlines()[0][:200])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        _free()
    print(summary_line(row), flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three presets, one sequence length")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new models after this long")
    parser.add_argument("--csv", default=None, help="output path (default benchmarks/results/gpu_check_<gpu>.csv)")
    parser.add_argument("--no-rehearsal", action="store_true", help="skip the full-size t4 rehearsal case")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NEEDS_CUDA)
        return 2
    import tempfile
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    start = time.perf_counter()
    props = torch.cuda.get_device_properties(0)
    capability = (props.major, props.minor)
    free, _total = torch.cuda.mem_get_info()
    print(f"{props.name}: compute capability {props.major}.{props.minor}, {free / GIB:.1f} GiB free", flush=True)
    rows = []
    if not args.no_rehearsal:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(rehearsal_full_size(tmp))
    cases, skipped = plan_cases(free, capability, quick=args.quick)
    for case_label, why in skipped:
        print(f"skipped   {case_label}: {why}")
    rows += run_cases(cases, capability, deadline=start + args.budget_s)
    gpu = props.name.replace(" ", "_").replace("/", "_")
    path = write_csv(rows, args.csv or os.path.join(RESULTS, f"gpu_check_{gpu}.csv"))
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{ok}/{len(rows)} cases ran in {time.perf_counter() - start:.0f} s; wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
