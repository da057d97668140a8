"""Plots of a training run (notebook 03 and `lora_lab.training.train.run_pipeline`'s loss.png)."""

from __future__ import annotations

__all__ = ["plot_epochs", "plot_loss"]


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


def plot_epochs(log_history, loss_before: float | None, steps_per_epoch: float, ax=None,
                title: str = "loss per epoch"):
    """Training loss and held-out loss against epochs (log scale), the base model's held-out loss at 0.

    Args:
        log_history: the trainer's log entries (`SFTResult.log_history`): train `loss` by step,
            `eval_loss` by epoch.
        loss_before: the base model's held-out loss (plotted at epoch 0), or None.
        steps_per_epoch: optimizer steps per pass over the training set (puts train steps on the epoch axis).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
    else:
        fig = ax.figure
    train = [(e["step"] / steps_per_epoch, e["loss"]) for e in log_history if "loss" in e]
    held_out = [(e["epoch"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if loss_before is not None:
        held_out.insert(0, (0.0, loss_before))
    if train:
        ax.plot(*zip(*train, strict=True), lw=1, label="train (per logging step)")
    if held_out:
        ax.plot(*zip(*held_out, strict=True), marker="s", ms=4, label="held-out (per epoch)")
        best = min(held_out, key=lambda point: point[1])
        ax.annotate("lowest", best, textcoords="offset points", xytext=(0, 8), ha="center")
    ax.set(xlabel="epoch", ylabel="loss (answer tokens)", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    return fig
