"""The logits at long sequences: their share of a step, and the fused loss that removes them."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from lora_lab.estimation import long_sequences, vram  # noqa: E402
from lora_lab.lessons import activation_memory  # noqa: E402

QWEN = "Qwen/Qwen2.5-1.5B"
LONG = dict(method="full", precision="bf16", batch_size=4, seq_len=4096, gradient_checkpointing=True)


def test_fused_chunk_follows_liger_kernels_rule():
    # Liger's own example in fused_linear_cross_entropy.py: BT = 4096 * 4, V = 32000, H = 4096 -> 2048.
    assert activation_memory.fused_chunk_tokens(4096 * 4, 4096, 32000) == 2048
    assert activation_memory.fused_chunk_tokens(16384, 1536, 151936) == 256  # ceil(16384 / 99) = 166 -> 256
    assert activation_memory.fused_chunk_tokens(10, 64, 100) == 8 and activation_memory.fused_chunk_tokens(3, 4096, 4096) == 3


def test_the_logits_are_most_of_a_long_full_fine_tune_of_a_big_vocabulary():
    vocab = vram.load_arch(QWEN).vocab_size
    assert vocab == 151936
    est = vram.estimate(QWEN, **LONG)
    parts = long_sequences.logits_parts(est, vocab)
    tokens = 4 * 4096
    assert parts["logprobs"] == 4 * tokens * vocab  # fp32 log-probs
    assert parts["logits_grad"] == 8 * tokens * vocab == est.transient  # the backward peak is the logits'
    assert parts["logits_block"] == 2 * tokens * vocab  # the bf16 logits block
    assert sum(parts.values()) > 0.6 * est.total
    split = long_sequences.parts_by_kind(est, vocab)
    assert sum(split.values()) == est.total and min(split.values()) >= 0


def test_a_fused_loss_removes_the_logits_and_keeps_everything_else():
    vocab = vram.load_arch(QWEN).vocab_size
    std = vram.estimate(QWEN, **LONG)
    fused = vram.estimate(QWEN, fused_cross_entropy=True, **LONG)
    assert (fused.weights, fused.gradients, fused.optimizer_states) == (std.weights, std.gradients,
                                                                         std.optimizer_states)
    assert fused.terms["logprobs"] == 0 and fused.overhead_terms["logits_block"] == 0
    assert fused.terms["layer_inputs"] == std.terms["layer_inputs"]
    assert long_sequences.logits_parts(fused, vocab) == {"logprobs": 0, "logits_grad": 0, "logits_block": 0}
    saved = std.total - fused.total
    assert saved > 0.9 * sum(long_sequences.logits_parts(std, vocab).values()) - fused.transient
    assert fused.settings["fused_cross_entropy"] is True
    with pytest.raises(ValueError, match="fused_cross_entropy"):
        vram.estimate(QWEN, fused_cross_entropy="yes", **LONG)


def test_the_fused_loss_matters_less_for_a_small_vocabulary():
    small = dict(LONG, seq_len=512)
    std, fused = vram.estimate(QWEN, **small), vram.estimate(QWEN, fused_cross_entropy=True, **small)
    long_std, long_fused = vram.estimate(QWEN, **LONG), vram.estimate(QWEN, fused_cross_entropy=True, **LONG)
    assert 0 < std.total - fused.total < long_std.total - long_fused.total


def test_plot_by_seq_len_stacks_every_part_and_draws_the_fused_total():
    vocab = vram.load_arch(QWEN).vocab_size
    results = long_sequences.sweep(QWEN, (1024, 4096), method="full", precision="bf16", batch_size=4)
    fig = long_sequences.plot_by_seq_len(results, vocab, gpus=("Colab T4",))
    ax = fig.axes[0]
    bars = [p for p in ax.patches]
    assert len(bars) == 2 * len(long_sequences.KINDS)
    tops = [max(b.get_y() + b.get_height() for b in bars if b.get_x() < 0.5),
            max(b.get_y() + b.get_height() for b in bars if b.get_x() > 0.5)]
    assert tops == pytest.approx([std.total / vram.GIB for std, _ in results.values()])
    fused_line = next(line for line in ax.get_lines() if line.get_label().startswith("total with a fused"))
    assert list(fused_line.get_ydata()) == pytest.approx([f.total / vram.GIB for _, f in results.values()])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1,024", "4,096"]
    plt.close(fig)
