"""Charts for the course notebooks (matplotlib only, no seaborn)."""

from __future__ import annotations

from lora_lab.estimation.vram import GPUS, MemoryEstimate
from lora_lab.runtime.units import GIB

#: Stacking order and colours of the memory parts (colour-blind-safe Okabe-Ito palette).
PARTS = (
    ("weights", "weights", "#0072B2"),
    ("gradients", "gradients", "#E69F00"),
    ("optimizer_states", "optimizer states", "#009E73"),
    ("activations", "activations (saved for backward)", "#CC79A7"),
    ("transient", "backward peak (transient)", "#F0E442"),
    ("overhead", "overhead (CUDA context, allocator)", "#999999"),
)


def stacked_breakdown(estimates: dict[str, MemoryEstimate], gpus=("Colab T4",), ax=None, title: str | None = None):
    """A stacked bar per estimate (weights, gradients, optimizer, activations, transient, overhead).

    Args:
        estimates: label -> `MemoryEstimate`, one bar each, in order.
        gpus: `vram.GPUS` names drawn as horizontal capacity lines.
        ax: a matplotlib Axes to draw on (a new figure when None).
        title: the chart title.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(estimates) + 2.5), 4.2))
    else:
        fig = ax.figure
    labels = list(estimates)
    bottoms = [0.0] * len(labels)
    for key, name, colour in PARTS:
        values = [getattr(estimates[lab], key) / GIB for lab in labels]
        ax.bar(labels, values, bottom=bottoms, label=name, color=colour, edgecolor="white", linewidth=0.5)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for lab_i, total in enumerate(bottoms):
        ax.text(lab_i, total, f"{total:.1f}", ha="center", va="bottom", fontsize=9)
    top = max(bottoms) if bottoms else 1.0
    for gpu_name in gpus:
        cap = GPUS[gpu_name].usable_bytes / GIB
        ax.axhline(cap, color="#D55E00", linestyle="--", linewidth=1)
        ax.text(len(labels) - 0.5, cap, f" {gpu_name} ({cap:.1f} GiB)", va="bottom", ha="right",
                fontsize=8, color="#D55E00")
        top = max(top, cap)
    ax.set_ylim(0, top * 1.12)
    ax.set_ylabel("GiB")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
