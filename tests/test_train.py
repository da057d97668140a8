"""lora_lab.training.train: dtype decision, label masking, over-length report, training, resume, OOM, reload, merge.

Short runs on the cpu profile's tiny model (a few optimizer steps each); the full-length run and
its >= 80% exact match are checked by notebook 03 and the command line.
"""

import dataclasses

import pytest
import torch
import transformers
from datasets import Dataset
from transformers import AutoTokenizer

from lora_lab.estimation import preflight
from lora_lab.runtime import hardware, profiles
from lora_lab.runtime.units import GIB
from lora_lab.standins import tiny
from lora_lab.training import callbacks, data, evaluate, models, sft_data, train


def gpu_reading(name="Tesla T4", capability=(7, 5), total=int(14.74 * GIB)) -> hardware.Hardware:
    """A hardware record as `hardware.detect()` returns it on a GPU machine."""
    return hardware.Hardware(
        device_type="cuda", gpu_name=name, gpu_total_bytes=total, gpu_free_bytes=total - GIB,
        compute_capability=capability, native_bf16=hardware.has_native_bf16("cuda", capability),
        compute_dtype=hardware.compute_dtype_for("cuda", capability), in_colab=False,
        disk_free_bytes=100 * GIB, ram_total_bytes=16 * GIB, ram_available_bytes=12 * GIB,
    )


def small_profile(**changes):
    """The cpu profile with a short schedule for tests."""
    base = dict(max_steps=8, logging_steps=2, save_steps=4, batch_size=8, n_eval=20)
    return profiles.get_profile("tiny").replace(**{**base, **changes})


@pytest.fixture(scope="module")
def splits():
    return data.course_splits(("recall",), n_eval=20)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


# ---------------------------------------------------------------------------------------------
# dtype


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_t4_decides_fp16_even_without_a_gpu_here(method):
    t4 = gpu_reading()
    on_t4 = models.decide_precision(t4, method, on_device=True)
    assert (on_t4.decided, on_t4.executed, on_t4.fp16, on_t4.bf16) == ("float16", "float16", True, False)
    assert on_t4.bnb_compute_dtype == "float16"
    kwargs = train.sft_config_kwargs(profiles.get_profile("t4"), "out", on_t4)
    assert kwargs["fp16"] is True and kwargs["bf16"] is False  # explicit: trl would default to bf16
    here = models.decide_precision(t4, method, on_device=False)  # a T4 reading on this CPU machine
    assert here.decided == "float16" and here.executed == "float32" and not (here.fp16 or here.bf16)
    assert "float32" in here.note


def test_ampere_gets_bf16_cpu_gets_fp32_full_keeps_fp32_weights():
    a100 = models.decide_precision(gpu_reading("A100", (8, 0)), "qlora", on_device=True)
    assert a100.bf16 and not a100.fp16 and a100.bnb_compute_dtype == "bfloat16"
    full_t4 = models.decide_precision(gpu_reading(), "full", on_device=True)
    assert full_t4.fp16 and full_t4.load_dtype == "float32"  # fp32 master weights: no "unscale FP16 gradients"
    cpu = models.decide_precision(hardware.detect(), "qlora")
    assert cpu.executed == "float32" and cpu.fp16 is False and cpu.bf16 is False
    with pytest.raises(ValueError, match="Unknown method 'qlora4'"):
        models.decide_precision(hardware.detect(), "qlora4")


# ---------------------------------------------------------------------------------------------
# data: labels on the answer only, checked per example; over-long examples reported


def test_labels_cover_exactly_the_answer_and_eos(tokenizer, splits):
    ds, report = sft_data.prepare_sft_data(tokenizer, splits["train"].select(range(30)), 64, verbose=False)
    assert report.n_kept == 30 and report.n_too_long == 0 and report.loss_tokens_min >= 2
    for row, example in zip(ds, splits["train"].select(range(30)), strict=True):
        answer_ids = [t for t in row["labels"] if t != -100]
        assert answer_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(answer_ids, skip_special_tokens=True) == example["answer"]
        # Everything before the answer is masked: the prompt carries no loss.
        first = next(i for i, t in enumerate(row["labels"]) if t != -100)
        assert tokenizer.decode(row["input_ids"][:first]).endswith("<|assistant|>")


def test_template_that_hides_the_answer_is_refused(tokenizer, splits):
    hiding = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    # Renders only user turns: the assistant's answer never appears, so nothing would carry loss.
    hiding.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}<|end|>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    with pytest.raises(ValueError, match="Example 0 of the train set: no token carries loss"):
        sft_data.prepare_sft_data(hiding, splits["train"].select(range(5)), 64, verbose=False)


def test_answer_without_eos_and_pad_equal_eos_are_refused(tokenizer, splits):
    no_eos = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    no_eos.chat_template = tiny.CHAT_TEMPLATE.replace("<|end|>{% endfor %}", "{% endfor %}")
    with pytest.raises(ValueError, match="never learn to stop"):
        sft_data.prepare_sft_data(no_eos, splits["train"].select(range(5)), 64, verbose=False)
    pad_is_eos = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    pad_is_eos.pad_token = pad_is_eos.eos_token
    with pytest.raises(ValueError, match="equal to eos"):
        sft_data.prepare_sft_data(pad_is_eos, splits["train"].select(range(5)), 64, verbose=False)
    # ensure_pad_token repairs it with a distinct special token.
    assert models.ensure_pad_token(pad_is_eos) == tiny.PAD_TOKEN


def test_bad_rows_are_refused_with_the_data_validator(tokenizer):
    with pytest.raises(ValueError, match="no assistant message"):
        sft_data.prepare_sft_data(tokenizer, [{"messages": [{"role": "user", "content": "hi"}]}], 64, verbose=False)


def test_over_length_examples_are_counted_and_dropped_never_cut(tokenizer):
    rows = [{"messages": [{"role": "user", "content": "what is the color of mipoka ?"},
                          {"role": "assistant", "content": "red " * n}]} for n in (1, 2, 30, 3, 40)]
    ds, report = sft_data.prepare_sft_data(tokenizer, Dataset.from_list(rows), 24, verbose=False)
    assert (report.n_examples, report.n_kept, report.n_too_long) == (5, 3, 2)
    assert report.too_long_examples == [2, 4] and report.longest > 24 and report.longest_kept <= 24
    assert all(row["labels"][-1] == tokenizer.eos_token_id for row in ds)  # kept ones are whole
    assert "dropped whole" in report.summary()
    with pytest.raises(ValueError, match="Every example of the train set is longer than max_length=4"):
        sft_data.prepare_sft_data(tokenizer, Dataset.from_list(rows), 4, verbose=False)


# ---------------------------------------------------------------------------------------------
# training


def adapter_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_qlora_training_lowers_the_loss_and_learns_to_answer(splits, tmp_path):
    profile = small_profile(max_steps=30, logging_steps=5, save_steps=100, batch_size=16)
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    assert getattr(model, "is_loaded_in_4bit", False)
    before, _ = evaluate.exact_match(model, tok, splits["eval"], max_new_tokens=4)
    loss_before = evaluate.eval_loss(model, tok, splits["eval"], 64)
    result = train.sft(model, tok, splits, profile, tmp_path, method="qlora", verbose=False)
    losses = [loss for _, loss in result.losses]
    assert losses[-1] < 0.5 * losses[0]
    assert evaluate.eval_loss(result.model, tok, splits["eval"], 64) < 0.5 * loss_before
    after, rows = evaluate.exact_match(result.model, tok, splits["eval"], max_new_tokens=4)
    assert before <= 0.1 and after > before
    # The tuned model answers with one of the world's values and stops (no endless generation).
    values = {v for vs in data.ATTRIBUTES.values() for v in vs}
    assert sum(r["prediction"] in values for r in rows) >= 0.9 * len(rows)
    m = result.metrics
    assert m["train_tokens_per_s"] > 0 and m["peak_memory_bytes"] > 0 and m["final_loss"] == losses[-1]
    assert m["precision"]["executed"] == "float32"


def test_same_seed_same_run_and_resume_equals_uninterrupted(splits, tmp_path):
    profile = small_profile()
    runs = {}
    for name, cbs in (("a", ()), ("b", ()), ("stopped", (callbacks.StopAtStep(4),))):
        model, tok = train.load_model_and_tokenizer(profile, "qlora")
        runs[name] = train.sft(model, tok, splits, profile, tmp_path / name, method="qlora", callbacks=cbs,
                               verbose=False)
    assert runs["a"].losses == runs["b"].losses
    a, b = adapter_state(runs["a"].model), adapter_state(runs["b"].model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs["stopped"].metrics["global_step"] == 4 and (tmp_path / "stopped" / "checkpoint-4").is_dir()
    # A fresh process after the "disconnect": new model, resume from the newest checkpoint.
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    resumed = train.sft(model, tok, splits, profile, tmp_path / "stopped", method="qlora", resume=True,
                        verbose=False)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-4")
    assert resumed.losses == runs["a"].losses
    r = adapter_state(resumed.model)
    assert all(torch.equal(a[k], r[k]) for k in a)


def test_resume_skips_a_partial_or_corrupt_newest_checkpoint_and_still_ends_identical(splits, tmp_path, capsys):
    """A disconnect mid-save leaves checkpoint-N incomplete: resume from the newest complete one, same bits."""
    import shutil

    from lora_lab.training import checkpoints

    profile = small_profile()
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    whole = train.sft(model, tok, splits, profile, tmp_path / "whole", method="qlora", verbose=False)
    run = tmp_path / "run"
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    train.sft(model, tok, splits, profile, run, method="qlora", callbacks=(callbacks.StopAtStep(4),), verbose=False)
    good = run / "checkpoint-4"
    assert checkpoints.checkpoint_problem(good) is None
    assert checkpoints.run_info(good) == {"method": "qlora", "rank": profile.lora_r}
    # checkpoint-5: the weights were written, the rest was not (cut before trainer_state.json).
    (run / "checkpoint-5").mkdir()
    shutil.copy(good / "adapter_model.safetensors", run / "checkpoint-5")
    # checkpoint-6: everything there, but the adapter file was cut short.
    shutil.copytree(good, run / "checkpoint-6")
    adapter = run / "checkpoint-6" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    # checkpoint-7: optimizer state cut short.
    shutil.copytree(good, run / "checkpoint-7")
    optimizer = run / "checkpoint-7" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    newest, skipped = checkpoints.newest_complete(run)
    assert newest == str(good)
    assert [name for name, _ in skipped] == ["checkpoint-7", "checkpoint-6", "checkpoint-5"]
    assert "optimizer.pt is truncated" in skipped[0][1] and "adapter_model.safetensors is truncated" in skipped[1][1]
    assert "no trainer_state.json" in skipped[2][1]
    # A truncated adapter file gets a clear message, not a raw SafetensorError.
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is truncated.*cut off while saving"):
        models.load_adapter(profile, run / "checkpoint-6", "qlora")
    capsys.readouterr()
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    resumed = train.sft(model, tok, splits, profile, run, method="qlora", resume=True, verbose=False)
    said = capsys.readouterr().out
    assert "resume: skipping checkpoint-6" in said and "adapter_model.safetensors is truncated" in said
    assert (run / "incomplete-checkpoint-7" / "optimizer.pt").exists()  # kept aside, out of the rotation
    assert resumed.metrics["resumed_from"] == str(good)
    assert resumed.losses == whole.losses
    w, r = adapter_state(whole.model), adapter_state(resumed.model)
    assert all(torch.equal(w[k], r[k]) for k in w)


def test_resume_with_another_rank_or_method_names_both(splits, tmp_path):
    profile = small_profile(max_steps=2, save_steps=2)
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    train.sft(model, tok, splits, profile, tmp_path, method="qlora", verbose=False)
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    with pytest.raises(ValueError, match=rf"trained with method qlora, rank {profile.lora_r}, this run asks for "
                                         rf"method qlora, rank {2 * profile.lora_r}.*--rank {profile.lora_r}"):
        train.sft(model, tok, splits, profile.replace(lora_r=2 * profile.lora_r), tmp_path, method="qlora",
                  resume=True, verbose=False)
    model, tok = train.load_model_and_tokenizer(profile, "lora")
    with pytest.raises(ValueError, match=rf"trained with method qlora, rank {profile.lora_r}, this run asks for "
                                         rf"method lora, rank {profile.lora_r}.*--method qlora"):
        train.sft(model, tok, splits, profile, tmp_path, method="lora", resume=True, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["checkpoint-2"]  # nothing new was saved


class OutOfMemoryInForward(transformers.TrainerCallback):
    """From optimizer step `step` on, the next forward pass takes memory and then runs out, as on a full GPU.

    A hook on the last decoder layer's MLP runs after the layers below have stored their
    activations; it allocates `ballast_bytes` more and raises `torch.OutOfMemoryError` from inside
    the forward pass.
    """

    def __init__(self, step: int, ballast_bytes: int = 64 * 2**20):
        self.step, self.ballast_bytes = step, ballast_bytes
        self.ballast: list[torch.Tensor] = []  # what the failing forward had taken
        self.fired = False

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step < self.step or self.fired:
            return

        def run_out(module, inputs, output):
            self.ballast.append(torch.ones(self.ballast_bytes // 4))  # memory really taken
            hook.remove()
            self.fired = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated in a forward pass)")

        last_mlp = [module for name, module in model.named_modules() if name.endswith(".mlp")][-1]
        hook = last_mlp.register_forward_hook(run_out)


def test_out_of_memory_is_caught_with_advice_and_checkpoints_kept(splits, tmp_path):
    profile = small_profile(save_steps=2)
    model, tok = train.load_model_and_tokenizer(profile, "lora")
    oom = OutOfMemoryInForward(step=3)
    with pytest.raises(preflight.TrainingOutOfMemory) as info:
        train.sft(model, tok, splits, profile, tmp_path, method="lora", callbacks=[oom], hw=gpu_reading(),
                  verbose=False)
    assert oom.fired and oom.ballast[0].numel() * 4 == oom.ballast_bytes  # raised mid-forward, memory taken
    err = info.value
    message = str(err)
    assert "Out of memory at step 4 of 8" in message and "Try" in message and "estimator predicted" in message
    assert "settings cell" in message and any(name in message for name in ("BATCH_SIZE = ", "MAX_LENGTH = "))
    assert err.suggestions and err.step == 3
    # Checkpoint 2 was written by the schedule; step 3 (completed before the failure) is saved too.
    assert (tmp_path / "checkpoint-2").is_dir()
    assert err.last_checkpoint.endswith("checkpoint-3") and "checkpoint-3" in message
    model, tok = train.load_model_and_tokenizer(profile, "lora")
    resumed = train.sft(model, tok, splits, profile, tmp_path, method="lora", resume=True, verbose=False)
    assert resumed.metrics["global_step"] == 8


def test_adapter_reload_gives_the_same_generations_and_merge_the_same_logits(splits, tmp_path):
    profile = small_profile(max_steps=20, save_steps=100, batch_size=16)
    model, tok = train.load_model_and_tokenizer(profile, "qlora")
    result = train.sft(model, tok, splits, profile, tmp_path / "ckpt", method="qlora", verbose=False)
    adapter_dir, size = models.save_adapter(result.model, tok, tmp_path / "adapter")
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size == size > 0
    prompts = splits["eval"]["messages"][:12]
    ours = evaluate.generate(result.model, tok, prompts, max_new_tokens=6)
    reloaded, _ = models.load_adapter(profile, adapter_dir, "qlora")
    assert evaluate.generate(reloaded, tok, prompts, max_new_tokens=6) == ours
    probe = evaluate.probe_batch(tok, splits["eval"]["messages"], n=4)
    merged, report = models.merge_adapter(profile, adapter_dir, probe, out_dir=tmp_path / "merged",
                                          trained_model=result.model)
    # Merged into the dequantized NF4 base the adapter trained on: the trained model itself.
    assert report.ok and report.max_abs_diff <= 1e-4 and report.dtype == "float32"
    assert report.base == "dequantized NF4"
    assert not any("lora_" in name for name, _ in merged.named_parameters())  # really merged
    assert report.merged_bytes > 0 and (tmp_path / "merged" / "model.safetensors").exists()
    assert evaluate.generate(merged, tok, prompts, max_new_tokens=6) == ours
    # Without the trained model at hand it reloads the adapter on the 4-bit base: the same merge.
    _, again = models.merge_adapter(profile, adapter_dir, probe)
    assert again.ok and again.base == "dequantized NF4"
    # The same adapter merged into the original 16-bit base (the LoRA path) is another model: its gap to the
    # trained model is the NF4 rounding of the base, far above the faithful merge's.
    on_16bit, _ = models.merge_adapter(profile, adapter_dir, probe, method="lora")
    from lora_lab.experiments import adapters

    texts = [m[0]["content"] for m in prompts[:4]]
    gap = (adapters.logits(on_16bit, tok, texts) - adapters.logits(result.model, tok, texts)).abs().max().item()
    assert gap > 100 * max(report.max_abs_diff, 1e-7)


# ---------------------------------------------------------------------------------------------
# preflight


def test_preflight_stops_a_run_that_cannot_fit_with_the_estimators_advice():
    from lora_lab.estimation import vram

    profile = profiles.get_profile("t4")
    t4 = gpu_reading()
    precision = models.decide_precision(t4, "full", on_device=True)
    config = vram.preset_config("Qwen/Qwen2.5-7B")
    with pytest.raises(preflight.WontFitError, match=r"will not fit.*Colab|will not fit.*Tesla T4.*Try:"):
        preflight.preflight_memory(config, profile, "full", t4, precision, verbose=False)
    qlora = models.decide_precision(t4, "qlora", on_device=True)
    est = preflight.preflight_memory(vram.preset_config("Qwen/Qwen2.5-1.5B"), profile, "qlora", t4, qlora, verbose=False)
    assert est.total < t4.gpu_total_bytes and est.settings["precision"] == "fp16"


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_merge_tolerance_accepts_a_real_merge_in_its_dtype(tiny_model_path, splits, tokenizer, dtype):
    """Merged vs unmerged logits of one adapter, both in `dtype`: within the dtype's tolerance (relative
    to the logits' scale for 16-bit dtypes), and for 16-bit dtypes beyond fp32's (the looser
    tolerances are needed, not arbitrary)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def adapted():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=getattr(torch, dtype))
        torch.manual_seed(0)  # the same A matrices in both copies
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:  # a trained-sized update, not peft's zero init
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        return model.eval()

    batch = evaluate.probe_batch(tokenizer, splits["eval"]["messages"], n=4)
    with torch.no_grad():
        unmerged = adapted()(**batch).logits.float()
        merged = adapted().merge_and_unload()(**batch).logits.float()
    diff = (merged - unmerged).abs().max().item()
    scale = 1.0 if dtype == "float32" else max(1.0, unmerged.abs().max().item())  # as merge_adapter scales it
    assert diff <= models.MERGE_TOLERANCE[dtype] * scale
    if dtype != "float32":
        assert diff > models.MERGE_TOLERANCE["float32"]



def test_out_of_memory_advice_names_the_settings_cells_variables():
    """Each tip is an assignment of notebook 03's settings cell that the estimator says fits; a smaller batch
    keeps the effective batch with more accumulation."""
    from lora_lab.estimation import vram

    t4 = profiles.PROFILES["t4"].replace(batch_size=8, grad_accum=2, max_length=512, gradient_checkpointing=False)
    kwargs = dict(method="qlora", rank=16, target_modules="all-linear", batch_size=8, seq_len=512,
                  gradient_checkpointing=False, optimizer="paged_adamw_8bit", precision="fp16", device="cuda")
    budget = int(14 * 2**30)
    assert not vram.estimate("Qwen/Qwen2.5-1.5B", **kwargs).fits(budget)
    tips = preflight.settings_that_fit("Qwen/Qwen2.5-1.5B", t4, budget, **kwargs)
    assert "GRADIENT_CHECKPOINTING = True" in tips
    batch_tip = next(t for t in tips if t.startswith("BATCH_SIZE = "))
    batch = int(batch_tip.split("BATCH_SIZE = ")[1].split(",")[0])
    accum = int(batch_tip.split("GRAD_ACCUM = ")[1].split(" ")[0])
    assert 0 < batch < 8 and batch * accum == 16  # the same effective batch: the same updates
    assert vram.estimate("Qwen/Qwen2.5-1.5B", **{**kwargs, "batch_size": batch}).fits(budget)
    length_tip = next(t for t in tips if t.startswith("MAX_LENGTH = "))
    length = int(length_tip.split("MAX_LENGTH = ")[1].split(" ")[0])
    assert 64 <= length < 512 and length % 64 == 0
    assert vram.estimate("Qwen/Qwen2.5-1.5B", **{**kwargs, "seq_len": length}).fits(budget)


def test_an_out_of_memory_message_on_a_cpu_quotes_the_preflights_ram_figure(capsys):
    from transformers import AutoConfig

    profile = small_profile()
    cpu = dataclasses.replace(models.simulated_gpu(), device_type="cpu", gpu_name=None, gpu_total_bytes=None,
                              gpu_free_bytes=None, compute_capability=None, native_bf16=False, compute_dtype="float32")
    precision = models.decide_precision(cpu, "lora", on_device=False)
    config = AutoConfig.from_pretrained(tiny.ensure_tiny_model())
    est = preflight.preflight_memory(config, profile, "lora", cpu, precision)
    assert f"{est.peak_allocated / GIB:.3f} GiB of RAM" in capsys.readouterr().out
    message, _ = preflight.oom_message(0, 8, None, config, profile, "lora", precision, cpu, profile.max_length)
    assert f"predicted {est.peak_allocated / GIB:.3f} GiB of RAM" in message and "no GPU here" in message


def test_notebooks_03_05_and_06_merge_with_the_one_helper():
    """One merge story: 03 and 06 call models.merge_adapter, 05 through adapters.merge_to_standalone; no lesson
    merges any other way (peft's merge_and_unload, or a 16-bit merge of a QLoRA adapter of its own)."""
    import inspect
    from pathlib import Path

    from lora_lab.experiments import adapters

    root = Path(__file__).resolve().parents[1]
    sources = {n: (root / "notebooks" / f"{n}.py").read_text() for n in
               ("03_qlora_sft_t4", "05_adapters_swap_merge", "06_export_and_scale")}
    assert "models.merge_adapter(" in sources["03_qlora_sft_t4"] and "models.merge_adapter(" in sources["06_export_and_scale"]
    assert "adapters.merge_to_standalone(" in sources["05_adapters_swap_merge"]
    assert "models.merge_adapter(" in inspect.getsource(adapters.merge_to_standalone)
    for name, source in sources.items():
        assert "merge_and_unload" not in source and "merge_into_dequantized_base(" not in source, name
    assert "merge_into_dequantized_base(" in inspect.getsource(models.merge_adapter)
