"""Notebook 00's concept diagrams: each draws what its numbers say."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from lora_lab.estimation import vram  # noqa: E402
from lora_lab.figures import diagrams
from lora_lab.lessons import counting, nf4


def _texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title])


def _rects(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_lora_shapes_labels_each_matrix_with_a_real_layers_shape():
    arch = vram.load_arch("Qwen/Qwen2.5-1.5B")
    v = next(li for li in arch.linears if li.name == "v_proj")
    fig = diagrams.lora_shapes(v.d_out, v.d_in, 16, alpha=32, layer="v_proj")
    assert isinstance(fig, Figure)
    text = _texts(fig)
    assert "256 x 1,536" in text and "256 x 16" in text and "16 x 1,536" in text
    assert f"{counting.lora_layer_params(v.d_in, v.d_out, 16):,}" in text  # 28,672 = 16 x (1536 + 256)
    assert "32 / 16 = 2" in text
    rects = _rects(fig.axes[0])
    assert len(rects) == 3
    w, b, a = rects
    assert w.get_width() / w.get_height() == pytest.approx(v.d_in / v.d_out)  # W to scale
    assert b.get_height() == pytest.approx(w.get_height()) and a.get_width() == pytest.approx(w.get_width())
    plt.close(fig)


def test_lora_shapes_refuses_a_zero_rank():
    with pytest.raises(ValueError, match="positive"):
        diagrams.lora_shapes(64, 64, 0)


def test_nf4_block_draws_64_weights_their_absmax_and_codes():
    torch.manual_seed(0)
    w = torch.randn(8, 32) * 0.02
    q = nf4.quantize(w, "nf4")
    fig = diagrams.nf4_block(w, q, block=1)
    assert isinstance(fig, Figure)
    top, bottom = fig.axes[:2]
    bars = _rects(top)
    assert len(bars) == 64
    block = w.reshape(-1)[64:128]
    assert [r.get_height() for r in bars] == pytest.approx(block.tolist())
    absmax = float(block.abs().max())
    assert sorted(line.get_ydata()[0] for line in top.get_lines()) == pytest.approx([-absmax, absmax])
    assert f"absmax = {absmax:.4g}" in _texts(fig)
    assert [int(t.get_text()) for t in bottom.texts] == q.codes()[64:128].tolist()
    plt.close(fig)


def test_nf4_block_refuses_a_block_past_the_end():
    w = torch.randn(64)
    with pytest.raises(ValueError, match="1 blocks of 64"):
        diagrams.nf4_block(w, nf4.quantize(w), block=1)


def test_token_row_colours_the_tokens_that_carry_loss():
    tokens = ["<|user|>", "hi there", "\n", "<|assistant|>", "red", "<|end|>"]
    labels = [-100, -100, -100, -100, 7, 1]
    fig = diagrams.token_row(tokens, labels, per_row=4)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    boxes = _rects(ax)[: len(tokens)]
    colours = [matplotlib.colors.to_hex(b.get_facecolor()) for b in boxes]
    assert colours == [diagrams.MASKED.lower()] * 4 + [diagrams.LOSS.lower()] * 2
    shown = [t.get_text() for t in ax.texts]
    assert "hi\u00b7there" in shown and "\\n" in shown  # spaces and newlines made visible
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].endswith(": 2") and legend[1].endswith(": 4")
    plt.close(fig)


def test_token_row_needs_one_label_per_token():
    with pytest.raises(ValueError, match="one label per token"):
        diagrams.token_row(["a", "b"], [-100])
