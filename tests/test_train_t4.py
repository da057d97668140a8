"""The t4 profile's whole pipeline on local stand-ins: a reduced Qwen2 with random weights, a GSM8K-shaped
dataset, and a T4 hardware reading (fp16 decided; this CPU machine executes in fp32).

Nothing touches the network: the model, tokenizer and dataset are written to tmp folders and read
back through the same `from_pretrained` / `load_dataset` calls the real run uses.
"""

import json

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from lora_lab.runtime import hardware, profiles
from lora_lab.runtime.units import GIB
from lora_lab.training import data, train

#: Qwen2.5's chat template in miniature: a default system turn, turns closed by the eos token and a newline.
QWEN_LIKE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|system|>\nYou are a helpful assistant.<|end|>\n{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def t4_reading() -> hardware.Hardware:
    cap = (7, 5)
    return hardware.Hardware(
        device_type="cuda", gpu_name="Tesla T4", gpu_total_bytes=int(14.74 * GIB), gpu_free_bytes=int(14.5 * GIB),
        compute_capability=cap, native_bf16=False, compute_dtype=hardware.compute_dtype_for("cuda", cap),
        in_colab=False, disk_free_bytes=100 * GIB, ram_total_bytes=12 * GIB, ram_available_bytes=10 * GIB,
    )


@pytest.fixture(scope="module")
def qwen_standin(tmp_path_factory, tiny_model_path):
    """A Qwen2-architecture model at reduced size (random weights) with a Qwen-like chat template."""
    folder = tmp_path_factory.mktemp("qwen2-standin")
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    tok.chat_template = QWEN_LIKE_TEMPLATE
    tok.model_max_length = 512
    real = Qwen2Config()  # the architecture's defaults; we keep its structure, shrink its sizes
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        rope_theta=getattr(real, "rope_theta", 10000.0), bos_token_id=None, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def gsm8k_like(n_train=48, n_test=12) -> DatasetDict:
    """Rows with GSM8K's columns: a question, and a worked answer ending in '#### N'."""
    def row(i):
        a, b = 3 + i % 7, 2 + i % 5
        return {"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
    return DatasetDict(train=Dataset.from_list([row(i) for i in range(n_train)]),
                       test=Dataset.from_list([row(100 + i) for i in range(n_test)]))


def t4_profile(standin) -> profiles.RunProfile:
    """The t4 preset with its model swapped for the stand-in and its schedule shortened for a CPU test."""
    return profiles.PROFILES["t4"].replace(model_id=str(standin), max_steps=4, logging_steps=2, save_steps=2,
                                              n_eval=6, max_new_tokens=24, batch_size=2, grad_accum=2)


def test_t4_pipeline_on_stand_ins(qwen_standin, tmp_path):
    profile = t4_profile(qwen_standin)
    raw = gsm8k_like()
    splits = data.load_profile_dataset(profile, loader=lambda *args: raw)  # the real normalising code
    assert splits["eval"][0]["answer"].isdigit()
    metrics = train.run_pipeline(profile, output_dir=tmp_path, splits=splits, hw=t4_reading(), verbose=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    required = ("eval_loss_before", "eval_loss_after", "exact_match_before", "exact_match_after", "train_runtime_s",
                "train_tokens_per_s", "peak_memory_bytes", "predicted_peak_bytes", "adapter_dir", "adapter_bytes")
    for key in required:
        assert on_disk[key] is not None, key
    assert metrics["dtype_decided"] == "float16" and metrics["dtype_executed"] == "float32"
    assert metrics["method"] == "qlora" and metrics["eval_loss_after"] < metrics["eval_loss_before"]
    # fp16's GradScaler runs in the rehearsal too (on fp32 numbers: nothing overflows, nothing is skipped).
    assert metrics["skipped_steps"] == 0 and metrics["loss_scale"] == 2.0**16
    assert metrics["reload_same_generations"] is True
    assert metrics["merge"]["ok"] and (tmp_path / "merged" / "config.json").exists()
    assert (tmp_path / "loss.png").exists() and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert on_disk["data"]["train"]["n_kept"] == 48 and on_disk["data"]["train"]["loss_tokens_min"] > 5
    # The stand-in's architecture is read by the estimator like the real Qwen2.5.
    assert 0 < metrics["predicted_peak_bytes"] and metrics["preflight_total_bytes"] < 14.74 * GIB
    assert on_disk["adapter_bytes"] > 0 and "measured_tensor_bytes" in on_disk["memory_check"]


def test_command_line_turns_its_flags_into_the_pipeline_call(qwen_standin, tmp_path, monkeypatch):
    """`python -m lora_lab.training.train --profile t4 --model ... --dataset ...` with local folders, via main():
    the flags reach the profile and the pipeline, and the local dataset loads (the pipeline itself runs in
    test_t4_pipeline_on_stand_ins)."""
    folder = tmp_path / "gsm8k-local"
    folder.mkdir()
    raw = gsm8k_like(24, 6)
    raw["train"].to_json(folder / "train.jsonl")
    raw["test"].to_json(folder / "test.jsonl")
    monkeypatch.setattr(train.profiles, "get_profile",
                        lambda name=None: t4_profile(qwen_standin) if name == "t4" else profiles.PROFILES[name])
    calls = []

    def pipeline(profile, **kwargs):
        calls.append((profile, kwargs))
        return {"eval_loss_before": 1.0, "adapter_bytes": 1}

    monkeypatch.setattr(train, "run_pipeline", pipeline)
    out = tmp_path / "run"
    code = train.main(["--profile", "t4", "--allow-cpu", "--model", str(qwen_standin), "--dataset", str(folder),
                       "--method", "lora", "--rank", "4", "--max-steps", "2", "--output-dir", str(out), "--no-merge",
                       "--batch-size", "3"])
    assert code == 0
    (profile, kwargs), = calls
    assert profile.model_id == str(qwen_standin) and profile.dataset_id == str(folder) and profile.batch_size == 3
    assert kwargs["method"] == "lora" and kwargs["rank"] == 4 and kwargs["max_steps"] == 2
    assert kwargs["merge"] is False and kwargs["output_dir"] == str(out)
    splits = data.load_profile_dataset(profile)
    assert len(splits["train"]) == 24 and splits["eval"][0]["answer"].isdigit()


def test_command_line_reports_a_predictable_failure_without_traceback(tmp_path, capsys):
    code = train.main(["--profile", "tiny", "--dataset", str(tmp_path / "missing"), "--output-dir", str(tmp_path)])
    assert code == 2
    assert "Error" in capsys.readouterr().err


def test_fp16_overflow_in_a_rehearsal_stops_the_run_and_saves_no_adapter(qwen_standin, tmp_path):
    """Gradients made infinite from step 3 on, as an fp16 overflow makes them: the GradScaler skips every
    step, the weights stay finite, and the guard stops the run before the adapter is saved."""
    from lora_lab.training.callbacks import MAX_SKIPPED_IN_A_ROW, InjectGradientOverflow

    profile = t4_profile(qwen_standin).replace(max_steps=20, save_steps=2)
    splits = data.load_profile_dataset(profile, loader=lambda *args: gsm8k_like())
    with pytest.raises(train.TrainingDiverged) as info:
        train.run_pipeline(profile, output_dir=tmp_path, splits=splits, hw=t4_reading(), verbose=False,
                           callbacks=[InjectGradientOverflow(2)])
    assert info.value.step == 2 + MAX_SKIPPED_IN_A_ROW
    assert "overflowed 8 optimizer steps in a row" in str(info.value) and "max_grad_norm" in str(info.value)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "checkpoints" / f"checkpoint-{info.value.step}").exists()
