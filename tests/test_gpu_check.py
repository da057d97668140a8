"""benchmarks/gpu_check.py on a machine without CUDA: case planning, CSV writing, and the exit-2 path."""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from lora_lab.estimation import vram
from lora_lab.runtime.units import GIB

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_exits_2_with_one_line():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stdout.strip().splitlines() == ["gpu_check needs a CUDA GPU (torch.cuda.is_available() is False here); "
                                               "run it on a GPU machine."]


def test_cases_cover_presets_up_to_8b_and_only_what_fits(gpu_check):
    h100 = int(79.1 * GIB)
    cases, skipped = gpu_check.plan_cases(h100, (9, 0))
    models = {c.model for c in cases}
    assert "meta-llama/Llama-3.1-8B" in models and "meta-llama/Llama-2-13b-hf" not in models
    assert {c.method for c in cases} == {"qlora", "lora", "full"}
    assert {c.seq_len for c in cases} == set(gpu_check.SEQ_LENS) and {c.gradient_checkpointing for c in cases} == {True, False}
    assert all(c.precision == ("mixed" if c.method == "full" else "bf16") for c in cases)
    for c in cases:
        assert c.predicted_total == vram.estimate(c.model, **c.estimate_kwargs()).total <= 0.9 * h100
    assert any("Llama-3.1-8B full" in label for label, _ in skipped)  # full fine-tuning of 8B does not fit
    t4_cases, _ = gpu_check.plan_cases(int(14.74 * GIB), (7, 5), quick=True)
    assert t4_cases and all(c.precision in ("fp16", "mixed") for c in t4_cases)
    assert all(c.predicted_total <= 0.9 * 14.74 * GIB for c in t4_cases)


def test_rows_are_written_to_csv_with_a_summary_line(gpu_check, tmp_path):
    case = gpu_check.plan_cases(int(79.1 * GIB), (9, 0), quick=True)[0][0]
    est = vram.estimate(case.model, **case.estimate_kwargs())
    fields = dict(model=case.model, method=case.method, seq_len=case.seq_len,
                  gradient_checkpointing=case.gradient_checkpointing, precision=case.precision)
    ok = gpu_check._row("estimate", fields, est, est.peak_allocated // 2, est.reserved // 2, 0.5)
    oom = gpu_check._row("estimate", fields, est, None, None, None, "oom", "out of memory")
    path = gpu_check.write_csv([ok, oom], str(tmp_path / "r" / "gpu.csv"))
    rows = list(csv.DictReader(open(path)))
    assert [r["status"] for r in rows] == ["ok", "oom"] and float(rows[0]["error_allocated"]) == pytest.approx(1.0, abs=1e-6)
    assert "est" in gpu_check.summary_line(ok) and "oom: out of memory" in gpu_check.summary_line(oom)
