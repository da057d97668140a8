"""Every GPU run preflighted at full size: shrunk or skipped when it will not fit, never started; t4-plan."""

import json

import pytest

from lora_lab.estimation import gpu_runs, vram
from lora_lab.experiments import rank
from lora_lab.runtime import profiles
from lora_lab.runtime.units import GIB
from lora_lab.tooling import course
from lora_lab.training import train


def test_t4_plan_covers_every_training_notebook_within_14_gib():
    plan = course.t4_plan()
    started = [r for r in plan if r.runs]
    assert {r.notebook for r in started} == {"02", "03", "05", "06", "07"}
    assert any(r.run == "main" for r in started) and any("7B" in r.run for r in started)
    for run in started:
        assert run.predicted_peak_bytes <= 14.0 * GIB, run
        assert run.predicted_peak_bytes == vram.estimate(run.model, **run.estimate_kwargs).total
    full = next(r for r in plan if r.notebook == "02" and r.run == "full")
    assert full.action == "skipped" and "GiB" in full.note  # ~21.7 GiB at the sweep's settings


def test_t4_plan_json_lines_equal_the_estimator(capsys):
    assert course.main(["t4-plan", "--json"]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    keys = {"notebook", "run", "model", "estimate_kwargs", "predicted_peak_bytes", "steps", "optional",
            "predicted_minutes"}
    assert rows and all(set(r) == keys for r in rows)
    assert all(r["predicted_minutes"] > 0 for r in rows if not r["optional"])
    assert "06" in {r["notebook"] for r in rows}  # 06 trains its own adapter when 03's is absent
    for r in rows:
        assert r["predicted_peak_bytes"] == vram.estimate(r["model"], **r["estimate_kwargs"]).total
        assert r["predicted_peak_bytes"] <= 14.0 * GIB
    assert "02 full: skipped" in out.err


def test_fit_shrinks_the_batch_keeping_the_effective_batch_then_skips():
    t4 = profiles.PROFILES["t4"]
    run = gpu_runs.sft_run("03", "main", t4)
    assert gpu_runs.fit(run, 20 * GIB).action == "run"
    tight = int(run.predicted_peak_bytes * 0.9)
    shrunk = gpu_runs.fit(run, tight)
    kw = shrunk.estimate_kwargs
    assert shrunk.action == "shrunk" and shrunk.predicted_peak_bytes <= tight
    assert kw["batch_size"] < 4 and kw["batch_size"] * shrunk.grad_accum == t4.effective_batch
    assert shrunk.apply(t4).batch_size == kw["batch_size"] and shrunk.apply(t4).grad_accum == shrunk.grad_accum
    assert gpu_runs.fit(run, 2 * GIB).action == "skipped"


class Started(Exception):
    """Raised by the stand-in loader: a run got as far as loading its model."""


@pytest.fixture
def recorded_starts(monkeypatch):
    starts = []

    def load(profile, method, **kwargs):
        starts.append((method, profile.batch_size, profile.grad_accum))
        raise Started

    monkeypatch.setattr(train, "load_model_and_tokenizer", load)
    return starts


def test_a_sweep_run_that_will_not_fit_is_skipped_never_started(monkeypatch, recorded_starts):
    monkeypatch.setattr(gpu_runs, "free_bytes_now", lambda hw=None: int(14.0 * GIB))
    t4 = profiles.PROFILES["t4"]
    out = rank._trainer_sweep(t4, rank.PLANS["t4"], "Qwen/Qwen2.5-1.5B", only=["full"], verbose=False)
    assert recorded_starts == [] and out["runs"] == []
    assert out["skipped"][0]["run"] == "full" and out["skipped"][0]["action"] == "skipped"


def test_a_sweep_run_that_needs_less_is_started_shrunk(monkeypatch, recorded_starts):
    t4 = profiles.PROFILES["t4"]
    need = gpu_runs.sft_run("02", "r=16", t4, rank=16, alpha=rank.PLANS["t4"].alpha).predicted_peak_bytes
    monkeypatch.setattr(gpu_runs, "free_bytes_now", lambda hw=None: int(need * 0.9))
    with pytest.raises(Started):
        rank._trainer_sweep(t4, rank.PLANS["t4"], "Qwen/Qwen2.5-1.5B", only=["r=16"], verbose=False)
    (method, batch, accum), = recorded_starts
    sweep_batch = t4.batch_size * rank.PLANS["t4"].grad_accum  # the sweep's own effective batch, kept when shrunk
    assert method == "qlora" and batch < t4.batch_size and batch * accum == sweep_batch


def test_every_notebook_fits_its_stated_t4_budget_and_the_readme_states_those_budgets(monkeypatch):
    import re
    from pathlib import Path

    from lora_lab.estimation import t4_budget
    from lora_lab.tooling import course

    runs = course.t4_plan()
    times = t4_budget.notebook_times(runs)
    assert set(times) == set(t4_budget.BUDGET_MINUTES)
    for t in times.values():
        assert t.fits, t.line()
        assert t.parts["install"] > 0
    assert all("download" in times[nb].parts for nb in ("02", "03", "05", "06"))
    assert "main run" in times["03"].parts and not any("lora run" in k for k in times["03"].parts)  # class mode
    assert all(f.source for f in t4_budget.FIGURES.values())
    assert 60 < t4_budget.tokens_per_example("sql") < 250  # a question, a CREATE TABLE, a query, the template
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for nb, minutes in t4_budget.BUDGET_MINUTES.items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{nb}_") and "colab-badge" in line)
        assert re.search(rf"\| {minutes} min\b", row), row
    # The prediction follows its figures: a T4 at a third of the planned throughput would not fit 03.
    slow = t4_budget.Figure(t4_budget.FIGURES["train_tokens_per_s"].value / 3, "tokens/s", "test")
    monkeypatch.setitem(t4_budget.FIGURES, "train_tokens_per_s", slow)
    assert not t4_budget.notebook_times(runs)["03"].fits


def test_notebook_06_plans_its_own_adapter_when_03s_is_absent(tmp_path):
    from lora_lab.experiments import export
    from lora_lab.runtime import profiles

    t4 = profiles.PROFILES["t4"]
    run = export.own_adapter_run(t4)
    assert run.notebook == "06" and run.runs and run.estimate_kwargs["method"] == "qlora" and run.steps == 30
    present = tmp_path / "adapter"
    present.mkdir()
    (present / "adapter_config.json").write_text("{}")
    assert export.adapter_to_export(t4, present)[0] == present
    import torch
    assert export.merge_dtype(t4) == torch.float16 and export.merge_dtype(profiles.PROFILES["cpu"]) == torch.float32
