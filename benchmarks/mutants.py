"""Plant plausible bugs one at a time in a copy of the package, run the tests that should catch each,
and report which were caught (`make mutants`; the report is benchmarks/results/mutants.md).

A test suite is only as good as the bugs it catches. Each mutant below is a mistake someone could
make while editing: a checkpoint picked by string order, a label on the wrong turn, the first
"the answer is" instead of the last, an estimator term dropped. The script copies `src/`, `tests/`
and `pyproject.toml` to a temporary folder, then for each mutant replaces one exact piece of code,
runs the listed test files there (the copy's package first on the path), and restores the file.
A mutant is caught when the tests fail. The unmutated copy must pass first, or nothing is reported.

    python benchmarks/mutants.py             # all mutants, writes benchmarks/results/mutants.md
    python benchmarks/mutants.py --only 3 7  # some of them, report printed only
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "results" / "mutants.md"
FAST = ("tests/test_units.py",)  # seconds; every mutant runs these, plus its own files


@dataclass(frozen=True)
class Mutant:
    area: str  # what kind of logic the bug is in
    path: str  # the file, relative to src/lora_lab
    old: str  # the exact code replaced (must occur in the file)
    new: str  # the bug
    bug: str  # the bug in words
    tests: tuple[str, ...] = ()  # test files to run besides FAST


MUTANTS = [
    Mutant("checkpoints", "training/checkpoints.py", "key=step_of, reverse=True", "key=lambda p: p.name, reverse=True",
           "newest checkpoint chosen by string order (checkpoint-9 after checkpoint-10)"),
    Mutant("checkpoints", "training/checkpoints.py", '    if not any(folder.glob("rng_state*.pth")):',
           "    if False:", "a checkpoint without its RNG state accepted"),
    Mutant("checkpoints", "training/checkpoints.py", "    for name in STATE_FILES:", "    for name in STATE_FILES[:1]:",
           "a checkpoint without scheduler.pt accepted"),
    Mutant("checkpoints", "training/checkpoints.py", 'r"^checkpoint-(\\d+)$"', 'r"^checkpoint-(\\d+)"',
           "checkpoint-12-old taken for a checkpoint"),
    Mutant("checkpoints", "training/checkpoints.py", "saved_rank is None or saved_rank == want_rank",
           "saved_rank is None or True", "resuming with another LoRA rank allowed"),
    Mutant("label masking", "training/sft_data.py",
           'last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")',
           'last = min(j for j, m in enumerate(messages) if m["role"] == "assistant")',
           "labels on the first assistant turn of a multi-turn conversation"),
    Mutant("label masking", "lessons/sft.py", "    return [IGNORE_INDEX] * start + list(full_ids[start:])",
           "    return [IGNORE_INDEX] * (start + 1) + list(full_ids[start + 1:])",
           "the answer's first token masked too (off by one)"),
    Mutant("label masking", "lessons/sft.py", "    target = torch.full_like(input_ids, IGNORE_INDEX)",
           "    target = input_ids.clone()", "padding carries loss (padded labels are the pad id)"),
    Mutant("label masking", "lessons/sft.py", "    mask = torch.zeros_like(input_ids)", "    mask = torch.ones_like(input_ids)",
           "attention mask 1 on padding"),
    Mutant("label masking", "lessons/sft.py", 'return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())',
           'return int((batch["labels"] != IGNORE_INDEX).sum())', "answer tokens counted from position 0"),
    Mutant("label masking", "lessons/sft.py", "            rng.shuffle(more)", "            pass",
           "batches never shuffled"),
    Mutant("scoring", "lessons/scoring.py", "normalise_number(phrases[-1].group(1))", "normalise_number(phrases[0].group(1))",
           'the first "the answer is" taken instead of the last'),
    Mutant("scoring", "lessons/scoring.py", 'start = text.rfind("\\\\boxed{")', 'start = text.find("\\\\boxed{")',
           "the first \\boxed{} taken instead of the last"),
    Mutant("scoring", "lessons/scoring.py", '        number = number.rstrip("0").rstrip(".")', "        number = number",
           "12.00 and 12 scored as different numbers"),
    Mutant("scoring", "lessons/scoring.py", '    text = re.sub(r"(?<=\\d),(?=\\d{3}\\b)", "", text)\n', "",
           "thousands separators not removed from short answers"),
    Mutant("SQL", "lessons/scoring.py", """tokens.append("'" + tok[1:-1] + "'")""",
           """tokens.append("'" + tok[1:-1].lower() + "'")""", "string literals compared without case"),
    Mutant("SQL", "lessons/scoring.py", '        elif ch == ";":\n            return sql[:i]',
           '        elif ch == ";":\n            pass', "prose after the query's semicolon kept"),
    Mutant("SQL", "standins/sql_task.py", "return got == want if ordered else Counter(got) == Counter(want)",
           "return Counter(got) == Counter(want)", "ORDER BY ignored by execution match"),
    Mutant("NF4", "lessons/code_books.py", "torch.linspace(offset, 0.5, 8)[:-1]", "torch.linspace(offset, 0.5, 9)[:-1]",
           "eight negative NF4 levels (the code book loses its asymmetry)", ("tests/test_quant.py",)),
    Mutant("NF4", "lessons/code_books.py", "order[torch.bucketize(scaled, midpoints)]",
           "order[torch.bucketize(scaled, midpoints, right=True)]", "a value on a midpoint rounds up",
           ("tests/test_quant.py",)),
    Mutant("NF4", "lessons/nf4.py", "return (codes[0::2] << 4) | codes[1::2]", "return (codes[1::2] << 4) | codes[0::2]",
           "the first code in the low nibble", ("tests/test_quant.py",)),
    Mutant("NF4", "lessons/counting.py", "return Storage(n, codes, 32 * blocks, 0, constants)",
           "return Storage(n, codes, 16 * blocks, 0, constants)", "absmax counted as 16-bit", ("tests/test_quant.py",)),
    Mutant("NF4", "lessons/nf4.py", "    centred = absmax - offset", "    centred = absmax",
           "double quantization without centring on the mean", ("tests/test_quant.py",)),
    Mutant("estimator", "lessons/activation_memory.py", "        first = first_block_savings(st)", "        first = {}",
           "the first block's savings dropped"),
    Mutant("estimator", "lessons/activation_memory.py",
           'terms["rope"] = 2 * st.seq_len * arch.head_dim * st.residual_width', 'terms["rope"] = 0',
           "RoPE's cos and sin dropped"),
    Mutant("estimator", "lessons/activation_memory.py",
           'if st.method == "qlora" else 0\n    peak', 'if False else 0\n    peak',
           "QLoRA's dequantization transient dropped"),
    Mutant("estimator", "lessons/step_memory.py", "lora = 4 * lora_total_params(st)", "lora = 2 * lora_total_params(st)",
           "LoRA matrices counted in 16 bits"),
    Mutant("estimator", "lessons/step_memory.py", "        if n < OPT8_MIN_SIZE:", "        if False:",
           "8-bit Adam's 32-bit states for small tensors dropped"),
    Mutant("exercises", "classroom/exercises.py", "        if missing or extra:", "        if missing:",
           "an answer with extra keys accepted"),
    Mutant("exercises", "classroom/exercises.py",
           "        if given_norm == (_normal_text(right) if isinstance(right, str) else right):",
           "        if str(given_norm).endswith(str(_normal_text(right) if isinstance(right, str) else right)):",
           "a dtype matched by its ending (bfloat16 taken for float16)"),
    Mutant("exercises", "classroom/feedback.py", "math.isclose(given, right, rel_tol=rel_tol, abs_tol=1e-12)",
           "math.isclose(given, right, rel_tol=max(rel_tol, 0.05), abs_tol=1e-12)",
           "exact answers accepted within 5%"),
    Mutant("quizzes", "classroom/quiz.py",
           "        hint = f\"Not this one: {self._why(int(choice))}\"\n        if attempt >= TRIES_BEFORE_ANSWER:",
           "        hint = f\"Not this one: {self._why(int(choice))}\"\n        if attempt >= TRIES_BEFORE_ANSWER - 1:",
           "the answer shown after two wrong tries"),
    Mutant("quizzes", "classroom/feedback.py", "math.isclose(given, right, rel_tol=rel_tol, abs_tol=1e-12)",
           "math.isclose(given, right, rel_tol=rel_tol, abs_tol=1)", "exact counts accepted when off by one"),
    Mutant("quizzes", "classroom/feedback.py", "    if 0 < abs(right) <= 1 and near(given / 100):", "    if False:",
           "a percentage given for a fraction not named as such"),
    Mutant("run folders", "training/run_folder.py", "        if found and not resume and not overwrite:",
           "        if False:", "a folder holding another run silently reused", ("tests/test_run_folder.py",)),
    Mutant("run folders", "training/run_folder.py", "            if pid and pid != os.getpid() and _alive(pid):",
           "            if False:", "a second live run into the same folder allowed", ("tests/test_run_folder.py",)),
    Mutant("checkpoints", "training/checkpoints.py",
           '    if not isinstance(recorded, dict) or not isinstance(recorded.get("global_step"), int):',
           "    if False:", "a checkpoint with an empty trainer_state.json accepted"),
    Mutant("data", "training/data.py", "            if not isinstance(row.get(name), str) or not row[name].strip():",
           "            if False:", "rows with null fields passed on to be reshaped"),
    Mutant("exercises", "classroom/exercises.py", "        if self.mistake is not None and _is_the_mistake(",
           "        if False and _is_the_mistake(", "an exercise's most common mistake told only 'too high'",
           ("tests/test_exercises.py::test_the_most_common_mistake_gets_its_own_hint",)),
    Mutant("quizzes", "classroom/quiz.py", "        if self.mistake is not None and math.isclose(",
           "        if False and math.isclose(", "a quiz's most common wrong number told only 'too low'",
           ("tests/test_quiz.py::test_the_most_common_wrong_number_gets_its_own_hint",)),
    Mutant("summaries", "experiments/adapters.py", "    short = [v.bar.task for v in verdicts.values() if not v.passed]",
           "    short = []", "05's Takeaways say every specialist passed when one fell short",
           ("tests/test_adapters.py::test_bars_pass_fail_and_are_not_judged_in_a_rehearsal",)),
    Mutant("verdicts", "lessons/verdicts.py", "self.gap > self.spread", "self.gap >= self.spread",
           "a gap equal to the seed-to-seed spread called a measured difference",
           ("tests/test_verdicts.py",)),
    Mutant("verdicts", "lessons/verdicts.py", "        return max(max(v) - min(v) for v in (self.values_a, self.values_b))",
           "        return min(max(v) - min(v) for v in (self.values_a, self.values_b))",
           "the spread taken from the steadier side, so noisy runs get verdicts",
           ("tests/test_verdicts.py",)),
    Mutant("verdicts", "experiments/rank.py", '    return [row[key]] + [r[key] for r in runs if r["group"] == "repeat"',
           '    return [row[key]] + [r[key] for r in runs if r["group"] == "repeat" and r["seed"] == 1',
           "02's verdicts read two seeds of each run, so no spread is ever measured",
           ("tests/test_rank.py::test_the_sweeps_verdicts_rank_by_the_mean_and_call_a_rank_good_inside_the_spread",)),
    Mutant("run order", "classroom/run_order.py", "        if name in names:", "        if name:",
           "a mistyped name told to run an earlier cell instead of Python's own message",
           ("tests/test_run_order.py::test_the_handler_answers_a_known_name_in_one_line_and_keeps_pythons_message_for_a_typo",)),
]


def run_tests(copy: Path, files, env) -> tuple[bool, str]:
    """(passed, first failing test or error line) for the test files in the copy."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files],
                          cwd=copy, env=env, capture_output=True, text=True)
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.M)
    detail = failed.group(1) if failed else (done.stdout.strip().splitlines() or [""])[-1]
    return done.returncode == 0, detail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="*", help="mutant numbers (1-based) to run")
    args = parser.parse_args(argv)
    chosen = [(i, m) for i, m in enumerate(MUTANTS, 1) if not args.only or i in args.only]
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        copy = Path(tmp)
        shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copytree(ROOT / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", copy)
        env = {**os.environ, "PYTHONPATH": str(copy / "src"), "MPLBACKEND": "Agg"}
        baseline_files = sorted({f for _, m in chosen for f in (*FAST, *m.tests)})
        ok, detail = run_tests(copy, baseline_files, env)
        if not ok:
            print(f"the unmutated copy fails its tests ({detail}): fix that first", file=sys.stderr)
            return 2
        rows = []
        for number, mutant in chosen:
            target = copy / "src" / "lora_lab" / mutant.path
            original = target.read_text()
            if original.count(mutant.old) < 1:
                print(f"mutant {number}: the code to replace is not in {mutant.path}", file=sys.stderr)
                return 2
            target.write_text(original.replace(mutant.old, mutant.new, 1))
            start = time.perf_counter()
            try:
                passed, detail = run_tests(copy, (*FAST, *mutant.tests), env)
            finally:
                target.write_text(original)
            rows.append((number, mutant, not passed, detail, time.perf_counter() - start))
            print(f"{number:>2} {'caught ' if not passed else 'MISSED '} {mutant.area:<14} {mutant.bug}"
                  f"{'  <- ' + detail if not passed else ''}", flush=True)
    caught = sum(r[2] for r in rows)
    print(f"\n{caught} of {len(rows)} planted bugs caught")
    if not args.only:
        lines = ["# Planted bugs and the tests that catch them", "",
                 f"`python benchmarks/mutants.py` (`make mutants`): {caught} of {len(rows)} caught. Each bug is "
                 "planted alone in a copy of the package; the tests run are `tests/test_units.py` plus the files named.",
                 "", "| # | area | bug | file | caught by | seconds |", "|---|---|---|---|---|---|"]
        for number, mutant, was_caught, detail, seconds in rows:
            lines.append(f"| {number} | {mutant.area} | {mutant.bug} | `{mutant.path}` | "
                         f"{('`' + detail + '`') if was_caught else '**missed**'} | {seconds:.0f} |")
        REPORT.write_text("\n".join(lines) + "\n")
        print(f"wrote {REPORT.relative_to(ROOT)}")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
