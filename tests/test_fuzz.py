"""Property-based tests: whatever a learner types, the tools answer or refuse with a message, quickly.

Hypothesis draws inputs (derandomized: the same examples on every run) for the calculator, the widget's
custom-model box, the dataset validator, the checkpoint picker and the exercise and quiz checkers. Each
must give a result or a `ValueError` with a message, within a time bound; never a traceback of another
kind, never a hang.
"""

import math
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_lab.classroom import exercises, quiz
from lora_lab.estimation import vram
from lora_lab.training import checkpoints, data

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SECONDS_PER_ANSWER = 2.0

anything = st.one_of(st.none(), st.booleans(), st.integers(-10**40, 10**40), st.floats(allow_nan=True),
                     st.text(max_size=12), st.lists(st.integers(), max_size=3))


def answers_or_refuses(call):
    """Run `call`: it returns, or raises ValueError with a message; either way within the time bound."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except ValueError as err:
        assert str(err).strip(), "a refusal must say why"
        result = err
    assert time.perf_counter() - start < SECONDS_PER_ANSWER
    return result


@FUZZ
@given(model=st.one_of(st.sampled_from(vram.preset_names()), st.integers(-10, 10**20),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
       method=st.one_of(st.sampled_from(vram.METHODS), anything), rank=st.one_of(st.integers(-2, 5000), anything),
       batch_size=st.one_of(st.integers(-1, 256), anything), seq_len=st.one_of(st.integers(-1, 70_000), anything),
       checkpointing=st.one_of(st.booleans(), anything), optimizer=st.one_of(st.sampled_from(vram.OPTIMIZERS), anything),
       precision=st.one_of(st.sampled_from(vram.PRECISIONS), anything))
def test_the_calculator_answers_or_refuses_any_settings(model, method, rank, batch_size, seq_len, checkpointing,
                                                        optimizer, precision):
    vram.hub.reachable.cache_clear()
    result = answers_or_refuses(lambda: vram.estimate(
        model if not isinstance(model, str) or model in vram.preset_names() else f"./{model}.json", method=method,
        rank=rank, batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=checkpointing,
        optimizer=optimizer, precision=precision))
    if isinstance(result, vram.MemoryEstimate):
        assert result.total > 0 and math.isfinite(result.total)


@FUZZ
@given(text=st.text(max_size=20))
def test_the_widgets_custom_model_box_never_raises(text):
    from lora_lab.figures import widgets

    start = time.perf_counter()
    shown, _, error = widgets.render({**widgets.DEFAULT_STATE, "model": widgets.CUSTOM,
                                      "custom": text if not text.strip() or "/" not in text else f"./{text}"})
    assert time.perf_counter() - start < SECONDS_PER_ANSWER
    assert (shown and error is None) or (shown is None and str(error).strip())  # a verdict or one message


message = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "assistant", "system"]), anything),
                                 "content": st.one_of(st.text(max_size=10), anything)})
row = st.one_of(st.fixed_dictionaries({"messages": st.one_of(st.lists(message, max_size=4), anything)}), anything)


@FUZZ
@given(rows=st.lists(row, max_size=4))
def test_the_dataset_validator_accepts_or_names_the_problem(rows):
    answers_or_refuses(lambda: data.validate(rows, "fuzzed rows"))


@FUZZ
@given(folders=st.lists(st.tuples(st.one_of(st.integers(0, 10**30).map(lambda n: f"checkpoint-{n}"),
                                            st.sampled_from(["checkpoint-", "checkpoint-x", "ckpt-3", "checkpoint-07"])),
                                  st.sets(st.sampled_from(["trainer_state.json", "adapter_model.safetensors",
                                                           "optimizer.pt", "scheduler.pt", "rng_state.pth"]))),
                        max_size=4, unique_by=lambda f: f[0]))
def test_the_checkpoint_picker_returns_a_complete_checkpoint_or_none(tmp_path_factory, folders):
    root = tmp_path_factory.mktemp("ckpts")
    for name, files in folders:
        (root / name).mkdir()
        for file in files:
            (root / name / file).write_bytes(b"{}" if file.endswith(".json") else b"junk")
    newest, skipped = answers_or_refuses(lambda: checkpoints.newest_complete(root))
    assert newest is None  # junk state files are never complete
    assert all(reason for _, reason in skipped)


@FUZZ
@given(exercise=st.sampled_from(sorted(exercises.EXERCISES)), answer=st.one_of(anything, st.dictionaries(
    st.text(max_size=5), anything, max_size=3)))
def test_exercise_checks_never_raise(exercise, answer):
    result = exercises.check(exercise, answer)
    assert isinstance(result, exercises.Result) and result.message


@pytest.mark.parametrize("lesson", sorted(quiz.LESSON_QUIZZES))
def test_quiz_checks_never_raise(lesson):
    questions = getattr(quiz, quiz.LESSON_QUIZZES[lesson])

    @FUZZ
    @given(index=st.integers(0, len(questions) - 1), answer=anything, attempt=st.integers(1, 5))
    def check(index, answer, attempt):
        feedback = questions[index].check(answer, attempt)
        assert isinstance(feedback, quiz.Feedback) and feedback.message

    check()
