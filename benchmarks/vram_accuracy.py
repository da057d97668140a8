"""How close is `lora_lab.estimation.vram.estimate` to a real training step? Predicted vs measured, per category.

Runs a grid of real architectures from the shipped presets (Qwen2.5-0.5B: biases on q/k/v, tied
head; Llama-3.2-1B: grouped-query attention; Gemma-2-2B: four norms per block, softcapped eager
attention, head_dim != hidden/heads; Phi-3-mini: fused qkv and gate/up projections)
x depth {1, 2, 3, 4 layers} (so both the per-layer slope and the fixed cost are checked)
x {full, lora, qlora} x gradient checkpointing {off, on}
x every precision the course and the calculator offer:

- `fp32`: everything in fp32 (the cpu profile).
- `bf16`, `fp16`: the base loaded in 16-bit, peft's LoRA matrices in fp32 (its default, and the
  course's), forward and loss under `torch.autocast` as the Trainer runs them with `bf16=True` /
  `fp16=True`. QLoRA: NF4 base with that compute dtype, `prepare_model_for_kbit_training` (every
  other weight upcast to fp32).
- `bf16-pure`, `fp16-pure`: the same models without autocast (pure 16-bit loading: peft casts
  each adapted layer's 16-bit input to fp32 and keeps that copy). Not run for full fine-tuning,
  where it is the same step as `bf16`/`fp16`.
- `mixed`: fp32 weights with bf16 autocast (the course's full fine-tuning on a GPU); full only.

Each run builds the model with random weights exactly as the course trains it
(`memory.build_training_model`: peft LoRA r16 on all linear layers, bitsandbytes NF4 with double
quantization for QLoRA, AdamW), runs one step on the CPU on a padded batch of 2 x 128 tokens, and
counts each category exactly (`memory.measure_step`: parameters, gradients, optimizer state, and
the tensors autograd saves for backward, caught with saved-tensor hooks).

CPU shrink: widths (hidden, intermediate, head_dim) are divided by 8 and the vocabulary by 32
(`--width-divisor`, `--vocab-divisor`). Head counts, grouped-query ratios, biases, norms, fused
projections and tying are kept: the layer structure is the real one.

Pass criteria (issue 13): parameter and trainable counts exact; weights, gradients and optimizer
bytes within 3%; activations within 10% of the measured saved bytes.

    .venv/bin/python benchmarks/vram_accuracy.py                  # the whole grid, writes the CSV
    .venv/bin/python benchmarks/vram_accuracy.py --layers 1,4 --precisions bf16,fp16-pure  # a subset
    .venv/bin/python benchmarks/vram_accuracy.py --quick          # 12 runs of one model
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import time
import warnings

from lora_lab.estimation import memory, vram

MODELS = ("Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "google/gemma-2-2b", "microsoft/Phi-3-mini-4k-instruct")
METHODS = ("full", "lora", "qlora")
#: precision label -> (estimator precision, autocast); labels ending in -pure run without autocast
PRECISIONS = {"fp32": ("fp32", False), "bf16": ("bf16", True), "bf16-pure": ("bf16", False),
              "fp16": ("fp16", True), "fp16-pure": ("fp16", False), "mixed": ("mixed", True)}
TOLERANCE = {"weights": 0.03, "gradients": 0.03, "optimizer_states": 0.03, "activations": 0.10}
DEFAULT_CSV = os.path.join(os.path.dirname(__file__), "results", "vram_accuracy_cpu.csv")


def runs_for(method: str) -> list[str]:
    """The precisions that make a distinct step for `method`."""
    if method == "full":
        return ["fp32", "bf16", "fp16", "mixed"]
    return ["fp32", "bf16", "bf16-pure", "fp16", "fp16-pure"]


def grid(models, layers, quick: bool, precisions=tuple(PRECISIONS)):
    if quick:
        yield from (("meta-llama/Llama-3.2-1B", 2, m, p, ck) for m in METHODS for p in ("bf16", "fp16-pure")
                    for ck in (False, True))
        return
    for name, n, method, ck in itertools.product(models, layers, METHODS, (False, True)):
        for prec in runs_for(method):
            if prec in precisions:
                yield name, n, method, prec, ck


def check(row: dict) -> list[str]:
    """The pass criteria a row misses (empty when it passes)."""
    fails = [kind for kind in ("total_params", "trainable_params")
             if row[f"measured_{kind}"] != row[f"predicted_{kind}"]]
    return fails + [cat for cat, tol in TOLERANCE.items() if abs(row[f"error_{cat}"]) > tol]


def summary(rows: list[dict]) -> list[str]:
    """Largest |error| per category and precision, and the pass count."""
    lines = [f"{'precision':<11}{'runs':>5}{'pass':>5}  " + "  ".join(f"{c[:11]:>11}" for c in memory.CATEGORIES)]
    for prec in PRECISIONS:
        sub = [r for r in rows if r["precision_label"] == prec]
        if sub:
            worst = "  ".join(f"{100 * max(abs(r[f'error_{c}']) for r in sub):10.2f}%" for c in memory.CATEGORIES)
            lines.append(f"{prec:<11}{len(sub):>5}{sum(r['pass'] for r in sub):>5}  {worst}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 runs of one model instead of the whole grid")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated preset names")
    parser.add_argument("--layers", default="1,2,3,4", help="comma-separated depths")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated precision labels")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--width-divisor", type=int, default=8)
    parser.add_argument("--vocab-divisor", type=int, default=32)
    parser.add_argument("--out", default=DEFAULT_CSV, help="CSV to write")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    rows, failures = [], 0
    t0 = time.perf_counter()
    print(f"{'model':<14}{'L':>2} {'method':<6}{'precision':<10}{'ckpt':<5} counts  "
          + "  ".join(f"{c[:10]:>10}" for c in memory.CATEGORIES), flush=True)
    layers = [int(x) for x in args.layers.split(",")]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    out, writer = open(args.out, "w", newline=""), None  # written row by row: an interrupted run keeps its rows
    for name, n, method, prec, ckpt in grid(args.models.split(","), layers, args.quick, args.precisions.split(",")):
        cfg = memory.shrink_config(vram.preset_config(name), layers=n, width_divisor=args.width_divisor,
                                   vocab_divisor=args.vocab_divisor)
        precision, autocast = PRECISIONS[prec]
        row = memory.compare(cfg, method, batch_size=args.batch_size, seq_len=args.seq_len,
                             gradient_checkpointing=ckpt, precision=precision, autocast=autocast)
        row.update(model=name, layers=n, precision_label=prec)
        fails = check(row)
        row["pass"] = not fails
        failures += bool(fails)
        rows.append(row)
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(row))
            writer.writeheader()
        writer.writerow(row)
        out.flush()
        counts = "exact " if not {"total_params", "trainable_params"} & set(fails) else "WRONG "
        errs = "  ".join(f"{100 * row[f'error_{c}']:+9.2f}%" for c in memory.CATEGORIES)
        print(f"{name.split('/')[-1][:13]:<14}{n:>2} {method:<6}{prec:<10}{'on' if ckpt else 'off':<5} {counts} "
              f"{errs}{'' if not fails else '  FAIL: ' + ', '.join(fails)}", flush=True)
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s; {len(rows) - failures} pass. Largest |error|:")
    print("\n".join(summary(rows)))
    out.close()
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
