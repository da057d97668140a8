"""Notebook 06's fit chart draws one bar per row, hatches what does not fit, and refuses no rows."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from lora_lab.experiments import scale
from lora_lab.figures import scale_plots  # noqa: E402


def test_one_bar_per_row_and_hatched_when_it_does_not_fit():
    rows = scale.fit_table(models=("Qwen/Qwen2.5-7B",), methods=("full", "qlora"))
    fig = scale_plots.fit_chart(rows)
    bars = fig.axes[0].patches
    assert len(bars) == len(rows)
    widths = sorted(b.get_width() for b in bars)
    assert widths == pytest.approx(sorted(r.per_gpu_gib for r in rows))
    hatched = sum(bool(b.get_hatch()) for b in bars)
    assert hatched == sum(not r.fits for r in rows) and 0 < hatched < len(rows)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["Qwen2.5-7B full", "Qwen2.5-7B qlora"]


def test_no_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="No rows"):
        scale_plots.fit_chart([])
