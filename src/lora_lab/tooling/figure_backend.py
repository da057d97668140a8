"""A matplotlib backend that saves every shown figure as PNG and SVG (for `make figures`).

`python -m lora_lab.tooling.course figures` runs each notebook with this backend switched on, so the
course's figures land in build/figures/ as `NN_topic-01.png` / `.svg`, ready for slides, without
any notebook having to save its own figures.

Settings come from the environment: LORA_LAB_FIGURES_DIR (folder) and LORA_LAB_FIGURES_PREFIX
(file name prefix, the notebook's name).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase
_counter = itertools.count(1)
saved: list[Path] = []  # every file written in this process, in order
next_alt_text: str | None = None  # set by lora_lab.figures.show.show_figure: written beside the next figure


def show(*args, **kwargs) -> None:
    """Save each open figure as PNG and SVG (and its alt text as .txt, when given), then close it."""
    global next_alt_text
    out = Path(os.environ.get("LORA_LAB_FIGURES_DIR", "build/figures"))
    prefix = os.environ.get("LORA_LAB_FIGURES_PREFIX", "figure")
    out.mkdir(parents=True, exist_ok=True)
    for manager in Gcf.get_all_fig_managers():
        n = next(_counter)
        for ext in ("png", "svg"):
            path = out / f"{prefix}-{n:02d}.{ext}"
            manager.canvas.figure.savefig(path, dpi=150, bbox_inches="tight")
            saved.append(path)
        if next_alt_text:
            path.with_suffix(".txt").write_text(next_alt_text + "\n")
            saved.append(path.with_suffix(".txt"))
    Gcf.destroy_all()
    next_alt_text = None
