"""How close is `lora_lab.vram.estimate` to a real training step? Predicted vs measured, per category.

Runs a matrix of real architectures from the shipped presets (Qwen2.5-0.5B: biases on q/k/v,
tied head; Llama-3.2-1B: grouped-query attention; Gemma-2-2B: four norms per block, softcapped
eager attention, head_dim != hidden/heads; Phi-3-mini: fused qkv and gate/up projections) x
{full, lora, qlora} x gradient checkpointing {off, on} x seq {128, 512} x batch {1, 2}. Each run
builds the model with random weights exactly as the course trains it (`memory.build_training_model`:
peft LoRA r16 on all linear layers, bitsandbytes NF4 with double quantization and
`prepare_model_for_kbit_training` for QLoRA, AdamW), runs one step in fp32 on the CPU, and counts
each category exactly (`memory.measure_step`).

CPU shrink: to keep a 2-core machine responsive, every model is cut to 2 layers, its widths
(hidden, intermediate, head_dim) are divided by 8 and its vocabulary by 16 (`--width-divisor`,
`--vocab-divisor`, `--layers` change that). Head counts, grouped-query ratios, biases, norms,
fused projections and tying are kept: the layer structure is the real one.

Pass criteria (issue 3): parameter and trainable counts exact; weights, gradients and optimizer
bytes within 2%; activations within 15% of the measured saved bytes.

    .venv/bin/python benchmarks/vram_accuracy.py            # full matrix, writes the CSV
    .venv/bin/python benchmarks/vram_accuracy.py --quick    # 6 runs
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import time
import warnings

from lora_lab import memory, vram

MODELS = ("Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "google/gemma-2-2b", "microsoft/Phi-3-mini-4k-instruct")
METHODS = ("full", "lora", "qlora")
TOLERANCE = {"weights": 0.02, "gradients": 0.02, "optimizer_states": 0.02, "activations": 0.15}
DEFAULT_CSV = os.path.join(os.path.dirname(__file__), "results", "vram_accuracy_cpu.csv")


def matrix(quick: bool):
    if quick:
        yield from (("meta-llama/Llama-3.2-1B", m, ck, 128, 2) for m in METHODS for ck in (False, True))
        return
    yield from itertools.product(MODELS, METHODS, (False, True), (128, 512), (1, 2))


def check(row: dict) -> list[str]:
    """The pass criteria a row misses (empty when it passes)."""
    fails = []
    for kind in ("total_params", "trainable_params"):
        if row[f"measured_{kind}"] != row[f"predicted_{kind}"]:
            fails.append(kind)
    fails += [cat for cat, tol in TOLERANCE.items() if abs(row[f"error_{cat}"]) > tol]
    return fails


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 runs of one model instead of the whole matrix")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width-divisor", type=int, default=8)
    parser.add_argument("--vocab-divisor", type=int, default=16)
    parser.add_argument("--out", default=DEFAULT_CSV, help="CSV to write")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows, failures = [], 0
    t0 = time.perf_counter()
    header = f"{'model':<24}{'method':<7}{'ckpt':<5}{'seq':>5}{'b':>3}  counts  " + "  ".join(
        f"{c[:10]:>10}" for c in memory.CATEGORIES)
    print(header)
    for name, method, ckpt, seq, batch in matrix(args.quick):
        cfg = memory.shrink_config(vram.preset_config(name), layers=args.layers, width_divisor=args.width_divisor,
                                   vocab_divisor=args.vocab_divisor)
        row = memory.compare(cfg, method, batch_size=batch, seq_len=seq, gradient_checkpointing=ckpt)
        row["model"] = name
        fails = check(row)
        row["pass"] = not fails
        failures += bool(fails)
        rows.append(row)
        counts = "exact " if row["measured_total_params"] == row["predicted_total_params"] and \
            row["measured_trainable_params"] == row["predicted_trainable_params"] else "WRONG "
        errs = "  ".join(f"{100 * row[f'error_{c}']:+9.2f}%" for c in memory.CATEGORIES)
        print(f"{name.split('/')[-1][:23]:<24}{method:<7}{'on' if ckpt else 'off':<5}{seq:>5}{batch:>3}  {counts}  "
              f"{errs}{'' if not fails else '  FAIL: ' + ', '.join(fails)}", flush=True)
    worst = {c: max(abs(r[f"error_{c}"]) for r in rows) for c in memory.CATEGORIES}
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s; {len(rows) - failures} pass. Largest |error|: "
          + ", ".join(f"{c} {100 * v:.2f}%" for c, v in worst.items()))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
