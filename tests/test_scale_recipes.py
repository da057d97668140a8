"""Notebook 06's fit table prices only recipes that train: each row's precision, built on the tiny model,
takes a step through the same gradient scaler the Trainer uses for fp16 (which refuses to unscale fp16
gradients), and the recipe the table used to assume (fp16 weights under fp16 autocast) does not."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lora_lab.experiments import scale
from lora_lab.runtime import compat
from lora_lab.runtime.hardware import compute_dtype_for
from lora_lab.standins import tiny
from lora_lab.training import models

CAPABILITY = {label: capability for label, _, _, capability in scale.SETUPS}
RECIPES = sorted({(r.method, r.precision, compute_dtype_for("cuda", CAPABILITY[r.setup]))
                  for r in scale.fit_table(models=("Qwen/Qwen2.5-1.5B",))})


def _one_scaled_step(method: str, precision: str, compute: str) -> float:
    """Load the tiny model as `precision` says, attach LoRA unless full, and take one optimizer step under
    `compute` autocast with fp16's gradient scaler (as accelerate does for `fp16=True`)."""
    autocast = getattr(torch, compute)
    weights = torch.float32 if precision in ("mixed", "fp32") else autocast
    path = tiny.ensure_tiny_model()
    if method == "qlora":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=weights,
                                                     quantization_config=models.bnb_config(compute_dtype=autocast))
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=weights)
    if method != "full":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        compat.keep_trainable_fp32(model)  # the course's recipe: LoRA matrices in fp32
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=autocast == torch.float16)
    ids = torch.randint(5, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # accelerate's clip_grad_norm_ does this: fp16 gradients raise here
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


@pytest.mark.parametrize("method,precision,compute", RECIPES, ids=lambda v: str(v))
def test_every_fit_table_recipe_takes_a_step_through_the_gradient_scaler(method, precision, compute):
    assert precision == ("mixed" if method == "full" else {"float16": "fp16", "bfloat16": "bf16"}[compute])
    assert torch.isfinite(torch.tensor(_one_scaled_step(method, precision, compute)))


def test_fp16_weights_under_fp16_autocast_cannot_train():
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        _one_scaled_step("full", "fp16", "float16")
