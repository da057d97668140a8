"""Workarounds for behaviour of the libraries the course pins, in one place.

Each workaround:

- is gated on the library versions it is known to be needed for (`packaging.version`), so it
  stops acting when the library moves on, and `tests/test_compat.py` then fails until someone
  checks whether the behaviour is still there and widens the range, or deletes the workaround;
- names the upstream behaviour and links the upstream source line or issue;
- logs (logger ``lora_lab.runtime.compat``, level INFO) when it changes something;
- has a test that reproduces the library's behaviour on the pinned version without the
  workaround, and one that shows the workaround undoes it.

The workarounds:

- `keep_trainable_fp32`: trl's `SFTTrainer` casts the LoRA matrices of a quantized (QLoRA) model
  to bf16.
- `keep_cpu_4bit_layout`: bitsandbytes repacks a 4-bit weight for its AVX512-BF16 CPU inference
  kernel the first time the layer runs in eval mode without gradients.
"""

from __future__ import annotations

import logging
from importlib.metadata import version

import torch
from packaging.specifiers import SpecifierSet

log = logging.getLogger(__name__)

#: trl releases whose SFTTrainer casts QLoRA adapters to bf16 (checked on 1.16.0, the pinned one).
TRL_CASTS_QLORA_ADAPTERS_TO_BF16 = SpecifierSet(">=1.16,<1.17")
#: bitsandbytes releases whose Linear4bit repacks weights for the AVX512-BF16 CPU kernel (checked on 0.50.2).
BNB_REPACKS_4BIT_FOR_CPU_INFERENCE = SpecifierSet(">=0.50,<0.51")


def needed(package: str, affected: SpecifierSet) -> bool:
    """Whether the installed `package` is one of the `affected` releases."""
    return affected.contains(version(package), prereleases=True)


def keep_trainable_fp32(model) -> int:
    """Cast trainable parameters back to fp32 after `SFTTrainer.__init__`; return how many were cast.

    Upstream: trl 1.16's `SFTTrainer.__init__` converts every trainable parameter of a quantized
    model to bf16, following the QLoRA paper, because peft's `autocast_adapter_dtype=False` does
    not work for quantized models yet
    (https://github.com/huggingface/trl/blob/v1.16.0/trl/trainer/sft_trainer.py#L902-L911,
    https://github.com/huggingface/peft/issues/2889).

    Why we undo it: trl does so whatever `fp16`/`bf16` say. On a T4 (no native bf16) that puts
    bf16 matmuls back into the fp16 run we chose on purpose, and anywhere it rounds each update to
    bf16's 8-bit mantissa: with small learning-rate steps many updates vanish. On the tiny model it
    cost QLoRA a large share of its held-out exact match, and it made a resumed run drift from an
    uninterrupted one. fp32 adapters with fp16/bf16 autocast are ordinary mixed precision, and
    what `lora_lab.estimation.vram` assumes (peft's default).
    """
    if not needed("trl", TRL_CASTS_QLORA_ADAPTERS_TO_BF16):
        return 0
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            cast += 1
    if cast:
        log.info("compat: cast %d trainable tensors back to fp32 (trl %s casts QLoRA adapters to bf16)",
                 cast, version("trl"))
    return cast


def keep_cpu_4bit_layout(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its bf16 CPU inference kernel; return layers changed.

    Upstream: on a CPU with AVX512-BF16, bitsandbytes 0.50's `Linear4bit.forward` repacks the
    weight the first time the layer runs in eval mode on an input without gradients
    (`support_avx512bf16_for_cpu`, set from `has_avx512bf16()`;
    https://github.com/bitsandbytes-foundation/bitsandbytes/blob/0.50.2/bitsandbytes/nn/modules.py#L609-L620,
    added by https://github.com/bitsandbytes-foundation/bitsandbytes/pull/1804), with its scales
    rounded to bf16, and from then on always calls a kernel that has no backward pass.

    Why we undo it: evaluating before training would then silently cut the gradient through every
    frozen 4-bit layer (LoRA matrices below it learn from a wrong signal) and change the numbers
    the model computes. Keeping the standard layout costs some inference speed on such CPUs and
    changes nothing on a GPU. It clears that (private) flag on every layer that has it set.
    """
    if not needed("bitsandbytes", BNB_REPACKS_4BIT_FOR_CPU_INFERENCE):
        return 0
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    if changed:
        log.info("compat: kept the standard 4-bit layout in %d layers (bitsandbytes %s repacks them for its "
                 "AVX512-BF16 CPU kernel)", changed, version("bitsandbytes"))
    return changed
