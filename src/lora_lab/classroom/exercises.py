"""The course's exercises, each with a check computed by the package, as the quizzes are.

Every exercise at the end of a lesson is registered here (`EXERCISES`): its id ("02.3": notebook
02, exercise 3), a one-line subject, the minutes it takes, the variable its answer goes in
(`answer_02_3`), what a correct answer looks like, and a function that computes the right answer
with the package (`lora_lab.estimation.vram`, `lora_lab.experiments.quant`, ...), so the check and the lesson cannot
disagree, and an answer that depends on the run profile is computed for the profile in use.

In a notebook:

    answer_02_3 = (r_attention, r_mlp)
    exercises.check("02.3", answer_02_3)

`check` returns a `Result` that Jupyter shows as a line of feedback. It never raises: an
unanswered exercise (`None`, as the learner notebooks start) gets "not answered yet", a malformed
answer says what shape is expected, and a wrong one says which part is off and what to reconsider,
without giving the answer away (the instructor's notebook and `docs/answer-key.md` have it).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from lora_lab.classroom.feedback import Mistake, number_verdict


@dataclass(frozen=True)
class Result:
    """The verdict on one answer; Jupyter displays it as a coloured line."""

    exercise_id: str  # which exercise was checked
    correct: bool  # whether the answer counts as right
    message: str  # what to show: why it is right, or which part to reconsider
    answered: bool = True  # False while the answer is still the placeholder None

    def __str__(self) -> str:
        return f"Exercise {self.exercise_id}: {self.message}"

    def _repr_html_(self) -> str:
        colour = "green" if self.correct else ("#666" if not self.answered else "#b00")
        mark = "\u2714" if self.correct else ("\u2026" if not self.answered else "\u2718")
        return (f"<div style='color:{colour}'><b>{mark} Exercise {html.escape(self.exercise_id)}:</b> "
                f"{html.escape(self.message)}</div>")

    def __repr__(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Exercise:
    """One exercise: what to compute, what a right answer looks like, and the right answer computed."""

    id: str  # "NN.M": notebook NN, exercise M
    title: str  # the subject in one line (the notebook's "### Exercise NN.M: title" heading)
    minutes: int  # time a learner needs, for planning a session
    expects: str  # what a correct answer looks like (its type, parts and units), shown in the notebook
    expected: Callable[[], Any]  # computes the right answer with the package (for the profile in use)
    rel_tol: float = 0.0  # accepted relative error of each number (0: exact)
    hint: str = ""  # what to reconsider after a wrong answer, without the answer
    mistake: Mistake | None = None  # the most common wrong answer, and the hint written for it

    @property
    def variable(self) -> str:
        """The name the answer is assigned to in the notebook: answer_02_3 for exercise 02.3."""
        return "answer_" + self.id.replace(".", "_")

    def check(self, answer) -> Result:
        """Judge `answer` against the computed right answer; never raises."""
        if answer is None:
            return Result(self.id, False, f"not answered yet: assign {self.expects} to {self.variable}, then "
                          "run this cell again.", answered=False)
        try:
            right = _expected(self.id)
        except Exception as err:  # a broken computation must not crash the lesson
            return Result(self.id, False, f"could not compute the expected answer ({type(err).__name__}: {err}).")
        try:
            problems = _compare(answer, right, self.rel_tol, "")
        except Exception as err:
            problems = [f"could not compare this answer ({type(err).__name__}: {err})"]
        if not problems:
            return Result(self.id, True, "correct.")
        hint = f" Hint: {self.hint}" if self.hint else ""
        if self.mistake is not None and _is_the_mistake(answer, self.mistake, right, self.rel_tol):
            return Result(self.id, False, f"not yet: this is the answer you get if you {self.mistake.what}. "
                          f"{self.mistake.hint}{hint}")
        return Result(self.id, False, "not yet: " + "; ".join(problems) + "." + hint)


def _is_the_mistake(answer, mistake: Mistake, right, rel_tol: float) -> bool:
    """True when `answer` equals what the mistake gives (and the mistake does not give the right answer)."""
    try:
        wrong = mistake.answer()
        return bool(_compare(right, wrong, rel_tol, "")) and not _compare(answer, wrong, rel_tol, "")
    except Exception:  # a broken mistake must not hide the ordinary feedback
        return False


def _name(path: str) -> str:
    return f"`{path}`" if path else "the answer"


def _compare(given, right, rel_tol: float, path: str) -> list[str]:
    """What differs between `given` and `right` (empty when they agree), never naming the right values."""
    if isinstance(right, bool) or right is None or isinstance(right, str):
        given_norm = _normal_text(given) if isinstance(right, str) else given
        if given_norm == (_normal_text(right) if isinstance(right, str) else right):
            return []
        return [f"{_name(path)} is not {given!r}"]
    if isinstance(right, (int, float)):
        if isinstance(given, bool):
            return [f"{_name(path)} should be a number, not {given}"]
        if not isinstance(given, (int, float)) or isinstance(given, complex):
            try:
                given = float(given)
            except (TypeError, ValueError):
                return [f"{_name(path)} should be a number, not {type(given).__name__}"]
        if not math.isfinite(given):
            return [f"{_name(path)} should be a finite number"]
        verdict = number_verdict(given, right, rel_tol)
        if verdict is None:
            return []
        return [f"{_name(path)}: {verdict[0].lower()}{verdict[1:].rstrip('.')}"]
    if isinstance(right, Mapping):
        if not isinstance(given, Mapping):
            return [f"{_name(path)} should be a dict with keys {sorted(right)}"]
        missing, extra = sorted(set(right) - set(given)), sorted(set(given) - set(right), key=str)
        if missing or extra:
            return [f"{_name(path)} should have exactly the keys {sorted(right)}"
                    + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else "")]
        return [p for key in right for p in _compare(given[key], right[key], rel_tol, f"{path}[{key!r}]")]
    if isinstance(right, (set, frozenset)):
        if not isinstance(given, (set, frozenset, list, tuple)):
            return [f"{_name(path)} should be a set"]
        given_set = {tuple(g) if isinstance(g, list) else g for g in given}
        missing, extra = len(right - given_set), len(given_set - right)
        if not missing and not extra:
            return []
        parts = ([f"{missing} missing"] if missing else []) + ([f"{extra} that do not belong"] if extra else [])
        return [f"{_name(path)}: {' and '.join(parts)}"]
    if isinstance(right, (tuple, list)):
        if not isinstance(given, (tuple, list)) or len(given) != len(right):
            return [f"{_name(path)} should be a sequence of {len(right)} values"]
        return [p for i, (g, r) in enumerate(zip(given, right, strict=True))
                for p in _compare(g, r, rel_tol, f"{path}[{i}]")]
    raise TypeError(f"no comparison for {type(right).__name__}")


def _normal_text(value) -> str:
    """Dtype names compared loosely: torch.float16, 'fp16' and 'float16' are the same answer."""
    text = str(value).strip().lower().removeprefix("torch.")
    return {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}.get(text, text)


# ---------------------------------------------------------------------------------------------
# The right answers, computed by the package.


def _dtypes_l4_v100() -> dict:
    from lora_lab.runtime.hardware import compute_dtype_for

    return {"L4": compute_dtype_for("cuda", (8, 9)), "V100": compute_dtype_for("cuda", (7, 0))}


@cache
def _template_counts() -> tuple[int, int]:
    """Tokens of the first recall example's templated conversation, and of its bare messages."""
    from transformers import AutoTokenizer

    from lora_lab.standins import tiny
    from lora_lab.training import data

    tokenizer = AutoTokenizer.from_pretrained(tiny.ensure_tiny_model())
    row = next(r for r in data.course_splits(data.TASK_FAMILIES, n_eval=30)["train"] if r["task"] == "recall")
    bare = sum(len(tokenizer(m["content"])["input_ids"]) for m in row["messages"])
    templated = len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
    return templated, bare


def _template_tokens() -> int:
    templated, bare = _template_counts()
    return templated - bare


def _swapped(compute: Callable[[], Any]) -> Callable[[], Any]:
    """The mistake of giving a pair's two values the other way round."""
    def answer():
        right = compute()
        if isinstance(right, Mapping):
            first, second = right
            return {first: right[second], second: right[first]}
        return tuple(reversed(right))
    return answer


#: Exercise 01.1's run: the t4 profile's QLoRA settings at batch 4.
QWEN_T4_QLORA = dict(method="qlora", rank=16, batch_size=4, precision="fp16", optimizer="paged_adamw_8bit")


def _longest_sequences() -> dict:
    from lora_lab.estimation import vram

    return {f"{'with' if on else 'without'}_checkpointing": vram.max_seq_len_that_fits(
        "Qwen/Qwen2.5-1.5B", "Colab T4", gradient_checkpointing=on, **QWEN_T4_QLORA) for on in (True, False)}


def _smallest_gpus(precision: str = "mixed") -> dict:
    from lora_lab.estimation import vram

    return {method: vram.smallest_gpu("meta-llama/Llama-3.1-8B", method=method, precision=precision, batch_size=1,
                                      seq_len=2048) for method in ("full", "qlora")}


def _llama_r16_params(targets: str = "all-linear") -> dict:
    from lora_lab.experiments import rank

    row = rank.parameter_table("meta-llama/Llama-3.1-8B", ranks=(16,), target_sets=(targets,))[0]
    return {"params": row["params"], "share": row["share"]}


#: Exercise 02.2's controlled experiment: a true update of rank 16, plenty of data, short fits.
KNEE_SETTINGS = dict(d=64, true_rank=16, n_trains=(4096,), ranks=(4, 8, 16, 32), steps=150)


@cache
def _knee_at_rank(true_rank: int = 16) -> int:
    from lora_lab.experiments import rank

    rows = rank.recovery_sweep(**{**KNEE_SETTINGS, "true_rank": true_rank})
    return rank.knee([r["rank"] for r in rows], [r["error"] for r in rows])


def _closest_ranks() -> tuple[int, int]:
    from lora_lab.estimation import vram
    from lora_lab.experiments import rank

    arch = vram.load_arch("Qwen/Qwen2.5-1.5B")
    goal = vram.lora_params(arch, 32, "all-linear")
    return tuple(round(goal / vram.lora_params(arch, 1, rank.target_modules(arch, s))) for s in ("attention", "mlp"))


def _t4_batch_and_epochs(count_accumulation: bool = True) -> dict:
    from lora_lab.runtime.profiles import PROFILES

    t4 = PROFILES["t4"]
    effective = t4.batch_size * (t4.grad_accum if count_accumulation else 1)
    return {"effective_batch": effective, "epochs": t4.max_steps * effective / t4.n_train}


def _largest_7b_batch(gradient_checkpointing: bool = True) -> int:
    from lora_lab.estimation import vram
    from lora_lab.runtime.profiles import PROFILES

    t4 = PROFILES["t4"]
    return vram.max_batch_size_that_fits("Qwen/Qwen2.5-7B", "Colab T4", method="qlora", rank=t4.lora_r,
                                         seq_len=t4.max_length, gradient_checkpointing=gradient_checkpointing,
                                         precision="fp16", optimizer=t4.optimizer)


#: Exercise 04.1's candidate offsets and data.
NF4_OFFSETS = (0.9, 0.93, 0.95, 0.9677083, 0.98, 0.99)


def nf4_offset_errors() -> dict[float, float]:
    """Relative RMSE of NF4 round trips (blocks of 64) per offset, on 2^18 normal values drawn with seed 1."""
    import torch

    from lora_lab.experiments import quant
    from lora_lab.lessons import code_books, nf4

    normal = torch.randn(2**18, generator=torch.Generator().manual_seed(1))
    return {o: quant.relative_rmse(normal, nf4.round_trip(normal, code_books.nf4_code(o))) for o in NF4_OFFSETS}


def _best_nf4_offset() -> float:
    errors = nf4_offset_errors()
    return min(errors, key=errors.get)


def _block_128_savings(double_quant: bool = True) -> dict:
    from lora_lab.estimation import vram
    from lora_lab.lessons import nf4

    arch = vram.load_arch("Qwen/Qwen2.5-7B")
    shapes = [(li.d_in, li.d_out) for li in arch.linears] * arch.num_layers
    gb = {bs: sum(nf4.storage_bits(i * o, bs, double_quant=double_quant).total for i, o in shapes) / 8 / 1e9
          for bs in (64, 128)}
    return {"bits": nf4.bits_per_parameter(128, double_quant=double_quant), "saved_gb": gb[64] - gb[128]}


def _llama_r64_adapter_mib(targets: str = "all-linear") -> dict:
    from lora_lab.estimation import vram
    from lora_lab.experiments import adapters

    config = vram.preset_config("meta-llama/Llama-3.1-8B")
    return {f"{name}_mib": adapters.predict_adapter_bytes(config, 64, targets, nbytes).tensor_bytes / 2**20
            for name, nbytes in (("fp32", 4), ("bf16", 2))}


def _merged_over_4bit() -> float:
    from lora_lab.estimation import vram
    from lora_lab.lessons import nf4

    arch = vram.load_arch("Qwen/Qwen2.5-7B")
    linear = [li.d_in * li.d_out for li in arch.linears] * arch.num_layers
    four_bit = sum(nf4.storage_bits(n, double_quant=True).bytes for n in linear) + 2 * (arch.total_params - sum(linear))
    return 2 * arch.total_params / four_bit


def _fsdp_long_smallest(seq_len: int | None = 4096) -> dict:
    from lora_lab.experiments import scale

    settings = {"seq_len": seq_len} if seq_len else {}
    rows = [r for r in scale.fit_table(batch_size=2, **settings) if r.setup == "2 x T4" and r.parallel == "FSDP"]
    best = min(rows, key=lambda r: r.per_gpu_gib)
    return {"model": best.model, "method": best.method, "per_gpu_gib": best.per_gpu_gib, "fits": best.fits}


def _dora_vera_params(count_shared: bool = False) -> dict:
    from lora_lab.lessons import variants

    vera = variants.trainable_params("VeRA", 4096, 4096, 256)
    if count_shared:
        vera += 256 * (4096 + 4096)
    return {"dora": variants.trainable_params("DoRA", 4096, 4096, 16), "vera": vera}


def _scales_r64() -> dict:
    from lora_lab.lessons import variants

    return {"lora": 16 / 64, "rslora": variants.rslora_scale(16, 64)}


EXERCISES: dict[str, Exercise] = {e.id: e for e in (
    Exercise("00.1", "Compute dtype of an L4 and a V100", 5,
             'a dict {"L4": dtype, "V100": dtype} with dtype names such as "float16"', _dtypes_l4_v100,
             hint="look up each GPU's compute capability and where native bf16 starts (lora_lab.runtime.hardware).",
             mistake=Mistake("take fp16 for every card, as on the T4", lambda: {"L4": "float16", "V100": "float16"},
                             "The T4 lacks bf16 because of its compute capability (7.5), not because every small "
                             "card does: compare each card's capability with 8.0, where native bf16 starts.")),
    Exercise("00.2", "Tokens the chat template adds", 10,
             "an int: tokens of the templated conversation minus the tokens of its bare messages",
             _template_tokens, hint="tokenize each message's content alone, then the whole conversation "
             "through apply_chat_template, for the first recall example of the training split.",
             mistake=Mistake("count the whole templated conversation", lambda: _template_counts()[0],
                             "The question asks what the template adds: subtract the tokens of the bare "
                             "messages' contents.")),
    Exercise("01.1", "Longest sequence on a T4, with and without checkpointing", 5,
             'a dict {"with_checkpointing": tokens, "without_checkpointing": tokens} of ints',
             _longest_sequences, rel_tol=0.02,
             hint="vram.max_seq_len_that_fits, with the settings of the statement, once per checkpointing setting.",
             mistake=Mistake("swap the two settings", _swapped(_longest_sequences),
                             "Checkpointing keeps fewer activations, so it is the setting that lets longer "
                             "sequences fit.")),
    Exercise("01.2", "Smallest GPU for full fine-tuning and for QLoRA of an 8B model", 5,
             'a dict {"full": GPU name or None, "qlora": GPU name or None} with names as in vram.GPUS',
             _smallest_gpus, hint="vram.smallest_gpu tries the GPUs of the table from the smallest up.",
             mistake=Mistake("leave the precision at the estimator's default", lambda: _smallest_gpus("bf16"),
                             'The statement asks for mixed precision (fp32 weights and Adam states, 16-bit '
                             'compute): pass precision="mixed".')),
    Exercise("02.1", "LoRA r=16 on all linear layers of Llama-3.1-8B: parameters and share", 5,
             'a dict {"params": int, "share": float} with the share as a fraction (0.01 = 1%)',
             _llama_r16_params, rel_tol=0.01,
             hint="rank.parameter_table gives both; the share is adapter parameters over the base model's.",
             mistake=Mistake("adapt only q and v (peft's default targets for Llama)",
                             lambda: _llama_r16_params("q,v"),
                             'The statement adapts every linear layer: target set "all-linear", seven matrices '
                             "per layer, not two.")),
    Exercise("02.2", "Move the knee: a true update of rank 16", 10,
             "an int: the knee's rank (rank.knee) of the sweep in the statement", _knee_at_rank,
             hint="run rank.recovery_sweep with exactly the statement's settings, then rank.knee on its rows.",
             mistake=Mistake("keep the lesson's true rank of 8", lambda: _knee_at_rank(8),
                             "Use the statement's true rank in the sweep: the knee follows the rank of the true update.")),
    Exercise("02.3", "Attention-only and MLP-only ranks with all-linear r=32's parameter count", 10,
             "a tuple (r_attention, r_mlp) of ints", _closest_ranks,
             hint="LoRA parameters grow linearly with r: divide all-linear r=32's count by each set's count at r=1.",
             mistake=Mistake("give the two ranks the other way round", _swapped(_closest_ranks),
                             "The tuple is (r_attention, r_mlp): the MLP's matrices are larger, so the same "
                             "parameters buy it a smaller rank.")),
    Exercise("03.1", "Effective batch and epochs of the t4 run", 5,
             'a dict {"effective_batch": int, "epochs": float}', _t4_batch_and_epochs, rel_tol=0.01,
             hint="effective batch = batch_size x grad_accum; epochs = examples seen / n_train.",
             mistake=Mistake("leave out gradient accumulation", lambda: _t4_batch_and_epochs(False),
                             "Each optimizer step accumulates grad_accum micro-batches of batch_size examples.")),
    Exercise("03.2", "The largest batch for Qwen2.5-7B with QLoRA on a T4", 10,
             "an int: examples per micro-batch", _largest_7b_batch,
             hint="vram.max_batch_size_that_fits with the t4 profile's rank, max_length and optimizer, fp16.",
             mistake=Mistake("turn gradient checkpointing off", lambda: _largest_7b_batch(False),
                             "The t4 profile trains with gradient checkpointing on: pass "
                             "gradient_checkpointing=True.")),
    Exercise("04.1", "Is NF4's outermost quantile the best choice?", 10,
             "a float: the offset, from the statement's list, with the smallest relative RMSE", _best_nf4_offset,
             hint="code_books.nf4_code(offset) builds the code book; nf4.round_trip accepts it; compare relative RMSEs.",
             mistake=Mistake("take bitsandbytes' offset as the best", lambda: 0.9677083,
                             "NF4's offset makes bins of equal probability; it was not chosen for the smallest "
                             "RMSE. Measure every offset of the list.")),
    Exercise("04.2", "Blocks of 128: bits per weight and gigabytes saved on Qwen2.5-7B", 10,
             'a dict {"bits": float, "saved_gb": float} (1 GB = 10^9 bytes)', _block_128_savings, rel_tol=0.01,
             hint="nf4.bits_per_parameter and nf4.storage_bits take the block size; sum over the linear layers.",
             mistake=Mistake("leave out double quantization", lambda: _block_128_savings(False),
                             "QLoRA stores each absmax in 8 bits with a 32-bit scale per 256 blocks: pass "
                             "double_quant=True.")),
    Exercise("05.1", "The file size of a rank-64 adapter on Llama-3.1-8B, fp32 and bf16", 5,
             'a dict {"fp32_mib": float, "bf16_mib": float} (1 MiB = 2^20 bytes), tensors only',
             _llama_r64_adapter_mib, rel_tol=0.01,
             hint="adapters.predict_adapter_bytes takes the bytes per value: 4 for fp32, 2 for bf16.",
             mistake=Mistake("adapt only q and v (peft's default targets for Llama)",
                             lambda: _llama_r64_adapter_mib(("q_proj", "v_proj")),
                             'The statement adapts every linear layer: targets="all-linear".')),
    Exercise("05.2", "What merging a QLoRA adapter costs in memory", 10,
             "a float: the merged 16-bit model's bytes divided by the 4-bit base's bytes", _merged_over_4bit,
             rel_tol=0.02, hint="only the decoder's linear layers are 4-bit (nf4.storage_bits per matrix); every "
             "other parameter takes 2 bytes in both models.",
             mistake=Mistake("divide 16 bits by 4 bits for every parameter", lambda: 4.0,
                             "Embeddings, norms and the output head stay 16-bit in the 4-bit model, and each "
                             "block's constants add bits to the 4: the ratio is smaller than 4.")),
    Exercise("06.1", "The lightest run on 2 x T4 with FSDP at 4096 tokens", 10,
             'a dict {"model": str, "method": str, "per_gpu_gib": float, "fits": bool}', _fsdp_long_smallest,
             rel_tol=0.01, hint="scale.fit_table(seq_len=4096, batch_size=2): among the rows with setup "
             "\"2 x T4\" and parallel \"FSDP\", the one with the smallest per_gpu_gib.",
             mistake=Mistake("keep fit_table's default sequence length", lambda: _fsdp_long_smallest(None),
                             "Pass seq_len=4096: activations grow with the sequence.")),
    Exercise("07.1", "Trainable parameters of DoRA and VeRA on one layer", 5,
             'a dict {"dora": int, "vera": int}', _dora_vera_params,
             hint="lessons.variants.trainable_params counts one layer for each method.",
             mistake=Mistake("count VeRA's shared random matrices as trainable", lambda: _dora_vera_params(True),
                             "VeRA's A and B are frozen random matrices shared by all layers: only d and b train.")),
    Exercise("07.2", "The scale of B @ A at r=64 under LoRA and rsLoRA", 5,
             'a dict {"lora": float, "rslora": float}', _scales_r64, rel_tol=1e-6,
             hint="LoRA multiplies by alpha / r, rsLoRA by alpha / sqrt(r).",
             mistake=Mistake("swap the two rules", lambda: dict(zip(("lora", "rslora"), reversed(_scales_r64().values()),
                                                                strict=True)),
                             "rsLoRA's rule divides by the square root of r, so its scale is the larger one.")),
)}


@cache
def _expected(exercise_id: str):
    """The right answer of an exercise, computed once per process."""
    return EXERCISES[exercise_id].expected()


def check(exercise_id: str, answer) -> Result:
    """Feedback on `answer` to exercise `exercise_id` ("02.3"); never raises.

    Returns:
        A `Result`; in a notebook it displays as one line of feedback.
    """
    exercise = EXERCISES.get(str(exercise_id))
    if exercise is None:
        return Result(str(exercise_id), False, f"there is no exercise {exercise_id!r}; the exercises are "
                      f"{', '.join(EXERCISES)}.")
    return exercise.check(answer)


def for_notebook(number: str) -> list[Exercise]:
    """The exercises of notebook `number` ("02"), in order."""
    return [e for e in EXERCISES.values() if e.id.split(".")[0] == number]
