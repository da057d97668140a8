"""Every figure of the course is shown with alt text: in the notebooks, and in `make figures`' files."""

import base64
import re

import matplotlib
import matplotlib.pyplot as plt
import pytest

from lora_lab.figures import show
from lora_lab.tooling import course

#: Calls that draw a figure in the notebooks.
DRAWS = re.compile(r"plt\.subplots\(|_plots\.\w+\(|plots\.\w+\(|diagrams\.\w+\(|plot_loss\(|plot_epochs\(|"
                   r"plot_by_seq_len\(")


def test_show_figure_gives_an_image_with_alt_text_and_a_text_line(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda bundle, raw: shown.append(bundle))
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    show.show_figure(fig, 'A rising line, "1 to 3"\n')
    (bundle,) = shown
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    assert 'alt="A rising line, &quot;1 to 3&quot;"' in bundle["text/html"] and bundle["image/png"] in bundle["text/html"]
    assert bundle["text/plain"] == '[figure: A rising line, "1 to 3"]'
    assert not plt.fignum_exists(fig.number)  # closed: the inline backend does not show it a second time
    with pytest.raises(ValueError, match="alt text"):
        show.show_figure(plt.figure(), "  ")


def test_make_figures_writes_the_alt_text_beside_each_figure(tmp_path, monkeypatch):
    from lora_lab.tooling import figure_backend

    monkeypatch.setenv("LORA_LAB_FIGURES_DIR", str(tmp_path))
    monkeypatch.setenv("LORA_LAB_FIGURES_PREFIX", "nb")
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "module://lora_lab.tooling.figure_backend")
    monkeypatch.setattr(plt, "show", figure_backend.show)
    plt.close("all")
    fig, ax = plt.subplots()
    show.show_figure(fig, "A blank chart.")
    texts = list(tmp_path.glob("nb-*.txt"))
    assert [t.read_text() for t in texts] == ["A blank chart.\n"]
    assert texts[0].with_suffix(".png").exists() and texts[0].with_suffix(".svg").exists()


@pytest.mark.parametrize("path", course.notebook_sources(), ids=lambda p: p.stem[:2])
def test_every_figure_a_notebook_draws_is_shown_with_alt_text(path):
    cells = [c.source for c in course.read_notebook(path, jupytext_source=True).cells if c.cell_type == "code"]
    drawing = [c for c in cells if DRAWS.search(c)]
    assert drawing, "each lesson has figures"
    for cell in drawing:
        assert "plt.show()" not in cell, "show_figure(fig, alt) instead: plt.show() has no alt text"
        assert len(re.findall(r"show_figure\(", cell)) >= 1, f"a figure without alt text:\n{cell[:300]}"
        for alt in re.findall(r"show_figure\([^,]+,\s*f?\"([^\"]*)", cell):
            assert len(alt) >= 25, f"alt text says too little: {alt!r}"
