"""Tests of lora_lab.experiments.rank: parameter formula vs peft, file size, the knee, scaling rules, merging, the sweep."""

import dataclasses

import pytest
import torch

from lora_lab.estimation import vram
from lora_lab.experiments import rank
from lora_lab.lessons import sft

# (preset, target sets): Llama (GQA), Qwen2 (q/k/v biases), Phi-3 (fused qkv and gate_up), Gemma-2.
ARCHITECTURES = [
    ("meta-llama/Llama-2-7b-hf", ("q,v", "all-linear", "mlp")),
    ("Qwen/Qwen2.5-0.5B", ("q,v", "attention", "all-linear")),
    ("microsoft/Phi-3-mini-4k-instruct", ("q,v", "all-linear", "mlp")),
    ("google/gemma-2-2b", ("attention", "all-linear")),
]


@pytest.mark.parametrize("preset,sets", ARCHITECTURES)
def test_parameter_formula_matches_peft(preset, sets):
    from lora_lab.estimation import memory

    # Real widths, two blocks (the formula is per block times depth; depth is checked below).
    config = memory.shrink_config(vram.preset_config(preset), layers=2)
    arch = vram.load_arch(config)
    for name in sets:
        targets = rank.target_modules(arch, name)
        for r in (1, 8, 64):
            assert rank.lora_params(arch, r, targets) == rank.peft_trainable_params(config, r, targets), (name, r)


def test_parameter_formula_matches_peft_at_full_depth():
    preset = "Qwen/Qwen2.5-0.5B"
    assert rank.lora_params(preset, 16, "all-linear") == rank.peft_trainable_params(
        vram.preset_config(preset), 16, "all-linear")


def test_llama2_qv_r8_matches_course_facts():
    # course-facts.md: Llama-2-7B r=8 on q,v has 4.2M parameters; one 4096x4096 layer has 65,536.
    assert rank.lora_params("meta-llama/Llama-2-7b-hf", 8, ("q_proj", "v_proj")) == 32 * 2 * 65_536
    rows = rank.parameter_table("meta-llama/Llama-2-7b-hf", ranks=(8,), target_sets=("q,v",), dtype="float16")
    assert rows[0]["params"] == 4_194_304 and rows[0]["adapter_bytes"] == 2 * 4_194_304


def test_target_sets_resolve_per_architecture():
    phi = vram.load_arch("microsoft/Phi-3-mini-4k-instruct")
    assert rank.target_modules(phi, "q,v") == ("qkv_proj",)
    assert rank.target_modules(phi, "mlp") == ("gate_up_proj", "down_proj")
    llama = vram.load_arch("meta-llama/Llama-3.2-1B")
    assert rank.target_modules(llama, "attention") == ("q_proj", "k_proj", "v_proj", "o_proj")
    with pytest.raises(ValueError):
        rank.target_modules(llama, "everything")


def test_equal_param_ranks_are_equal(tiny_model_path):
    arch = vram.load_arch(str(tiny_model_path))
    r_att, r_mlp = rank.equal_param_ranks(arch, near=8)
    att = vram.lora_params(arch, r_att, rank.target_modules(arch, "attention"))
    mlp = vram.lora_params(arch, r_mlp, rank.target_modules(arch, "mlp"))
    assert att == mlp and r_att != r_mlp
    assert abs(att / vram.lora_params(arch, 8, "all-linear") - 1) < 0.5


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_adapter_file_size_prediction(tiny_model_path, dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    for r, targets in ((4, "all-linear"), (16, ("q_proj", "v_proj"))):
        rep = rank.adapter_file_report(model, r, targets, dtype=dtype)
        assert rep["tensor_bytes"] == rep["predicted_tensor_bytes"]
        assert rep["file_bytes"] == rep["predicted_tensor_bytes"] + rep["header_bytes"]
        assert rep["header_bytes"] < 0.1 * rep["file_bytes"] + 4096
    # the model comes back without adapters
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_knee_sits_at_the_true_rank():
    ranks = (1, 2, 4, 8, 16, 32, 64, 128)
    for true_rank in (4, 8):
        rows = rank.recovery_sweep(d=64 if true_rank == 4 else 128, true_rank=true_rank, n_trains=(8192,),
                                   ranks=[r for r in ranks if r <= (64 if true_rank == 4 else 128)], steps=200)
        assert rank.knee([r["rank"] for r in rows], [r["error"] for r in rows]) == true_rank
        errors = {r["rank"]: r["error"] for r in rows}
        assert errors[true_rank] < 0.5 * errors[true_rank // 2]


def test_little_data_overfits_at_high_rank():
    rows = rank.recovery_sweep(n_trains=(96,), ranks=(8, 128), steps=200)
    err = {r["rank"]: r["error"] for r in rows}
    assert err[128] > 1.5 * err[8]


def test_knee_function():
    assert rank.knee([1, 2, 4, 8], [1.0, 0.5, 0.11, 0.1]) == 4
    assert rank.knee([1, 2, 4, 8], [1.0, 0.5, 0.3, 0.1]) == 8


def test_scale_rules_match_peft_scaling():
    from peft import LoraConfig, get_peft_model

    for rule, expected in zip(rank.SCALING_RULES, (8 / 16, 1.0, 8 / 4), strict=True):
        alpha, rs = rank.scale_for(rule, 16, 8.0)
        m = get_peft_model(rank._OneLayer(torch.eye(4)), LoraConfig(r=16, lora_alpha=alpha, use_rslora=rs,
                                                                     target_modules=["layer"]))
        assert m.base_model.model.layer.scaling["default"] == pytest.approx(expected)


def test_compressed_least_squares_equals_full_loss():
    p = rank.Problem(d=16, true_rank=2, n_train=200, noise=0.3, seed=1)
    t = rank.make_problem(p)
    # rebuild the raw data the same way make_problem did
    g = torch.Generator().manual_seed(p.seed)
    torch.randn(p.d, p.d, generator=g), torch.randn(p.d, 2, generator=g), torch.randn(p.d, 2, generator=g)
    x = torch.randn(p.n_train, p.d, generator=g)
    y = x @ (t["w0"] + t["dw"]).T + p.noise * torch.randn(p.n_train, p.d, generator=g)
    w = torch.randn(p.d, p.d, generator=g)
    full = (y - x @ w.T).square().sum()
    compressed = (t["y"] - t["x"] @ w.T).square().sum() + t["const"]
    assert compressed.item() == pytest.approx(full.item(), rel=1e-4)


def test_merge_equals_unmerged_in_fp32(tiny_model_path):
    rep = rank.merge_report(str(tiny_model_path), rank=16, repeats=3)
    assert rep["adapted_layers"] == 4 * 7
    assert rep["max_abs_diff"] < 1e-5
    assert rep["max_abs_logit"] > 1.0  # the comparison is not between two near-zero tensors


def test_sweep_runs_learn_and_are_seeded(tiny_model_path, tmp_path, monkeypatch):
    from lora_lab.runtime import profiles

    monkeypatch.setattr(rank, "cache_dir", lambda: tmp_path)
    profile = profiles.get_profile("tiny")
    plan = dataclasses.replace(rank.PLANS["tiny"], steps=12, ranks=(2,), workers=1)
    first = rank.sft_sweep(profile, plan, model_path=str(tiny_model_path), only=["r=2 lr=0.003"], verbose=False)
    row = first["runs"][0]
    assert row["eval_loss"] < first["baseline"]["eval_loss"]
    assert row["trainable"] == vram.lora_params(vram.load_arch(str(tiny_model_path)), 2, "all-linear")
    # The measured step holds what LoRA predicts: fp32 gradients for the adapter only, and AdamW's two
    # fp32 moments per adapter value plus one fp32 step counter per adapter tensor (4 layers x 7 x A,B).
    assert row["memory_gradients"] == 4 * row["trainable"]
    assert row["memory_optimizer"] == 2 * 4 * row["trainable"] + 4 * (4 * 7 * 2)
    assert row["memory_weights"] == 4 * row["total_params"]  # the fp32 base and adapter, each tensor once
    assert row["memory_activations"] > 0
    # a second run, without the cache, gives identical numbers
    second = rank.sft_sweep(profile, plan, model_path=str(tiny_model_path), only=["r=2 lr=0.003"], use_cache=False,
                            verbose=False)
    assert second["runs"][0]["losses"] == row["losses"]
    assert second["runs"][0]["eval_loss"] == row["eval_loss"]


def test_greedy_match_agrees_with_generation(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_lab.training import data, evaluate, sft_data

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    splits = data.course_splits(("recall",), n_eval=40)
    tr, _ = sft_data.prepare_sft_data(tok, splits["train"].select(range(240)), 64, verbose=False)
    ev, _ = sft_data.prepare_sft_data(tok, splits["eval"], 64, verbose=False)
    model = rank._wrap(model, rank.SweepConfig("r=8", "lora", 8), 32.0, 0)
    with rank.torch_threads(1):
        sft.train_loop(model, tr, steps=40, lr=1e-2, batch_size=16, pad_id=tok.pad_token_id)
    _, ours = sft.loss_and_greedy_match(model, ev, tok.pad_token_id)
    theirs, _ = evaluate.exact_match(model, tok, splits["eval"], max_new_tokens=8)
    assert ours == pytest.approx(theirs)


def test_alpha_fixed_keeps_the_best_lr_where_alpha_equal_r_moves_it():
    res = rank.scaling_sweep(ranks=(2, 128), lrs=(2e-2, 5e-2, 1e-1, 2e-1), rules=rank.SCALING_RULES[:2])
    fixed, equal = rank.SCALING_RULES[:2]
    assert res["spread"][fixed] == 1.0
    assert res["best_lr"][equal]["128"] < res["best_lr"][equal]["2"]


def test_trainer_sweep_trains_through_sft_and_reports_the_loop_fields(tiny_model_path):
    """The GPU profiles' engine (`lora_lab.training.train.sft`, QLoRA), run here on the tiny model for a few steps."""
    from lora_lab.runtime import profiles

    profile = profiles.get_profile("tiny").replace(n_eval=20, logging_steps=2, save_steps=100)
    plan = dataclasses.replace(rank.PLANS["tiny"], steps=8, engine="trainer", ranks=(2,), lr_ladder=())
    result = rank.sft_sweep(profile, plan, model_path=str(tiny_model_path), only=["r=2"], verbose=False)
    assert result["baseline"] is None and result["plan"]["engine"] == "trainer"
    (row,) = result["runs"]
    # The fields the notebook's tables and plots read from a loop run are all there.
    assert {"name", "method", "rank", "targets", "lr", "group", "trainable", "memory", "seconds_per_step",
            "eval_loss", "exact_match", "final_train_loss", "losses"} <= set(row)
    assert (row["name"], row["rank"]) == ("r=2", 2)
    assert row["trainable"] == vram.lora_params(vram.load_arch(str(tiny_model_path)), 2, "all-linear")
    assert row["final_train_loss"] == row["losses"][-1][1] < row["losses"][0][1]  # it trained
    assert row["memory"] > 0 and 0.0 <= row["exact_match"] <= 1.0 and row["eval_loss"] > 0


def test_cached_results_are_keyed_by_the_package_code(monkeypatch):
    """The cache root outlives a checkout: a change to the code must not reuse results it did not make."""
    from lora_lab.runtime import units

    payload = {"plan": "x", "ranks": [1, 2]}
    before = rank._key(payload)
    assert rank._key(payload) == before  # the same code and settings hit the same file
    monkeypatch.setattr(units, "code_version", lambda: "another-code")
    assert rank._key(payload) != before


def _row(rank_, lr, loss):
    return dict(group="rank", method="lora", targets="all-linear", rank=rank_, lr=lr, eval_loss=loss)


def test_lr_search_steps_outwards_until_the_best_lr_is_inside():
    plan = rank.PLANS["tiny"]
    assert rank._start_lrs(plan) == [1e-3, 3e-3, 1e-2]
    rows = [_row(1, 1e-3, 1.0), _row(1, 3e-3, 0.9), _row(1, 1e-2, 1.1),  # inside: nothing to add
            _row(64, 1e-3, 0.5), _row(64, 3e-3, 0.6), _row(64, 1e-2, 0.9),  # lowest LR best: go down
            _row(4, 1e-3, 0.9), _row(4, 3e-3, 0.8), _row(4, 1e-2, 0.7)]  # highest LR best: go up
    extra = {(c.rank, c.lr) for c in rank.lr_extensions(rows, plan)}
    assert extra == {(64, 3e-4), (4, 3e-2)}
    rows += [_row(64, 3e-4, 0.55), _row(4, 3e-2, 3.0)]
    assert rank.lr_extensions(rows, plan) == []
    assert rank.best_rank_lrs(rows) == {1: 3e-3, 4: 1e-2, 64: 1e-3}
    rows.append(_row(16, 1e-4, 2.0))  # the ladder's lowest value: no step below it
    assert rank.lr_extensions(rows, plan) == []


def test_the_sweep_rule_sets_peft_scaling():
    from peft import LoraConfig, get_peft_model

    plan = rank.PLANS["tiny"]
    assert plan.rule == rank.SWEEP_RULE == rank.SCALING_RULES[2]
    for r, scale in ((1, 8.0), (16, 2.0), (64, 1.0)):  # rsLoRA: alpha / sqrt(r) with alpha 8
        alpha, rs = rank.lora_alpha_for(plan, r)
        m = get_peft_model(rank._OneLayer(torch.eye(64)), LoraConfig(r=r, lora_alpha=alpha, use_rslora=rs,
                                                                      target_modules=["layer"]))
        assert m.base_model.model.layer.scaling["default"] == pytest.approx(scale)


def test_gradient_accumulation_takes_the_same_steps(tiny_model_path):
    from transformers import AutoTokenizer

    from lora_lab.training import data, sft_data

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    splits = data.course_splits(("recall",), n_eval=10)
    tr, _ = sft_data.prepare_sft_data(tok, splits["train"].select(range(64)), 64, verbose=False)
    base = rank.load_base(str(tiny_model_path))
    cfg = rank.SweepConfig("r=4", "lora", 4)
    results = []
    for accum in (1, 4):
        model = rank._wrap_for(base, cfg, rank.PLANS["tiny"], 0)
        with rank.torch_threads(1):
            out = sft.train_loop(model, tr, steps=3, lr=3e-3, batch_size=16, pad_id=tok.pad_token_id, grad_accum=accum)
        results.append((out["losses"], [p.detach().clone() for p in model.parameters() if p.requires_grad]))
    (loss_a, params_a), (loss_b, params_b) = results
    assert [s for s, _ in loss_a] == [1, 2, 3]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(loss_a, loss_b, strict=True))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(params_a, params_b, strict=True))
    assert any(p.abs().sum() > 0 for p in params_a)  # it trained (B left zero)
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        sft.train_loop(model, tr, steps=1, lr=1e-3, batch_size=16, pad_id=tok.pad_token_id, grad_accum=3)


def test_dropout_costs_activation_memory(tiny_model_path):
    from transformers import AutoTokenizer

    from lora_lab.estimation import memory
    from lora_lab.training import data, sft_data

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    splits = data.course_splits(("recall",), n_eval=10)
    tr, _ = sft_data.prepare_sft_data(tok, splits["train"].select(range(32)), 64, verbose=False)
    batch = rank._first_batch(tr, 16, tok, 0)
    base = rank.load_base(str(tiny_model_path))
    acts = {}
    for p in (0.0, 0.1):
        model = rank._wrap_for(base, rank.SweepConfig("d", "lora", 8, dropout=p), rank.PLANS["tiny"], 0)
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        acts[p] = memory.measure_step(model, batch, opt).activations
    assert acts[0.1] > acts[0.0]  # peft keeps a dropped-out copy of each adapted layer's input


def test_whole_cpu_sweep_flow_searches_then_follows_up(tiny_model_path, tmp_path, monkeypatch):
    from lora_lab.runtime import profiles

    monkeypatch.setattr(rank, "cache_dir", lambda: tmp_path)
    profile = profiles.get_profile("tiny").replace(n_eval=20)
    plan = dataclasses.replace(rank.PLANS["tiny"], steps=3, ranks=(2,), lr_rank=2, lora_lrs=(2e-5,), workers=1,
                               max_extensions=1)
    out = rank.sft_sweep(profile, plan, model_path=str(tiny_model_path), verbose=False)
    groups = [r["group"] for r in out["runs"]]
    assert groups.count("rank") in (3, 4) and groups.count("lr") == 1 and groups.count("full") == 1
    assert groups.count("dropout") == 2 and groups.count("warmup") == 1 and groups.count("targets") == 2
    # every compared run (the rank at its best LR, full, 2 targets, 2 dropouts, warmup, QLoRA, the lowest LR)
    # twice more with other seeds
    compared = rank.compared_runs(out["runs"])
    assert len(compared) == 9 and groups.count("repeat") == 2 * len(compared)
    qlora_rows, lora_ref = rank.follow_up_pair(out["runs"], "qlora")
    assert [r["method"] for r in qlora_rows] == ["qlora"] and lora_ref["method"] == "lora"
    assert qlora_rows[0]["trainable"] == lora_ref["trainable"]  # the same adapter, on the NF4 base
    assert qlora_rows[0]["memory_weights"] < lora_ref["memory_weights"]
    assert qlora_rows[0]["eval_loss"] != lora_ref["eval_loss"]
    assert compared[-1]["lr"] == 2e-5 and compared[-1]["group"] == "lr"
    assert all("facts_loss" in r and 0 <= r["facts_accuracy"] <= 1 for r in out["runs"])  # the forgetting probe
    for row in compared:
        values = rank.seed_values(out["runs"], row)
        assert len(values) == plan.seeds == 3 and len(set(values)) == 3  # another seed, another result
    best = out["best_lr"][2]
    follow = [r for r in out["runs"] if r["group"] in ("dropout", "warmup", "targets", "qlora")]
    assert all(r["lr"] == best for r in follow)
    assert {r["dropout"] for r in out["runs"] if r["group"] == "dropout"} == {0.05, 0.1}
    assert [r["rank"] for r in rank.best_runs(out["runs"])] == [2]
    # every run is cached: a second call trains nothing and returns the same rows
    again = rank.sft_sweep(profile, plan, model_path=str(tiny_model_path), verbose=False)
    assert [r["eval_loss"] for r in again["runs"]] == [r["eval_loss"] for r in out["runs"]]


def _run_row(name, rank_, lr, loss, seed=0, group="rank", method="lora", dropout=0.0):
    return dict(name=name, method=method, rank=rank_, targets="all-linear", lr=lr, group=group, dropout=dropout,
                warmup=True, seed=seed, eval_loss=loss)


def _with_repeats(runs, row, *losses):
    runs.append(row)
    runs += [dict(row, name=f"{row['name']} seed {s}", group="repeat", seed=s, eval_loss=v)
             for s, v in enumerate(losses, start=1)]


def test_the_sweeps_verdicts_rank_by_the_mean_and_call_a_rank_good_inside_the_spread():
    runs = []
    _with_repeats(runs, _run_row("r=1", 1, 3e-3, 1.30), 1.25, 1.28)  # far behind: measurable
    _with_repeats(runs, _run_row("r=4", 4, 3e-3, 0.60), 0.45, 0.55)  # within the spread of the best
    _with_repeats(runs, _run_row("r=16", 16, 3e-3, 0.58), 0.40, 0.47)
    runs.append(_run_row("r=16 lr=1e-3", 16, 1e-3, 0.90))  # a worse learning rate of r=16: not a compared run
    # The best rank by its mean over the seeds (0.483 against r=4's 0.533).
    assert rank.best_rank_run(runs)["rank"] == 16
    by_rank = rank.rank_verdicts(runs)
    assert by_rank[1].better == "r=16" and not by_rank[4].measurable
    assert rank.smallest_good_rank(runs) == 4
    assert rank.seed_values(runs, runs[0]) == [1.30, 1.25, 1.28]
    assert rank.seed_mean(runs, runs[0]) == pytest.approx(1.2766, abs=1e-4)
    # Make r=4's seeds agree and sit far above: now it is measurably worse and the good rank is r=16.
    tight = [dict(r, eval_loss=r["eval_loss"] + (0.8 if r["rank"] == 4 else 0.0)) for r in runs]
    assert rank.rank_verdicts(tight)[4].better == "r=16" and rank.smallest_good_rank(tight) == 16
    # With one seed there is no spread, so no rank is measurably worse: the good rank is the smallest.
    single = [r for r in runs if r["group"] != "repeat"]
    assert rank.smallest_good_rank(single) == 1
    assert all(not v.measurable for v in rank.rank_verdicts(single).values())
