"""Quick checks and knowledge checks, answered in the notebook with feedback.

Two kinds of question: `MultipleChoice` and `Numeric`. A numeric answer is never typed in by hand
when the package can compute it: it is a function called when the question is checked (for
example the largest model a 24 GB card fine-tunes with QLoRA, from `lora_lab.vram`), so the quiz
and the lesson cannot disagree.

`show(questions)` renders them as ipywidgets; `Question.check(...)` is the same logic without a
screen (tests use it). A malformed answer gets a message, never a traceback.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer."""

    correct: bool  # whether the answer counts as right
    message: str  # what to show the learner: why it is right or what to reconsider


@dataclass(frozen=True)
class MultipleChoice:
    """A question with one right option."""

    question: str  # the question as shown
    options: tuple[str, ...]  # the choices, in display order
    answer: int  # index of the right option
    explanation: str  # shown after any answer: the reasoning and its source

    def check(self, choice: int | str | None) -> Feedback:
        """Judge an option given by index or by its text."""
        if isinstance(choice, str):
            choice = self.options.index(choice) if choice in self.options else None
        if choice is None or not 0 <= int(choice) < len(self.options):
            return Feedback(False, "Pick one of the options.")
        if int(choice) == self.answer:
            return Feedback(True, f"Right. {self.explanation}")
        return Feedback(False, f"Not quite: the answer is \u201c{self.options[self.answer]}\u201d. {self.explanation}")


@dataclass(frozen=True)
class Numeric:
    """A question whose answer is a number, computed by the package where possible."""

    question: str  # the question as shown
    answer: float | Callable[[], float]  # the right value, or a function computing it
    rel_tol: float  # accepted relative error (0.05 = within 5%)
    unit: str  # shown after the input box, e.g. "parameters" or "GB"
    explanation: str  # shown after any answer; may use {answer} to show the computed value

    def value(self) -> float:
        """The right answer (computed now if it is a function)."""
        return float(self.answer() if callable(self.answer) else self.answer)

    def check(self, given) -> Feedback:
        """Judge a number (or a string holding one; commas and underscores allowed)."""
        try:
            number = float(str(given).replace(",", "").replace("_", "").strip())
        except ValueError:
            return Feedback(False, f"Enter a number ({self.unit}), for example 42 or 1.5e9.")
        if not math.isfinite(number):
            return Feedback(False, "Enter a finite number.")
        right = self.value()
        explanation = self.explanation.format(answer=_fmt(right))
        if math.isclose(number, right, rel_tol=self.rel_tol, abs_tol=1e-12):
            return Feedback(True, f"Right. {explanation}")
        direction = "high" if number > right else "low"
        return Feedback(False, f"Too {direction}: the answer is {_fmt(right)} {self.unit}. {explanation}")


Question = MultipleChoice | Numeric


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 and float(x).is_integer() else f"{x:,.3g}"


def show(questions: Sequence[Question], title: str = "Check your understanding"):
    """Render the questions as widgets, each with a Check button and a feedback line."""
    import ipywidgets as w

    boxes = [w.HTML(f"<h3>{html.escape(title)}</h3>")]
    for i, q in enumerate(questions, 1):
        prompt = w.HTML(f"<b>{i}. {html.escape(q.question)}</b>")
        if isinstance(q, MultipleChoice):
            entry = w.RadioButtons(options=list(q.options), value=None, layout=w.Layout(width="auto"))
        else:
            entry = w.Text(placeholder=f"a number ({q.unit})")
        button = w.Button(description="Check")
        feedback = w.HTML()

        def on_click(_, q=q, entry=entry, feedback=feedback):
            try:
                verdict = q.check(entry.value)
            except Exception as err:  # a broken computed answer must not crash the lesson
                verdict = Feedback(False, f"Could not check this answer: {err}")
            colour = "green" if verdict.correct else "#b00"
            feedback.value = f"<span style='color:{colour}'>{html.escape(verdict.message)}</span>"

        button.on_click(on_click)
        boxes.append(w.VBox([prompt, entry, w.HBox([button, feedback])]))
    return w.VBox(boxes)


# ---------------------------------------------------------------------------------------------
# The course's questions. Answers that a module can compute are computed by it.


def _lora_params_4096_r8() -> float:
    d_in = d_out = 4096
    return 8 * (d_in + d_out)


def _t4_dtype_index() -> int:
    from .hardware import compute_dtype_for

    return ["bfloat16", "float16", "float32"].index(compute_dtype_for("cuda", (7, 5)))


#: The settings of the syllabus's "24 GB card" quick check, stated so the answer can be checked.
QLORA_24GB_SETTINGS = dict(method="qlora", rank=16, batch_size=1, seq_len=512, gradient_checkpointing=True,
                           optimizer="paged_adamw_8bit", precision="bf16")


def _largest_qlora_model_on_24gb() -> float:
    from .vram import largest_model_that_fits

    return largest_model_that_fits("RTX 4090", **QLORA_24GB_SETTINGS) / 1e9


PREFLIGHT = [
    MultipleChoice(
        "A Colab T4 (compute capability 7.5) runs your fine-tune. Which dtype should it compute in?",
        ("bfloat16", "float16", "float32"),
        _t4_dtype_index(),
        "bf16 runs natively only from capability 8.0; torch.cuda.is_bf16_supported() says True on a T4 "
        "because it can emulate bf16, so decide by capability.",
    ),
    MultipleChoice(
        "Why must the pad token differ from the eos token when fine-tuning?",
        (
            "Padding with eos makes batches longer",
            "Pad positions are masked out of the loss, so with pad = eos the model never learns to stop",
            "Tokenizers refuse to load otherwise",
        ),
        1,
        "Masked pad labels would also mask every eos, and generation then runs on to max_new_tokens "
        "(see huggingface/trl#1623).",
    ),
]

VRAM = [
    Numeric(
        "You have a 24 GB card (RTX 4090). What is the largest dense model, in billions of parameters, that "
        "you can fine-tune with QLoRA (rank 16, all linear layers, batch 1, sequence 512, gradient "
        "checkpointing, paged 8-bit AdamW)?",
        _largest_qlora_model_on_24gb,
        0.15,
        "billion parameters",
        "lora_lab.vram puts the limit near {answer} billion under these settings: 30B fits, 70B does not. "
        "The syllabus's '13B comfortably, 30B tight' holds only with longer sequences or bigger batches.",
    ),
    MultipleChoice(
        "A calculator takes the largest of weights, gradients, optimizer states and activations as the memory "
        "a run needs. What is wrong with that?",
        (
            "Nothing: the largest part decides",
            "They are all held at the same time, so they add up; activations and logits also grow with batch and sequence",
            "It should take the smallest part",
        ),
        1,
        "accelerate's `estimate-memory` command does this (huggingface.co/docs/accelerate/usage_guides/model_size_estimator); the parts coexist at the peak.",
    ),
]

LORA_BASICS = [
    Numeric(
        "A 4096 x 4096 weight matrix gets a LoRA adapter of rank 8. How many trainable parameters does the adapter add?",
        _lora_params_4096_r8,
        0.0,
        "parameters",
        "r x (d_in + d_out) = {answer}, about 0.4% of the 16.8 million weights of the matrix.",
    ),
    MultipleChoice(
        "You merge a trained LoRA adapter into its base model. What does that cost at inference?",
        (
            "Nothing: W + BA has the base weight's shape, so the merged model is the base architecture",
            "A little per layer, because the adapter still runs beside each weight",
            "Twice the memory, because both copies are kept",
        ),
        0,
        "Unmerged adapters do add a little time per layer (notebook 02 measures it); merged ones do not. "
        "Merge into a 16-bit copy of the base: merging into a 4-bit base rounds the update.",
    ),
    MultipleChoice(
        "What does the QLoRA paper report for 4-bit NF4 QLoRA against 16-bit LoRA?",
        (
            "About 90-95% of the 16-bit quality",
            "Parity: mean 5-shot MMLU 53.1 (NF4 + double quant) vs 53.0 (BF16)",
            "A 20% loss in quality that larger models recover",
        ),
        1,
        "QLoRA (arXiv 2305.14314), Table 4. The '90-95%' folklore is not in the paper.",
    ),
    MultipleChoice(
        "Which layers does peft's target_modules=\"all-linear\" adapt in a Llama-style model?",
        (
            "q, k, v and o only",
            "Every linear layer of the decoder blocks (q, k, v, o, gate, up, down), not the output head",
            "Every linear layer including lm_head",
        ),
        1,
        "peft leaves the output head out of all-linear. QLoRA (section 4) found adapting all linear "
        "layers necessary to match full fine-tuning.",
    ),
]


def _nf4_dq_bits() -> float:
    from .quant import bits_per_parameter

    return bits_per_parameter(64, double_quant=True)


def _nf4_negative_levels() -> int:
    from .quant import code_book

    return int((code_book("nf4") < 0).sum())


NF4 = [
    Numeric(
        "NF4 with blocks of 64 and double quantization of the absmax values: how many bits does each "
        "quantized weight take, all constants of the blocks included?",
        _nf4_dq_bits,
        0.002,
        "bits",
        "4 bits of code + 8 bits of absmax per 64 weights + one fp32 scale per 256 blocks = {answer} "
        "(4.5 without double quantization).",
    ),
    Numeric(
        "How many of NF4's 16 levels are negative?",
        _nf4_negative_levels,
        0.0,
        "levels",
        "NF4 has {answer} negative levels, an exact zero and 8 positive ones: asymmetric, so zero is exact.",
    ),
    MultipleChoice(
        "In a QLoRA model, which weights are stored in 4 bits?",
        (
            "Every weight, embeddings and norms included",
            "The weights of the linear layers inside the decoder blocks; embeddings, norms and (by default) "
            "the output head stay in 16 bits, and the LoRA weights in 32",
            "Only the LoRA adapters",
        ),
        1,
        "bitsandbytes replaces nn.Linear layers; prepare_model_for_kbit_training even upcasts the rest "
        "to fp32, which is why small models with big vocabularies can need more memory in QLoRA than in LoRA.",
    ),
]


def _llama2_7b_qv_r8_megabytes() -> float:
    from .rank import lora_params, predicted_adapter_bytes

    n = lora_params("meta-llama/Llama-2-7b-hf", 8, ("q_proj", "v_proj"))
    return predicted_adapter_bytes(n, "bfloat16") / 1e6


ADAPTERS = [
    Numeric(
        "A LoRA adapter of rank 8 on the q and v projections of Llama-2-7B is saved in 16 bits. About how many "
        "megabytes (1 MB = 10^6 bytes) is the file?",
        _llama2_7b_qv_r8_megabytes,
        0.05,
        "MB",
        "32 layers x 8 x (4096 + 4096) x 2 matrices = 4.2M parameters x 2 bytes = {answer} MB (plus a small "
        "header). peft saves fp32 by default, which doubles it; all linear layers at rank 64 make it ~40x bigger.",
    ),
    MultipleChoice(
        "You want one standalone model from a QLoRA run. Into what should you merge the adapter?",
        (
            "Into the 4-bit base it was trained on, so nothing changes",
            "Into a 16-bit copy of the base: merging into the 4-bit base rounds the update away",
            "It cannot be merged; always serve it unmerged",
        ),
        1,
        "Notebook 05 measures how much of the update the 4-bit merge loses; peft warns about it too.",
    ),
    MultipleChoice(
        "Two adapters were trained on different base models with the same architecture name. Can you load both "
        "onto one base?",
        (
            "Yes, adapters are independent of the base",
            "Only onto the base they were trained on: the update W + BA is meaningless on other weights, and on "
            "other shapes it fails to load",
            "Yes, if their ranks are equal",
        ),
        1,
        "lora_lab.adapters refuses mismatched shapes with a clear message; matching shapes but other weights "
        "load silently and give nonsense.",
    ),
]
