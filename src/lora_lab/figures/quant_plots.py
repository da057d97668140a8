"""Figures for notebook 04 (NF4 under the hood); the numbers all come from `lora_lab.experiments.quant`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from lora_lab.experiments import quant
from lora_lab.lessons import code_books, nf4

#: One colour per 4-bit format, the same in every figure.
COLORS = {"nf4": "tab:blue", "fp4": "tab:orange", "int4": "tab:green"}


def levels_over_histogram(values: torch.Tensor, fmts=("nf4", "int4"), ax=None, title: str = "",
                          blocksize: int = nf4.DEFAULT_BLOCKSIZE, bins: int = 200):
    """Histogram of block-normalized values (x / block absmax) with each format's levels on top.

    Each block's largest value sits at exactly +-1, which is why the histogram has small spikes there.

    Args:
        values: weights or samples (any shape).
        fmts: formats whose 16 levels are drawn as vertical lines.
        ax: matplotlib axes (a new figure if None).
        title: axes title.
        blocksize: absmax block size used to normalize.
        bins: histogram bins.

    Returns:
        The axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    normed = quant.block_normalized(values, blocksize)
    ax.hist(normed.numpy(), bins=bins, range=(-1, 1), density=True, color="0.75")
    top = ax.get_ylim()[1]
    for i, fmt in enumerate(fmts):
        for j, level in enumerate(code_books.code_book(fmt).unique().tolist()):
            ax.axvline(level, ymin=0.55 - 0.5 * i, ymax=1 - 0.5 * i, color=COLORS.get(fmt, "k"), lw=1.2,
                       label=fmt.upper() if j == 0 else None)
    ax.set(xlim=(-1.05, 1.05), ylim=(0, top), xlabel="value / block absmax", ylabel="density", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return ax


def error_vs_blocksize(blocksizes, errors: dict[str, list[float]], ax=None, title: str = ""):
    """Relative RMSE against block size, one line per label (log-2 x axis).

    Args:
        blocksizes: the block sizes measured.
        errors: label -> relative RMSE per block size; the label's first word picks the colour
            and a label containing "heavy" is drawn dashed.
        ax: matplotlib axes (a new figure if None).
        title: axes title.

    Returns:
        The axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for label, errs in errors.items():
        fmt = label.split()[0].lower()
        ax.plot(blocksizes, errs, marker="o", color=COLORS.get(fmt), ls="--" if "heavy" in label else "-", label=label)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="block size (values per absmax)", ylabel="relative RMSE", title=title)
    ax.legend(fontsize=8)
    return ax
