"""Quizzes: every question's feedback on a right answer, a near miss and a wrong one; retries before the
answer is shown; computed answers stay computed; each lesson shows its own quiz, each question once."""

import math
import re
from pathlib import Path

import pytest

from lora_lab.classroom import feedback, quiz
from lora_lab.runtime import hardware

ROOT = Path(__file__).resolve().parents[1]
ALL = [q for name in quiz.LESSON_QUIZZES.values() for q in getattr(quiz, name)]  # every question
LAST_TRY = quiz.TRIES_BEFORE_ANSWER


def _right_text(q) -> str:
    """The text that gives the right answer away."""
    if isinstance(q, quiz.MultipleChoice):
        return q.options[q.right()]
    return quiz._fmt(q.value())


def _near_and_wrong(q):
    """A near miss and a clearly wrong answer for `q`."""
    if isinstance(q, quiz.MultipleChoice):
        wrong = [i for i in range(len(q.options)) if i != q.right()]
        return wrong[0], wrong[-1]  # every wrong option is tested by test_every_wrong_option_has_its_own_hint
    right = q.value()
    if q.rel_tol:
        near = right * (1 + 1.5 * q.rel_tol)  # just outside the tolerance
    else:
        near = right + 1  # an exact count, off by one
    return near, right * 10


@pytest.mark.parametrize("q", ALL, ids=lambda q: q.question[:40])
def test_right_answer_is_accepted_with_its_explanation(q):
    right = q.right() if isinstance(q, quiz.MultipleChoice) else q.value()
    verdict = q.check(right)
    assert verdict.correct and verdict.message.startswith("Right.") and len(verdict.message) > 40
    if isinstance(q, quiz.Numeric):  # typed with separators, within the tolerance
        assert q.check(f"{right * (1 + q.rel_tol / 2):,}").correct
    else:
        assert q.check(q.options[q.right()]).correct  # by its text too


@pytest.mark.parametrize("q", ALL, ids=lambda q: q.question[:40])
def test_near_miss_and_wrong_answer_get_hints_and_no_answer_before_the_last_try(q):
    near, wrong = _near_and_wrong(q)
    for given in (near, wrong):
        for attempt in range(1, LAST_TRY):
            verdict = q.check(given, attempt=attempt)
            assert not verdict.correct and not verdict.revealed and verdict.counted
            assert "The answer is" not in verdict.message
            assert not re.search(rf"(?<![\w.,]){re.escape(_right_text(q))}(?![\w,]|\.\d)", verdict.message), (
                "the answer is revealed before the allowed tries")
            assert "Try again" in verdict.message
        last = q.check(given, attempt=LAST_TRY)
        assert not last.correct and last.revealed and _right_text(q) in last.message
        assert "Right." not in last.message
    if isinstance(q, quiz.Numeric):
        small_count = not q.rel_tol and abs(q.value()) < feedback.LARGE_COUNT  # one off is wrong, not close
        assert ("Close" in q.check(near).message) != small_count and "Close" not in q.check(wrong).message
        assert "high" in q.check(wrong).message  # ten times the answer is too high, and says so
        assert q.hint in q.check(near).message


@pytest.mark.parametrize("q", [q for q in ALL if isinstance(q, quiz.MultipleChoice)], ids=lambda q: q.question[:40])
def test_every_wrong_option_has_its_own_hint(q):
    hints = {q.check(i).message for i in range(len(q.options)) if i != q.right()}
    assert len(hints) == len(q.options) - 1
    assert sum(q.check(i).correct for i in range(len(q.options))) == 1


def test_malformed_answers_cost_no_try():
    numeric, choice = quiz.LORA_BASICS[0], quiz.PREFLIGHT[0]
    for verdict in (numeric.check("lots"), numeric.check("nan"), choice.check(None), choice.check(99)):
        assert not verdict.correct and not verdict.counted and not verdict.revealed
    assert "Enter a number" in numeric.check("lots").message
    assert choice.check(None).message == "Pick one of the options."


def test_numeric_answer_is_computed_and_checked():
    q = quiz.LORA_BASICS[0]
    assert q.value() == 65_536
    assert q.check("65,536").correct
    assert "Too high" in q.check(131072).message and "Too low" in q.check(20000).message
    assert q.mistake.hint in q.check(32768).message  # one matrix of the two: the mistake's own hint
    assert "65,536" in q.reveal().message


def test_t4_dtype_comes_from_hardware():
    q = quiz.PREFLIGHT[0]
    assert q.options[q.right()] == hardware.compute_dtype_for("cuda", (7, 5)) == "float16"


def test_24gb_question_states_its_settings_and_never_contradicts_itself():
    from lora_lab.estimation import vram

    q = quiz.VRAM[0]
    billions = quiz.largest_qlora_model_on_24gb()
    fits = vram.estimate(int(billions * 1e9 * 0.99), **quiz.QLORA_24GB_SETTINGS).fits("RTX 4090")
    too_big = vram.estimate(int(billions * 1e9 * 1.02), **quiz.QLORA_24GB_SETTINGS).fits("RTX 4090")
    assert fits and not too_big
    lo, hi = quiz.QLORA_24GB_RANGES[q.right()]
    assert lo <= billions < hi
    for word in ("rank 16", "batch 1", "512", "checkpointing", "8-bit AdamW", "bf16"):
        assert word in q.question
    for i, (lo_i, hi_i) in enumerate(quiz.QLORA_24GB_RANGES):
        if i == q.right():
            continue
        message = q.check(i).message
        if hi_i <= lo:  # a range below the answer: its top still fits, and the hint says so
            assert f"models of {hi_i:.0f}B still fit" in message and "does not fit" not in message
        else:  # a range above: its bottom does not fit
            assert f"a {lo_i:.0f}B model does not fit" in message and "still fit" not in message


def test_nf4_answers_come_from_the_quant_module():
    assert quiz.NF4[0].value() == 4 + 1 / 8 + 1 / 512
    assert quiz.NF4[0].check("4.127").correct and not quiz.NF4[0].check("4.5").correct
    assert quiz.NF4[1].value() == 7


def test_adapter_size_answer_matches_the_published_figure():
    """Llama-2-7B, r=8 on q and v: 4.2M parameters, about 8.4 MB in 16 bits."""
    assert 8.3 < quiz.ADAPTERS[0].value() < 8.5


def test_wording_fixes():
    pad = next(q for q in ALL if "pad = eos" in q.question)
    assert "-100" in pad.question and "only" in quiz._text(pad.explanation)
    merge = next(q for q in ALL if "what changes at inference" in q.question)
    ratio = 16 / quiz.NF4[0].value()  # 16-bit against NF4 with double quantization, per linear weight
    assert f"{ratio:.1f}x" in merge.options[merge.right()] and "No extra compute" in merge.options[merge.right()]
    for q in ALL:
        text = " ".join([q.question, quiz._text(q.explanation) if isinstance(q, quiz.MultipleChoice) else q.explanation,
                         *getattr(q, "options", ())])
        assert "syllabus" not in text.lower()


def test_widgets_give_feedback_without_tracebacks_and_reveal_after_the_tries():
    box = quiz.show([quiz.LORA_BASICS[0], quiz.PREFLIGHT[0]])
    numeric_box = box.children[1]
    entry, row = numeric_box.children[1], numeric_box.children[2]
    check, show_answer, feedback = row.children
    entry.value = "not a number"
    check.click()
    assert "Enter a number" in feedback.value
    entry.value = "20000"
    for _ in range(LAST_TRY - 1):
        check.click()
        assert "Too low" in feedback.value and "65,536" not in feedback.value
    check.click()  # the last try: the answer is shown (the malformed one did not count)
    assert "65,536" in feedback.value
    entry.value = "65536"
    check.click()
    assert "Right." in feedback.value
    choice_box = box.children[2]
    show_answer = choice_box.children[2].children[1]
    show_answer.click()
    assert "float16" in choice_box.children[2].children[2].value


def _shown_quizzes() -> dict[str, list[str]]:
    shown = {}
    for source in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        shown[source.name[:2]] = re.findall(r"quiz\.show\(quiz\.(\w+)\)", source.read_text())
    return shown


def test_each_lesson_shows_its_own_quiz_and_each_question_is_asked_once():
    shown = _shown_quizzes()
    for number, name in quiz.LESSON_QUIZZES.items():
        assert shown[number] == [name], f"notebook {number} should show quiz.{name} once"
    assert {n for n, names in shown.items() if names} == set(quiz.LESSON_QUIZZES)
    questions = [q.question for q in ALL]
    assert len(questions) == len(set(questions))
    assert all(len(getattr(quiz, name)) >= 1 for name in quiz.LESSON_QUIZZES.values())
    for q in ALL:
        if isinstance(q, quiz.Numeric):
            assert math.isfinite(q.value()) and q.value() != 0
            assert "(exact" in q.question or "within" in q.question, "a number question states its tolerance"


@pytest.mark.parametrize("q", [q for q in ALL if isinstance(q, quiz.Numeric)], ids=lambda q: q.question[:40])
def test_the_most_common_wrong_number_gets_its_own_hint(q):
    assert q.mistake is not None, "every numeric question names its most common mistake"
    verdict = q.check(q.mistake.answer())
    assert not verdict.correct and q.mistake.hint in verdict.message and "Try again" in verdict.message
    near, wrong = _near_and_wrong(q)
    others = [x for x in (near, wrong) if x != q.mistake.answer()]  # NF4's 8 negative levels: off by one, and the mistake
    assert others and all(q.mistake.hint not in q.check(x).message for x in others)
