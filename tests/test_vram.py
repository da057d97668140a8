"""Tests of the VRAM estimator: exact counts, NF4 bytes, bad input, speed, reverse questions,
published measurements, the CLI and the calculator widget. None touches the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from lora_lab.estimation import published, vram
from lora_lab.lessons import nf4, step_memory

GB = 1e9

# shared/reference/model-configs.md: total params, LoRA r8 on q,v, LoRA r16 all-linear.
TABLE = {
    "Qwen/Qwen2.5-0.5B": (494_032_768, 540_672, 8_798_208),
    "Qwen/Qwen2.5-1.5B": (1_543_714_304, 1_089_536, 18_464_768),
    "Qwen/Qwen2.5-3B": (3_085_938_688, 1_843_200, 29_933_568),
    "Qwen/Qwen2.5-7B": (7_615_616_512, 2_523_136, 40_370_176),
    "meta-llama/Llama-3.2-1B": (1_235_814_400, 851_968, 11_272_192),
    "meta-llama/Llama-3.2-3B": (3_212_749_824, 2_293_760, 24_313_856),
    "meta-llama/Llama-3.1-8B": (8_030_261_248, 3_407_872, 41_943_040),
    "mistralai/Mistral-7B-v0.3": (7_248_023_552, 3_407_872, 41_943_040),
    "google/gemma-2-2b": (2_614_341_888, 1_597_440, 20_766_720),
    "microsoft/Phi-3-mini-4k-instruct": (3_821_079_552, None, 25_165_824),
    "TinyLlama/TinyLlama-1.1B": (1_100_048_384, 1_126_400, 12_615_680),
    "HuggingFaceTB/SmolLM2-135M": (134_515_008, 460_800, 4_884_480),
    "HuggingFaceTB/SmolLM2-360M": (361_821_120, 819_200, 8_683_520),
    "HuggingFaceTB/SmolLM2-1.7B": (1_711_376_384, 1_572_864, 18_087_936),
}
QV = ("q_proj", "v_proj")


@pytest.mark.parametrize("name", sorted(TABLE))
def test_counts_equal_the_reference_table(name):
    total, qv8, all16 = TABLE[name]
    assert vram.load_arch(name).total_params == total
    est = vram.estimate(name, method="lora", rank=16)
    assert est.trainable_params == all16
    assert est.total_params == total + all16
    if qv8 is None:
        with pytest.raises(ValueError, match="qkv_proj"):
            vram.estimate(name, method="lora", rank=8, target_modules=QV)
    else:
        assert vram.estimate(name, method="lora", rank=8, target_modules=QV).trainable_params == qv8


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B", "google/gemma-2-2b", "microsoft/Phi-3-mini-4k-instruct",
                                  "meta-llama/Llama-3.1-8B"])
def test_counts_equal_meta_device_model_and_peft(name):
    """The shipped config builds, at full size on the meta device, to exactly our counts; peft agrees."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in vram.preset_config(name).items() if not k.startswith("_")})
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(cfg), LoraConfig(r=16, target_modules="all-linear"))
    trainable, total = model.get_nb_trainable_parameters()
    est = vram.estimate(name, method="lora", rank=16)
    assert (trainable, total) == (est.trainable_params, est.total_params)


def test_config_object_path_and_dict_agree_with_preset(tmp_path):
    from transformers import AutoConfig

    name = "Qwen/Qwen2.5-0.5B"
    raw = vram.preset_config(name)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    cfg = AutoConfig.for_model(**{k: v for k, v in raw.items() if not k.startswith("_")})
    kwargs = dict(method="qlora", rank=8, batch_size=2, seq_len=256)
    ref = vram.estimate(name, **kwargs).to_dict()
    for model in (cfg, str(path), tmp_path, raw):
        got = vram.estimate(model, **kwargs).to_dict()
        got["settings"], ref["settings"] = None, None
        assert got == ref


def test_generic_count_is_close_to_the_request():
    for n in (3e9, 7e9, 13e9, 70e9):
        arch = vram.load_arch(n)
        assert abs(arch.total_params / n - 1) < 0.002
        assert arch.hidden_size % 128 == 0


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_bytes_equal_bitsandbytes_storage(double_quant):
    import bitsandbytes.functional as F

    for shape in ((256, 128), (300, 77), (1024, 1024)):
        w = torch.randn(shape)
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
        tensors = [packed, state.absmax, state.code]
        if double_quant:
            tensors += [state.offset, state.state2.absmax, state.state2.code]
        stored = sum(t.numel() * t.element_size() for t in tensors)
        assert nf4.storage_bits(w.numel(), double_quant=double_quant).bytes == stored


def test_nf4_is_about_half_a_byte_per_weight():
    n = 4096 * 4096
    assert nf4.storage_bits(n, double_quant=False).bytes / n == pytest.approx(0.5 + 4 / 64, rel=1e-3)  # 0.5 bit/param absmax
    assert nf4.storage_bits(n, double_quant=True).bytes / n == pytest.approx(0.5 + 0.127 / 8, rel=2e-2)  # 0.127 bit/param


def test_breakdown_adds_up_and_prints():
    est = vram.estimate("meta-llama/Llama-3.2-1B", method="lora", batch_size=2, seq_len=256)
    assert sum(est.breakdown().values()) == est.total
    assert est.peak_allocated == est.total - est.overhead
    d = est.to_dict()
    assert d["total"] == est.total and d["settings"]["method"] == "lora"
    assert "GiB" in str(est) and "total" in str(est)


def test_memory_moves_the_right_way():
    kw = dict(batch_size=2, seq_len=512)
    m = "Qwen/Qwen2.5-1.5B"
    full, lora, qlora = (vram.estimate(m, method=x, **kw) for x in ("full", "lora", "qlora"))
    assert full.total > lora.total > qlora.total
    assert qlora.weights < lora.weights
    assert vram.estimate(m, method="lora", gradient_checkpointing=False, **kw).activations > lora.activations
    assert vram.estimate(m, method="lora", attention="eager", gradient_checkpointing=False, **kw).activations > \
        vram.estimate(m, method="lora", gradient_checkpointing=False, **kw).activations
    assert vram.estimate(m, method="lora", batch_size=2, seq_len=1024).total > lora.total
    assert vram.estimate(m, method="full", optimizer="adamw_8bit", **kw).optimizer_states < 0.55 * full.optimizer_states  # 2 bytes vs 2 bf16 states
    assert vram.estimate(m, method="full", optimizer="sgd", **kw).optimizer_states == 0
    mixed = vram.estimate(m, method="full", precision="mixed", gradient_checkpointing=False, **kw)
    # HF "model training anatomy": ~18 bytes/param for mixed-precision AdamW (weights, 16-bit copy, grads,
    # states); the 16-bit copies are autocast's, saved for backward, so they are activation terms here.
    n = mixed.total_params
    copies = mixed.terms["layers.weight_copies"] + mixed.terms["head_weight_copy"]
    assert (mixed.weights + mixed.gradients + mixed.optimizer_states) / n == 16
    assert (mixed.weights + mixed.gradients + mixed.optimizer_states + copies) / n == pytest.approx(18, rel=0.03)
    fsdp = vram.estimate(m, method="full", num_gpus=4, sharding="fsdp", **kw)
    assert fsdp.weights == pytest.approx(full.weights / 4, abs=4)


def test_logits_term_is_batch_seq_vocab_in_fp32():
    """The loss keeps fp32 log-probs: batch x seq x vocab x 4 bytes, the big term on 150k vocabularies."""
    a = vram.estimate("Qwen/Qwen2.5-0.5B", method="lora", batch_size=1, seq_len=512)
    b = vram.estimate("Qwen/Qwen2.5-0.5B", method="lora", batch_size=2, seq_len=512)
    per_seq_layers = 24 * 2 * 512 * 896  # checkpointed layer inputs in 16-bit
    assert b.activations - a.activations >= 4 * 512 * 151936 + per_seq_layers


BAD = [
    (dict(batch_size=0), "batch_size"),
    (dict(seq_len=-5), "seq_len"),
    (dict(rank=0), "rank"),
    (dict(rank=300), "rank 300 is larger than k_proj"),
    (dict(method="lora2"), "Did you mean 'lora'"),
    (dict(optimizer="adam8bit"), "optimizer"),
    (dict(precision="int8"), "precision"),
    (dict(target_modules=("q_proj", "foo")), "no module 'foo'"),
    (dict(sharding="fsdp"), "num_gpus"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_input_says_what_to_change(change, message):
    kwargs = {"method": "qlora", **change}
    with pytest.raises(ValueError, match=message):
        vram.estimate("Qwen/Qwen2.5-0.5B", **kwargs)  # k_proj is 896 x 128: rank 300 is too big


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean 'Qwen/Qwen2.5-7B'"):
        vram.estimate("Qwen/Qwen2.5-7b", method="lora")
    with pytest.raises(ValueError, match="positive"):
        vram.estimate(-3, method="lora")


def test_seq_len_beyond_context_warns():
    with pytest.warns(UserWarning, match="context of 2048"):
        vram.estimate("TinyLlama/TinyLlama-1.1B", method="qlora", seq_len=4096)


def test_estimate_is_arithmetic_on_the_config(monkeypatch):
    """The calculator re-estimates on every widget change: that must never build a model or a tensor."""
    import torch

    vram.estimate("Qwen/Qwen2.5-7B", method="qlora", batch_size=4)  # reads (and caches) the config

    def refuse(*args, **kwargs):
        raise AssertionError("vram.estimate built a torch module or tensor")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    for factory in ("empty", "zeros", "ones", "randn", "tensor"):
        monkeypatch.setattr(torch, factory, refuse)
    for i in range(5):
        assert vram.estimate("Qwen/Qwen2.5-7B", method="qlora", batch_size=4, seq_len=256 + i).total > 0


def test_reverse_questions_are_tight():
    kw = dict(method="qlora", batch_size=4, gradient_checkpointing=False)
    gpu = "Colab T4"
    n = vram.max_seq_len_that_fits("Qwen/Qwen2.5-1.5B", gpu, **kw)
    assert n > 0
    assert vram.estimate("Qwen/Qwen2.5-1.5B", seq_len=n, **kw).fits(gpu)
    assert not vram.estimate("Qwen/Qwen2.5-1.5B", seq_len=n + 1, **kw).fits(gpu)
    b = vram.max_batch_size_that_fits("Qwen/Qwen2.5-1.5B", gpu, method="lora", seq_len=1024)
    assert vram.estimate("Qwen/Qwen2.5-1.5B", method="lora", seq_len=1024, batch_size=b).fits(gpu)
    assert not vram.estimate("Qwen/Qwen2.5-1.5B", method="lora", seq_len=1024, batch_size=b + 1).fits(gpu)
    name = vram.smallest_gpu("Qwen/Qwen2.5-7B", method="lora", batch_size=4, seq_len=1024)
    total = vram.estimate("Qwen/Qwen2.5-7B", method="lora", batch_size=4, seq_len=1024).total
    assert total <= vram.GPUS[name].usable_bytes
    assert all(g.usable_bytes < total for g in vram.GPUS.values() if g.usable_bytes < vram.GPUS[name].usable_bytes)
    assert vram.smallest_gpu(400e9, method="full") is None


def test_verdict_in_words_with_checked_suggestions():
    ok = vram.verdict("Qwen/Qwen2.5-1.5B", "Colab T4", method="qlora", batch_size=4, seq_len=512)
    assert ok.startswith("fits on a Colab T4 with ") and "GiB to spare" in ok
    kw = dict(method="lora", batch_size=4, seq_len=768, gradient_checkpointing=False)
    bad = vram.verdict("meta-llama/Llama-3.2-3B", "Colab T4", **kw)
    total = vram.estimate("meta-llama/Llama-3.2-3B", **kw).total / vram.GIB
    assert bad.startswith(f"needs {total:.1f} GiB") and "try" in bad
    tips = vram.suggestions("meta-llama/Llama-3.2-3B", "Colab T4", **kw)
    assert "gradient checkpointing" in tips and any(t.startswith("seq ") for t in tips)
    assert vram.estimate("meta-llama/Llama-3.2-3B", **{**kw, "gradient_checkpointing": True}).fits("Colab T4")
    seq = int(next(t for t in tips if t.startswith("seq ")).split()[1])
    assert vram.estimate("meta-llama/Llama-3.2-3B", **{**kw, "seq_len": seq}).fits("Colab T4")
    with pytest.raises(ValueError, match="Unknown GPU"):
        vram.verdict("Qwen/Qwen2.5-1.5B", "T5", method="qlora")


@pytest.mark.parametrize("row", published.compare(), ids=lambda r: f"{r['source']}-{r['model'].split('/')[-1]}-"
                         f"{r['method']}-b{r['batch_size']}-s{r['seq_len']}")
def test_published_points_within_15_percent_and_the_estimate_errs_high(row):
    """Each shipped published measurement: within 15% of the estimate, and never more than 5% above it."""
    assert abs(row["error"]) <= 0.15, row
    assert row["published"] <= 1.05 * row["predicted"], row


def test_published_points_ship_with_their_sources():
    pts = published.points()
    assert len(pts) >= 10 and {p["source"] for p in pts} == set(published.sources())
    assert all(s["url"].startswith("https://") for s in published.sources().values())
    long_qlora = [p for p in pts if p["method"] == "qlora" and p.get("seq_len", 0) >= 4096]
    assert long_qlora, "the long-sequence QLoRA points are the ones the estimator once ran low on"


def test_allocator_slack_is_what_the_published_line_implies():
    assert published.implied_allocator_slack() == pytest.approx(step_memory.ALLOCATOR_SLACK, abs=0.01)


def test_freed_16_bit_logits_block_is_reserved_at_the_loss():
    """At long sequences the logits' gradients set the peak: the freed 16-bit logits block stays reserved."""
    est = vram.estimate("meta-llama/Llama-3.1-8B", method="qlora", seq_len=16384)
    assert est.overhead_terms["logits_block"] == 2 * 16384 * 128256
    fp32 = vram.estimate("meta-llama/Llama-3.1-8B", method="qlora", seq_len=16384, precision="fp32")
    assert fp32.overhead_terms["logits_block"] == 0  # fp32 logits: the gradient fits their block
    assert est.peak_allocated == est.total - est.overhead


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lora_lab.estimation.vram", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_cli_prints_breakdown_json_and_exits_2_on_bad_input():
    base = ["--model", "Qwen/Qwen2.5-7B", "--method", "qlora", "--rank", "16", "--batch-size", "4", "--seq-len", "512"]
    out = _cli(*base)
    assert out.returncode == 0, out.stderr
    assert "weights" in out.stdout and "total" in out.stdout
    js = _cli(*base, "--json")
    assert json.loads(js.stdout)["total"] == vram.estimate("Qwen/Qwen2.5-7B", method="qlora", batch_size=4).total
    bad = _cli("--model", "Qwen/Qwen2.5-7B", "--method", "qlora", "--batch-size", "0")
    assert bad.returncode == 2 and "batch_size must be a positive" in bad.stderr


def test_calculator_widget_redraws_and_shows_errors_in_place():
    from lora_lab.figures import widgets

    box = widgets.vram_calculator()
    verdict, chart, controls = box.verdict, box.chart, box.controls
    assert "vram-verdict" in verdict._dom_classes and "vram-chart" in chart._dom_classes
    first_text, first_chart = verdict.value, list(chart.outputs)
    assert "fits on a Colab T4" in first_text and first_chart
    controls["method"].value = "full"
    controls["seq_len"].value = 2048
    assert verdict.value != first_text and "needs" in verdict.value
    assert chart.outputs and chart.outputs != first_chart
    controls["method"].value = "lora"
    controls["rank"].value = 4000  # larger than k_proj's 256 outputs
    assert "vram-error" in verdict._dom_classes and "rank 4000" in verdict.value
    shown = json.dumps(chart.outputs)
    assert "rank 4000" in shown and "Traceback" not in shown
    controls["rank"].value = 16
    assert "vram-error" not in verdict._dom_classes


def test_calculator_inputs_parse_custom_models():
    from lora_lab.figures import widgets

    state = {**widgets.DEFAULT_STATE, "model": widgets.CUSTOM, "custom": "7B"}
    model, kwargs = widgets.calculator_inputs(state)
    assert model == 7_000_000_000 and kwargs["method"] == "qlora"
    text, est, err = widgets.render({**state, "custom": "seven"})
    assert text is None and est is None and "neither a parameter count" in err


def test_calculator_hides_only_the_custom_box():
    """A Layout shared between controls once hid every control along with the custom box."""
    from lora_lab.figures.widgets import vram_calculator

    box = vram_calculator()
    hidden = [name for name, c in box.controls.items() if c.layout.display == "none"]
    assert hidden == ["custom"]
    assert len({id(c.layout) for c in box.controls.values()}) == len(box.controls)


# ---- validation: every config field the estimator uses, sizes, booleans, objects -----------------------

LLAMA = "meta-llama/Llama-3.2-1B"


@pytest.mark.parametrize("field,value,message", [
    ("num_hidden_layers", -32, "num_hidden_layers must be a positive whole number"),
    ("num_hidden_layers", 0, "num_hidden_layers must be a positive"),
    ("num_attention_heads", 0, "num_attention_heads must be a positive"),
    ("num_key_value_heads", 0, "num_key_value_heads must be a positive"),
    ("num_key_value_heads", 5, "multiple of num_key_value_heads"),
    ("hidden_size", -2048, "hidden_size must be a positive"),
    ("hidden_size", 2050, "divisible by num_attention_heads"),
    ("intermediate_size", 8192.5, "intermediate_size must be a positive whole"),
    ("vocab_size", float("inf"), "vocab_size must be a positive whole"),
    ("vocab_size", "128256", "vocab_size must be a positive whole"),
    ("head_dim", 0, "head_dim must be a positive"),
    ("tie_word_embeddings", "yes", "tie_word_embeddings must be true or false"),
])
def test_bad_config_fields_are_refused_with_the_field_named(field, value, message):
    cfg = {**vram.preset_config(LLAMA), field: value}
    if field == "hidden_size" and value == 2050:
        cfg.pop("head_dim", None)
    with pytest.raises(ValueError, match=message):
        vram.estimate(cfg, method="lora")


def test_a_json_list_or_a_model_object_is_refused_with_what_to_pass(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps([vram.preset_config(LLAMA)]))
    with pytest.raises(ValueError, match="JSON object"):
        vram.estimate(str(path), method="lora")
    with pytest.raises(ValueError, match="JSON object"):
        vram.estimate([vram.preset_config(LLAMA)], method="lora")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read it as a config.json"):
        vram.estimate(str(path), method="lora")

    class FakeModel(torch.nn.Module):  # what a learner holds after from_pretrained
        config = object()

    with pytest.raises(ValueError, match=r"pass its configuration instead: estimate\(model.config"):
        vram.estimate(FakeModel(), method="lora")


@pytest.mark.parametrize("change,message", [
    (dict(gradient_checkpointing="no"), "gradient_checkpointing must be True or False"),
    (dict(gradient_checkpointing=1), "gradient_checkpointing must be True or False"),
    (dict(double_quant="false"), "double_quant must be True or False"),
    (dict(lora_dropout=float("nan")), "lora_dropout must be in"),
    (dict(lora_dropout=1.0), "lora_dropout must be in"),
    (dict(lora_alpha=float("inf")), "lora_alpha must be"),
    (dict(seq_len=512.0), "seq_len must be a positive whole number"),
])
def test_bad_flags_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        vram.estimate(LLAMA, **{"method": "qlora", **change})


@pytest.mark.parametrize("count", [float("inf"), float("nan"), -7e9, 0])
def test_bad_parameter_counts_are_refused(count):
    with pytest.raises(ValueError, match="finite|positive"):
        vram.estimate(count, method="lora")


def test_full_fine_tuning_warns_that_lora_flags_are_ignored():
    with pytest.warns(UserWarning, match=r"rank=64.*target_modules='q_proj,v_proj'.*double_quant=False.*ignored"):
        est = vram.estimate(LLAMA, method="full", rank=64, target_modules=QV, double_quant=False)
    assert est.trainable_params == est.total_params
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults warn of nothing
        vram.estimate(LLAMA, method="full")
        vram.estimate(LLAMA, method="qlora", rank=64, double_quant=False)


def test_rank_limit_names_the_binding_layer():
    # Qwen2.5-0.5B: q_proj 896 x 896 passes rank 200, k_proj and v_proj (896 x 128) bind
    with pytest.raises(ValueError, match=r"k_proj's smaller dimension \(896 x 128\).*rank <= 128"):
        vram.estimate("Qwen/Qwen2.5-0.5B", method="lora", rank=200)
    with pytest.raises(ValueError, match=r"v_proj.*rank <= 128"):
        vram.estimate("Qwen/Qwen2.5-0.5B", method="lora", rank=200, target_modules=("o_proj", "v_proj"))


@pytest.mark.parametrize("gpu,suggested", [("T4", "Colab T4"), ("t4", "Colab T4"), ("a100 80gb", "A100 80GB")])
def test_gpu_names_suggest_the_known_card(gpu, suggested):
    with pytest.raises(ValueError, match=f"Did you mean '{suggested}'"):
        vram.verdict(LLAMA, gpu, method="qlora")
    with pytest.raises(ValueError, match="finite positive"):
        vram.verdict(LLAMA, float("inf"), method="qlora")


# ---- any model id: the Hub (or its cache) first, presets only as suggestions ------------------------



@pytest.fixture
def hub(monkeypatch):
    """Stub `AutoConfig.from_pretrained`: a dict id -> config or exception; records the calls."""
    from transformers import AutoConfig, PretrainedConfig

    table, calls = {}, []

    def fake(model_id, **kwargs):
        calls.append((model_id, kwargs))
        result = table.get(model_id, OSError(f"{model_id} is not a local folder and is not a valid model "
                                             "identifier listed on 'https://huggingface.co/models'"))
        if isinstance(result, BaseException):
            raise result
        return PretrainedConfig.from_dict(result) if not hasattr(result, "to_dict") else result

    monkeypatch.setattr(AutoConfig, "from_pretrained", fake)
    monkeypatch.setattr(vram.hub, "reachable", lambda: True)  # the stub plays the Hub
    vram._hub_arch.cache_clear()
    yield table, calls
    vram._hub_arch.cache_clear()


def _config_object(raw):
    from transformers import AutoConfig

    return AutoConfig.for_model(**{k: v for k, v in raw.items() if not k.startswith("_")})


def test_hub_ids_resolve_before_any_preset_suggestion(hub):
    table, calls = hub
    raw = {**vram.preset_config("Qwen/Qwen2.5-7B"), "hidden_size": 5120, "intermediate_size": 13824,
           "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8}  # Qwen2.5-14B's shape
    table["Qwen/Qwen2.5-14B"] = _config_object(raw)
    vram.estimate("Qwen/Qwen2.5-14B", method="qlora")
    assert vram.load_arch("Qwen/Qwen2.5-14B").total_params == vram.load_arch(raw).total_params == 14_770_033_664
    assert calls and calls[0][1].get("trust_remote_code") is False
    # a name close to a preset is asked too (the Hub knows models the package does not ship)
    table["Qwen/Qwen2.5-7b"] = _config_object(vram.preset_config("Qwen/Qwen2.5-7B"))
    assert vram.load_arch("Qwen/Qwen2.5-7b").total_params == TABLE["Qwen/Qwen2.5-7B"][0]


def test_an_unreachable_hub_fails_at_once_with_the_reason(hub, monkeypatch):
    import time

    table, calls = hub
    monkeypatch.setattr(vram.hub, "reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"not in the local Hub cache and the Hub cannot be reached"):
        vram.estimate("someone/unknown-model", method="lora")
    assert time.perf_counter() - start < 2
    assert [kwargs.get("local_files_only") for _, kwargs in calls] == [True]  # no download tried


def test_hub_reachability_is_false_at_once_when_offline_is_set(monkeypatch):
    from lora_lab.runtime import hub as hub_module

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_module.reachable.cache_clear()
    try:
        assert hub_module.reachable() is False
    finally:
        hub_module.reachable.cache_clear()


def test_parameter_counts_beyond_any_model_are_refused_at_once():
    import time

    start = time.perf_counter()
    for count in (1e14, 1e30):
        with pytest.raises(ValueError, match="no model is that large"):
            vram.load_arch(count)
    assert time.perf_counter() - start < 1


def test_hub_failures_say_why_and_suggest_presets(hub):
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    table, _ = hub
    offline = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    offline.__cause__ = LocalEntryNotFoundError("not cached")
    table["Qwen/Qwen2.5-7b"] = offline
    with pytest.raises(ValueError, match=r"offline.*Did you mean 'Qwen/Qwen2.5-7B'"):
        vram.estimate("Qwen/Qwen2.5-7b", method="lora")
    with pytest.raises(ValueError, match=r"not found on the Hub.*Did you mean 'Qwen/Qwen2.5-1.5B'"):
        vram.estimate("Qwen/Qwen2.5-1.5Bx", method="lora")
    gated = OSError("You are trying to access a gated repo.")
    cause = GatedRepoError.__new__(GatedRepoError)  # as huggingface_hub raises it, without an HTTP response
    Exception.__init__(cause, "401 Client Error: access to this model is restricted")
    gated.__cause__ = cause
    table["meta-llama/Llama-3.1-70B"] = gated
    with pytest.raises(ValueError, match=r"gated.*config.json"):
        vram.estimate("meta-llama/Llama-3.1-70B", method="qlora")


def test_cli_takes_a_count_like_the_widget():
    out = _cli("--model", "7B", "--method", "qlora", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"] == vram.estimate(7_000_000_000, method="qlora").total
    pure = _cli("--model", "7B", "--method", "lora", "--precision", "fp16", "--no-autocast", "--json")
    assert json.loads(pure.stdout)["total"] == vram.estimate(7e9, method="lora", precision="fp16", autocast=False).total
    bad = _cli("--model", "1e400", "--method", "qlora")
    assert bad.returncode == 2 and "finite" in bad.stderr
    t4 = _cli("--model", "7B", "--method", "qlora", "--gpu", "T4")
    assert t4.returncode == 2 and "Colab T4" in t4.stderr


@pytest.mark.parametrize("text,message", [
    ("inf", "finite"), ("1e400", "finite"), ("nan", "finite"), ("-7B", "positive"), ("0", "positive"),
    ("seven", "neither a parameter count"), ("", "Type a model"), ("1e30", "no model is that large"),
])
def test_calculator_shows_an_error_for_every_bad_custom_entry(text, message):
    from lora_lab.figures import widgets

    box = widgets.vram_calculator()
    box.controls["model"].value = widgets.CUSTOM
    box.controls["custom"].value = "7B"
    assert "vram-error" not in box.verdict._dom_classes and "needs" in box.verdict.value or "fits" in box.verdict.value
    box.controls["custom"].value = text
    assert "vram-error" in box.verdict._dom_classes
    assert message in box.verdict.value and "fits on" not in box.verdict.value and "needs" not in box.verdict.value
    assert "Traceback" not in json.dumps(box.chart.outputs)


def test_the_calculator_reads_a_custom_model_when_it_is_entered_not_per_keystroke():
    from lora_lab.figures import widgets

    assert widgets.vram_calculator().controls["custom"].continuous_update is False
