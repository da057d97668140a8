"""Quizzes: right answers accepted, wrong and malformed ones get feedback, computed answers stay computed."""

import math

import pytest

from lora_lab import hardware, quiz

ALL = quiz.PREFLIGHT + quiz.VRAM + quiz.LORA_BASICS + quiz.NF4 + quiz.ADAPTERS


def test_numeric_answer_is_computed_and_checked():
    q = quiz.LORA_BASICS[0]
    assert q.value() == 65_536
    assert q.check("65,536").correct
    wrong = q.check(131072)
    assert not wrong.correct and "Too high" in wrong.message and "65,536" in wrong.message
    assert "Enter a number" in q.check("lots").message
    assert not q.check("nan").correct


def test_multiple_choice_by_index_or_text():
    q = quiz.PREFLIGHT[0]
    assert q.options[q.answer] == hardware.compute_dtype_for("cuda", (7, 5)) == "float16"
    assert q.check(q.answer).correct and q.check("float16").correct
    assert not q.check("bfloat16").correct
    assert q.check(None).message == "Pick one of the options."
    assert not q.check(99).correct


@pytest.mark.parametrize("q", ALL, ids=lambda q: q.question[:40])
def test_every_question_has_a_reachable_right_answer(q):
    if isinstance(q, quiz.MultipleChoice):
        assert 0 <= q.answer < len(q.options)
        assert sum(q.check(i).correct for i in range(len(q.options))) == 1
    else:
        right = q.value()
        assert math.isfinite(right) and right != 0
        step = 2 * q.rel_tol + 1e-6  # beyond the accepted relative error
        assert q.check(f"{right * (1 + q.rel_tol / 2):,}").correct  # within it, typed with separators
        assert not q.check(right * (1 + step)).correct and "Too high" in q.check(right * (1 + step)).message
        assert not q.check(right * (1 - step)).correct and "Too low" in q.check(right * (1 - step)).message


def test_widgets_give_feedback_without_tracebacks():
    box = quiz.show([quiz.LORA_BASICS[0], quiz.PREFLIGHT[0]])
    numeric_box = box.children[1]
    entry, row = numeric_box.children[1], numeric_box.children[2]
    button, feedback = row.children
    entry.value = "not a number"
    button.click()
    assert "Enter a number" in feedback.value
    entry.value = "65536"
    button.click()
    assert "Right." in feedback.value


def test_largest_model_on_a_24gb_card_comes_from_the_estimator():
    from lora_lab import vram

    billions = quiz.VRAM[0].value()
    assert 30 < billions < 70  # the explanation says 30B fits and 70B does not
    fits = vram.estimate(int(billions * 1e9 * 0.99), **quiz.QLORA_24GB_SETTINGS).fits("RTX 4090")
    too_big = vram.estimate(int(billions * 1e9 * 1.02), **quiz.QLORA_24GB_SETTINGS).fits("RTX 4090")
    assert fits and not too_big


def test_nf4_answers_come_from_the_quant_module():
    assert quiz.NF4[0].value() == 4 + 1 / 8 + 1 / 512
    assert quiz.NF4[0].check("4.127").correct and not quiz.NF4[0].check("4.5").correct
    assert quiz.NF4[1].value() == 7


def test_adapter_size_answer_matches_the_published_figure():
    """course-facts.md: Llama-2-7B r=8 on q,v is 4.2M parameters, ~8 MB in 16 bits."""
    assert 8.3 < quiz.ADAPTERS[0].value() < 8.5
