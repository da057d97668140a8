"""Knowledge checks shown at the end of each lesson, answered in the notebook with feedback.

Two kinds of question: `MultipleChoice` and `Numeric`. A numeric answer is never typed in by hand
when the package can compute it: it is a function called when the question is checked (for
example the bits NF4 stores per weight, from `lora_lab.experiments.quant`), so the quiz and the lesson cannot
disagree. A question whose answer depends on a model of the hardware (the largest model a card
fine-tunes) is multiple choice, with ranges computed from `lora_lab.estimation.vram`: a learner cannot be
expected to reproduce an estimator to 15%.

A learner may retry. A wrong answer gets a hint (why that option is wrong, or whether the number
is high or low and what to reconsider), and the right answer is shown only after
`TRIES_BEFORE_ANSWER` wrong tries, or on request (`reveal`, the widget's "Show answer" button).
`show(questions)` renders them as ipywidgets; `check(answer, attempt)` is the same logic without a
screen (tests use it). A malformed answer gets a message, never a traceback, and costs no try.

Each lesson shows one quiz (`LESSON_QUIZZES`), and each question is asked in exactly one lesson,
the one that teaches it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from lora_lab.classroom.feedback import Mistake, number_verdict

#: Wrong tries a learner gets before the right answer is shown with the explanation.
TRIES_BEFORE_ANSWER = 3


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer."""

    correct: bool  # whether the answer counts as right
    message: str  # what to show the learner: why it is right, or a hint on what to reconsider
    revealed: bool = False  # whether the message gives the right answer (right, revealed, or out of tries)
    counted: bool = True  # False for a malformed answer (no number, no option): it costs no try


def _text(value: str | Callable[[], str]) -> str:
    return value() if callable(value) else value


def _retry(attempt: int) -> str:
    left = TRIES_BEFORE_ANSWER - attempt
    words = {1: "one try", 2: "two tries", 3: "three tries", 4: "four tries"}
    return f" Try again ({words.get(left, f'{left} tries')} left before the answer is shown)."


@dataclass(frozen=True)
class MultipleChoice:
    """A question with one right option; each wrong option says why it is wrong."""

    question: str  # the question as shown, with every assumption it needs
    options: tuple[str, ...]  # the choices, in display order
    answer: int | Callable[[], int]  # index of the right option, or a function computing it
    explanation: str | Callable[[], str]  # shown with the right answer: the reasoning and its source
    why_wrong: tuple[str, ...] | Callable[[int], str]  # per option (its text for the right one is unused),
    # or a function of the option's index: the hint shown for a wrong pick, never giving the answer away

    def right(self) -> int:
        """Index of the right option (computed now if it is a function)."""
        return int(self.answer() if callable(self.answer) else self.answer)

    def _why(self, index: int) -> str:
        return self.why_wrong(index) if callable(self.why_wrong) else self.why_wrong[index]

    def reveal(self) -> Feedback:
        """The right answer with its explanation (after the tries, or on request)."""
        return Feedback(False, f"The answer is \u201c{self.options[self.right()]}\u201d. {_text(self.explanation)}",
                        revealed=True)

    def check(self, choice: int | str | None, attempt: int = 1) -> Feedback:
        """Judge an option given by index or by its text, on the learner's `attempt`-th try (1-based)."""
        if isinstance(choice, str):
            choice = self.options.index(choice) if choice in self.options else None
        if isinstance(choice, float) and choice.is_integer():
            choice = int(choice)
        if choice is None or isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(self.options):
            return Feedback(False, "Pick one of the options.", counted=False)
        if int(choice) == self.right():
            return Feedback(True, f"Right. {_text(self.explanation)}", revealed=True)
        hint = f"Not this one: {self._why(int(choice))}"
        if attempt >= TRIES_BEFORE_ANSWER:
            return Feedback(False, f"{hint} {self.reveal().message}", revealed=True)
        return Feedback(False, hint + _retry(attempt))


@dataclass(frozen=True)
class Numeric:
    """A question whose answer is a number, computed by the package where possible."""

    question: str  # the question as shown, with every assumption and the tolerance it needs
    answer: float | Callable[[], float]  # the right value, or a function computing it
    rel_tol: float  # accepted relative error (0.05 = within 5%); 0 for an exact count
    unit: str  # shown after the input box, e.g. "parameters" or "bits"
    explanation: str  # shown with the right answer; may use {answer} for the computed value
    hint: str  # shown after a wrong answer: what to reconsider, without the value
    mistake: Mistake | None = None  # the most common wrong number, and the hint written for it

    def value(self) -> float:
        """The right answer (computed now if it is a function)."""
        return float(self.answer() if callable(self.answer) else self.answer)

    def reveal(self) -> Feedback:
        """The right answer with its explanation (after the tries, or on request)."""
        right = self.value()
        return Feedback(False, f"The answer is {_fmt(right)} {self.unit}. {self.explanation.format(answer=_fmt(right))}",
                        revealed=True)

    def check(self, given, attempt: int = 1) -> Feedback:
        """Judge a number (or a string holding one; commas and underscores allowed) on the `attempt`-th try."""
        try:
            number = float(str(given).replace(",", "").replace("_", "").strip())
        except ValueError:
            return Feedback(False, f"Enter a number ({self.unit}), for example 42 or 1.5e9.", counted=False)
        if not math.isfinite(number):
            return Feedback(False, "Enter a finite number.", counted=False)
        right = self.value()
        verdict = number_verdict(number, right, self.rel_tol)
        if verdict is None:
            return Feedback(True, f"Right. {self.explanation.format(answer=_fmt(right))}", revealed=True)
        if self.mistake is not None and math.isclose(number, self.mistake.answer(), rel_tol=max(self.rel_tol, 1e-9)):
            verdict = f"Not yet: this is the answer you get if you {self.mistake.what}. {self.mistake.hint}"
        if attempt >= TRIES_BEFORE_ANSWER:
            return Feedback(False, f"{verdict} {self.reveal().message}", revealed=True)
        return Feedback(False, f"{verdict} {self.hint}" + _retry(attempt))


Question = MultipleChoice | Numeric


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 and float(x).is_integer() else f"{x:,.4g}"


def show(questions: Sequence[Question], title: str = "Check your understanding"):
    """Render the questions as widgets: an answer box, Check and Show answer buttons, a feedback line each.

    Each Check counts one try (a malformed answer does not); after `TRIES_BEFORE_ANSWER` wrong
    tries the feedback gives the answer, as `Question.check` does.
    """
    import ipywidgets as w

    boxes = [w.HTML(f"<h3>{html.escape(title)}</h3>")]
    for i, q in enumerate(questions, 1):
        prompt = w.HTML(f"<b>{i}. {html.escape(q.question)}</b>")
        if isinstance(q, MultipleChoice):
            entry = w.RadioButtons(options=list(q.options), value=None, layout=w.Layout(width="auto"))
        else:
            entry = w.Text(placeholder=f"a number ({q.unit})")
        button = w.Button(description="Check")
        show_answer = w.Button(description="Show answer")
        feedback = w.HTML()
        tries = [0]  # wrong or right answers checked so far (malformed ones do not count)

        def render(verdict: Feedback, feedback=feedback) -> None:
            colour = "green" if verdict.correct else "#b00"
            feedback.value = f"<span style='color:{colour}'>{html.escape(verdict.message)}</span>"

        def on_check(_, q=q, entry=entry, tries=tries, render=render):
            try:
                verdict = q.check(entry.value, attempt=tries[0] + 1)
            except Exception as err:  # a broken computed answer must not crash the lesson
                verdict = Feedback(False, f"Could not check this answer: {err}", counted=False)
            if verdict.counted:
                tries[0] += 1
            render(verdict)

        def on_show(_, q=q, render=render):
            try:
                render(q.reveal())
            except Exception as err:
                render(Feedback(False, f"Could not compute the answer: {err}", counted=False))

        button.on_click(on_check)
        show_answer.on_click(on_show)
        boxes.append(w.VBox([prompt, entry, w.HBox([button, show_answer, feedback])]))
    return w.VBox(boxes)


# ---------------------------------------------------------------------------------------------
# The course's questions, one list per lesson. Answers that a module can compute are computed by it.


def _t4_dtype_index() -> int:
    from lora_lab.runtime.hardware import compute_dtype_for

    return ["bfloat16", "float16", "float32"].index(compute_dtype_for("cuda", (7, 5)))


PREFLIGHT = [
    MultipleChoice(
        "A Colab T4 (compute capability 7.5) runs your fine-tune. Which dtype should it compute in?",
        ("bfloat16", "float16", "float32"),
        _t4_dtype_index,
        "bf16 runs natively only from capability 8.0 (Ampere); torch.cuda.is_bf16_supported() says True on a "
        "T4 because it can emulate bf16, slowly, so the course decides by capability.",
        (
            "a T4 has no bf16 hardware: it would emulate it, slowly. Which GPUs run bf16 natively?",
            "",
            "float32 works but takes twice the memory and runs far slower than the T4's 16-bit tensor cores.",
        ),
    ),
]

#: The settings of the "24 GB card" question, stated in it so the answer can be checked.
QLORA_24GB_SETTINGS = dict(method="qlora", rank=16, batch_size=1, seq_len=512, gradient_checkpointing=True,
                           optimizer="paged_adamw_8bit", precision="bf16")
#: The ranges offered for the largest model on a 24 GB card, in billions of parameters.
QLORA_24GB_RANGES = ((0, 13), (13, 30), (30, 70), (70, math.inf))


@lru_cache(maxsize=1)
def largest_qlora_model_on_24gb() -> float:
    """Billions of parameters of the largest generic dense model `lora_lab.estimation.vram` fits on an RTX 4090 (one bisection, cached)."""
    from lora_lab.estimation.vram import largest_model_that_fits

    return largest_model_that_fits("RTX 4090", **QLORA_24GB_SETTINGS) / 1e9


def _range_index(billions: float) -> int:
    return next(i for i, (lo, hi) in enumerate(QLORA_24GB_RANGES) if lo <= billions < hi)


def _range_why(index: int) -> str:
    lo, hi = QLORA_24GB_RANGES[index]
    if index < _range_index(largest_qlora_model_on_24gb()):
        rule = (" The common rule of thumb '13B comfortably, 30B tight' assumes longer sequences or bigger "
                "batches than this question's." if hi == 30 else "")
        return (f"models of {hi:.0f}B still fit with these settings: 4-bit weights take about half a byte "
                f"per parameter, and batch 1 x 512 tokens needs little activation memory.{rule}")
    return (f"a {lo:.0f}B model does not fit with these settings: its 4-bit weights alone take about "
            f"{lo / 2:.0f} GB, before the adapter, optimizer, activations and CUDA's own overhead.")


VRAM = [
    MultipleChoice(
        "You have a 24 GB card (an RTX 4090, about 23.6 GiB usable). With QLoRA (NF4 weights, rank 16 on all "
        "linear layers, batch 1, sequences of 512 tokens, gradient checkpointing, paged 8-bit AdamW, bf16 "
        "compute), which range holds the largest dense decoder-only model you can fine-tune, according to "
        "lora_lab.estimation.vram's estimate?",
        tuple("70B or more" if math.isinf(hi) else f"{lo}B to {hi}B" if lo else f"under {hi}B"
              for lo, hi in QLORA_24GB_RANGES),
        lambda: _range_index(largest_qlora_model_on_24gb()),
        lambda: (f"lora_lab.estimation.vram puts the limit at about {largest_qlora_model_on_24gb():.0f}B parameters under "
                 "these settings. Longer sequences or bigger batches move it down quickly: try them in the "
                 "calculator above."),
        _range_why,
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
        "accelerate's `estimate-memory` command reports parts like this "
        "(huggingface.co/docs/accelerate/usage_guides/model_size_estimator); at the peak of a training step "
        "the parts coexist, so the step needs their sum.",
        (
            "during the backward pass the weights, the gradients, the optimizer states and the saved "
            "activations are all in memory together.",
            "",
            "the smallest part is even further from what the step holds at its peak.",
        ),
    ),
]


def _lora_params_4096_r8() -> float:
    from lora_lab.lessons.counting import lora_layer_params

    return lora_layer_params(4096, 4096, 8)


LORA_BASICS = [
    Numeric(
        "A 4096 x 4096 weight matrix (no bias) gets a LoRA adapter of rank 8: A is 8 x 4096 and B is 4096 x 8. "
        "How many trainable parameters does the adapter add? (exact count)",
        _lora_params_4096_r8,
        0.0,
        "parameters",
        "r x (d_in + d_out) = {answer}, about 0.4% of the 16.8 million weights of the matrix.",
        "Count both matrices: A has r x d_in entries and B has d_out x r.",
        Mistake("count one of the two matrices", lambda: _lora_params_4096_r8() / 2,
                "The adapter is two matrices, A and B, and both are trained."),
    ),
    Numeric(
        "peft scales a LoRA update BA by lora_alpha / r (its default, not rsLoRA). With lora_alpha = 16 and "
        "r = 8, by what factor is BA multiplied? (exact)",
        lambda: 16 / 8,
        0.0,
        "(a factor)",
        "alpha / r = 16 / 8 = {answer}. Doubling r at fixed alpha halves the factor, which is why a rank "
        "sweep at fixed alpha also changes the effective learning rate.",
        "Divide lora_alpha by r (rsLoRA would divide by the square root of r instead).",
        Mistake("divide r by lora_alpha", lambda: 8 / 16, "The factor is lora_alpha over r, not r over lora_alpha."),
    ),
    MultipleChoice(
        "LoRA initialises A at random and B at zero. What does the adapted layer compute before the first "
        "training step?",
        (
            "Exactly what the base layer computes: BA = 0, so W + BA = W",
            "A random perturbation of the base layer, scaled by alpha / r",
            "Zero: the adapter switches the layer off until it is trained",
        ),
        0,
        "With B = 0 the update BA is zero, so training starts from the base model's behaviour, and the "
        "gradient still reaches B through A's random projection.",
        (
            "",
            "A is random, but it is multiplied by B, which starts at zero.",
            "the adapter adds BA to the base output; it never replaces the base layer.",
        ),
    ),
    MultipleChoice(
        "Which layers does peft's target_modules=\"all-linear\" adapt in a Llama-style model?",
        (
            "q, k, v and o only",
            "Every linear layer of the decoder blocks (q, k, v, o, gate, up, down), not the output head",
            "Every linear layer including lm_head",
        ),
        1,
        "peft leaves the output head out of all-linear. QLoRA (arXiv 2305.14314, section 4) found adapting "
        "all linear layers necessary to match full fine-tuning.",
        (
            "those are the attention projections; the MLP's linear layers are linear layers too.",
            "",
            "peft excludes the output head from all-linear: adapting it would add d_model x vocabulary-sized "
            "pairs for little gain.",
        ),
    ),
]

SFT = [
    MultipleChoice(
        "In notebook 03's training data, which tokens carry a loss (a label other than -100)?",
        (
            "Every token of the templated conversation",
            "Only the assistant's answer, its closing eos token included",
            "Only the assistant's answer, without the eos token",
            "Only the user's question",
        ),
        1,
        "The prompt is given, not predicted, so its labels are -100; the answer and the eos after it are "
        "learned, and the eos is what teaches the model to stop.",
        (
            "the prompt is given to the model at inference; training it to predict the prompt wastes the "
            "loss on text it will never have to write.",
            "",
            "without a label on eos the model never learns where an answer ends.",
            "the question is the input; the model is trained to produce the answer.",
        ),
    ),
    MultipleChoice(
        "A tokenizer has no pad token, so you set pad = eos. The data collator then sets the label of every "
        "position holding the pad token id to -100. What goes wrong?",
        (
            "Nothing: padding is masked, as it should be",
            "Every eos is masked too (it has the pad's id), so the model never learns to stop",
            "Batches get longer, because eos tokens count as padding",
        ),
        1,
        "Masking by token id cannot tell a pad from an eos when they share an id. It breaks stopping only "
        "when pad positions are masked out of the labels this way; notebook 03 avoids it with a pad token "
        "different from eos (it prints both), and sft_data masks padding by position.",
        (
            "the pad token id is also the eos id: masking one masks the other.",
            "",
            "padding length depends on the longest example in the batch, not on which token pads.",
        ),
    ),
    MultipleChoice(
        "Why does notebook 03 pass fp16=True to SFTConfig explicitly when it trains on a T4?",
        (
            "trl's SFTConfig turns bf16 on when neither fp16 nor bf16 is given, and a T4 (capability 7.5) "
            "has no native bf16",
            "fp16 is more precise than bf16",
            "fp16 takes half the memory of bf16",
        ),
        0,
        "A default that suits Ampere GPUs is wrong on a T4; the course picks fp16 or bf16 from the compute "
        "capability and says so in the config.",
        (
            "",
            "fp16 has more mantissa bits but a much smaller range; precision is not why the course picks it.",
            "fp16 and bf16 both take 2 bytes per value.",
        ),
    ),
    MultipleChoice(
        "Colab disconnects at step 300 of 500. Checkpoints were saved every save_steps with the optimizer, "
        "scheduler and random-number states (save_only_model=False) on Google Drive. What does resuming "
        "from the newest checkpoint give?",
        (
            "A restart from step 0 that starts from the saved adapter weights",
            "The same run as if it had never stopped: the same losses from the checkpoint on, the same final adapter",
            "The adapter continues, but the optimizer starts fresh, so the losses differ",
        ),
        1,
        "The Trainer restores the adapter, the optimizer's moments, the learning-rate schedule and the RNG "
        "states, and skips the batches already seen; the course's tests check that a resumed run matches "
        "an uninterrupted one.",
        (
            "the checkpoint records its step; resuming continues from it, not from step 0.",
            "",
            "save_only_model=False is what keeps the optimizer's state in the checkpoint.",
        ),
    ),
    MultipleChoice(
        "What does the QLoRA paper report for 4-bit NF4 QLoRA against 16-bit LoRA?",
        (
            "About 90-95% of the 16-bit quality",
            "Parity: mean 5-shot MMLU 53.1 (NF4 + double quant) vs 53.0 (BF16)",
            "A 20% loss in quality that larger models recover",
        ),
        1,
        "QLoRA (arXiv 2305.14314), Table 4.",
        (
            "that figure is folklore: the paper's Table 4 reports no such gap.",
            "",
            "the paper reports no such loss for NF4 with double quantization.",
        ),
    ),
]


def _nf4_dq_bits() -> float:
    from lora_lab.lessons.nf4 import bits_per_parameter

    return bits_per_parameter(64, double_quant=True)


def _nf4_negative_levels() -> int:
    from lora_lab.lessons.code_books import code_book

    return int((code_book("nf4") < 0).sum())


NF4 = [
    Numeric(
        "NF4 with double quantization stores, for a large weight: a 4-bit code per weight; one 8-bit absmax "
        "per block of 64 weights; one 32-bit float scale per group of 256 absmax values. How many bits does "
        "each weight take on average? (within 0.2%)",
        _nf4_dq_bits,
        0.002,
        "bits",
        "4 + 8/64 + 32/(64 x 256) = {answer} bits (4.5 without double quantization, where each absmax is "
        "a 32-bit float).",
        "Add the code's 4 bits to each constant's bits divided by the number of weights it covers.",
        Mistake("store each absmax as a 32-bit float", lambda: 4 + 32 / 64,
                "That is NF4 without double quantization: here each absmax takes 8 bits, and one 32-bit scale "
                "is shared by 256 of them."),
    ),
    Numeric(
        "How many of NF4's 16 levels are negative? (exact)",
        _nf4_negative_levels,
        0.0,
        "levels",
        "NF4 has {answer} negative levels, an exact zero and 8 positive ones: asymmetric, so that zero is exact.",
        "NF4 keeps an exact zero, so the 15 non-zero levels cannot split evenly between the two sides.",
        Mistake("split the 16 levels evenly, 8 and 8", lambda: 8.0,
                "One of the 16 levels is an exact zero, so the sides cannot both have 8."),
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
        (
            "bitsandbytes quantizes nn.Linear layers only; embeddings and norms are other modules.",
            "",
            "the adapters are what trains: they stay in 16 or 32 bits so their updates are not rounded away.",
        ),
    ),
]


def _llama2_7b_qv_r8_megabytes() -> float:
    from lora_lab.experiments.rank import lora_params
    from lora_lab.lessons.counting import adapter_bytes

    n = lora_params("meta-llama/Llama-2-7b-hf", 8, ("q_proj", "v_proj"))
    return adapter_bytes(n, 2) / 1e6


ADAPTERS = [
    Numeric(
        "A LoRA adapter of rank 8 on the q and v projections of Llama-2-7B (32 layers; q and v are each "
        "4096 x 4096) is saved in 16 bits. How many megabytes (1 MB = 10^6 bytes) are its tensors, "
        "header left out? (within 5%)",
        _llama2_7b_qv_r8_megabytes,
        0.05,
        "MB",
        "32 layers x 2 matrices x 8 x (4096 + 4096) = 4.2M parameters x 2 bytes = {answer} MB. peft saves "
        "fp32 by default, which doubles it.",
        "Parameters per adapted matrix: r x (d_in + d_out); then x matrices, x layers, x 2 bytes.",
        Mistake("count 4 bytes per value (fp32, peft's default when saving)",
                lambda: 2 * _llama2_7b_qv_r8_megabytes(),
                "The question says the adapter is saved in 16 bits: 2 bytes per value."),
    ),
    MultipleChoice(
        "You merge a trained QLoRA adapter into a 16-bit copy of its base model to serve it. Compared with "
        "the 4-bit base plus adapter you trained, what changes at inference?",
        (
            "Nothing at all: same compute and same memory",
            "No extra compute per token (W + BA has the base weight's shape), but the merged model is a 16-bit "
            "model: its linear layers take about 3.9x the memory they took in the 4-bit base",
            "Each layer still runs the adapter beside the weight, so merging saves nothing",
        ),
        1,
        lambda: (f"Merging removes the adapter's extra matmuls, and the merged weights are dense 16-bit matrices: "
                 f"16 bits per weight against {_nf4_dq_bits():.2f} for NF4 with double quantization, "
                 f"{16 / _nf4_dq_bits():.1f}x. Embeddings are 16-bit in both, so the whole model grows less "
                 "(exercise 05.2 computes it for Qwen2.5-7B)."),
        (
            "the compute is the same, but the weights you serve are no longer 4-bit.",
            "",
            "after merging there is no adapter left: W + BA is one matrix.",
        ),
    ),
    MultipleChoice(
        "You want one standalone model from a QLoRA run. Into what should you merge the adapter?",
        (
            "Into the 4-bit weights it was trained on, so nothing changes",
            "Into the NF4 base dequantized to 16 bits: the weights it was trained on, with the update kept whole",
            "Into the original 16-bit base, which is more precise than the NF4 one",
            "It cannot be merged; always serve it unmerged",
        ),
        1,
        "Notebook 03 (section 8) merges this way; notebook 06 (section 4) measures the logits of all three merges "
        "against the trained model.",
        (
            "the small update BA is rounded to the 4-bit grid when it is added to a 4-bit weight, and most "
            "of it is lost.",
            "",
            "the adapter learned its update on the NF4-rounded weights, not on the original ones: added to the "
            "original base it moves the logits by the base's quantization error.",
            "peft's merge_and_unload merges any LoRA adapter into a base of the same architecture.",
        ),
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
        "lora_lab.experiments.adapters refuses mismatched shapes with a clear message; matching shapes but other weights "
        "load silently and give nonsense.",
        (
            "an adapter is a correction to specific weights W; on other weights it corrects nothing.",
            "",
            "the rank does not matter: what matters is the weights the update was learned against.",
        ),
    ),
]

def _dora_extra_params_qwen_7b_q() -> float:
    from lora_lab.lessons import variants

    return variants.trainable_params("DoRA", 3584, 3584, 16) - variants.trainable_params("LoRA", 3584, 3584, 16)


VARIANTS = [
    Numeric(
        "DoRA at r=16 on one 3584 x 3584 projection (Qwen2.5-7B's q_proj): how many trainable parameters does it "
        "add on top of LoRA at the same rank? (exact)",
        _dora_extra_params_qwen_7b_q,
        0,
        "parameters",
        "DoRA keeps LoRA's A and B and adds one magnitude per output row: {answer} numbers.",
        "What does DoRA split the weight into, and how many numbers does the new part hold?",
        Mistake("count a magnitude per input column and output row", lambda: 2 * 3584.0,
                "The magnitude is a vector: one number per output row of the weight."),
    ),
    MultipleChoice(
        "Two methods are compared at one learning rate, chosen for the first. The second loses. What can you "
        "conclude?",
        (
            "The first method is better",
            "Little: the rate suited the first; each method needs its own search before their best runs are compared",
            "The second method needs more steps",
        ),
        1,
        "A method's best rate can be far from another's (section 2's search table shows each one's), so section "
        "2 searches three rates for every method before comparing them.",
        (
            "a rate picked for one method can be far from the other's best: you compared the rate.",
            "",
            "maybe, but the rate alone can explain the loss: search it first.",
        ),
    ),
    MultipleChoice(
        "Why does peft refuse PiSSA's initialisation on a 4-bit (NF4) layer?",
        (
            "PiSSA needs the full-precision weight: it takes the weight's SVD and keeps the residual as the new base",
            "PiSSA only works with rank 1",
            "4-bit layers cannot hold adapters at all",
        ),
        0,
        "Section 4 tries it: run PiSSA's SVD on the 16-bit model, quantize the residual, then train on that.",
        (
            "",
            "PiSSA takes the top r singular directions for any rank.",
            "LoRA, DoRA and VeRA all train on the 4-bit base in section 4.",
        ),
    ),
]

#: The quiz each lesson shows (`quiz.show(quiz.NAME)` in its "Check your understanding" section).
LESSON_QUIZZES = {"00": "PREFLIGHT", "01": "VRAM", "02": "LORA_BASICS", "03": "SFT", "04": "NF4", "05": "ADAPTERS", "07": "VARIANTS"}
