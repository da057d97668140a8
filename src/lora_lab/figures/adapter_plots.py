"""Figures of notebook 05 (adapters as specialists), from the score tables of `lora_lab.experiments.adapters`."""

from __future__ import annotations

from collections.abc import Mapping


def score_heatmap(scores: Mapping[str, Mapping[str, float]], title: str = "exact match on held-out examples",
                  bars: Mapping[str, float] | None = None):
    """An adapter-by-task heatmap of scores in [0, 1], each cell labelled with its percentage.

    A cell whose row is named like its column (a specialist on its own task) gets a frame, so the
    diagonal a specialist table should show stands out; with `bars`, a framed cell below its task's
    bar is framed in red.

    Args:
        scores: {row name (adapter, "__base__", a combination): {task: score}}, as `adapters.score_table`
            returns; every row must score the same tasks.
        title: the chart title.
        bars: optional {task: lowest passing score} for the specialists' own cells.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: an empty table, rows with different tasks, or a score outside [0, 1].
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = list(scores)
    if not rows:
        raise ValueError("No scores to draw: pass {adapter: {task: score}} with at least one row.")
    tasks = list(scores[rows[0]])
    for name in rows:
        if list(scores[name]) != tasks:
            raise ValueError(f"Row {name!r} scores tasks {list(scores[name])}, the first row {tasks}: "
                             "every row needs the same tasks in the same order.")
        bad = {t: v for t, v in scores[name].items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"Row {name!r} has scores outside [0, 1]: {bad}. Pass shares, not percentages.")
    values = [[scores[name][t] for t in tasks] for name in rows]
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 2.6, 0.5 * len(rows) + 1.4))
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=9,
                    color="black" if value > 0.6 else "white")
    for i, name in enumerate(rows):
        if name in tasks:
            j = tasks.index(name)
            failed = bars is not None and name in bars and scores[name][name] < bars[name]
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, linewidth=2.5,
                                   edgecolor="#D55E00" if failed else "white"))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(rows)), ["base (no adapter)" if n == "__base__" else n for n in rows])
    ax.set_xlabel("task (held-out examples)")
    ax.set_ylabel("model")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="exact match")
    fig.tight_layout()
    return fig
