"""Notebook 07's head-to-head (`lora_lab.experiments.variants`) on the tiny Llama: the frozen trunk gives exactly
the whole model, the search keeps the best rate, the verdicts and tables come from the runs, and the 4-bit
trials report what peft refuses."""

import copy
import dataclasses

import pytest
import torch

from lora_lab.experiments import variants as V
from lora_lab.lessons import sft
from lora_lab.runtime import profiles

PLAN = V.VariantPlan(top_layers=1, rank=4, alpha=8.0, vera_rank=16, steps=3, batch_size=4, n_train=12, n_eval=6,
                     n_generate=3, seeds=3, max_new_tokens=8, threads=1)
PROFILE = profiles.PROFILES["cpu"]


@pytest.fixture(scope="module")
def trunk(tiny_model_path):
    return V.load_trunk(PROFILE, PLAN, model_path=str(tiny_model_path))


def _moved(module):
    """Move every trainable tensor away from its start, so outputs depend on the adapter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module


@pytest.mark.parametrize("name", ["LoRA", "DoRA", "PiSSA", "VeRA", "full"])
def test_the_frozen_trunk_scores_exactly_what_the_whole_model_scores(trunk, name):
    module = _moved(V.build(trunk, V.variant(name), PLAN, seed=0)[0])
    pad = trunk.tokenizer.pad_token_id
    loss, greedy = V.lm_for(trunk, module).loss_and_greedy_match(trunk.eval_set, pad)
    with V.WholeModel(trunk, module) as whole:
        whole_loss, whole_greedy = sft.loss_and_greedy_match(whole, trunk.eval_set, pad)
    assert loss == pytest.approx(whole_loss, rel=1e-5)
    assert greedy == whole_greedy
    assert len(trunk.model.model.layers) == trunk.model.config.num_hidden_layers  # put back after the `with`


def test_training_on_the_trunk_equals_training_the_whole_model_with_layers_to_transform(trunk):
    from peft import get_peft_model

    lora = V.variant("LoRA")
    row, _ = V.train_one(trunk, lora, PLAN, 1e-2, seed=0)
    last = trunk.model.config.num_hidden_layers - 1
    torch.manual_seed(0)
    whole = get_peft_model(copy.deepcopy(trunk.model), V.config_on_layers(lora, PLAN, 0, [last]))
    trained = sft.train_loop(whole, trunk.train_set, steps=PLAN.steps, lr=1e-2, batch_size=PLAN.batch_size,
                             pad_id=trunk.tokenizer.pad_token_id, warmup_steps=PLAN.warmup_steps, seed=0)
    assert [loss for _, loss in row["losses"]] == pytest.approx([loss for _, loss in trained["losses"]], rel=1e-4)
    loss, _ = sft.loss_and_greedy_match(whole, trunk.eval_set, trunk.tokenizer.pad_token_id)
    assert row["eval_loss"] == pytest.approx(loss, rel=1e-4)


def test_loraplus_gives_b_a_higher_rate_and_full_fine_tuning_trains_only_the_linear_weights(trunk):
    module, _ = V.build(trunk, V.variant("LoRA+"), PLAN, seed=0)
    rates = {g["lr"] for g in V.optimizer_for(module, V.variant("LoRA+"), 1e-3).param_groups if g["params"]}
    assert max(rates) == pytest.approx(16 * 1e-3) and min(rates) == pytest.approx(1e-3)
    full, peft_model = V.build(trunk, V.variant("full"), PLAN, seed=0)
    trained = [n for n, p in full.named_parameters() if p.requires_grad]
    assert peft_model is None and len(trained) == len(V.TARGETS) and all("norm" not in n for n in trained)


def test_the_search_keeps_the_lowest_loss_and_repeats_it_with_more_seeds(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path))
    picks = (V.variant("LoRA"), V.variant("VeRA"))
    result = V.head_to_head(PROFILE, PLAN, variants=picks, model_path=str(tiny_model_path), verbose=False)
    for v in picks:
        searched = [r for r in result["runs"] if r["variant"] == v.name and r["seed"] == PROFILE.seed]
        assert sorted(r["lr"] for r in searched) == sorted(v.lrs)
        assert result["chosen"][v.name] == min(searched, key=lambda r: r["eval_loss"])["lr"]
        repeats = [r for r in result["runs"] if r["variant"] == v.name and r["lr"] == result["chosen"][v.name]]
        assert sorted(r["seed"] for r in repeats) == [PROFILE.seed + s for s in range(PLAN.seeds)]
        kept = result["kept"][v.name]
        assert kept["n_generated"] == PLAN.n_generate and kept["file_bytes"] > 0 and kept["memory"] > 0
        assert kept["merges"] and kept["merge_max_diff"] < 1e-3 * kept["merge_scale"]
    assert result["kept"]["VeRA"]["trainable"] < result["kept"]["LoRA"]["trainable"]
    again = V.head_to_head(PROFILE, PLAN, variants=picks, model_path=str(tiny_model_path), verbose=False)
    assert again["runs"] == result["runs"] and again["trunk_seconds"] is None  # all from the cache, no trunk


def _run(variant, lr, seed, loss):
    return dict(variant=variant, lr=lr, seed=seed, eval_loss=loss)


def test_verdicts_and_tables_come_from_the_runs():
    runs = [_run("LoRA", lr, 0, loss) for lr, loss in ((1e-3, 0.9), (1e-2, 0.50), (3e-2, 0.7))]
    runs += [_run("LoRA", 1e-2, s, loss) for s, loss in ((1, 0.52), (2, 0.51))]
    runs += [_run("DoRA", lr, 0, loss) for lr, loss in ((1e-3, 0.8), (1e-2, 0.6), (3e-2, 0.40))]
    runs += [_run("DoRA", 3e-2, s, loss) for s, loss in ((1, 0.41), (2, 0.42))]
    runs += [_run("VeRA", lr, 0, loss) for lr, loss in ((1e-1, 0.9), (3e-1, 0.51), (1.0, 0.8))]
    runs += [_run("VeRA", 3e-1, s, loss) for s, loss in ((1, 0.49), (2, 0.53))]
    verdicts = V.verdicts_against(runs)
    assert verdicts["DoRA"].better == "DoRA" and not verdicts["VeRA"].measurable
    table = V.search_table(runs, {"LoRA": 1e-2, "DoRA": 3e-2, "VeRA": 3e-1}).splitlines()
    assert "edge" in next(line for line in table if line.startswith("DoRA"))
    assert "edge" not in next(line for line in table if line.startswith("LoRA"))
    worse = [dict(r, eval_loss=r["eval_loss"] + 0.2) if r["variant"] == "DoRA" else r for r in runs]
    assert V.verdicts_against(worse)["DoRA"].better == "LoRA"


def test_on_nf4_pissa_and_full_fine_tuning_are_refused_and_olora_moves_the_start(tiny_model_path, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path))
    picks = tuple(V.variant(n) for n in ("LoRA", "DoRA", "PiSSA", "OLoRA", "full"))
    trials = {t["variant"]: t for t in V.qlora_trials(PROFILE, PLAN, variants=picks,
                                                      model_path=str(tiny_model_path))}
    assert not trials["PiSSA"]["runs"] and "TypeError" in trials["PiSSA"]["refusal"]
    assert not trials["full"]["runs"]
    assert trials["LoRA"]["runs"] and trials["LoRA"]["start_max_diff"] == 0.0
    assert trials["DoRA"]["runs"] and trials["DoRA"]["start_max_diff"] < 1e-5
    assert trials["OLoRA"]["runs"] and trials["OLoRA"]["start_max_diff"] > 1e-4
    assert "refused" in V.qlora_table(list(trials.values()))


def test_the_t4_runs_are_in_the_t4_plan_within_14_gib():
    from lora_lab.estimation import gpu_runs
    from lora_lab.tooling import course

    planned = [r for r in course.t4_plan() if r.notebook == "07"]
    assert [r.run for r in planned] == list(V.T4_VARIANTS)
    assert all(r.runs and r.predicted_peak_bytes <= gpu_runs.T4_PLAN_BUDGET for r in planned)
    assert dataclasses.asdict(V.PLANS["cpu"])["seeds"] >= 3
