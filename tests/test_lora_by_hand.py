"""The hand-written LoRA layer (lora_lab.lessons.lora_by_hand) against the base layer, peft and its own merge."""

import pytest
import torch
from torch import nn

from lora_lab.experiments.peft_checks import compare_with_peft, peft_linear
from lora_lab.lessons.lora_by_hand import LoRALinear


@pytest.mark.parametrize("d_in,d_out,r,alpha,dropout", [(64, 48, 8, 16.0, 0.1), (32, 96, 1, 32.0, 0.0),
                                                        (40, 40, 40, 8.0, 0.05)])
def test_matches_peft_lora_linear(d_in, d_out, r, alpha, dropout):
    rep = compare_with_peft(d_in, d_out, r, alpha, dropout)
    assert rep["max_abs_output"] > 0.5  # the comparison is not between two near-zero tensors
    assert rep["vs_peft"] < 1e-6 * rep["max_abs_output"]
    # In training mode, with the dropout masks drawn from the same seed, the two layers still agree.
    assert rep["vs_peft_dropout"] < 1e-6 * rep["max_abs_output"]
    assert rep["scale"] == rep["peft_scaling"] == alpha / r


def test_merge_gives_the_same_outputs():
    rep = compare_with_peft(96, 64, 16, 32.0)
    assert rep["merged_vs_unmerged"] < 1e-5 * rep["max_abs_output"]
    layer = LoRALinear(nn.Linear(8, 6), r=2, alpha=4.0)
    with torch.no_grad():
        layer.B.fill_(0.5)
    merged = layer.merged()
    assert isinstance(merged, nn.Linear) and merged.weight.shape == (6, 8)
    assert torch.allclose(merged.weight, layer.base.weight + 2.0 * layer.B @ layer.A)


def test_starts_equal_to_the_base_layer_and_only_b_learns_first():
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    layer = LoRALinear(base, r=4, alpha=8.0)
    assert torch.count_nonzero(layer.B) == 0 and torch.count_nonzero(layer.A) == layer.A.numel()
    x = torch.randn(10, 32)
    assert torch.equal(layer(x), base(x))
    layer(x).square().sum().backward()
    # W is frozen; with B = 0 the gradient of A is exactly zero, so the first step moves only B.
    assert base.weight.grad is None and base.bias.grad is None
    assert torch.count_nonzero(layer.A.grad) == 0 and torch.count_nonzero(layer.B.grad) > 0


@pytest.mark.parametrize("d_in,d_out,r", [(64, 48, 8), (4096, 4096, 8), (128, 256, 1)])
def test_parameter_count_is_r_times_d_in_plus_d_out(d_in, d_out, r):
    layer = LoRALinear(nn.Linear(d_in, d_out, bias=False), r=r, alpha=16.0)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == r * (d_in + d_out)
    theirs = peft_linear(nn.Linear(d_in, d_out, bias=False), r, 16.0)
    assert trainable == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


@pytest.mark.parametrize("r", [0, -1, 49])
def test_bad_rank_is_refused_clearly(r):
    with pytest.raises(ValueError, match=r"between 1 and min\(d_in, d_out\) = 48"):
        LoRALinear(nn.Linear(64, 48), r=r, alpha=16.0)
