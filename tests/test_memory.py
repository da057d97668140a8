"""Tests of `lora_lab.estimation.memory`: the measurement itself, and the estimate against it on real steps.

A few representative cases of benchmarks/vram_accuracy.py (which runs the whole grid): real
architectures at 1-3 layers, shrunk widths, one training step each on the CPU (bitsandbytes runs
NF4 and 8-bit optimizers there), in the precisions the course trains in: 16-bit base with fp32
adapters under autocast (the Trainer's bf16/fp16), pure 16-bit loading, fp32, mixed."""

from __future__ import annotations

import warnings

import pytest
import torch

from lora_lab.estimation import memory, vram

warnings.filterwarnings("ignore", message=".*kernels.*")

TOL = {"weights": 0.03, "gradients": 0.03, "optimizer_states": 0.03, "activations": 0.10}


def small(name: str, layers: int = 2) -> dict:
    return memory.shrink_config(vram.preset_config(name), layers=layers, width_divisor=8, vocab_divisor=32)


def assert_close(row: dict):
    assert row["measured_total_params"] == row["predicted_total_params"]
    assert row["measured_trainable_params"] == row["predicted_trainable_params"]
    for cat, tol in TOL.items():
        assert abs(row[f"error_{cat}"]) <= tol, (cat, row[f"measured_{cat}"], row[f"predicted_{cat}"])


CASES = [  # name, method, precision, autocast, checkpointing, batch
    ("meta-llama/Llama-3.2-1B", "full", "mixed", True, False, 2),  # the course's full fine-tuning on a GPU
    ("meta-llama/Llama-3.2-1B", "lora", "bf16", True, False, 2),  # Trainer bf16=True, fp32 adapters
    ("meta-llama/Llama-3.2-1B", "lora", "bf16", False, False, 2),  # pure bf16: peft's fp32 input copies
    ("Qwen/Qwen2.5-0.5B", "qlora", "fp16", True, False, 2),  # the T4 recipe: fp16 autocast, fp32 upcasts
    ("Qwen/Qwen2.5-0.5B", "qlora", "fp16", True, True, 1),
    ("microsoft/Phi-3-mini-4k-instruct", "lora", "fp32", False, False, 1),
    ("google/gemma-2-2b", "lora", "bf16", True, False, 2),
]


@pytest.mark.parametrize("name,method,precision,autocast,ckpt,batch", CASES)
def test_estimate_matches_a_measured_step(name, method, precision, autocast, ckpt, batch):
    row = memory.compare(small(name), method, batch_size=batch, seq_len=128, gradient_checkpointing=ckpt,
                         precision=precision, autocast=autocast)
    assert_close(row)


def test_per_layer_slope_and_fixed_cost_in_pure_16_bit():
    """1 and 3 layers: the per-layer activations (peft's fp32 input copies included) and the fixed part."""
    rows = [memory.compare(small("meta-llama/Llama-3.2-1B", n), "lora", batch_size=2, seq_len=64,
                           gradient_checkpointing=False, precision="bf16", autocast=False) for n in (1, 3)]
    measured = [r["measured_activations"] for r in rows]
    predicted = [r["predicted_activations"] for r in rows]
    slope_m, slope_p = (measured[1] - measured[0]) / 2, (predicted[1] - predicted[0]) / 2
    assert slope_p == pytest.approx(slope_m, rel=0.10)
    assert predicted[0] - slope_p == pytest.approx(measured[0] - slope_m, rel=0.10)
    # the named term: a 4-byte copy of each adapted layer's input, per layer
    cfg = small("meta-llama/Llama-3.2-1B", 1)
    arch = vram.load_arch(cfg)
    est = vram.estimate(cfg, method="lora", batch_size=2, seq_len=64, gradient_checkpointing=False,
                        precision="bf16", autocast=False, device="cpu")
    copies = 4 * 2 * 64 * sum(li.d_in for li in arch.linears)
    assert est.terms["layers.lora_inputs"] == copies + 4 * 2 * 64 * 16 * len(arch.linears)  # + lora_A outputs


def test_eager_attention_dropout_and_8bit_optimizer_are_modelled():
    cfg = small("meta-llama/Llama-3.2-1B")
    row = memory.compare(cfg, "lora", batch_size=2, seq_len=128, gradient_checkpointing=False, attention="eager",
                         lora_dropout=0.1, optimizer="paged_adamw_8bit", rank=64, precision="fp16")
    assert_close(row)
    # the eager scores (batch x heads x seq x seq, fp32) are really there: far more than with SDPA
    sdpa = memory.compare(cfg, "lora", batch_size=2, seq_len=128, gradient_checkpointing=False, rank=64,
                          precision="fp16")
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
