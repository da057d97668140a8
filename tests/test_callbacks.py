"""The divergence guard (a NaN loss saves nothing) and memory readings that compare like with like."""

import math

import pytest
import torch
from transformers import TrainerCallback

from lora_lab.estimation import vram
from lora_lab.runtime import profiles
from lora_lab.training import callbacks, data, train


def small_profile(**changes):
    base = dict(max_steps=6, logging_steps=2, save_steps=2, batch_size=8, n_eval=6, max_new_tokens=4)
    return profiles.get_profile("tiny").replace(**{**base, **changes})


class PoisonWeights(TrainerCallback):
    """What a learning rate far too high does to fp16 weights, made certain: NaN in a LoRA matrix."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(math.nan)
        return control


def test_a_nan_loss_stops_the_run_and_saves_nothing_as_a_result(tmp_path):
    profile = small_profile()
    splits = data.course_splits(("recall",), n_eval=6)
    out = tmp_path / "run"
    # Poisoned after step 3: step 4's loss is NaN, logged at step 4, where a checkpoint was also due.
    with pytest.raises(train.TrainingDiverged) as info:
        train.run_pipeline(profile, output_dir=out, splits=splits, callbacks=[PoisonWeights(3)], verbose=False)
    message = str(info.value)
    assert info.value.step == 4 and message.startswith("Training diverged at step 4")
    assert "lower learning rate" in message and "gradient clipping" in message and "no adapter" in message
    assert not (out / "adapter").exists() and not (out / "merged").exists() and not (out / "metrics.json").exists()
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"]  # written before the divergence; step 4's was never written


def test_weights_gone_non_finite_are_caught_before_a_checkpoint_without_a_logged_loss(tmp_path, tiny_model_path):
    profile = small_profile(logging_steps=100, save_steps=3)
    splits = data.course_splits(("recall",), n_eval=6)
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    with pytest.raises(train.TrainingDiverged, match="holds NaN or inf"):
        train.sft(model, tok, splits, profile, tmp_path, callbacks=[PoisonWeights(2)], verbose=False)
    assert not (tmp_path / "checkpoint-3").exists()


def test_a_logged_nan_loss_raises_before_the_steps_checkpoint():
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    args = SimpleNamespace(learning_rate=2e-4, fp16=True, max_grad_norm=1.0)
    state = TrainerState(global_step=10)
    guard = callbacks.DivergenceGuard()
    guard.on_log(args, state, TrainerControl(), logs={"loss": 1.25})  # finite: nothing happens
    with pytest.raises(callbacks.TrainingDiverged, match="the training loss is nan"):
        guard.on_log(args, state, TrainerControl(), logs={"loss": float("nan")})


def test_divergence_advice_follows_the_runs_settings():
    fp16 = callbacks.divergence_message(7, "the training loss is inf", 2e-4, True, 1.0)
    assert "5e-05" in fp16 and "bf16" in fp16 and "max_grad_norm 1" in fp16
    bf16 = callbacks.divergence_message(7, "the training loss is nan", 2e-4, False, 0.0)
    assert "bf16" not in bf16 and "gradient clipping (max_grad_norm=0.3)" in bf16
    assert "fp32" in fp16 and "qlora" in fp16  # what a T4 can do: fp32 adapters, QLoRA's own settings


class FakeScaler:
    def __init__(self, scale):
        self.scale = scale

    def is_enabled(self):
        return True

    def get_scale(self):
        return self.scale


def guard_steps(skips, scales=None):
    """Feed the guard one optimizer step per entry of `skips` (True: the GradScaler skipped it)."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    args = SimpleNamespace(learning_rate=2e-4, fp16=True, max_grad_norm=1.0)
    guard = callbacks.DivergenceGuard()
    for step, skipped in enumerate(skips, start=1):
        optimizer = SimpleNamespace(scaler=FakeScaler((scales or {}).get(step, 1024.0)), step_was_skipped=skipped)
        guard.on_step_end(args, TrainerState(global_step=step), TrainerControl(), optimizer=optimizer)
    return guard


def test_the_guard_counts_skipped_fp16_steps_and_stops_when_they_pile_up():
    start = guard_steps([True] * 4 + [False] * 30)  # the scaler settling at the start: normal
    assert start.skipped_steps == 4 and start.loss_scale == 1024.0
    with pytest.raises(callbacks.TrainingDiverged, match=r"overflowed 8 optimizer steps in a row"):
        guard_steps([False] * 5 + [True] * callbacks.MAX_SKIPPED_IN_A_ROW)
    scattered = [i % 4 == 0 for i in range(1, 40)]  # every 4th step skipped: 25% of them
    with pytest.raises(callbacks.TrainingDiverged, match=r"skipped \d+ of \d+ optimizer steps"):
        guard_steps(scattered)
    with pytest.raises(callbacks.TrainingDiverged, match="loss scale collapsed"):
        guard_steps([False] * 3, scales={3: 0.5})
    no_scaler = callbacks.DivergenceGuard()  # fp32 or bf16: nothing to count
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState
    no_scaler.on_step_end(SimpleNamespace(), TrainerState(global_step=1), TrainerControl(), optimizer=object())
    assert no_scaler.skipped_steps == 0 and no_scaler.loss_scale is None


def test_a_nan_loss_is_logged_as_nan_not_replaced_by_the_running_mean():
    precision = train.decide_precision(callbacks_t4(), "qlora")
    kwargs = train.sft_config_kwargs(small_profile(), "out", precision)
    assert kwargs["logging_nan_inf_filter"] is False


def callbacks_t4():
    from lora_lab.training import models

    return models.simulated_gpu()


def test_peaks_are_reset_after_empty_cache_and_read_after_training(monkeypatch, tmp_path):
    """With the CUDA allocator mocked: empty the cache, then reset the peaks, then train, then read both peaks."""
    calls = []
    monkeypatch.setattr(callbacks, "_cuda_in_use", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset_peaks"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: calls.append("read_allocated") or 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: calls.append("read_reserved") or 4 * 2**30)

    class Mark(TrainerCallback):
        def on_step_begin(self, *a, **k):
            calls.append("step")

    profile = small_profile(max_steps=2, save_steps=10)
    splits = data.course_splits(("recall",), n_eval=6)
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    result = train.sft(model, tok, splits, profile, tmp_path, callbacks=[Mark()], verbose=False)
    first_step = calls.index("step")
    before = calls[:first_step]
    assert before[-2:] == ["empty_cache", "reset_peaks"]  # the last thing before the first step
    assert "read_allocated" in calls[first_step:] and "read_reserved" in calls[first_step:]
    assert result.metrics["peak_allocated_bytes"] == 3 * 2**30 and result.metrics["peak_reserved_bytes"] == 4 * 2**30


def test_compare_memory_pairs_allocated_with_allocated_and_reserved_with_reserved():
    est = vram.estimate("Qwen/Qwen2.5-1.5B", method="qlora", batch_size=4, seq_len=512, precision="fp16",
                        optimizer="paged_adamw_8bit", gradient_checkpointing=True)
    out = callbacks.compare_memory(est, {"allocated": 5 * 2**30, "reserved": 6 * 2**30})
    assert out["predicted_allocated_bytes"] == est.peak_allocated and out["measured_allocated_bytes"] == 5 * 2**30
    assert out["predicted_reserved_bytes"] == est.reserved and out["measured_reserved_bytes"] == 6 * 2**30
    assert "max_memory_allocated" in out["summary"] and "max_memory_reserved" in out["summary"]


def test_on_the_cpu_the_estimate_meets_the_steps_tensor_bytes_not_rss(tmp_path):
    profile = small_profile(max_steps=2, save_steps=10, batch_size=4)
    splits = data.course_splits(("recall",), n_eval=6)
    metrics = train.run_pipeline(profile, output_dir=tmp_path, splits=splits, merge=False, verbose=False)
    check = metrics["memory_check"]
    assert "measured_tensor_bytes" in check and "RSS" in check["summary"]
    # Same categories on both sides: the estimate and the measurement agree within a factor of two.
    ratio = check["predicted_tensor_bytes"] / check["measured_tensor_bytes"]
    assert 0.5 < ratio < 2, check
