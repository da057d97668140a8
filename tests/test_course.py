"""Course tooling: notebook pairs, learner copies without solutions, figure export."""

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lora_lab.tooling import course

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))



def fill_solutions(learner, full):
    """The learner notebook with every placeholder cell given back its solution (for tests and CI)."""
    import copy

    solutions = {course.solution_exercise(c): c for c in full.cells if course.SOLUTION_TAG in c.metadata.get("tags", ())}
    filled = copy.deepcopy(learner)
    for i, cell in enumerate(filled.cells):
        if course.EXERCISE_TAG in cell.metadata.get("tags", ()):
            match = course.ANSWER_VARIABLE.search(cell.source)
            filled.cells[i] = copy.deepcopy(solutions[f"{match.group(2)}.{match.group(3)}"])
    return filled


def test_pairs_are_in_sync_and_stripped():
    assert course.check() == []


def test_check_reports_drift(tmp_path):
    src = SOURCES[0]
    (tmp_path / src.name).write_text(src.read_text() + "\n# %%\nprint('new cell')\n")
    (tmp_path / src.with_suffix(".ipynb").name).write_text(src.with_suffix(".ipynb").read_text())
    assert any("differ" in p for p in course.check(tmp_path))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_learner_notebooks_hide_every_solution_and_give_them_back_when_filled(source):
    full = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    solutions = [c for c in full.cells if course.SOLUTION_TAG in c.metadata.get("tags", ())]
    assert solutions, f"{source.name} has no exercises"
    heading = next(i for i, c in enumerate(full.cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    assert heading < full.cells.index(solutions[0])
    committed = nbformat.read(course.LEARNERS / source.with_suffix(".ipynb").name, as_version=4)
    assert committed == course.learner_copy(source)  # the committed learner notebook is the generated one
    learner_lines = {line for c in committed.cells for line in c.source.splitlines()}
    lesson_lines = {line for c in full.cells if c not in solutions for line in c.source.splitlines()}
    for solution in solutions:
        for line in solution.source.splitlines():
            if line.strip() and line not in lesson_lines:  # a line the lesson itself also has is no leak
                assert line not in learner_lines, f"solution code leaked into the learner notebook: {line}"
    placeholders = [c for c in committed.cells if course.EXERCISE_TAG in c.metadata.get("tags", ())]
    assert len(placeholders) == len(solutions)
    for cell, solution in zip(placeholders, solutions, strict=True):
        exercise_id = course.solution_exercise(solution)
        variable = "answer_" + exercise_id.replace(".", "_")
        assert cell.source.endswith(f"{variable} = None") and f"Exercise {exercise_id}" in cell.source
    assert not any(course.SOLUTION_TAG in c.metadata.get("tags", ()) for c in committed.cells)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in committed.cells if c.cell_type == "code")
    # Filled back with the solutions, the learner notebook IS the full one (apart from its badge and
    # its unpaired mark): executing the full notebooks in CI executes the learner notebooks, solved.
    filled = fill_solutions(committed, full)
    assert [(c.cell_type, c.source, c.metadata) for c in filled.cells[1:]] == [
        (c.cell_type, c.source, c.metadata) for c in full.cells[1:]]
    name = source.with_suffix(".ipynb").name
    assert f"notebooks/learners/{name}" in committed.cells[0].source
    assert committed.cells[0].source.replace(f"notebooks/learners/{name}", f"notebooks/{name}") == full.cells[0].source


def test_learner_notebooks_and_answer_key_are_up_to_date():
    assert course.check_learners() == []


def test_check_learners_reports_stale_missing_and_extra_files(tmp_path, capsys):
    learners, key = tmp_path / "learners", tmp_path / "answer-key.md"
    course.write_learner_copies(out_dir=learners)
    course.write_answer_key(path=key)
    assert course.check_learners(learners=learners, key=key) == []
    first = sorted(learners.glob("*.ipynb"))[0]
    first.write_text(first.read_text().replace("answer_", "answer_x_", 1))
    (learners / "99_extra.ipynb").write_text("{}")
    key.write_text(key.read_text() + "edited\n")
    (sorted(learners.glob("*.ipynb"))[1]).unlink()
    problems = course.check_learners(learners=learners, key=key)
    assert len(problems) == 4 and all("make exercises" in p for p in problems)
    assert any("out of date" in p and first.name in p for p in problems)
    assert any("missing" in p for p in problems) and any("99_extra" in p for p in problems)


def test_answer_key_has_every_exercise_with_statement_minutes_and_solution():
    from lora_lab.classroom.exercises import EXERCISES

    key = course.answer_key()
    for ex in EXERCISES.values():
        assert f"### Exercise {ex.id}: {ex.title} ({ex.minutes} min)" in key
        assert f"`{ex.variable}` is {ex.expects}." in key
        assert f'assert exercises.check("{ex.id}", {ex.variable}).correct' in key


def test_learner_notebooks_are_not_lessons():
    """`course run` (make nbtest), `check`, `strip` and `t4-rehearsal` see the lessons only."""
    assert all(p.parent == ROOT / "notebooks" for p in course.course_notebooks())
    assert sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")) == course.course_notebooks()
    assert course.LEARNERS.parent == ROOT / "notebooks"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_learner_placeholders_run_and_their_checks_say_not_answered_yet(source):
    """Each placeholder runs, its check reads it and says "not answered yet", and no other cell reads an answer
    (so a learner copy runs to the end unanswered; nbtest runs the full lessons, which the filled copies equal)."""
    nb = course.learner_copy(source)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first_check = next(i for i, c in enumerate(code) if c.source.startswith("exercises.check("))
    assert any("from lora_lab.classroom import exercises" in c.source for c in code[:first_check])
    namespace: dict = {}
    exec("from lora_lab.classroom import exercises", namespace)
    checked = []
    for cell in code:
        if course.EXERCISE_TAG in cell.metadata.get("tags", ()):
            exec(cell.source, namespace)
        elif cell.source.startswith("exercises.check("):
            result = eval(cell.source, namespace)
            assert not result.answered and "not answered yet" in result.message, cell.source
            checked.append(cell.source)
        else:
            assert not re.search(r"\banswer_\d\d_\d\b", cell.source), f"a lesson cell reads an answer: {cell.source[:80]}"
    assert checked

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
        assert path.read_text() == (course.LEARNERS / path.name).read_text()


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


@pytest.mark.parametrize("content", ["", "{not json", '{"cells": 3}', "[]"])
def test_a_malformed_notebook_is_named_in_one_line(tmp_path, capsys, content):
    path = tmp_path / "00_broken.ipynb"
    path.write_text(content)
    assert course.main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "00_broken.ipynb is not a readable notebook" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "out" / "00_broken.ipynb").exists()


@pytest.mark.parametrize("command", [["run"], ["check"], ["strip"], ["exercises"], ["check-learners"], ["figures"]])
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
