"""The tiny profile's base model: shipped with the package, deterministic to rebuild, loadable like a Hub
model, with a sane tokenizer."""

import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_lab.runtime import profiles, units
from lora_lab.standins import tiny
from lora_lab.training import data

SMALL = tiny.TinyRecipe(n_entities=30, pretrain_docs=300, pretrain_steps=25, pretrain_batch=16, vocab_size=512)


def test_same_seed_same_weights_different_seed_different(tmp_path):
    a = tiny.ensure_tiny_model(SMALL, tmp_path / "a", verbose=False)
    b = tiny.ensure_tiny_model(SMALL, tmp_path / "b", verbose=False)
    c = tiny.ensure_tiny_model(tiny.TinyRecipe(**{**SMALL.__dict__, "seed": 1}), tmp_path / "c", verbose=False)
    load = AutoModelForCausalLM.from_pretrained
    assert units.tensors_sha256(load(a).state_dict().items()) == units.tensors_sha256(load(b).state_dict().items())
    assert units.tensors_sha256(load(a).state_dict().items()) != units.tensors_sha256(load(c).state_dict().items())
    # Built once, then reused: the second call returns the same folder without rebuilding.
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure_tiny_model(SMALL, tmp_path / "a", verbose=False) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp


def test_pretraining_lowers_the_loss(tmp_path):
    report = tiny.pretraining_report(tiny.ensure_tiny_model(SMALL, tmp_path, verbose=False))
    losses = [loss for _, loss in report["losses"]]
    assert losses[-1] < 0.6 * losses[0]


def test_cached_model_loads_through_from_pretrained(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    assert model.config.tie_word_embeddings
    report = tiny.pretraining_report(tiny_model_path)
    assert report["fact_recall"] > 0.9, "the base model should know the world's facts before SFT"
    # Greedy generation stops at eos on its own.
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=40)
    assert out.shape[1] < ids["input_ids"].shape[1] + 40 or tok.eos_token_id in out[0].tolist()


def test_tokenizer_round_trip_and_special_tokens(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    for text in data.fact_sentences()[:50] + ["where does mipoka live ?", "name = bakemi ; color = red"]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == tiny.EOS_TOKEN and tok.pad_token == tiny.PAD_TOKEN
    assert tok.eos_token_id != tok.pad_token_id
    # Every word of the world is a single token, so answers are short and exact match is fair.
    for value in data.COLORS + data.CITIES + data.FOODS + data.PETS:
        assert len(tok(value)["input_ids"]) == 1, value


def test_chat_template_is_applied(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    messages = [{"role": "user", "content": "where does mipoka live ?"}, {"role": "assistant", "content": "lima"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|>where does mipoka live ?<|end|><|assistant|>lima<|end|>"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and prompt.endswith("<|assistant|>")
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 2


def test_fact_recall_is_chance_for_an_untrained_model(tmp_path):
    world = data.make_world(30)
    tok = tiny.build_tokenizer(SMALL, world)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny.build_config(SMALL, tok))
    assert tiny.fact_recall(model, tok, world) < 0.2


def test_the_build_reports_each_stage_and_the_time_left(tmp_path, capsys):
    tiny.ensure_tiny_model(SMALL, tmp_path, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    stages = [line.strip()[:5] for line in lines if line.strip().startswith("[")]
    assert stages == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    steps = [line for line in lines if "pretraining: step" in line]
    assert len(steps) == 13  # every 2 steps of 25 (SMALL), and the last
    assert "about" in steps[0] and "left" in steps[0] and steps[-1].endswith(", done")
    assert tiny.progress_line(30, 120, 10.0, 2.5) == (
        "  pretraining: step 30/120 (25%), loss 2.500, 10 s so far, about 30 s left")
    assert tiny.progress_line(60, 120, 75.0).endswith("1 min 15 s so far, about 1 min 15 s left")


def test_the_default_model_is_the_shipped_one_and_nothing_is_pretrained(monkeypatch):
    def no_pretraining(*args, **kwargs):
        raise AssertionError("the shipped model must not be pretrained on this machine")

    monkeypatch.setattr(tiny, "pretrain", no_pretraining)
    path = tiny.ensure_tiny_model()
    assert path == tiny.SHIPPED and tiny.resolve_model_path(profiles.TINY_MODEL_ID) == str(tiny.SHIPPED)
    record = json.loads((path / tiny.SHIPPED_RECORD).read_text())
    assert record["model_sha256"] == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert record["command"].startswith("python -m lora_lab.standins.tiny build")
    assert tiny.pretraining_report(path)["fact_recall"] >= 0.95


def test_damaged_shipped_weights_are_refused_with_one_line(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "tiny-llama"
    shutil.copytree(tiny.SHIPPED, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(tiny, "SHIPPED", copy)
    tiny._checked_shipped.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"missing or damaged.*reinstall lora-lab"):
            tiny.ensure_tiny_model()
    finally:
        tiny._checked_shipped.cache_clear()
