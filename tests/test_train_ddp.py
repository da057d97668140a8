"""The command runs unchanged under torchrun: two CPU processes (gloo, DDP), LoRA on the cpu profile."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_finish_with_the_same_final_loss(tmp_path, tiny_model_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORA_LAB_PROFILE": "cpu", "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "lora_lab.train", "--profile", "cpu", "--method", "lora", "--max-steps", "20",
           "--output-dir", str(out), "--no-merge"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"train_metrics_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 20
    # The logged training loss is averaged over both processes, and DDP keeps the two adapters identical,
    # so each process's own evaluation of its model gives the same held-out loss.
    assert ranks[0]["final_loss"] == ranks[1]["final_loss"]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["trainable_hash"] == ranks[1]["trainable_hash"]
    assert ranks[0]["eval_loss_after"] == ranks[1]["eval_loss_after"]
    assert ranks[0]["losses"][-1][1] < ranks[0]["losses"][0][1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["adapter_bytes"] > 0
    assert metrics["train_loss_mean"] is not None
