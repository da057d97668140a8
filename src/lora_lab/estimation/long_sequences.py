"""Where the memory of a training step goes at long sequences (notebook 01).

With a large vocabulary the output head's logits are batch x sequence x vocabulary values: at
Qwen2.5's 151,936 tokens and 16k tokens per step that is 2.5 billion values, more than the model
has parameters. The standard loss keeps an fp32 copy of them for backward, the backward pass starts
with two fp32 gradients of that size, and the caching allocator may keep the freed 16-bit block
beside them. `logits_parts` picks those terms out of a `vram.MemoryEstimate`; `sweep` estimates a
step over sequence lengths with the standard loss and with a fused (chunked) linear cross-entropy;
`plot_by_seq_len` stacks the parts per sequence length.
"""

from __future__ import annotations

from lora_lab.estimation import vram
from lora_lab.runtime.units import GIB

#: Stacking order, label and colour (Okabe-Ito, as `lora_lab.figures.plots`) of the parts in `parts_by_kind`.
KINDS = (
    ("states", "weights, gradients, optimizer states", "#0072B2"),
    ("activations", "activations (layers)", "#CC79A7"),
    ("logprobs", "logits: fp32 log-probs kept for the loss", "#D55E00"),
    ("logits_grad", "logits: fp32 gradients at the start of backward", "#E69F00"),
    ("logits_block", "logits: 16-bit block the allocator keeps", "#F0E442"),
    ("other", "other peaks and overhead", "#999999"),
)


def logits_parts(est: vram.MemoryEstimate, vocab_size: int) -> dict[str, int]:
    """The bytes of `est` that hold batch x sequence x vocabulary values, by kind.

    - logprobs: the fp32 log-probabilities the loss keeps for backward (plus softcapped logits).
    - logits_grad: the backward peak, when that peak is the fp32 gradients of the log-probs and the
      logits (8 bytes x tokens x vocabulary); 0 when another moment of the step is the peak.
    - logits_block: the freed 16-bit logits block the caching allocator cannot reuse.

    Args:
        est: an estimate from `vram.estimate`.
        vocab_size: the model's vocabulary (`vram.load_arch(model).vocab_size`).
    """
    tokens = est.settings["batch_size"] * est.settings["seq_len"]
    grads = 8 * tokens * vocab_size
    return {
        "logprobs": est.terms.get("logprobs", 0) + est.terms.get("logit_softcap", 0),
        "logits_grad": est.transient if est.transient == grads else 0,
        "logits_block": est.overhead_terms.get("logits_block", 0),
    }


def parts_by_kind(est: vram.MemoryEstimate, vocab_size: int) -> dict[str, int]:
    """`est.total` split into the KINDS: states, layer activations, the three logits parts, the rest."""
    logits = logits_parts(est, vocab_size)
    parts = {
        "states": est.weights + est.gradients + est.optimizer_states,
        "activations": est.activations - logits["logprobs"],
        **logits,
    }
    parts["other"] = est.total - sum(parts.values())
    return parts


def sweep(model, seq_lens, **kwargs) -> dict[int, tuple[vram.MemoryEstimate, vram.MemoryEstimate]]:
    """Estimates per sequence length: (standard loss, fused linear cross-entropy).

    Args:
        model: anything `vram.estimate` accepts.
        seq_lens: the sequence lengths.
        **kwargs: the other `vram.estimate` settings (method, batch_size, precision, ...).
    """
    return {s: (vram.estimate(model, seq_len=s, **kwargs),
                vram.estimate(model, seq_len=s, fused_cross_entropy=True, **kwargs)) for s in seq_lens}


def plot_by_seq_len(results: dict, vocab_size: int, gpus=("Colab T4", "A100 80GB"), title: str | None = None):
    """Stacked bars of the standard step's parts per sequence length, the fused-loss total as a line.

    Args:
        results: `sweep`'s output.
        vocab_size: the model's vocabulary.
        gpus: `vram.GPUS` names drawn as capacity lines.
        title: the chart title.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    labels = [f"{s:,}" for s in results]
    xs = range(len(labels))
    bottoms = [0.0] * len(labels)
    split = [parts_by_kind(std, vocab_size) for std, _ in results.values()]
    for key, name, colour in KINDS:
        values = [parts[key] / GIB for parts in split]
        ax.bar(xs, values, bottom=bottoms, label=name, color=colour, edgecolor="white", linewidth=0.5)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    fused = [f.total / GIB for _, f in results.values()]
    ax.plot(xs, fused, color="black", marker="o", label="total with a fused linear cross-entropy")
    for gpu_name in gpus:
        cap = vram.GPUS[gpu_name].usable_bytes / GIB
        ax.axhline(cap, color="#D55E00", linestyle="--", linewidth=1)
        ax.text(-0.4, cap, f"{gpu_name} ({cap:.1f} GiB)", va="bottom", fontsize=8, color="#D55E00")
    ax.set_xticks(list(xs), labels)
    ax.set(xlabel="sequence length (tokens)", ylabel="GiB")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
