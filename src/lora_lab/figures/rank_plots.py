"""Figures of notebook 02 (the LoRA rank trade-off), from the result dicts of `lora_lab.experiments.rank`."""

from __future__ import annotations

from collections.abc import Sequence

from lora_lab.runtime.units import MIB


def parameters_vs_rank(rows: Sequence[dict], title: str):
    """Trainable LoRA parameters (left axis) and share of the base model per rank, one line per target set."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name in dict.fromkeys(r["targets"] for r in rows):
        sel = [r for r in rows if r["targets"] == name]
        ax.plot([r["rank"] for r in sel], [r["share"] * 100 for r in sel], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="LoRA rank r", ylabel="trainable share of the model (%)",
           title=title)
    ax.set_xticks([r["rank"] for r in rows][: len(rows) // 2 or None])
    ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="targets")
    fig.tight_layout()
    return fig


def recovery(rows: Sequence[dict], true_rank: int):
    """Relative update error per rank, one line per training-set size, the true rank marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for n in dict.fromkeys(r["n_train"] for r in rows):
        sel = [r for r in rows if r["n_train"] == n]
        ax.plot([r["rank"] for r in sel], [r["error"] for r in sel], marker="o", label=f"{n:,} examples")
    ax.axvline(true_rank, color="grey", ls="--", lw=1, label=f"true rank {true_rank}")
    ax.set(xscale="log", xlabel="LoRA rank r", ylabel="||dW_fit - dW|| / ||dW||",
           title="recovering an update of known rank")
    ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
    ax.set_xticks(sorted({r["rank"] for r in rows}))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def scaling(result: dict):
    """Top row: error vs learning rate per rank, one panel per rule; bottom row: curves at one LR."""
    import matplotlib.pyplot as plt

    rules = list(result["best_lr"])
    fig, axes = plt.subplots(2, len(rules), figsize=(4 * len(rules), 6), sharey="row")
    for col, rule in enumerate(rules):
        ax = axes[0, col]
        for r in result["ranks"]:
            cells = [g for g in result["grid"] if g["rule"] == rule and g["rank"] == r]
            ax.plot([g["lr"] for g in cells], [min(g["error"], 2.0) for g in cells], marker="o", ms=3, label=f"r={r}")
            best = result["best_lr"][rule][str(r)]
            ax.plot([best], [min(g["error"] for g in cells)], marker="*", ms=12, color=ax.lines[-1].get_color())
        ax.set(xscale="log", title=rule, xlabel="learning rate")
        ax.grid(True, alpha=0.3)
        ax = axes[1, col]
        for r in result["ranks"]:
            curve = result["curves"][rule].get(str(r))
            if curve:
                ax.plot(*zip(*curve, strict=True), label=f"r={r}")
        ax.set(xlabel="Adam step", title=f"learning rate {result['curve_lr']:g}")
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel(f"update error after {result['steps']} steps")
    axes[1, 0].set_ylabel("update error")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _seeds(ax, x: float, values: Sequence[float], color: str) -> None:
    """Every seed's value as a small dot and their range as a bar, at `x`."""
    if len(values) > 1:
        ax.vlines(x, min(values), max(values), color=color, lw=1.5, alpha=0.8)
        ax.scatter([x] * len(values), values, s=9, color="k", zorder=3)


def tradeoff(runs: Sequence[dict], estimates: Sequence[dict] | None = None, est_label: str = ""):
    """Left: held-out loss vs trainable parameters (each rank at its best LR, full fine-tuning, attention vs
    MLP, QLoRA): the marker at the mean over seeds, its area ~ measured memory of a step, a bar over the range of
    the seeds and a dot per seed. Right: measured memory per step vs rank, and (optionally) an estimate for
    a real model.
    """
    import matplotlib.pyplot as plt

    from lora_lab.experiments.rank import best_runs, seed_mean, seed_values

    ranked = sorted(best_runs(runs), key=lambda r: r["trainable"])
    shown = ranked + [r for r in runs if r["group"] in ("full", "targets", "qlora")]
    ncols = 2 if estimates else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 3.8), squeeze=False)
    ax = axes[0, 0]
    colours = {"rank": "C0", "lr": "C0", "full": "C3", "targets": "C2", "qlora": "C1"}
    mem_max = max(r["memory"] for r in shown)
    mean = {r["name"]: seed_mean(runs, r) for r in shown}
    for k, r in enumerate(sorted(shown, key=lambda r: r["trainable"])):
        _seeds(ax, r["trainable"], seed_values(runs, r), colours[r["group"]])
        ax.scatter(r["trainable"], mean[r["name"]], s=30 + 300 * r["memory"] / mem_max, color=colours[r["group"]],
                   alpha=0.7, edgecolor="k", lw=0.5)
        ax.annotate(r["name"], (r["trainable"], mean[r["name"]]), fontsize=7, xytext=(6, 5 if k % 2 else -11),
                    textcoords="offset points")  # neighbours' labels alternate above and below
    ax.plot([r["trainable"] for r in ranked], [mean[r["name"]] for r in ranked], color="C0", lw=1)
    n_seeds = max(len(seed_values(runs, r)) for r in shown)
    ax.set(xscale="log", xlabel="trainable parameters", ylabel="held-out loss (answer tokens)",
           title=f"each rank at its best LR, mean of {n_seeds} seed(s)" + (" (dots)" if n_seeds > 1 else ""))
    ax.grid(True, alpha=0.3)
    if estimates:
        ax = axes[0, 1]  # one x-axis: the rank, which both models share
        ax.plot([r["rank"] for r in ranked], [r["memory"] / MIB for r in ranked], marker="o",
                label="tiny model, measured (MiB)")
        full = [r for r in runs if r["group"] == "full"]
        if full:
            ax.axhline(full[0]["memory"] / MIB, color="C3", ls="--", lw=1, label="tiny model, full FT (MiB)")
        ax.plot([e["rank"] for e in estimates], [e["total"] / MIB for e in estimates], marker="s", color="C1",
                label=est_label)
        ax.set(xscale="log", yscale="log", xlabel="LoRA rank r", ylabel="MiB per training step",
               title="memory per step")
        ranks = sorted({r["rank"] for r in ranked} | {e["rank"] for e in estimates})
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.legend(fontsize=7, loc="center left")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def lr_sweep(runs: Sequence[dict], baseline_loss: float | None = None):
    """Held-out loss vs peak learning rate, one line per LoRA rank (all-linear), each rank's best LR starred."""
    import matplotlib.pyplot as plt

    from lora_lab.experiments.rank import best_rank_lrs

    fig, ax = plt.subplots(figsize=(6, 3.6))
    best = best_rank_lrs(runs)
    for rank in best:
        sel = sorted((r for r in runs if r["group"] in ("rank", "lr") and r["method"] == "lora"
                      and r["targets"] == "all-linear" and r["rank"] == rank), key=lambda r: r["lr"])
        line, = ax.plot([r["lr"] for r in sel], [r["eval_loss"] for r in sel], marker="o", ms=4, label=f"r={rank}")
        top = min(sel, key=lambda r: r["eval_loss"])
        ax.plot([top["lr"]], [top["eval_loss"]], marker="*", ms=13, color=line.get_color())
    if baseline_loss is not None:
        ax.axhline(baseline_loss, color="grey", ls=":", lw=1, label="base model, untrained")
    ax.set(xscale="log", yscale="log", xlabel="peak learning rate", ylabel="held-out loss",
           title="learning rate per rank (star: best)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dropout(rows: Sequence[dict], runs: Sequence[dict] | None = None):
    """Held-out loss (mean over seeds, a dot per seed when `runs` holds the repeats), milliseconds per step and
    memory per step (with its activations) vs LoRA dropout."""
    import matplotlib.pyplot as plt

    from lora_lab.experiments.rank import seed_values

    rows = sorted(rows, key=lambda r: r["dropout"])  # one seed each when `runs` (with the repeats) is not given
    p = [r["dropout"] for r in rows]
    values = [seed_values(runs, r) if runs is not None else [r["eval_loss"]] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot(p, [sum(v) / len(v) for v in values], marker="o")
    for x, v in zip(p, values, strict=True):
        _seeds(axes[0], x, v, "C0")
    axes[0].set(ylabel="held-out loss", title=f"quality (mean of {len(values[0])} seed(s))")
    axes[1].plot(p, [r["seconds_per_step"] * 1000 for r in rows], marker="o", color="C1")
    axes[1].set(ylabel="ms per step (median)", title="time")
    axes[2].plot(p, [r["memory"] / MIB for r in rows], marker="o", color="C2", label="whole step")
    if all("memory_activations" in r for r in rows):  # measured by the cpu loop (a GPU run reports its peak)
        axes[2].plot(p, [r["memory_activations"] / MIB for r in rows], marker="s", color="C2", ls="--",
                     label="saved activations")
    axes[2].set(ylabel="MiB", title="memory per step")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set(xlabel="lora_dropout", xticks=p)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
