"""Show a figure with its alt text: the words a screen reader says, and what a text-only view prints.

`show_figure(fig, alt)` displays the figure as a PNG inside an HTML `<img alt="...">` (Jupyter, Colab
and rendered pages use it), with the PNG itself and a "[figure: ...]" line beside it for front ends
that show only those, then closes the figure so that it is not shown twice. Under `make figures`
(matplotlib's backend is `lora_lab.tooling.figure_backend`) it hands the figure to `plt.show()`, which
saves it as PNG and SVG, with the alt text beside them as a .txt file.
"""

from __future__ import annotations

import base64
import html
import io

#: The marker every shown figure's text/plain line starts with (tests look for it).
ALT_PREFIX = "[figure: "


def show_figure(fig, alt: str) -> None:
    """Display `fig` with `alt` as its alt text, then close it; `alt` must say what the figure shows."""
    import matplotlib
    import matplotlib.pyplot as plt

    alt = " ".join(str(alt).split())
    if not alt:
        raise ValueError("a figure needs alt text: say in a sentence what it shows")
    if "figure_backend" in matplotlib.get_backend():
        from lora_lab.tooling import figure_backend

        figure_backend.next_alt_text = alt
        plt.show()
        return
    from IPython.display import display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    display({"image/png": png,
             "text/html": f'<img src="data:image/png;base64,{png}" alt="{html.escape(alt)}"/>',
             "text/plain": f"{ALT_PREFIX}{alt}]"}, raw=True)
    plt.close(fig)
