"""LoRA written by hand: one linear layer, and its merge back into a plain one.

Notebook 02 opens with this class (it prints its source with `inspect.getsource`, so the code a
learner reads is the code that runs and is tested). `LoRALinear` follows peft's vanilla LoRA
(`peft.tuners.lora.layer.Linear`, peft 0.21): A initialised like `nn.Linear` (Kaiming-uniform,
a = sqrt(5)), B at zero so the update starts at exactly zero, the update scaled by alpha / r, and
dropout applied only to the input of the LoRA path. The layer's parameter count, r * (d_in + d_out),
is `lora_lab.lessons.counting.lora_layer_params`, which the estimator, the rank sweep, the adapters and
the diagrams all call.
`lora_lab.experiments.peft_checks.compare_with_peft` checks the layer against peft's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LoRALinear"]


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
