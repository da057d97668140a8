"""Notebook 05's specialists against their bars, over seeds: how much room each bar leaves.

    python benchmarks/specialist_bars.py --seeds 0 1 2
    ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 \\
        LORA_LAB_CACHE=$(mktemp -d) python benchmarks/specialist_bars.py --seeds 0 1 2   # another instruction set

Each seed trains notebook 05's three specialists on the cpu profile (the tiny Llama, `adapters.default_recipes`,
the profile's seed replaced: other training rows, another initialisation, other held-out examples), scores every adapter and the base on
`adapters.held_out_size(profile)` (100) held-out examples per task, and judges them as notebook 05 does. One line per specialist is
appended to benchmarks/results/specialist_bars.csv with the instruction set torch used; `room` is the smallest of
the three distances to the bar (score - minimum, score - base - margin, score - best other - lead), so a
negative room is a failed bar.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from results_csv import append_row

RESULTS = Path(__file__).resolve().parent / "results" / "specialist_bars.csv"
FIELDS = ["date", "cpu_capability", "seed", "n_eval", "task", "score", "base", "best_other", "best_other_score",
          "room", "passed"]


def main() -> int:
    import torch

    from lora_lab.experiments import adapters
    from lora_lab.runtime import profiles

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    for seed in args.seeds:
        profile = profiles.quick_profile(profiles.get_profile("cpu")).replace(seed=seed)  # as notebook 05
        recipes = adapters.default_recipes(profile)
        runs = {task: adapters.train_specialist(profile, recipe) for task, recipe in recipes.items()}
        model, tokenizer = adapters.load_specialists(profile, {t: r.adapter_dir for t, r in runs.items()}, "lora")
        evals = adapters.held_out_sets(profile, list(runs))
        scores = adapters.score_table(model, tokenizer, evals, ["__base__", *runs], profile)
        for task, v in adapters.judge_specialists(scores, adapters.specialist_bars(profile)).items():
            room = min(v.score - v.bar.min_score, v.score - v.base_score - v.bar.margin,
                       v.score - v.best_other_score - v.bar.lead)
            row = {"date": time.strftime("%Y-%m-%d"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "seed": seed, "n_eval": adapters.held_out_size(profile), "task": task, "score": round(v.score, 3),
                   "base": round(v.base_score, 3), "best_other": v.best_other,
                   "best_other_score": round(v.best_other_score, 3), "room": round(room, 3), "passed": v.passed}
            append_row(RESULTS, FIELDS, row)
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
