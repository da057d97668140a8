"""LoRA's variants written by hand (lora_lab.lessons.variants) against peft's own layers and optimizer."""

import copy
import math

import pytest
import torch
from torch import nn

from lora_lab.experiments.variant_checks import VARIANTS, agrees, check_all, check_layer, format_table
from lora_lab.lessons.variants import (
    DoRALinear,
    OLoRALinear,
    PiSSALinear,
    RSLoRALinear,
    VeRALinear,
    loraplus_param_groups,
    rslora_scale,
    trainable_params,
    vera_shared_matrices,
)

LORA_FAMILY = ("lora", "rslora", "dora", "pissa", "olora")


@pytest.fixture(scope="module")
def rows():
    return {row["variant"]: row for row in check_all()}


def test_check_all_has_one_row_per_variant_in_order_and_all_agree(rows):
    assert list(rows) == list(VARIANTS) == ["lora", "rslora", "dora", "pissa", "olora", "loraplus", "vera"]
    assert all(row["agrees"] is True for row in rows.values())
    table = format_table(list(rows.values())).splitlines()
    assert len(table) == 2 + len(VARIANTS) and all(line.endswith("yes") for line in table[2:])
    assert max(len(line) for line in table) <= 115  # fits a notebook's output


def test_a_disagreeing_row_is_marked(rows):
    dora = rows["dora"]
    wrong = {"vs_peft": 1e-3 * dora["max_abs_output"], "grad_vs_peft": 1e-3 * dora["max_abs_grad"],
             "init_vs_base": 1e-3 * dora["max_abs_output"], "params": dora["params"] - dora["d_out"]}
    for key, value in wrong.items():  # as a wrong mechanism would give
        assert not agrees({**dora, key: value}), key
    bad = {**rows["loraplus"], "ratio_B_over_A": 1.0}
    assert not agrees(bad) and format_table([{**bad, "agrees": agrees(bad)}]).endswith("NO")


def assert_matches_peft(row):
    assert row["max_abs_output"] > 0.5  # the comparison is not between two near-zero tensors
    assert row["vs_peft"] <= 1e-6 * row["max_abs_output"]
    assert row["vs_peft_dropout"] <= 1e-6 * row["max_abs_output"]  # dropout masks drawn from the same seed
    assert row["max_abs_grad"] > 0.5 and row["grad_vs_peft"] <= 1e-6 * row["max_abs_grad"]
    assert row["merged_vs_unmerged"] <= 1e-6 * row["max_abs_output"]
    assert row["peft_merged_vs_ours"] <= 1e-6 * row["max_abs_output"]
    assert row["params"] == row["peft_params"] == row["formula"]
    assert row["agrees"]


@pytest.mark.parametrize("variant", LORA_FAMILY + ("vera",))
def test_outputs_gradients_merges_and_counts_match_peft(rows, variant):
    assert_matches_peft(rows[variant])


@pytest.mark.parametrize("variant", LORA_FAMILY)
def test_matches_peft_on_a_tall_layer_and_another_scale(variant):
    row = check_layer(variant, d_in=32, d_out=96, r=4, alpha=12.0, dropout=0.0, seed=1)
    assert_matches_peft(row)
    assert row["scale"] == row["peft_scale"]


def test_scales_alpha_over_r_and_alpha_over_sqrt_r(rows):
    for variant in ("lora", "dora", "pissa", "olora", "loraplus"):
        assert rows[variant]["scale"] == rows[variant]["peft_scale"] == 16.0 / 8
    assert rows["rslora"]["scale"] == rows["rslora"]["peft_scale"] == 16.0 / math.sqrt(8)
    assert RSLoRALinear(nn.Linear(64, 64), r=16, alpha=8.0).scale == 2.0 == rslora_scale(8.0, 16)
    assert rslora_scale(16, 64) == 2.0 and 16 / 64 == 0.25  # at r = 64 rsLoRA's scale is 8 times LoRA's


def test_every_variant_starts_equal_to_the_original_layer(rows):
    for variant in ("lora", "rslora", "dora", "vera"):  # B = 0, m = ||W||, b = 0: exactly the base layer
        assert rows[variant]["init_vs_base"] == rows[variant]["peft_init_vs_base"] == 0.0
    for variant in ("pissa", "olora"):  # residual + s B A = W, up to float rounding
        assert rows[variant]["init_vs_base"] <= 1e-6 * rows[variant]["max_abs_output"]
        assert rows[variant]["init_vs_peft"] == 0.0  # A, B and residual: the same numbers as peft's


def test_pissa_splits_the_top_singular_values_and_freezes_the_rest():
    torch.manual_seed(0)
    base = nn.Linear(40, 24)
    original = copy.deepcopy(base)
    layer = PiSSALinear(base, r=4, alpha=8.0)
    U, S, Vh = torch.linalg.svd(original.weight.detach())
    with torch.no_grad():
        assert torch.allclose(layer.scale * layer.B @ layer.A, U[:, :4] * S[:4] @ Vh[:4], atol=1e-5)
        assert layer.base is base and not torch.allclose(base.weight, original.weight)  # rewritten in place
        residual_s = torch.linalg.svdvals(base.weight)
        assert torch.allclose(residual_s[:20], S[4:], atol=1e-5)  # the residual: the small singular values
        x = torch.randn(6, 40)
        assert torch.allclose(layer(x), original(x), atol=1e-5)
        assert torch.allclose(layer.merged().weight, original.weight, atol=1e-5)


def test_olora_starts_from_the_qr_of_w():
    torch.manual_seed(0)
    original = nn.Linear(40, 24)
    layer = OLoRALinear(copy.deepcopy(original), r=5, alpha=20.0)  # scale 4: nothing divided by it
    with torch.no_grad():
        assert torch.allclose(layer.B.T @ layer.B, torch.eye(5), atol=1e-5)  # orthonormal columns
        assert torch.equal(layer.A, layer.A.triu())  # rows of R: upper triangular
        Q = layer.B
        assert torch.allclose(layer.B @ layer.A, Q @ Q.T @ original.weight, atol=1e-5)
        assert torch.allclose(layer.base.weight + 4.0 * layer.B @ layer.A, original.weight, atol=1e-5)


def test_dora_magnitude_starts_at_the_row_norms_and_rescales_each_row(rows):
    assert rows["dora"]["m_vs_row_norms"] == rows["dora"]["init_vs_peft"] == 0.0
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(16, 12), r=2, alpha=4.0)
    assert torch.equal(layer.m.detach(), layer.base.weight.norm(dim=1))
    with torch.no_grad():
        layer.B.normal_()
        layer.m.mul_(torch.linspace(0.5, 2.0, 12))
        merged = layer.merged()
    # The merged rows have exactly the trained lengths m: DoRA sets each row's norm.
    assert torch.allclose(merged.weight.norm(dim=1), layer.m.detach(), atol=1e-5)
    assert torch.equal(merged.bias, layer.base.bias)


def test_dora_norm_gets_no_gradient():
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(16, 12), r=2, alpha=4.0)
    with torch.no_grad():
        layer.B.normal_()
    assert not layer.row_norms().requires_grad
    layer(torch.randn(5, 16)).sum().backward()
    assert layer.m.grad is not None and layer.B.grad is not None and layer.base.weight.grad is None


def test_vera_shares_one_seeded_pair_sliced_per_layer(rows):
    row = rows["vera"]
    assert row["shared_vs_peft"] == 0.0 and row["init_vs_peft"] == 0.0  # drawn from the seed, not copied
    # r x the largest d_in, the largest d_out x r
    assert row["shared_shapes"] == row["peft_shared_shapes"] == ((8, 64), (96, 8))
    assert row["params"] == (8 + 48) + (8 + 96)
    A, B = vera_shared_matrices(8, 64, 96, seed=0)
    assert torch.equal(A, vera_shared_matrices(8, 64, 96, seed=0)[0])
    assert not torch.equal(A, vera_shared_matrices(8, 64, 96, seed=1)[0])
    assert A.abs().max() <= math.sqrt(6 / 64) and B.abs().max() <= math.sqrt(6 / 8)
    small = VeRALinear(nn.Linear(32, 96), A, B)
    assert small.A.shape == (8, 32) and small.B.shape == (96, 8)
    assert small.A.data_ptr() == A.data_ptr()  # a view of the shared matrix, not a copy
    assert torch.equal(small.d.detach(), torch.full((8,), 0.1)) and torch.count_nonzero(small.b) == 0
    assert [n for n, p in small.named_parameters() if p.requires_grad] == ["d", "b"]


def test_loraplus_groups_match_peft_parameter_by_parameter(rows):
    row = rows["loraplus"]
    assert row["vs_peft"] == 0.0 and row["edge_vs_peft"] == 0.0
    assert row["ratio_B_over_A"] == 16.0
    assert row["params"] == row["peft_params"] == row["formula"]
    groups = row["edge_groups"]
    assert groups == row["peft_edge_groups"]
    assert groups["embedding"] == ["emb.lora_embedding_A.default", "emb.lora_embedding_B.default"]
    assert "proj.lora_magnitude_vector.default.weight" in groups["B"]  # 1-D: B's rate
    assert {"proj.base_layer.bias", "norm.modules_to_save.default.weight"} <= set(groups["B_no_decay"])
    assert row["peft_weight_decay_when_passed_as_weight_decay"] == 0.0


def test_loraplus_rates_on_a_hand_named_model():
    model = nn.ModuleDict({"lora_A": nn.Linear(8, 2, bias=False), "lora_B": nn.Linear(2, 8, bias=False)})
    groups = loraplus_param_groups(model, lr=1e-4, ratio=8.0, weight_decay=0.1)
    rates = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert rates[id(model["lora_A"].weight)] == (1e-4, 0.1)
    assert rates[id(model["lora_B"].weight)] == (8e-4, 0.1)
    torch.optim.AdamW(groups)  # ready for an optimizer, empty groups included


@pytest.mark.parametrize("d_in,d_out,r", [(64, 48, 8), (32, 96, 1), (128, 40, 16)])
def test_trainable_params_count_the_real_tensors(d_in, d_out, r):
    def trained(m):
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    base = nn.Linear(d_in, d_out)
    lora = r * (d_in + d_out)
    assert trainable_params("rslora", d_in, d_out, r) == lora == trained(RSLoRALinear(base, r, 8.0))
    assert trainable_params("dora", d_in, d_out, r) == lora + d_out == trained(DoRALinear(base, r, 8.0))
    assert trainable_params("pissa", d_in, d_out, r) == trained(PiSSALinear(copy.deepcopy(base), r, 8.0))
    assert trainable_params("olora", d_in, d_out, r) == trained(OLoRALinear(copy.deepcopy(base), r, 8.0))
    A, B = vera_shared_matrices(r, d_in, d_out)
    assert trainable_params("vera", d_in, d_out, r) == r + d_out == trained(VeRALinear(base, A, B))
    assert trainable_params("loraplus", d_in, d_out, r) == trainable_params("lora", d_in, d_out, r)
    names = {"LoRA": "lora", "rsLoRA": "rslora", "DoRA": "dora", "PiSSA": "pissa", "OLoRA": "olora",
             "LoRA+": "loraplus", "VeRA": "vera"}
    for shown, key in names.items():  # the names the notebook and exercises use
        assert trainable_params(shown, d_in, d_out, r) == trainable_params(key, d_in, d_out, r)
    with pytest.raises(ValueError, match="unknown variant 'adalora'"):
        trainable_params("adalora", d_in, d_out, r)
