"""Exercises: every registered check on a right answer, a near miss and a wrong one; unanswered and
malformed answers get messages, never tracebacks; the notebooks' exercises and the registry agree."""

import re
from pathlib import Path

import jupytext
import pytest

from lora_lab.classroom import exercises, feedback
from lora_lab.tooling import course

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _bump(d: dict, key: str, factor: float) -> dict:
    return {**d, key: d[key] * factor}


#: For each exercise, from its right answer: a near miss (just outside the tolerance, or a plausible
#: slip) and a wrong answer.
NEAR_AND_WRONG = {
    "00.1": (lambda r: {**r, "V100": "bfloat16"}, lambda r: {"L4": "float32", "V100": "float32"}),
    "00.2": (lambda r: r + 1, lambda r: r + 40),
    "01.1": (lambda r: _bump(r, "without_checkpointing", 1.03), lambda r: {k: v * 3 for k, v in r.items()}),
    "01.2": (lambda r: {**r, "qlora": "L4"}, lambda r: {"full": "Colab T4", "qlora": None}),
    "02.1": (lambda r: _bump(r, "share", 1.02), lambda r: {"params": r["params"] // 2, "share": r["share"] * 100}),
    "02.2": (lambda r: r * 2, lambda r: 64),  # r // 2 is the lesson's knee: the most common mistake
    "02.3": (lambda r: (r[0], r[1] + 1), lambda r: (32, 32)),
    "03.1": (lambda r: _bump(r, "epochs", 1.02), lambda r: {"effective_batch": 4, "epochs": 150}),
    "03.2": (lambda r: r + 1, lambda r: r * 8),
    "04.1": (lambda r: 0.95, lambda r: 0.99),
    "04.2": (lambda r: _bump(r, "saved_gb", 1.02), lambda r: {"bits": 4.5, "saved_gb": 5.0}),
    "05.1": (lambda r: _bump(r, "bf16_mib", 1.02), lambda r: {"fp32_mib": r["bf16_mib"], "bf16_mib": r["fp32_mib"]}),
    "05.2": (lambda r: r * 1.03, lambda r: 16 / 4.127),
    "07.1": (lambda r: {"dora": r["dora"] + 1, "vera": r["vera"]}, lambda r: {"dora": r["dora"], "vera": 2 * r["vera"]}),
    "07.2": (lambda r: _bump(r, "rslora", 1.001), lambda r: {"lora": r["rslora"], "rslora": r["lora"]}),
    "06.1": (lambda r: _bump(r, "per_gpu_gib", 1.02), lambda r: {**r, "method": "full", "fits": not r["fits"]}),
}


def test_every_exercise_has_a_near_miss_and_a_wrong_answer_tested():
    assert set(NEAR_AND_WRONG) == set(exercises.EXERCISES)


@pytest.mark.parametrize("exercise_id", list(exercises.EXERCISES))
def test_check_accepts_the_right_answer_and_rejects_a_near_miss_and_a_wrong_one(exercise_id):
    ex = exercises.EXERCISES[exercise_id]
    right = ex.expected()
    ok = exercises.check(exercise_id, right)
    assert ok.correct and ok.answered and "correct" in ok.message
    near, wrong = (f(right) for f in NEAR_AND_WRONG[exercise_id])
    for answer in (near, wrong):
        verdict = exercises.check(exercise_id, answer)
        assert not verdict.correct and verdict.answered and verdict.message.startswith("not yet")
        assert ex.hint in verdict.message
    near_verdict = exercises.check(exercise_id, near)
    if isinstance(near, (int, float)):  # a number is told what the classroom's calibrated feedback says
        words = feedback.number_verdict(near, right, ex.rel_tol)
        assert words[0].lower() + words[1:].rstrip(".") in near_verdict.message
    small_count_slip = isinstance(near, (int, float)) and not feedback.number_verdict(near, right, ex.rel_tol).startswith(
        "Close")  # one off a small count is wrong like any wrong count
    assert exercises.check(exercise_id, near).message != exercises.check(exercise_id, wrong).message or (
        exercise_id in ("00.1", "04.1")) or small_count_slip  # a wrong option is "not" the answer, however near


def test_unanswered_and_malformed_answers_get_messages_not_tracebacks():
    for ex in exercises.EXERCISES.values():
        verdict = exercises.check(ex.id, None)
        assert not verdict.correct and not verdict.answered and "not answered yet" in verdict.message
        assert ex.variable in verdict.message
        for odd in ("lots", object(), [], {"x": 1}, float("nan")):
            verdict = exercises.check(ex.id, odd)
            assert not verdict.correct and verdict.message.startswith("not yet")
    assert "there is no exercise" in exercises.check("99.9", 1).message


def test_a_broken_computation_is_reported_not_raised(monkeypatch):
    def broken():
        raise RuntimeError("no config")

    monkeypatch.setitem(exercises.EXERCISES, "98.1", exercises.Exercise("98.1", "broken", 1, "an int", broken))
    verdict = exercises.check("98.1", 3)
    assert not verdict.correct and "could not compute the expected answer" in verdict.message and "no config" in verdict.message


def test_feedback_never_gives_the_answer_away():
    ex = exercises.EXERCISES["02.3"]
    right = ex.expected()
    message = exercises.check("02.3", (right[0] + 5, right[1])).message
    assert str(right[0]) not in message and "too high" in message
    html = exercises.check("02.3", right)._repr_html_()
    assert "green" in html and "Exercise 02.3" in html


def test_dtype_answers_compare_loosely():
    import torch

    assert exercises.check("00.1", {"L4": torch.bfloat16, "V100": "fp16"}).correct


# ---------------------------------------------------------------------------------------------
# The notebooks and the registry agree


def _notebook_exercises(source: Path) -> list[str]:
    nb = jupytext.read(source)
    found = []
    for i, cell in enumerate(nb.cells):
        if course.SOLUTION_TAG not in cell.metadata.get("tags", ()):
            continue
        exercise_id = course.solution_exercise(cell)
        ex = exercises.EXERCISES[exercise_id]
        statement = next(c.source for c in reversed(nb.cells[:i]) if c.cell_type == "markdown")
        assert statement.startswith(f"### Exercise {exercise_id}: {ex.title}\n"), statement[:80]
        assert f"**A correct answer:** `{ex.variable}` is {ex.expects}." in statement
        assert f'assert exercises.check("{exercise_id}", {ex.variable}).correct' in cell.source
        check_cell = nb.cells[i + 1]
        assert check_cell.cell_type == "code" and not check_cell.metadata.get("tags")
        assert check_cell.source == f'exercises.check("{exercise_id}", {ex.variable})'
        found.append(exercise_id)
    return found


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_every_exercise_of_a_notebook_is_registered_numbered_and_checked(source):
    found = _notebook_exercises(source)
    number = source.name[:2]
    assert found == [e.id for e in exercises.for_notebook(number)]
    assert found == [f"{number}.{m}" for m in range(1, len(found) + 1)]
    text = source.read_text()
    assert len(re.findall(r"^# ## Exercises$", text, re.MULTILINE)) == 1
    assert text.count("### Exercise ") == len(found)


def test_every_registered_exercise_is_in_a_notebook_once():
    in_notebooks = [e for source in SOURCES for e in _notebook_exercises(source)]
    assert sorted(in_notebooks) == sorted(exercises.EXERCISES)
    titles = [e.title for e in exercises.EXERCISES.values()]
    assert len(titles) == len(set(titles))


@pytest.mark.parametrize("exercise_id", list(exercises.EXERCISES))
def test_the_most_common_mistake_gets_its_own_hint(exercise_id):
    ex = exercises.EXERCISES[exercise_id]
    assert ex.mistake is not None, "every exercise names its most common mistake"
    wrong = ex.mistake.answer()
    verdict = exercises.check(exercise_id, wrong)
    assert not verdict.correct and ex.mistake.what in verdict.message and ex.mistake.hint in verdict.message
    assert ex.hint in verdict.message
    right = ex.expected()
    for value in right.values() if isinstance(right, dict) else right if isinstance(right, tuple) else [right]:
        if not isinstance(value, bool):  # the message never gives a right value away
            assert not re.search(rf"(?<![\w.=]){re.escape(str(value))}(?![\w.])", verdict.message), value
    for other in (f(right) for f in NEAR_AND_WRONG[exercise_id]):
        if exercises._compare(other, wrong, ex.rel_tol, ""):
            assert ex.mistake.hint not in exercises.check(exercise_id, other).message  # only that mistake
