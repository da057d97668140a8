"""Notebook 06's figure: the estimator's per-GPU memory for one GPU, DDP and FSDP, against each GPU's room."""

from __future__ import annotations

from collections.abc import Sequence

from lora_lab.experiments.scale import Fit


def fit_chart(rows: Sequence[Fit], title: str = "per-GPU memory of one training step (estimate)"):
    """Grouped horizontal bars: one group per model and method, one bar per setup (single, DDP, FSDP).

    A bar that fits its GPU is solid, one that does not is hatched; a dashed line marks each GPU's
    usable memory. The x axis is logarithmic because a full fine-tune of a 13B model and a QLoRA run
    of a 1.5B one differ by two orders of magnitude.

    Args:
        rows: `scale.fit_table()`'s rows.
        title: the chart title.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: no rows.
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("No rows to draw: pass scale.fit_table()'s rows.")
    groups = list(dict.fromkeys((r.model.split("/")[-1], r.method) for r in rows))
    columns = list(dict.fromkeys((r.setup, r.parallel) for r in rows))
    height = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.22 * len(groups) * len(columns)))
    colours = plt.get_cmap("tab10")
    for j, (setup, parallel) in enumerate(columns):
        picked = {(r.model.split("/")[-1], r.method): r for r in rows if (r.setup, r.parallel) == (setup, parallel)}
        for i, key in enumerate(groups):
            r = picked.get(key)
            if r is None:
                continue
            ax.barh(i + j * height, r.per_gpu_gib, height=height, color=colours(j), hatch=None if r.fits else "//",
                    edgecolor="black" if not r.fits else colours(j), linewidth=0.5,
                    label=f"{setup} {parallel}" if i == 0 else None)
    for usable in sorted({round(r.usable_gib, 2) for r in rows}):
        ax.axvline(usable, color="grey", linestyle="--", linewidth=1)
        ax.text(usable, 0.995, f" {usable:g} GiB usable", color="grey", fontsize=8, va="top", ha="left",
                transform=ax.get_xaxis_transform())  # inside the axes, under the title
    ax.set_yticks([i + height * (len(columns) - 1) / 2 for i in range(len(groups))])
    ax.set_yticklabels([f"{model} {method}" for model, method in groups])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("GiB per GPU (hatched: does not fit)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
