"""lora_lab.runtime.compat: each library workaround next to a reproduction of what it works around.

The reproductions run on the pinned versions WITHOUT the workaround: when a library stops doing
what a workaround undoes, its reproduction fails here, and the workaround can go (or its version
range be corrected). When a library is upgraded past a workaround's range, the workaround's own
test fails until someone checks the new release.
"""

import logging

import bitsandbytes as bnb
import pytest
import torch

from lora_lab.runtime import compat, profiles
from lora_lab.training import models, train

# ---------------------------------------------------------------------------------------------
# trl: SFTTrainer casts the LoRA matrices of a quantized model to bf16


@pytest.fixture
def qlora_trainer(tiny_model_path, tmp_path):
    """An SFTTrainer built around the tiny model in 4 bits with LoRA, as `train.sft` builds it."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    profile = profiles.get_profile("tiny").replace(max_steps=1)
    model, tok = models.load_model_and_tokenizer(profile, "qlora", model_path=tiny_model_path)
    model = models.attach_lora(model, models.lora_config(profile), seed=0)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # peft's default
    kwargs = train.sft_config_kwargs(profile, tmp_path, model.lora_lab_precision)
    data = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]], "labels": [[-100, 2, 3, 4]]})
    return SFTTrainer(model=model, args=SFTConfig(**kwargs), train_dataset=data, processing_class=tok)


def test_trl_casts_qlora_adapters_to_bf16_on_the_pinned_version(qlora_trainer):
    trainable = [p for p in qlora_trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.bfloat16 for p in trainable)  # fp32 run, bf16 adapters


def test_keep_trainable_fp32_undoes_it_and_says_so(qlora_trainer, caplog):
    assert compat.needed("trl", compat.TRL_CASTS_QLORA_ADAPTERS_TO_BF16)  # the pinned trl is in range
    trainable = [p for p in qlora_trainer.model.parameters() if p.requires_grad]
    with caplog.at_level(logging.INFO, logger="lora_lab.runtime.compat"):
        assert compat.keep_trainable_fp32(qlora_trainer.model) == len(trainable)
    assert all(p.dtype == torch.float32 for p in trainable)
    assert "cast" in caplog.text and "trl" in caplog.text
    with caplog.at_level(logging.INFO, logger="lora_lab.runtime.compat"):
        caplog.clear()
        assert compat.keep_trainable_fp32(qlora_trainer.model) == 0  # nothing left to do: silent
    assert caplog.text == ""


def test_workarounds_stand_down_outside_their_version_range(monkeypatch, qlora_trainer):
    monkeypatch.setattr(compat, "version", lambda package: "99.0.0")
    assert compat.keep_trainable_fp32(qlora_trainer.model) == 0
    assert any(p.dtype == torch.bfloat16 for p in qlora_trainer.model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# bitsandbytes: Linear4bit repacks its weight for the AVX512-BF16 CPU kernel in eval mode


def nf4_layer() -> bnb.nn.Linear4bit:
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")
    return layer.to("cpu")  # quantizes


def eval_forward(layer, monkeypatch) -> None:
    """One eval-mode forward without gradients, as on a CPU with AVX512-BF16.

    This machine may lack AVX512-BF16 (bitsandbytes then sets `support_avx512bf16_for_cpu` to
    False), so the test sets the flag as bitsandbytes does on such a CPU, and replaces the 4-bit
    matmul, whose packed kernel needs that instruction set, by zeros of the right shape.
    """
    monkeypatch.setattr(bnb, "matmul_4bit", lambda x, w, bias=None, quant_state=None: torch.zeros(*x.shape[:-1], 64))
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 64))


def test_bitsandbytes_repacks_4bit_weights_after_a_cpu_eval_on_the_pinned_version(monkeypatch):
    layer = nf4_layer()
    assert hasattr(layer, "support_avx512bf16_for_cpu")  # the flag the workaround clears exists
    before = layer.weight.data.clone()
    layer.support_avx512bf16_for_cpu = True
    eval_forward(layer, monkeypatch)
    state = layer.weight.quant_state
    assert getattr(state, "packing_format_for_cpu", False)
    assert layer.weight.data.shape != before.shape  # repacked: (64, 32) instead of (2048, 1)
    assert state.absmax.dtype == torch.bfloat16  # scales rounded to bf16


def test_keep_cpu_4bit_layout_keeps_the_standard_layout_and_says_so(monkeypatch, caplog):
    assert compat.needed("bitsandbytes", compat.BNB_REPACKS_4BIT_FOR_CPU_INFERENCE)
    model = torch.nn.Sequential(nf4_layer())
    layer = model[0]
    before = layer.weight.data.clone()
    layer.support_avx512bf16_for_cpu = True
    with caplog.at_level(logging.INFO, logger="lora_lab.runtime.compat"):
        assert compat.keep_cpu_4bit_layout(model) == 1
    assert "4-bit layout" in caplog.text
    eval_forward(layer, monkeypatch)
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert torch.equal(layer.weight.data, before)
