"""Concept diagrams for notebook 00, drawn with matplotlib from real numbers.

Three pictures the rest of the course leans on:

- `lora_shapes`: a frozen weight W next to LoRA's two small matrices B and A, each box labelled
  with its real shape (d_out x d_in, d_out x r, r x d_in) and parameter count.
- `nf4_block`: one block of 64 weights, its absmax, the 4-bit NF4 code of each weight and the
  value the code stands for, from `lora_lab.experiments.quant`.
- `token_row`: a chat-formatted training example token by token, coloured by whether the token
  carries loss (label != -100) or is masked.

Each function draws on a new pyplot figure (so notebooks show it and `make figures` saves it)
and returns that Figure; the numbers all come from the caller.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from lora_lab.lessons.counting import lora_layer_params

#: Okabe-Ito colours (colour-blind safe), as in `lora_lab.figures.plots`.
FROZEN = "#999999"  # frozen weights
TRAINED = "#E69F00"  # trainable LoRA matrices
LOSS = "#009E73"  # tokens that carry loss
MASKED = "#D9D9D9"  # tokens whose label is -100
IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


def _box(ax, x: float, y: float, w: float, h: float, colour: str, label: str) -> Rectangle:
    """A filled rectangle with `label` under it; returns the rectangle."""
    rect = Rectangle((x, y), w, h, facecolor=colour, edgecolor="black", linewidth=1)
    ax.add_patch(rect)
    ax.text(x + w / 2, y - 0.04, label, ha="center", va="top", fontsize=9)
    return rect


def lora_shapes(d_out: int, d_in: int, rank: int, alpha: float | None = None, layer: str = "a linear layer"):
    """W (frozen) + B A (trainable) with their real shapes, boxes drawn to scale.

    The r side of B and A is drawn at least a few percent of the longest side so it stays
    visible; the label always gives the true size.

    Args:
        d_out: the layer's output features (rows of W and of B).
        d_in: the layer's input features (columns of W and of A).
        rank: LoRA rank r (columns of B, rows of A).
        alpha: peft's lora_alpha; when given, the title shows the alpha/r scale.
        layer: what the layer is, for the title.

    Returns:
        The matplotlib Figure (one Axes, three boxes).
    """
    if min(d_out, d_in, rank) <= 0:
        raise ValueError(f"d_out, d_in and rank must be positive (got {d_out}, {d_in}, {rank}).")
    unit = 1.0 / max(d_out, d_in)  # longest side of W = 1
    thin = max(rank * unit, 0.04)
    w_w, w_h = d_in * unit, d_out * unit
    gap = 0.25
    width, height = 2 * w_w + thin + 2 * gap + 0.1, max(w_h, thin) + 0.5
    fig, ax = plt.subplots(figsize=(9, 9 * height / width + 0.9))
    _box(ax, 0, 1 - w_h, w_w, w_h, FROZEN, f"W (frozen)\n{d_out:,} x {d_in:,}\n{d_out * d_in:,} values")
    ax.text(w_w + gap / 2, 1 - w_h / 2, "+", ha="center", va="center", fontsize=20)
    x_b = w_w + gap
    _box(ax, x_b, 1 - w_h, thin, w_h, TRAINED, f"B (trained, starts at 0)\n{d_out:,} x {rank}\n{d_out * rank:,}")
    x_a = x_b + thin + gap
    ax.text(x_b + thin + gap / 2, 1 - w_h / 2, "x", ha="center", va="center", fontsize=14)
    _box(ax, x_a, 1 - thin, w_w, thin, TRAINED, f"A (trained, random start)\n{rank} x {d_in:,}\n{rank * d_in:,}")
    lora = lora_layer_params(d_in, d_out, rank)
    title = (f"{layer}: LoRA r = {rank} trains {lora:,} values instead of {d_out * d_in:,} "
             f"({100 * lora / (d_out * d_in):.2f}%)")
    if alpha is not None:
        title += f"\noutput = W x + (alpha / r) B A x, alpha / r = {alpha:g} / {rank} = {alpha / rank:g}"
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.05, x_a + w_w + 0.05)
    ax.set_ylim(1 - max(w_h, thin) - 0.45, 1.05)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig


def nf4_block(weights, q, block: int = 0, title: str = "one NF4 block"):
    """One quantization block: the weights, +-absmax, each weight's 4-bit code and its level.

    Args:
        weights: the tensor that was quantized (any shape; flattened like `nf4.quantize` does).
        q: `nf4.quantize(weights, "nf4", ...)` of it.
        block: which block to draw.
        title: the figure title.

    Returns:
        The matplotlib Figure: top axes the values, bottom axes the codes.
    """
    from lora_lab.lessons import nf4

    size = q.blocksize
    flat = weights.detach().reshape(-1).float()
    lo, hi = block * size, min((block + 1) * size, flat.numel())
    if lo >= flat.numel():
        raise ValueError(f"block {block} is past the end: {flat.numel()} values make "
                         f"{-(-flat.numel() // size)} blocks of {size}.")
    values = flat[lo:hi]
    codes = q.codes()[lo:hi]
    absmax = float(q.block_absmax()[block])
    restored = nf4.dequantize(q).reshape(-1).float()[lo:hi]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.4), height_ratios=(3, 1), sharex=True)
    xs = range(hi - lo)
    top.bar(xs, values.tolist(), color=FROZEN, label="weight")
    top.scatter(xs, restored.tolist(), color=TRAINED, marker="_", s=60, zorder=3,
                label="NF4 level x absmax (what the 4-bit layer computes with)")
    for sign in (1, -1):
        top.axhline(sign * absmax, color="#D55E00", linestyle="--", linewidth=1)
    top.text(hi - lo - 0.5, absmax, f"absmax = {absmax:.4g}", ha="right", va="bottom", fontsize=8, color="#D55E00")
    top.set(ylabel="value", title=f"{title}: {hi - lo} weights, 1 absmax (fp32), {hi - lo} 4-bit codes")
    top.legend(fontsize=8, loc="lower left")
    bottom.imshow(codes.view(1, -1).numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=15,
                  extent=(-0.5, hi - lo - 0.5, 0, 1))
    for i, c in enumerate(codes.tolist()):
        bottom.text(i, 0.5, str(c), ha="center", va="center", fontsize=6, color="white" if c < 8 else "black")
    bottom.set(yticks=[], xlabel="position in the block", ylabel="code")
    fig.tight_layout()
    return fig


def _shown(text: str) -> str:
    """A token's text made visible: spaces as a middle dot, newlines as \\n."""
    return text.replace("\n", "\\n").replace(" ", "\u00b7") or "\u2205"


def token_row(tokens: list[str], labels: list[int], per_row: int = 10, title: str = "one training example"):
    """Tokens as boxes in reading order, coloured by whether they carry loss.

    Args:
        tokens: the text of each token (e.g. `tokenizer.decode([id])` per id).
        labels: the label of each token; IGNORE_INDEX (-100) means masked (no loss).
        per_row: boxes per row before wrapping.
        title: the figure title (the counts are appended).

    Returns:
        The matplotlib Figure (one Axes, one rectangle per token).
    """
    if len(tokens) != len(labels):
        raise ValueError(f"{len(tokens)} tokens but {len(labels)} labels: give one label per token.")
    if not tokens:
        raise ValueError("No tokens to draw.")
    rows = -(-len(tokens) // per_row)
    fig, ax = plt.subplots(figsize=(1.1 * per_row, 0.55 * rows + 1.1))
    for i, (tok, lab) in enumerate(zip(tokens, labels, strict=True)):
        x, y = i % per_row, rows - 1 - i // per_row
        carries = lab != IGNORE_INDEX
        ax.add_patch(Rectangle((x + 0.03, y + 0.08), 0.94, 0.84, facecolor=LOSS if carries else MASKED,
                               edgecolor="white"))
        ax.text(x + 0.5, y + 0.5, _shown(tok)[:14], ha="center", va="center", fontsize=8,
                color="white" if carries else "black")
    n_loss = sum(lab != IGNORE_INDEX for lab in labels)
    handles = [Rectangle((0, 0), 1, 1, facecolor=LOSS), Rectangle((0, 0), 1, 1, facecolor=MASKED)]
    ax.legend(handles, [f"carries loss (label = token id): {n_loss}",
                        f"masked (label = {IGNORE_INDEX}): {len(tokens) - n_loss}"],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    ax.set_title(f"{title}: {len(tokens)} tokens", fontsize=10)
    ax.set_xlim(0, per_row)
    ax.set_ylim(0, rows)
    ax.axis("off")
    fig.tight_layout()
    return fig
