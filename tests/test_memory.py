"""Tests of `lora_lab.memory`: the measurement itself, and the estimate against it on real steps.

A small subset of benchmarks/vram_accuracy.py: real architectures at 2 layers, shrunk widths,
one fp32 training step each on the CPU (bitsandbytes runs NF4 and 8-bit optimizers there)."""

from __future__ import annotations

import warnings

import pytest
import torch

from lora_lab import memory, vram

warnings.filterwarnings("ignore", message=".*kernels.*")

TOL = {"weights": 0.02, "gradients": 0.02, "optimizer_states": 0.02, "activations": 0.15}


def small(name: str) -> dict:
    return memory.shrink_config(vram.preset_config(name), layers=2, width_divisor=8, vocab_divisor=32)


def assert_close(row: dict):
    assert row["measured_total_params"] == row["predicted_total_params"]
    assert row["measured_trainable_params"] == row["predicted_trainable_params"]
    for cat, tol in TOL.items():
        assert abs(row[f"error_{cat}"]) <= tol, (cat, row[f"measured_{cat}"], row[f"predicted_{cat}"])


CASES = [
    ("meta-llama/Llama-3.2-1B", "full", False, 2),
    ("meta-llama/Llama-3.2-1B", "lora", True, 2),
    ("Qwen/Qwen2.5-0.5B", "qlora", False, 2),
    ("Qwen/Qwen2.5-0.5B", "qlora", True, 1),
    ("microsoft/Phi-3-mini-4k-instruct", "lora", False, 1),
    ("google/gemma-2-2b", "lora", False, 2),
]


@pytest.mark.parametrize("name,method,ckpt,batch", CASES)
def test_estimate_matches_a_measured_step(name, method, ckpt, batch):
    row = memory.compare(small(name), method, batch_size=batch, seq_len=128, gradient_checkpointing=ckpt)
    assert_close(row)


def test_eager_attention_dropout_and_8bit_optimizer_are_modelled():
    cfg = small("meta-llama/Llama-3.2-1B")
    row = memory.compare(cfg, "lora", batch_size=2, seq_len=128, gradient_checkpointing=False, attention="eager",
                         lora_dropout=0.1, optimizer="paged_adamw_8bit", rank=64)
    assert_close(row)
    # the eager scores (batch x heads x seq x seq, fp32) are really there: far more than with SDPA
    sdpa = memory.compare(cfg, "lora", batch_size=2, seq_len=128, gradient_checkpointing=False, rank=64)
    assert row["measured_activations"] - sdpa["measured_activations"] > 2 * 2 * 32 * 128 * 128 * 4


def test_counts_equal_what_peft_prints():
    model, _ = memory.build_training_model(small("Qwen/Qwen2.5-0.5B"), "qlora", rank=8)
    trainable, total = model.get_nb_trainable_parameters()
    assert memory.count_parameters(model) == (total, trainable)


def test_saved_tensors_are_deduplicated_by_storage():
    x = torch.randn(1000, requires_grad=True)
    with memory.SavedTensorRecorder() as rec:
        a = x.exp()  # saves its result a
        b = a * a  # saves a twice: the same storage
        c = b[:10].sin()  # saves a view of b: b's whole storage
    c.sum().backward()
    assert rec.total == 2 * 1000 * 4


def test_measure_step_rejects_bad_setups():
    model, opt = memory.build_training_model(small("meta-llama/Llama-3.2-1B"), "full")
    batch = memory.random_batch(model.config.vocab_size, 1, 16)
    with pytest.raises(ValueError, match="labels"):
        memory.measure_step(model, {k: v for k, v in batch.items() if k != "labels"}, opt)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        memory.measure_step(model, batch, opt)


def test_shrink_keeps_structure():
    cfg = small("google/gemma-2-2b")
    arch = vram.load_arch(cfg)
    full = vram.load_arch("google/gemma-2-2b")
    assert arch.num_layers == 2 and arch.norms_per_layer == 4 and arch.tied
    assert (arch.num_heads, arch.num_kv_heads) == (full.num_heads, full.num_kv_heads)
    assert arch.q_dim != arch.hidden_size  # gemma's head_dim * heads != hidden survives the shrink
