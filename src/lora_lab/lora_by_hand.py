"""LoRA written by hand: one linear layer, checked against peft's own `lora.Linear`.

Notebook 02 opens with this class (it prints its source with `inspect.getsource`, so the code a
learner reads is the code that runs and is tested). `LoRALinear` follows peft's vanilla LoRA
(`peft.tuners.lora.layer.Linear`, peft 0.21): A initialised like `nn.Linear` (Kaiming-uniform,
a = sqrt(5)), B at zero so the update starts at exactly zero, the update scaled by alpha / r, and
dropout applied only to the input of the LoRA path. `compare_with_peft` measures what the notebook
claims: equal to the base layer at initialisation, equal to peft's layer with the same weights,
equal after merging, and r * (d_in + d_out) trainable parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LoRALinear", "compare_with_peft", "peft_linear"]


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) * B A dropout(x), with W and b frozen and only A, B trained."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        d_out, d_in = base.weight.shape
        if not 0 < r <= min(d_in, d_out):
            raise ValueError(f"LoRA rank r={r} must be between 1 and min(d_in, d_out) = {min(d_in, d_out)} "
                             f"for a {d_in} -> {d_out} layer: B @ A cannot have a higher rank than that.")
        self.base = base.requires_grad_(False)  # the pretrained W (and bias) stay frozen
        self.A = nn.Parameter(torch.empty(r, d_in))  # r x d_in: projects the input down to r numbers
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # random, like nn.Linear's own weights (and peft's A)
        self.B = nn.Parameter(torch.zeros(d_out, r))  # d_out x r: zero, so B @ A = 0 at the start
        self.scale = alpha / r  # peft's `scaling`: lora_alpha / r
        self.dropout = nn.Dropout(dropout)  # on the LoRA path's input only, as peft does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (self.dropout(x) @ self.A.T @ self.B.T)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding W + scale * B @ A: the same outputs at the base layer's cost."""
        out = nn.Linear(self.A.shape[1], self.B.shape[0], bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * self.B @ self.A)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


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
                formula=r * (d_in + d_out), scale=ours.scale, peft_scaling=theirs.scaling["default"],
                d_in=d_in, d_out=d_out, r=r, alpha=alpha, dropout=dropout)
