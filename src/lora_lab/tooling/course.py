"""Course-level commands behind the Makefile: run every notebook, check the notebook pairs.

    python -m lora_lab.tooling.course run     # execute notebooks/NN_*.ipynb in order into build/notebooks/
    python -m lora_lab.tooling.course check   # every .py has its .ipynb twin, same cells, no outputs
    python -m lora_lab.tooling.course strip   # remove outputs and execution counts from notebooks/*.ipynb
    python -m lora_lab.tooling.course exercises  # learner notebooks, docs/answer-key.md, run_order.json, the
                                                 # instructor guide's reading table
    python -m lora_lab.tooling.course check-learners  # both up to date with the lessons (CI)
    python -m lora_lab.tooling.course figures    # every figure of the course as PNG + SVG into build/figures/
    python -m lora_lab.tooling.course out-of-order  # each cell that needs an earlier one, run alone after setup

`run` prints one line per notebook (name, seconds, ok/failed) and exits non-zero if any failed;
a failed notebook's executed copy is still written, with the error in it, so nothing is lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lora_lab.classroom import reading, run_order

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build" / "notebooks"
#: Learner notebooks, committed: each lesson with its solution cells replaced by placeholders.
LEARNERS = NOTEBOOKS / "learners"
#: The answer key, committed: every exercise's statement and solution, generated from the lessons.
ANSWER_KEY = ROOT / "docs" / "answer-key.md"
#: The instructor guide: its reading table is generated from the lessons (`lora_lab.classroom.reading`).
GUIDE = ROOT / "docs" / "instructor-guide.md"
FIGURES = ROOT / "build" / "figures"
REHEARSAL = ROOT / "build" / "rehearsal"
#: Cells tagged so hold an exercise's solution; learner copies replace their code.
SOLUTION_TAG = "solution"
#: A cell tagged so shows stderr on purpose and explains it; `unexplained_stderr` skips it.
STDERR_TAG = "stderr-explained"
#: Tag of a learner notebook's placeholder cell (where the solution cell was).
EXERCISE_TAG = "exercise"
#: The answer variable a solution cell assigns: answer_02_3 for exercise 02.3.
ANSWER_VARIABLE = re.compile(r"^(answer_(\d\d)_(\d+))\s*=", re.MULTILINE)
#: Prepended to a notebook by `figures`: every figure shown, or left open at a cell's end, is saved.
FIGURE_HOOK = """import matplotlib
matplotlib.use("module://lora_lab.tooling.figure_backend")
from lora_lab.tooling import figure_backend
get_ipython().events.register("post_execute", figure_backend.show)"""


def notebook_sources(folder: Path = NOTEBOOKS) -> list[Path]:
    """The lessons' jupytext sources in order: notebooks/NN_topic.py."""
    return sorted(folder.glob("[0-9][0-9]_*.py"))


def course_notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """The lesson notebooks in order: notebooks/NN_topic.ipynb."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


class NotebookError(ValueError):
    """No notebooks to work on, or a path that is missing or not a notebook: the message says what to pass."""


def read_notebook(path, jupytext_source: bool = False):
    """A notebook (or, with `jupytext_source`, a .py percent script) read as nbformat v4, or a `NotebookError`
    naming the file when it is not one (cut short, not JSON, not a notebook)."""
    import nbformat

    try:
        if jupytext_source:
            import jupytext

            return jupytext.read(path)
        return nbformat.read(path, as_version=4)
    except (OSError, ValueError, KeyError, AttributeError, TypeError, nbformat.reader.NotJSONError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise NotebookError(f"{path} is not a readable notebook ({reason}): restore it from git, or regenerate it "
                            "from its .py source with `make sync`.") from None


def notebooks_to_run(paths: list[Path] | None = None, folder: Path | None = None) -> list[Path]:
    """The notebooks a command works on: `paths` (each checked), else every lesson in `folder`.

    Raises:
        NotebookError: no lesson notebooks found (e.g. the package installed without `-e`, so
            `folder` is not a clone's notebooks/), a missing path, or a path that is not a .ipynb.
    """
    folder = folder or NOTEBOOKS
    if not paths:
        found = course_notebooks(folder)
        if not found:
            raise NotebookError(f"No notebooks (NN_topic.ipynb) in {folder}. The course commands work on a clone of "
                                "the repository, with the package installed from it (`pip install -e .`, which "
                                "`make setup` does); or pass the notebooks to run.")
        return found
    for path in paths:
        if not path.exists():
            raise NotebookError(f"{path} does not exist.")
        if path.suffix != ".ipynb" or not path.is_file():
            hint = f" Pass {path.with_suffix('.ipynb')} (`make sync` writes it from the .py source)." if (
                path.suffix == ".py") else ""
            raise NotebookError(f"{path} is not a notebook (.ipynb).{hint}")
    return list(paths)


def _kernel_manager():
    """A kernel manager talking to its kernel over local (IPC) sockets, and the folder holding them.

    Over TCP (jupyter_client's default) ipykernel logs "Kernel is running over TCP without
    encryption..." for every notebook: it reads as a security problem to a learner, and it is
    not one here (the kernel only listens on localhost). IPC sockets, which that warning itself
    recommends, remove the cause instead of hiding the line. Windows has no IPC transport: there
    the default TCP stays (and the warning with it).
    """
    from jupyter_client.manager import KernelManager

    if os.name == "nt":
        return KernelManager(kernel_name="python3"), None
    socket_dir = tempfile.mkdtemp(prefix="lora-lab-kernel-")
    return KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(socket_dir, "kernel")), socket_dir


def run(notebooks: list[Path], out_dir: Path = BUILD, timeout: int = 1800, prepend: str | None = None) -> int:
    """Execute each notebook top to bottom into `out_dir`; return how many failed.

    Args:
        prepend: code run in a first, extra cell (`figures` uses it to switch the backend).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in notebooks:
        nb = read_notebook(path)
        if prepend:
            nb.cells.insert(0, nbformat.v4.new_code_cell(prepend))
            os.environ["LORA_LAB_FIGURES_PREFIX"] = path.stem
        km, socket_dir = _kernel_manager()
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        status = "ok"
        try:
            client.execute()
        except (CellExecutionError, Exception) as err:  # keep going: report every notebook
            status = "failed"
            failed += 1
            reason = str(err).strip().splitlines()
            status += f" ({reason[-1][:120]})" if reason else ""
            print("\n".join(reason[-25:]), flush=True)  # the failing cell's traceback, for a CI log
        if km.has_kernel:  # nbclient shuts down only the kernels it created itself
            km.shutdown_kernel(now=True)
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
        nbformat.write(nb, out_dir / path.name)
        print(f"{path.name:<36} {time.perf_counter() - start:7.1f} s  {status}", flush=True)
    return failed


#: Run in the kernel: keep its names as they are now (`_KEEP` % "_fresh"), or put them back (`_BACK` % "_fresh").
_KEEP_NAMES = "%s = {k: v for k, v in globals().items() if not k.startswith('_')}"
_BACK_TO_NAMES = """for _name in [n for n in globals() if n not in %s and not n.startswith('_')]:
    del globals()[_name]
globals().update(%s)"""


@dataclasses.dataclass
class OutOfOrderCell:
    """One later cell run alone after the setup cells: what it printed, and the errors Python showed."""

    notebook: str
    index: int
    first_line: str
    needs: list[str]
    output: str
    errors: list[str]


def run_out_of_order(paths: list[Path], timeout: int = 600) -> list[OutOfOrderCell]:
    """Run each later code cell of each notebook in `paths` that needs a name an earlier non-setup cell makes,
    alone: after the notebook's setup cells (tag `setup`, and the Colab install cell), with the kernel's names
    put back as setup left them before each cell. One kernel serves every notebook: its names are emptied
    before each notebook's setup, as a fresh kernel's are (only the imported modules stay loaded, which
    saves the imports' seconds). Cells that need no earlier cell's name are not run here (the in-order run
    executes them)."""
    import nbformat
    from nbclient import NotebookClient

    km, socket_dir = _kernel_manager()
    scratch = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])  # each cell runs in its one slot
    client = NotebookClient(scratch, km=km, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(paths[0].parent)}})

    def execute(source: str) -> tuple[str, list[str]]:
        """What the cell printed, and the names of the errors Python showed (with their tracebacks)."""
        cell = nbformat.v4.new_code_cell(source)
        client.execute_cell(cell, 0)
        streams = "".join(out.text for out in cell.outputs if out.output_type == "stream")
        return streams, [out.ename for out in cell.outputs if out.output_type == "error"]

    results = []
    try:
        with client.setup_kernel():
            execute(_KEEP_NAMES % "_fresh_names")
            for path in paths:
                execute(_BACK_TO_NAMES % ("_fresh_names", "_fresh_names"))
                code = [(i, c) for i, c in enumerate(read_notebook(path).cells) if c.cell_type == "code"]
                setup = [(i, c) for i, c in code
                         if {run_order.SETUP_TAG, "colab-install"} & set(c.metadata.get("tags", ()))]
                setup_names = set().union(*(run_order.defined_names(c.source) for _, c in setup))
                for index, cell in setup:
                    output, errors = execute(cell.source)
                    if errors:
                        raise RuntimeError(f"{path.name}: setup cell {index} failed ({errors}): {output[-400:]}")
                execute(_KEEP_NAMES % "_setup_names")
                made_earlier = set()
                for index, cell in code:
                    if (index, cell) in setup:
                        continue
                    needs = sorted((run_order.used_names(cell.source) & made_earlier) - setup_names)
                    made_earlier |= run_order.defined_names(cell.source)
                    if not needs:
                        continue
                    execute(_BACK_TO_NAMES % ("_setup_names", "_setup_names"))
                    output, errors = execute(cell.source)
                    results.append(OutOfOrderCell(path.name, index, run_order.first_line(cell.source), needs,
                                                  output, errors))
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
    return results


def unexplained_stderr(nb) -> list[tuple[int, str]]:
    """(cell index, first line) of every stderr output of an executed notebook whose cell does not explain it.

    A cell that shows stderr on purpose carries the STDERR_TAG tag and says why in its text; any
    other stderr is library noise a learner cannot act on (silence it in `lora_lab.runtime.quiet`) or a
    problem to fix.
    """
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or STDERR_TAG in cell.metadata.get("tags", ()):
            continue
        for out in cell.get("outputs", ()):
            if out.get("output_type") == "stream" and out.get("name") == "stderr" and out.get("text", "").strip():
                found.append((i, out["text"].strip().splitlines()[0][:200]))
    return found


def _cells(path: Path) -> list[tuple[str, str, tuple[str, ...]]]:

    nb = read_notebook(path, jupytext_source=True)
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def check(folder: Path = NOTEBOOKS) -> list[str]:
    """Problems with the notebook pairs: a missing twin, different cells, committed outputs."""

    problems = []
    scripts = notebook_sources(folder)
    if not scripts:
        problems.append(f"No notebook sources (NN_topic.py) in {folder}: nothing to check.")
    for py in scripts:
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.exists():
            problems.append(f"{py.name} has no .ipynb twin: run `make sync`.")
            continue
        if _cells(py) != _cells(ipynb):
            problems.append(f"{py.name} and {ipynb.name} differ: edit the .py, then run `make sync`.")
        nb = read_notebook(ipynb)
        if any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code"):
            problems.append(f"{ipynb.name} has outputs: run `make sync` (it strips them).")
    for ipynb in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        if not ipynb.with_suffix(".py").exists():
            problems.append(f"{ipynb.name} has no .py twin: the .py percent script is the source.")
    if folder == NOTEBOOKS and run_order.stale_map(scripts):
        problems.append(f"{run_order.MAP_FILE.name} (which cell makes each name) is out of date: run `make sync`.")
    return problems


def strip(folder: Path = NOTEBOOKS) -> None:
    """Remove outputs, execution counts and widget state from the course notebooks."""
    import nbformat

    for path in course_notebooks(folder):
        nb = read_notebook(path)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)


def solution_exercise(cell) -> str:
    """The exercise id ("02.3") a solution cell answers, from the one answer variable it assigns.

    Raises:
        ValueError: the cell assigns no answer_NN_M variable, or more than one.
    """
    found = {f"{m.group(2)}.{m.group(3)}" for m in ANSWER_VARIABLE.finditer(cell.source)}
    if len(found) != 1:
        raise ValueError(f"a solution cell must assign exactly one answer_NN_M variable, found {sorted(found)}:\n"
                         f"{cell.source[:200]}")
    return found.pop()


def placeholder(exercise_id: str) -> str:
    """The learner's cell in place of a solution: the answer variable set to None, and what to compute."""
    from lora_lab.classroom.exercises import EXERCISES

    ex = EXERCISES[exercise_id]
    return (f"# Exercise {ex.id}: your solution here. Replace None with {ex.expects}.\n"
            f"{ex.variable} = None")


def _full_notebook(path: Path):
    """The lesson as committed (.ipynb, with its stable cell ids), from a .py or .ipynb path."""

    return read_notebook(path.with_suffix(".ipynb"))


def learner_copy(path: Path):
    """The lesson's learner notebook: each solution cell replaced by its placeholder, outputs removed.

    The Colab badge points at the learner notebook's own path (whatever repository and ref it
    names), and the copy is marked unpaired so jupytext never writes a .py beside it.
    """
    nb = _full_notebook(path)
    name = path.with_suffix(".ipynb").name
    for cell in nb.cells:
        tags = list(cell.metadata.get("tags", ()))
        if SOLUTION_TAG in tags:
            cell.source = placeholder(solution_exercise(cell))
            cell.metadata["tags"] = [t for t in tags if t != SOLUTION_TAG] + [EXERCISE_TAG]
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        elif "colab.research.google.com" in cell.source:
            cell.source = cell.source.replace(f"notebooks/{name}", f"notebooks/{LEARNERS.name}/{name}")
    nb.metadata.pop("widgets", None)
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb"
    return nb


def _learner_text(path: Path) -> str:
    import nbformat

    return nbformat.writes(learner_copy(path)) + "\n"


def write_learner_copies(folder: Path = NOTEBOOKS, out_dir: Path = LEARNERS) -> list[Path]:
    """Write the learner notebook of every lesson (from its committed .ipynb) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ipynb in course_notebooks(folder):
        target = out_dir / ipynb.name
        target.write_text(_learner_text(ipynb))
        written.append(target)
    return written


def exercise_cells(path: Path) -> list[tuple[str, str, str]]:
    """(exercise id, statement markdown, solution code) of every exercise of a lesson, in order.

    The statement is the markdown cell headed "### Exercise NN.M: ..." above the solution cell.
    """
    nb = _full_notebook(path)
    found = []
    for i, cell in enumerate(nb.cells):
        if SOLUTION_TAG not in cell.metadata.get("tags", ()):
            continue
        exercise_id = solution_exercise(cell)
        statement = next((c.source for c in reversed(nb.cells[:i]) if c.cell_type == "markdown"), "")
        if not statement.startswith(f"### Exercise {exercise_id}:"):
            raise ValueError(f"{path.name}: the markdown cell above exercise {exercise_id}'s solution must start "
                             f"with '### Exercise {exercise_id}: <title>'.")
        found.append((exercise_id, statement, cell.source))
    return found


def answer_key(folder: Path = NOTEBOOKS) -> str:
    """docs/answer-key.md: every exercise's statement, what a right answer looks like, minutes and solution."""
    from lora_lab.classroom.exercises import EXERCISES

    lines = ["# Answer key", "",
             "Generated by `make exercises` from the lessons' solution cells (`notebooks/NN_topic.py`); do not edit.",
             "Each solution ends by asserting `lora_lab.classroom.exercises.check`, which computes the expected answer with the",
             "package, so the values it prints are those of the run profile in use.", ""]
    total = 0
    for path in course_notebooks(folder):
        rows = exercise_cells(path)
        if not rows:
            continue
        lines += [f"## {path.stem}", ""]
        for exercise_id, statement, solution in rows:
            ex = EXERCISES[exercise_id]
            total += ex.minutes
            heading, _, body = statement.partition("\n")
            lines += [f"{heading} ({ex.minutes} min)", "", body.strip(), "",
                      f"Checked by `exercises.check(\"{ex.id}\", {ex.variable})`. Solution:", "",
                      "```python", solution.strip(), "```", ""]
    lines += [f"All exercises together: about {total} minutes.", ""]
    return "\n".join(lines)


def guide_with_reading_table(folder: Path = NOTEBOOKS, guide: Path = GUIDE) -> str:
    """The instructor guide with its reading table computed from the lessons (`lora_lab.classroom.reading`)."""
    return reading.with_table(guide.read_text(), reading.reading_table(course_notebooks(folder)))


def write_guide_reading_table(folder: Path = NOTEBOOKS, guide: Path = GUIDE) -> Path:
    guide.write_text(guide_with_reading_table(folder, guide))
    return guide


def write_answer_key(folder: Path = NOTEBOOKS, path: Path = ANSWER_KEY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(answer_key(folder))
    return path


def check_learners(folder: Path = NOTEBOOKS, learners: Path = LEARNERS, key: Path = ANSWER_KEY) -> list[str]:
    """Differences between the committed learner notebooks and answer key and what the lessons generate."""
    fix = "run `make exercises` (after `make sync`) and commit the result."
    problems = []
    expected = {p.name: p for p in course_notebooks(folder)}
    for name, path in expected.items():
        target = learners / name
        if not target.exists():
            problems.append(f"{target} is missing: {fix}")
        elif target.read_text() != _learner_text(path):
            problems.append(f"{target} is out of date with {name}: {fix}")
    for extra in sorted(set(p.name for p in learners.glob("*.ipynb")) - set(expected)):
        problems.append(f"{learners / extra} has no lesson {extra} in {folder}: remove it, or {fix}")
    if not key.exists() or key.read_text() != answer_key(folder):
        problems.append(f"{key} is {'out of date' if key.exists() else 'missing'}: {fix}")
    if GUIDE.read_text() != guide_with_reading_table(folder):
        problems.append(f"{GUIDE}'s reading table is out of date with the lessons: {fix}")
    return problems


def t4_plan(budget_bytes: int | None = None) -> list:
    """Every training run of every notebook on a Colab T4, decided against `budget_bytes`.

    `budget_bytes` defaults to `gpu_runs.T4_PLAN_BUDGET` (14.0 GiB). Skipped runs are included with
    action "skipped" (they are never started). The runs are built by the same `lora_lab.estimation.gpu_runs`
    functions the notebooks call before they start each run.
    """
    from lora_lab.estimation import gpu_runs
    from lora_lab.experiments import adapters, export, rank, variants
    from lora_lab.runtime import profiles

    t4 = profiles.PROFILES["t4"]
    plan = rank.PLANS["t4"]
    runs = gpu_runs.sweep_runs(t4, plan, rank.sweep_configs(plan, gpu_runs.estimator_model(t4.model_id)))
    runs.append(dataclasses.replace(gpu_runs.sft_run("03", "main", t4), evaluations=2))  # scored before and after
    # section 11: LoRA on a 16-bit base, same recipe; off in class (COMPARE_LORA)
    runs.append(dataclasses.replace(gpu_runs.sft_run("03", "lora", t4, "lora"), optional=True))
    runs.append(gpu_runs.seven_b_run(t4))
    runs += gpu_runs.specialist_runs(t4, adapters.default_recipes(t4))
    runs.append(export.own_adapter_run(t4))  # 06 on a runtime where 03 did not run (each Colab notebook's own)
    runs += variants.t4_planned_runs(t4)  # 07: four QLoRA variants, one run each
    return [gpu_runs.fit(r, budget_bytes or gpu_runs.T4_PLAN_BUDGET) for r in runs]


def print_t4_plan(as_json: bool) -> int:
    """Print `t4_plan()` with `lora_lab.estimation.t4_budget`'s minutes: each run (JSON lines with --json), each
    notebook's predicted total against its budget, and the figures behind them with their sources.
    Runs skipped go to stderr. Exits 1 if a notebook's prediction is over its budget."""
    import json

    from lora_lab.estimation import t4_budget

    runs = t4_plan()
    times = t4_budget.notebook_times(runs)
    for run in runs:
        minutes = times[run.notebook].parts.get(f"{run.run} run", 0.0) / 60
        if not run.runs:
            print(f"notebook {run.notebook} {run.run}: {run.note}", file=sys.stderr)
        elif as_json:
            d = run.to_dict()
            print(json.dumps({**{k: d[k] for k in ("notebook", "run", "model", "estimate_kwargs", "predicted_peak_bytes",
                                                   "steps", "optional")},
                              "predicted_minutes": round(minutes, 2) if not run.optional else None}))
        else:
            kw = run.estimate_kwargs
            when = "optional, outside the budget" if run.optional else f"{minutes:4.1f} min"
            print(f"notebook {run.notebook} {run.run:<22} {run.model:<20} {kw['method']:<5} {run.steps:>3} steps of "
                  f"{kw['batch_size']}x{run.grad_accum} x {kw['seq_len']}: {run.predicted_peak_bytes / 2**30:5.2f} GiB "
                  f"({run.action}), {when}")
    out = sys.stderr if as_json else sys.stdout
    print("\nEach notebook on a Colab T4 (class settings; install and download included):", file=out)
    for t in times.values():
        print("  " + t.line(), file=out)
    print("\nThe figures behind the minutes (none measured on a T4 yet):", file=out)
    for name, fig in t4_budget.FIGURES.items():
        print(f"  {name} = {fig.value:g} {fig.unit}: {fig.source}", file=out)
    print(f"  tokens per SQL example = {t4_budget.tokens_per_example('sql'):.0f}: the course's rows in "
          "b-mc2/sql-create-context's format with Qwen2.5's chat template (t4_budget.tokens_per_example)", file=out)
    return 0 if all(t.fits for t in times.values()) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.tooling.course", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute the notebooks into build/notebooks/")
    p_run.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    p_run.add_argument("--out", type=Path, default=BUILD)
    sub.add_parser("check", help="check the .py/.ipynb pairs")
    sub.add_parser("strip", help="strip outputs from the notebooks")
    sub.add_parser("exercises", help="write the learner notebooks (notebooks/learners/) and docs/answer-key.md")
    sub.add_parser("check-learners", help="fail if the learner notebooks or the answer key are out of date")
    p_fig = sub.add_parser("figures", help="save every figure as PNG and SVG into build/figures/")
    p_fig.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    p_plan = sub.add_parser("t4-plan", help="every training run of every notebook as a Colab T4 plans it")
    p_plan.add_argument("--json", action="store_true", help="one JSON object per run that will start")
    p_reh = sub.add_parser("t4-rehearsal", help="execute the notebooks' t4 path on this CPU into build/rehearsal/")
    p_reh.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    p_reh.add_argument("--out", type=Path, default=REHEARSAL)
    p_order = sub.add_parser("out-of-order", help="run each cell that needs an earlier cell alone after the setup "
                                                  "cells; fail where Python's own error shows")
    p_order.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    p_fresh = sub.add_parser("fresh-cache", help="an empty cache root that shares only installed inputs (the GGUF "
                                                   "tools, SmolLM2's safetensors) with $LORA_LAB_CACHE")
    p_fresh.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        return _command(args)
    except NotebookError as err:
        print(err, file=sys.stderr)
        return 2


#: Cache folders that hold installed inputs, not results: a fresh cache may share them.
SHARED_CACHE_INPUTS = ("export", "models")


def fresh_cache(folder: Path) -> Path:
    """`folder` emptied, with links to the installed inputs of the current cache root (nothing that a
    run computed: results, sweeps and specialists are recomputed under the new root)."""
    from lora_lab.runtime.units import cache_dir

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in SHARED_CACHE_INPUTS:
        source = cache_dir(name)
        if source.is_dir():
            (folder / name).symlink_to(source.resolve(), target_is_directory=True)
    return folder


def _command(args) -> int:
    if args.command == "fresh-cache":
        print(f"fresh cache root: {fresh_cache(args.folder)}")
        return 0
    if args.command == "t4-plan":
        return print_t4_plan(args.json)
    if args.command == "out-of-order":
        notebooks = notebooks_to_run(args.notebooks)
        cells = run_out_of_order(notebooks)
        raw = [c for c in cells if c.errors]
        for c in raw:
            print(f"{c.notebook} cell {c.index} `{c.first_line}` run alone: Python's {', '.join(c.errors)}")
        print(f"{len(cells) - len(raw)}/{len(cells)} cells of {len(notebooks)} notebooks, run alone after the setup "
              "cells, name the cell to run first")
        return 1 if raw else 0
    if args.command == "t4-rehearsal":
        # The profile is the one switch: the kernels inherit these and get_profile() returns the rehearsal.
        from lora_lab.runtime.profiles import PROFILE_ENV, REHEARSAL_ENV

        os.environ.update({PROFILE_ENV: "t4", REHEARSAL_ENV: "1"})
        notebooks = notebooks_to_run(args.notebooks)
        failed = run(notebooks, args.out)
        print(f"{len(notebooks) - failed}/{len(notebooks)} notebooks rehearsed the t4 profile; copies in {args.out}")
        return 1 if failed else 0
    if args.command == "run":
        notebooks = notebooks_to_run(args.notebooks)
        failed = run(notebooks, args.out)
        print(f"{len(notebooks) - failed}/{len(notebooks)} notebooks ok; executed copies in {args.out}")
        return 1 if failed else 0
    if args.command == "exercises":
        notebooks_to_run()
        for path in [*write_learner_copies(), write_answer_key(), run_order.write_map(notebook_sources()),
                     write_guide_reading_table()]:
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    if args.command == "check-learners":
        notebooks_to_run()
        problems = check_learners()
        for p in problems:
            print(p)
        if not problems:
            print(f"all {len(course_notebooks())} learner notebooks and the answer key are up to date")
        return 1 if problems else 0
    if args.command == "figures":
        os.environ.setdefault("LORA_LAB_FIGURES_DIR", str(FIGURES))
        notebooks = notebooks_to_run(args.notebooks)
        failed = run(notebooks, ROOT / "build" / "figure-runs", prepend=FIGURE_HOOK)
        files = sorted(Path(os.environ["LORA_LAB_FIGURES_DIR"]).glob("*.png"))
        print(f"{len(files)} figures as PNG + SVG in {os.environ['LORA_LAB_FIGURES_DIR']}")
        return 1 if failed else 0
    if args.command == "check":
        notebooks_to_run()
        problems = check()
        for p in problems:
            print(p)
        if not problems:
            print(f"all {len(course_notebooks())} notebook pairs in sync and stripped")
        return 1 if problems else 0
    notebooks_to_run()
    strip()
    return 0


if __name__ == "__main__":
    sys.exit(main())
