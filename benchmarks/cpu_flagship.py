"""The cpu profile's flagship run, measured: held-out exact and execution match before and after, and time.

    python benchmarks/cpu_flagship.py                         # the profile as shipped, seed 0
    python benchmarks/cpu_flagship.py --seeds 0 1 --max-steps 36 --learning-rate 2e-3
    ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 \\
        LORA_LAB_CACHE=$(mktemp -d) python benchmarks/cpu_flagship.py   # another instruction set

Each run is `lora_lab.training.train.run_pipeline` on the cpu profile (SmolLM2-135M-Instruct, QLoRA, the generated
text-to-SQL rows, held-out schemas), as `python -m lora_lab.training.train --profile cpu` runs it, without the merge.
One line per run is appended to benchmarks/results/cpu_flagship.csv with the instruction set torch used.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from results_csv import append_row

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_flagship.csv"
FIELDS = ["date", "cpu_capability", "seed", "max_steps", "learning_rate", "exact_match_before", "exact_match_after",
          "execution_match_before", "execution_match_after", "train_runtime_s", "total_s"]


def main() -> int:
    import torch

    from lora_lab.runtime import profiles
    from lora_lab.training import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    args = parser.parse_args()
    profile = profiles.get_profile("cpu")
    for seed in args.seeds:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            metrics = train.run_pipeline(profile, output_dir=out, seed=seed, max_steps=args.max_steps,
                                         learning_rate=args.learning_rate, merge=False, verbose=False)
        row = {"date": time.strftime("%Y-%m-%d"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "seed": seed, "max_steps": args.max_steps or profile.max_steps,
               "learning_rate": args.learning_rate or profile.learning_rate,
               **{k: round(metrics[k], 4) for k in FIELDS[5:10]}, "total_s": round(time.perf_counter() - started)}
        append_row(RESULTS, FIELDS, row)
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
