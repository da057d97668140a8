"""The lesson code checked against peft: `lora_lab.lessons.lora_by_hand.LoRALinear` beside peft's own layer.

`compare_with_peft` measures what notebook 02 claims: equal to the base layer at initialisation,
equal to peft's layer with the same weights (with and without dropout), equal after merging, and
r * (d_in + d_out) trainable parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from lora_lab.lessons.counting import lora_layer_params
from lora_lab.lessons.lora_by_hand import LoRALinear

__all__ = ["compare_with_peft", "peft_linear"]


def peft_linear(base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
    """peft's own LoRA layer (`peft.tuners.lora.Linear`, adapter "default") wrapped around `base`.

    `base` is frozen here, as `peft.get_peft_model` freezes every weight that is not an adapter.
    """
    from peft import LoraConfig
    from peft.tuners.lora import Linear

    base.requires_grad_(False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout)
    return Linear(base, "default", config=config, r=r, lora_alpha=alpha)


def compare_with_peft(d_in: int = 64, d_out: int = 48, r: int = 8, alpha: float = 16.0, dropout: float = 0.1,
                      batch: int = 32, seed: int = 0) -> dict:
    """Check the hand-written layer against the base layer, peft and its own merge, on random inputs.

    Args:
        d_in, d_out: the frozen layer's shape (an nn.Linear with bias).
        r, alpha, dropout: the LoRA settings of both layers.
        batch: rows of the random input.
        seed: seeds the base layer, the inputs, B's random values and the dropout masks.

    Returns:
        init_vs_base: largest |output - base output| right after initialisation (exactly 0: B = 0);
        vs_peft: largest |ours - peft's| once B is non-zero and peft's A and B hold our values
        (eval mode, no dropout); vs_peft_dropout: the same in training mode, dropout masks drawn
        from the same seed; merged_vs_unmerged: largest |merged layer - LoRA layer|;
        max_abs_output: the size of the outputs compared (so the differences can be judged);
        params, formula: trainable parameters of our layer and of peft's, and r * (d_in + d_out);
        peft_params: peft's trainable parameters; peft_scaling, scale: both layers' scale.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in, generator=g)
    ours = LoRALinear(base, r, alpha, dropout).eval()
    with torch.no_grad():
        init_vs_base = (ours(x) - base(x)).abs().max().item()
        ours.B.copy_(torch.randn(d_out, r, generator=g) * 0.1)  # as if training had moved B away from zero
    theirs = peft_linear(nn.Linear(d_in, d_out), r, alpha, dropout)
    with torch.no_grad():
        theirs.base_layer.load_state_dict(base.state_dict())
        theirs.lora_A["default"].weight.copy_(ours.A)  # nn.Linear stores (out, in): A is r x d_in as ours
        theirs.lora_B["default"].weight.copy_(ours.B)
        theirs.eval()
        y = ours(x)
        vs_peft = (y - theirs(x)).abs().max().item()
        ours.train(), theirs.train()
        torch.manual_seed(seed + 1)
        y_drop = ours(x)
        torch.manual_seed(seed + 1)
        vs_peft_dropout = (y_drop - theirs(x)).abs().max().item()
        ours.eval()
        merged_vs_unmerged = (ours.merged()(x) - y).abs().max().item()
    return dict(init_vs_base=init_vs_base, vs_peft=vs_peft, vs_peft_dropout=vs_peft_dropout,
                merged_vs_unmerged=merged_vs_unmerged, max_abs_output=y.abs().max().item(),
                params=sum(p.numel() for p in ours.parameters() if p.requires_grad),
                peft_params=sum(p.numel() for p in theirs.parameters() if p.requires_grad),
                formula=lora_layer_params(d_in, d_out, r), scale=ours.scale, peft_scaling=theirs.scaling["default"],
                d_in=d_in, d_out=d_out, r=r, alpha=alpha, dropout=dropout)
