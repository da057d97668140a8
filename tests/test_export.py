"""GGUF export of the tiny model and a LoRA adapter, loaded by llama.cpp, against transformers/peft.

Needs the pinned tools (`make gguf-tools`: llama.cpp's converters from the llama-cpp-python sdist,
node-llama-cpp from npm); `make test` installs them first. No network here: the tools are cached.
"""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_lab.experiments import export


def tools_missing() -> str | None:
    """None when converters, gguf, sentencepiece and the runtime are all installed, else what is missing."""
    try:
        export.fetch_converters(download=False)
        export.install_runtime(install=False)
        export.check_node()
        import sentencepiece  # noqa: F401
    except (export.ExportToolsMissing, ImportError) as err:
        return str(err)
    return None


MISSING = tools_missing()
needs_tools = pytest.mark.skipif(MISSING is not None, reason=f"{MISSING}")
PROMPTS = ["<|user|>What color is the sky?<|end|><|assistant|>", "<|user|>Name a fruit.<|end|><|assistant|>",
           "The capital of"]
N_GENERATE = 8


@pytest.fixture(scope="module")
def checked(tiny_model_path, tmp_path_factory):
    """Export f32/f16/q8_0 and an f32 GGUF LoRA once; run them all in one llama.cpp process."""
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    torch.manual_seed(0)  # a non-zero adapter (B random too), so that it visibly changes the outputs
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter_dir = tmp_path_factory.mktemp("adapter")
    lora.save_pretrained(adapter_dir)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    with lora.disable_adapter():
        ref_base = export.torch_eval(lora, ids, N_GENERATE)
    ref_lora = export.torch_eval(lora, ids, N_GENERATE)
    # cached under the course's cache root by content: notebook 06 exports the same base files
    paths = export.export(tiny_model_path, ("f32", "f16", "q8_0"), adapter_dir=adapter_dir)
    jobs = [export.LlamaJob(paths[t], ids, N_GENERATE) for t in ("f32", "f16", "q8_0")]
    jobs.append(export.LlamaJob(paths["f32"], ids, N_GENERATE, lora=paths["lora"]))
    results = export.llama_cpp_eval_many(jobs, base.config.vocab_size)
    agreements = {t: export.compare(ref_base, r.runs) for t, r in zip(("f32", "f16", "q8_0"), results[:3], strict=True)}
    agreements["f32+lora"] = export.compare(ref_lora, results[3].runs)
    return {"paths": paths, "agree": agreements, "adapter_effect": export.compare(ref_base, ref_lora)}


@needs_tools
@pytest.mark.parametrize("kind", ["f32", "f16", "f32+lora"])
@pytest.mark.outcome
def test_llama_cpp_matches_pytorch_within_tolerance_and_greedy_tokens_are_identical(checked, kind):
    agree = checked["agree"][kind]
    print(f"{kind}: max |logit diff| {agree.max_abs_logit_diff:.4f} (reported), max |prob diff| "
          f"{agree.max_prob_diff:.5f} (tolerance {export.TOLERANCES[kind.split('+')[0]]})")
    assert agree.within(export.TOLERANCES[kind.split("+")[0]]), agree
    assert agree.greedy_same == 1.0 and agree.top5_same == 1.0, agree


@needs_tools
@pytest.mark.outcome
def test_q8_0_stays_within_its_looser_tolerance(checked):
    agree = checked["agree"]["q8_0"]
    print(f"q8_0: max |logit diff| {agree.max_abs_logit_diff:.4f} (reported), max |prob diff| "
          f"{agree.max_prob_diff:.5f} (tolerance {export.TOLERANCES['q8_0']}), top-5 sets equal at "
          f"{agree.top5_same:.0%} of steps")
    assert agree.within(export.TOLERANCES["q8_0"]), agree
    # quantization error is real: larger than f16's, which is why each type has its own tolerance
    assert agree.max_prob_diff > checked["agree"]["f16"].max_prob_diff


def test_agreement_needs_the_same_tokens_and_close_probabilities():
    same = export.Agreement(0.9, 0.95, 1.0, [None], max_prob_diff=0.001)
    assert same.within(0.01)  # a large logit offset, or a near-tie swapped in 5th place, leaves what users see
    assert not export.Agreement(0.01, 1.0, 0.5, [3], max_prob_diff=0.001).within(0.01)  # greedy tokens differ
    assert not export.Agreement(0.01, 1.0, 1.0, [None], max_prob_diff=0.05).within(0.01)


@needs_tools
def test_the_adapter_is_applied_by_llama_cpp(checked):
    # without the adapter the outputs differ far beyond the tolerance, so the LoRA check is not vacuous
    assert checked["adapter_effect"].max_abs_logit_diff > 100 * export.TOLERANCES["f32"]


@needs_tools
def test_gguf_files_declare_the_byte_level_tokenizer_as_gpt2(checked):
    meta = export.gguf_metadata(checked["paths"]["f16"])
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert checked["paths"]["q8_0"].stat().st_size < checked["paths"]["f16"].stat().st_size < \
        checked["paths"]["f32"].stat().st_size


def test_only_a_plain_byte_level_pre_tokenizer_is_declared(tmp_path, tiny_model_path):
    assert export.declared_pre_tokenizer(tiny_model_path) == "gpt-2"
    (tmp_path / "tokenizer.json").write_text('{"normalizer": null, "pre_tokenizer": {"type": "Metaspace"}}')
    assert export.declared_pre_tokenizer(tmp_path) is None


def test_a_qwen2_tokenizer_is_declared_as_qwen2(tmp_path):
    """The rehearsal's stand-in Qwen2 tokenizer, saved by transformers, has Qwen2's split rule and its own vocab."""
    from lora_lab.standins import rehearsal

    tok = AutoTokenizer.from_pretrained(rehearsal.ensure_standin_model())
    tok.save_pretrained(tmp_path)
    assert export.declared_pre_tokenizer(tmp_path) == "qwen2"
    config = json.loads((tmp_path / "tokenizer.json").read_text())
    config["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"  # another split rule
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    assert export.declared_pre_tokenizer(tmp_path) is None  # the converter's own error then stands


def test_unknown_outtype_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="q8_0"):
        export.export(".", ("q4_K_M",))


def test_modelfile_carries_the_chat_template_and_stop_tokens(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    parts = export.chat_parts(tok)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Name a fruit."}]
    for messages in (conversation, conversation[1:2]):
        assert parts.render(messages) == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = export.modelfile(tok, "base.gguf", "lora.gguf")
    assert text.startswith("FROM base.gguf\nADAPTER lora.gguf\n")
    assert '{{ else if eq .Role "user" }}<|user|>{{ .Content }}<|end|>' in text
    assert 'PARAMETER stop "<|end|>"' in text and tok.eos_token == "<|end|>"
    assert '"<|pad|>"' not in text


def test_a_qlora_adapter_merged_into_the_dequantized_nf4_base_is_the_trained_model(tiny_model_path):
    from lora_lab.experiments import adapters
    from lora_lab.runtime import profiles
    from lora_lab.training import models

    profile = profiles.get_profile("tiny")
    nf4, tok = models.load_model_and_tokenizer(profile, "qlora", model_path=tiny_model_path, for_training=False)
    torch.manual_seed(0)
    trained = get_peft_model(nf4, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    probe = PROMPTS[:2]
    before = adapters.logits(trained, tok, probe).float()
    merged = models.merge_into_dequantized_base(trained, tiny_model_path)
    assert (adapters.logits(merged, tok, probe).float() - before).abs().max() < 1e-3
    # the original (not NF4-rounded) base with the same adapter is a different model
    original = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    with trained.disable_adapter():
        assert (adapters.logits(original, tok, probe).float() - adapters.logits(trained, tok, probe).float()
                ).abs().max() > 1e-2


@needs_tools
def test_without_the_declaration_the_pinned_converter_rejects_the_course_tokenizer(tiny_model_path, tmp_path,
                                                                                   monkeypatch):
    # with it, the same tokenizer converts: test_gguf_files_declare_the_byte_level_tokenizer_as_gpt2
    job = {"script": "convert_hf_to_gguf.py", "args": [str(tiny_model_path), "--vocab-only"],
           "model_dir": tiny_model_path, "out": tmp_path / "vocab.gguf"}
    monkeypatch.setattr(export, "declared_pre_tokenizer", lambda _: None)
    with pytest.raises(RuntimeError, match="pre-tokenizer was not recognized"):
        export._run_converters([job])
    assert not job["out"].exists()


def _fake_node(monkeypatch, tmp_path, printed: str):
    """A `node` that prints `printed` for --version, found by `shutil.which` (no real Node.js involved)."""
    import stat

    fake = tmp_path / "node"
    fake.write_text(f"#!/bin/sh\necho {printed}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(export.shutil, "which", lambda name: str(fake) if name == "node" else None)


def test_a_missing_node_gives_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setattr(export.shutil, "which", lambda name: None)
    with pytest.raises(export.ExportToolsMissing) as missing:
        export.check_node()
    line = str(missing.value)
    assert "\n" not in line and line.startswith("Node.js is not installed")
    assert "deb.nodesource.com/setup_22.x" in line and "nodejs.org" in line


@pytest.mark.parametrize("printed", ["v18.19.0", "v16.20.2", "garbage"])
def test_an_old_or_unreadable_node_gives_one_line_naming_what_was_found(monkeypatch, tmp_path, printed):
    _fake_node(monkeypatch, tmp_path, printed)
    with pytest.raises(export.ExportToolsMissing) as old:
        export.check_node()
    line = str(old.value)
    assert "\n" not in line and printed in line and "20 or newer" in line and "nodejs.org" in line
    if printed == "v18.19.0":
        assert line.startswith("Node.js v18.19.0 ") and "too old" in line


@pytest.mark.parametrize("printed", ["v20.11.1", "v20.20.2", "v22.3.0", "v24.1.0"])
def test_node_20_or_newer_passes(monkeypatch, tmp_path, printed):
    _fake_node(monkeypatch, tmp_path, printed)
    assert export.check_node() == printed


# --------------------------------------------------------------------------- notebook 06 on the t4 profile


def test_notebook_06_uses_03s_adapter_when_present_and_trains_its_own_when_absent(monkeypatch, tmp_path, capsys):
    from types import SimpleNamespace

    from lora_lab.experiments import adapters
    from lora_lab.runtime import profiles

    trained = []

    def fake_train(profile, recipe, hw=None):  # what adapter_to_export asks for, without training
        trained.append((recipe.task, recipe.method, profile.capped_steps(recipe.max_steps)))
        return SimpleNamespace(adapter_dir=str(tmp_path / "own"), cached=False, train_seconds=3.0)

    monkeypatch.setattr(adapters, "train_specialist", fake_train)
    adapter_03 = tmp_path / "runs" / "03_qlora_sft" / "t4" / "adapter"
    for t4 in (profiles.PROFILES["t4"], profiles.rehearsal_of(profiles.PROFILES["t4"])):
        trained.clear()
        path, where = export.adapter_to_export(t4, adapter_03)
        steps = t4.capped_steps(30)
        assert trained == [("sql", "qlora", steps)] and path == tmp_path / "own"
        line = capsys.readouterr().out.strip()
        assert "\n" not in line and line.startswith("No adapter from notebook 03 in ")
        assert f"{steps} QLoRA steps of batch 4x4" in line and "run notebook 03 in this runtime first" in line
        assert where == f"adapter: this notebook's own {steps}-step 'sql' adapter, trained here in 3 s"
    # the planned run that tooling.course.t4_plan lists for it: 30 steps of the t4 batch, QLoRA
    run = export.own_adapter_run(profiles.PROFILES["t4"])
    assert (run.notebook, run.steps, run.estimate_kwargs["method"], run.estimate_kwargs["batch_size"]) == \
        ("06", 30, "qlora", 4)
    adapter_03.mkdir(parents=True)
    (adapter_03 / "adapter_config.json").write_text("{}")
    trained.clear()
    assert export.adapter_to_export(profiles.PROFILES["t4"], adapter_03)[0] == adapter_03 and trained == []


def test_the_merge_dtype_is_the_profiles_decision_kept_by_the_rehearsal():
    from lora_lab.runtime import profiles

    t4, cpu = profiles.PROFILES["t4"], profiles.PROFILES["cpu"]
    assert export.merge_dtype(t4) == torch.float16
    assert export.merge_dtype(profiles.rehearsal_of(t4)) == torch.float16  # decided as on a T4, run on this CPU
    assert export.merge_dtype(cpu) == torch.float32 and export.merge_dtype(profiles.quick_profile(cpu)) == torch.float32


def test_the_merge_preflight_stops_with_one_line_when_disk_or_gpu_memory_is_short(monkeypatch, tmp_path,
                                                                                  tiny_model_path):
    from collections import namedtuple

    from lora_lab.estimation.preflight import WontFitError

    need = export.check_merge_fits(tiny_model_path, torch.float16, tmp_path / "merged")
    assert need == export.check_merge_fits(tiny_model_path, torch.float32, tmp_path / "merged") // 2
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(export.shutil, "disk_usage", lambda _: usage(10 * need, 10 * need, need))  # no margin left
    with pytest.raises(WontFitError) as disk:
        export.check_merge_fits(tiny_model_path, torch.float16, tmp_path / "merged")
    assert "\n" not in str(disk.value) and "on disk" in str(disk.value) and "delete old runs" in str(disk.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (need, 16 * 2**30))
    with pytest.raises(WontFitError) as gpu:
        export.check_merge_fits(tiny_model_path, torch.float16, tmp_path / "merged")
    assert "\n" not in str(gpu.value) and "GPU memory" in str(gpu.value) and "Restart session" in str(gpu.value)


@needs_tools
def test_notebook_06_t4_rehearsal_runs_without_03s_adapter(monkeypatch, tmp_path):
    """The whole notebook on the t4 rehearsal in an empty folder: no runs/ from notebook 03 beside it."""
    from pathlib import Path

    import jupytext
    import nbformat

    from lora_lab.runtime import profiles
    from lora_lab.tooling import course

    source = Path(__file__).parents[1] / "notebooks" / "06_export_and_scale.py"
    nbformat.write(jupytext.read(source), tmp_path / "06.ipynb")  # from the .py, the source of truth
    monkeypatch.setenv(profiles.PROFILE_ENV, "t4")
    monkeypatch.setenv(profiles.REHEARSAL_ENV, "1")
    assert not (tmp_path / "runs").exists()
    assert course.run([tmp_path / "06.ipynb"], tmp_path / "out") == 0
    executed = nbformat.read(tmp_path / "out" / "06.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "No adapter from notebook 03 in " in text and "adapter: this notebook's own 2-step 'sql' adapter" in text
    assert "merge dtype for the t4 profile: float16" in text
    config = json.loads((tmp_path / "build" / "export" / "t4" / "merged" / "config.json").read_text())
    assert config["dtype"] == "float16"


def export_folder(tmp_path, *, config=None, weights=True, tokenizer=True):
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a folder"), ("empty", "no readable config.json"),
    ("no architecture", "names no architecture"), ("no weights", "no *.safetensors weights"),
    ("no tokenizer", "no tokenizer files"), ("bad adapter", "is not a peft LoRA folder"),
    ("out-dir is a file", "is a file, not a folder"),
])
def test_the_export_command_refuses_bad_folders_in_one_line(tmp_path, capsys, case, message):
    config = {"architectures": ["LlamaForCausalLM"]}
    args = []
    if case == "missing":
        model = tmp_path / "nowhere"
    elif case == "empty":
        model = tmp_path / "empty"
        model.mkdir()
    else:
        model = export_folder(tmp_path, config={} if case == "no architecture" else config,
                              weights=case != "no weights", tokenizer=case != "no tokenizer")
    if case == "bad adapter":
        args = ["--adapter", str(tmp_path)]
    if case == "out-dir is a file":
        (tmp_path / "file").write_text("x")
        args = ["--out-dir", str(tmp_path / "file")]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert export.main(["gguf", str(model), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
