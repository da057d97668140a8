"""Course tooling: notebook pairs, learner copies without solutions, figure export."""

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from lora_lab.tooling import course

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def test_pairs_are_in_sync_and_stripped():
    assert course.check() == []


def test_check_reports_drift(tmp_path):
    src = SOURCES[0]
    (tmp_path / src.name).write_text(src.read_text() + "\n# %%\nprint('new cell')\n")
    (tmp_path / src.with_suffix(".ipynb").name).write_text(src.with_suffix(".ipynb").read_text())
    assert any("differ" in p for p in course.check(tmp_path))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_every_notebook_ends_with_exercises_and_learner_copies_hide_solutions(source):
    full = jupytext.read(source)
    solutions = [c.source for c in full.cells if course.SOLUTION_TAG in c.metadata.get("tags", ())]
    assert 2 <= len(solutions) <= 3, f"{source.name} should end with two or three exercises"
    heading = next(i for i, c in enumerate(full.cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    first_solution = next(i for i, c in enumerate(full.cells) if course.SOLUTION_TAG in c.metadata.get("tags", ()))
    assert heading < first_solution
    learner = course.learner_copy(source)
    learner_code = "\n".join(c.source for c in learner.cells)
    for solution in solutions:
        for line in solution.splitlines():
            if line.strip() and not line.strip().startswith("#") and len(line.strip()) > 12:
                assert line not in learner_code, f"solution code leaked into the learner copy: {line}"
    # Everything before the exercises is the same lesson.
    assert [c.source for c in learner.cells[:heading]] == [c.source for c in full.cells[:heading]]
    assert sum(c.source == course.PLACEHOLDER for c in learner.cells) == len(solutions)


def test_learner_copy_runs_up_to_the_exercises(tmp_path):
    nb = course.learner_copy(SOURCES[0])
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert course.unexplained_stderr(nb) == []  # library noise silenced by the preflight (lora_lab.quiet)


def test_unexplained_stderr_finds_stderr_unless_the_cell_explains_it():
    quiet = nbformat.v4.new_code_cell("1", outputs=[nbformat.v4.new_output("stream", name="stdout", text="ok\n")])
    noisy = nbformat.v4.new_code_cell("2", outputs=[nbformat.v4.new_output("stream", name="stderr", text="W!\n")])
    explained = nbformat.v4.new_code_cell("3", metadata={"tags": [course.STDERR_TAG]},
                                          outputs=[nbformat.v4.new_output("stream", name="stderr", text="W!\n")])
    nb = nbformat.v4.new_notebook(cells=[quiet, noisy, explained])
    assert course.unexplained_stderr(nb) == [(1, "W!")]


def test_make_exercises_writes_every_notebook(tmp_path):
    written = course.write_learner_copies(out_dir=tmp_path)
    assert [p.name for p in written] == [s.with_suffix(".ipynb").name for s in SOURCES]
    for path in written:
        nb = nbformat.read(path, as_version=4)
        assert not any(course.SOLUTION_TAG in c.metadata.get("tags", ()) for c in nb.cells)


def test_figure_backend_saves_png_and_svg(tmp_path):
    script = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nplt.figure(); plt.bar([1], [2]); plt.show()\n"
    env = {**os.environ, "MPLBACKEND": "module://lora_lab.tooling.figure_backend",
           "LORA_LAB_FIGURES_DIR": str(tmp_path), "LORA_LAB_FIGURES_PREFIX": "demo"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["demo-01.png", "demo-01.svg", "demo-02.png", "demo-02.svg"]
    assert (tmp_path / "demo-01.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "demo-02.svg").read_bytes()[:500]


# ---------------------------------------------------------------------------------------------
# The commands fail with a clear message, never a traceback or "0/0 notebooks ok"


def test_run_refuses_a_missing_path_and_a_source_file(tmp_path, capsys):
    assert course.main(["run", str(tmp_path / "nope.ipynb"), "--out", str(tmp_path / "out")]) == 2
    assert "nope.ipynb does not exist" in capsys.readouterr().err
    assert course.main(["run", str(SOURCES[0]), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not a notebook (.ipynb)" in err and SOURCES[0].with_suffix(".ipynb").name in err and "make sync" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["run"], ["check"], ["strip"], ["exercises"], ["figures"]])
def test_commands_fail_when_they_find_no_notebooks(tmp_path, monkeypatch, capsys, command):
    """As when the package is installed without -e: notebooks/ beside the package does not exist."""
    monkeypatch.setattr(course, "NOTEBOOKS", tmp_path / "site-packages" / "notebooks")
    assert course.main(command) == 2
    err = capsys.readouterr().err
    assert "No notebooks" in err and "pip install -e ." in err
    assert course.check(tmp_path) == [f"No notebook sources (NN_topic.py) in {tmp_path}: nothing to check."]


def test_run_prints_one_line_per_notebook_and_no_kernel_transport_warning(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")])
    path = tmp_path / "00_hello.ipynb"
    nbformat.write(nb, path)
    result = subprocess.run([sys.executable, "-m", "lora_lab.tooling.course", "run", str(path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("00_hello.ipynb") and lines[0].endswith("ok")
    assert lines[1].startswith("1/1 notebooks ok")
    assert result.stderr == "", result.stderr  # no kernel-transport warning, no "Parent appears to have exited"
    executed = nbformat.read(tmp_path / "out" / "00_hello.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "hello\n"
