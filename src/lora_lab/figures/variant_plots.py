"""Notebook 07's figures: each LoRA variant's held-out loss against what it costs (`experiments.variants`)."""

from __future__ import annotations

from collections.abc import Sequence


def quality_vs_cost(runs_by_variant: dict[str, Sequence[dict]], kept: dict[str, dict], title: str):
    """Held-out loss (a dot per seed, the mean as a marker) against trainable parameters and against step time.

    Args:
        runs_by_variant: {variant: its runs at the chosen learning rate, one per seed}.
        kept: {variant: its measured run} (trainable, seconds_per_step).
        title: the figure's title.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for (ax, key, label, log) in ((axes[0], "trainable", "trainable parameters (log scale)", True),
                                  (axes[1], "seconds_per_step", "seconds per training step", False)):
        for i, (name, runs) in enumerate(runs_by_variant.items()):
            x = kept[name][key]
            losses = [r["eval_loss"] for r in runs]
            color = f"C{i}"
            ax.scatter([x] * len(losses), losses, color=color, alpha=0.4, s=14)
            ax.scatter([x], [sum(losses) / len(losses)], color=color, marker="D", s=40, label=name)
            ax.annotate(name, (x, sum(losses) / len(losses)), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set(xlabel=label, xscale="log" if log else "linear")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("held-out loss per answer token (lower is better)")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
