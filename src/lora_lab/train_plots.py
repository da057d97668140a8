"""Plots of a training run (notebook 03 and `lora_lab.train.run_pipeline`'s loss.png)."""

from __future__ import annotations

__all__ = ["plot_loss"]


def plot_loss(log_history, ax=None, title: str = "training loss"):
    """Plot the training loss per logging step (and eval loss if logged); return the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
    else:
        fig = ax.figure
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if train:
        ax.plot(*zip(*train, strict=True), marker="o", ms=3, label="train")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="s", ms=3, label="eval")
    ax.set(xlabel="optimizer step", ylabel="loss (answer tokens)", title=title)
    ax.legend()
    fig.tight_layout()
    return fig
