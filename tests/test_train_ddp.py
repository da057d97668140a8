"""The command runs unchanged under torchrun: two CPU processes (gloo, DDP), LoRA on the cpu profile.

The check that matters: two processes train what one process trains when it sees the same global
batch (2 processes x grad_accum = 1 process x 2 grad_accum). The Trainer shards each global batch
over the processes and normalises the loss by the answer tokens of the whole global batch, so the
two runs differ only by the order of floating-point sums (all-reduce, per-process padding).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_lab.runtime import profiles
from lora_lab.training import data, evaluate, models, sft_data, train

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20
#: Largest relative difference accepted between the two runs' losses (float summation order only).
REL_TOL = 1e-3


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny_model_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORA_LAB_PROFILE": "tiny", "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "lora_lab.training.train", "--profile", "tiny", "--method", "lora", "--max-steps", str(STEPS),
           "--output-dir", str(out), "--no-merge"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"train_metrics_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == STEPS
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["adapter_bytes"] > 0

    # One process, the same global batch: twice the gradient accumulation.
    profile = profiles.get_profile("tiny")
    single_profile = profile.replace(grad_accum=2 * profile.grad_accum)
    splits = data.load_profile_dataset(single_profile)
    model, tok = models.load_model_and_tokenizer(single_profile, "lora")
    single = train.sft(model, tok, splits, single_profile, tmp_path / "single", method="lora", max_steps=STEPS,
                       verbose=False)
    ddp_losses = ranks[0]["losses"]
    assert [step for step, _ in ddp_losses] == [step for step, _ in single.losses]
    for (step, ddp), (_, one) in zip(ddp_losses, single.losses, strict=True):
        assert ddp == pytest.approx(one, rel=REL_TOL), f"step {step}: 2 processes {ddp}, 1 process {one}"
    assert ddp_losses[-1][1] < 0.5 * ddp_losses[0][1]  # and it learned
    eval_set, _ = sft_data.prepare_sft_data(tok, splits["eval"], single_profile.max_length, "eval", verbose=False)
    single_eval = evaluate.eval_loss(single.model, tok, eval_set, single_profile.max_length)
    assert ranks[0]["eval_loss_after"] == pytest.approx(single_eval, rel=REL_TOL)
    assert ranks[1]["trainable_hash"] == ranks[0]["trainable_hash"]  # both processes hold one adapter
