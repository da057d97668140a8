"""Notebook 07's head-to-head on the cpu profile: each variant's verdict against plain LoRA, on this instruction set.

    LORA_LAB_CACHE=$(mktemp -d) python benchmarks/variant_verdicts.py
    ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 \\
        LORA_LAB_CACHE=$(mktemp -d) python benchmarks/variant_verdicts.py   # another instruction set

Runs `variants.head_to_head` as notebook 07 does (with a fresh cache it trains every run: about 5 minutes on 2
cores) and appends one line per variant to benchmarks/results/variant_verdicts.csv with the instruction set torch
used: the learning rate its search kept, its mean held-out loss over the seeds, its seed-to-seed range, and the
verdict of `lessons.verdicts` against plain LoRA (the method named better, or "none" when the gap is within the
spread). A verdict the notebook prints holds when both instruction sets give the same one.
"""

from __future__ import annotations

import time
from pathlib import Path

from results_csv import append_row

RESULTS = Path(__file__).resolve().parent / "results" / "variant_verdicts.csv"
FIELDS = ["date", "cpu_capability", "variant", "lr", "mean_loss", "range", "gap_to_lora", "spread", "better",
          "seconds"]


def main() -> int:
    import torch

    from lora_lab.experiments import variants
    from lora_lab.runtime import profiles

    start = time.perf_counter()
    result = variants.head_to_head(profiles.get_profile("cpu"), verbose=False)
    seconds = round(time.perf_counter() - start)
    verdicts = variants.verdicts_against(result["runs"])
    for name, runs in variants.runs_at_chosen(result["runs"]).items():
        losses = [r["eval_loss"] for r in runs]
        verdict = verdicts.get(name)
        row = {"date": time.strftime("%Y-%m-%d"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "variant": name, "lr": result["chosen"][name], "mean_loss": round(sum(losses) / len(losses), 4),
               "range": round(max(losses) - min(losses), 4),
               "gap_to_lora": round(verdict.gap, 4) if verdict else "",
               "spread": round(verdict.spread, 4) if verdict and verdict.spread is not None else "",
               "better": (verdict.better or "none") if verdict else "", "seconds": seconds}
        append_row(RESULTS, FIELDS, row)
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
