"""The t4 rehearsal: the t4 profile's settings and decisions on this CPU, with local stand-ins."""


import pytest
from transformers import AutoConfig, AutoTokenizer

from lora_lab.runtime import profiles
from lora_lab.standins import rehearsal, standin_data, tiny
from lora_lab.training import data, models


@pytest.fixture
def rehearsal_env(monkeypatch):
    monkeypatch.setenv(profiles.PROFILE_ENV, "t4")
    monkeypatch.setenv(profiles.REHEARSAL_ENV, "1")
    return profiles.get_profile()


def test_the_rehearsal_is_the_t4_profile_switched_by_the_environment(rehearsal_env, monkeypatch):
    t4, rehearsed = profiles.PROFILES["t4"], rehearsal_env
    assert rehearsed.name == "t4" and rehearsed.rehearsal and not t4.rehearsal
    for field in ("method", "batch_size", "grad_accum", "max_length", "learning_rate", "lora_r", "lora_alpha",
                  "lora_targets", "optimizer", "gradient_checkpointing", "dataset_id", "task", "group_by_length"):
        assert getattr(rehearsed, field) == getattr(t4, field), field
    assert rehearsed.capped_steps(t4.max_steps) == rehearsed.step_cap < t4.max_steps
    assert "REHEARSAL" in rehearsed.summary() and "REHEARSAL" in rehearsal.report(rehearsed)
    hw = models.hardware_for(rehearsed)
    assert hw.device_type == "cuda" and hw.compute_capability == (7, 5)  # decisions as on a T4
    monkeypatch.setenv(profiles.REHEARSAL_ENV, "0")
    assert profiles.get_profile() == t4


def test_stand_ins_have_the_real_families_formats(rehearsal_env):
    path = tiny.resolve_model_path(rehearsal_env.model_id)
    config, tok = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert config.model_type == "qwen2" and config.rope_parameters["rope_theta"] == 1e6 and config.tie_word_embeddings
    assert config.num_attention_heads // config.num_key_value_heads == 6  # Qwen2.5-1.5B's 12 / 2
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert "<|im_start|>assistant\n" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                                   add_generation_prompt=True)
    sql = data.load_profile_dataset(rehearsal_env)
    assert sql["eval"][0]["task"] == "sql" and "CREATE TABLE" in sql["eval"][0]["context"]
    gsm = data.load_profile_dataset(rehearsal_env.replace(dataset_id=standin_data.GSM8K_ID, dataset_config="main"))
    assert gsm["eval"][0]["task"] == "gsm8k" and gsm["eval"][0]["answer"].isdigit()
    with pytest.raises(ValueError, match="no local stand-in"):
        standin_data.load_standin_dataset("someone/else")
