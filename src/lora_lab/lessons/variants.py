"""LoRA's variants written by hand: rsLoRA, DoRA, PiSSA, OLoRA, LoRA+ and VeRA, each on one linear layer.

Notebook 07 prints this module (`inspect.getsource`) before it trains the variants through peft
(`lora_lab.experiments.variants`). Each variant changes one thing of plain LoRA
(`lora_by_hand.LoRALinear`: y = W x + bias + s B A x, B = 0 at the start, s = alpha / r):
the scale (rsLoRA), the output (DoRA: a trained length for each output row), where A, B and the frozen
weight start (PiSSA, OLoRA), the optimizer (LoRA+), or what is trained at all (VeRA: two vectors per
layer around random matrices that every layer shares and nobody trains). Each computes what peft 0.21
computes for a float32 `nn.Linear`; `lora_lab.experiments.variant_checks.check_all` checks each one
against peft's own layer, and `trainable_params` gives each variant's budget per layer. The LoRA-family
layers take `LoRALinear`'s arguments (base, r, alpha, dropout) and keep its A, B, scale and `merged()`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from lora_lab.lessons.counting import lora_layer_params
from lora_lab.lessons.lora_by_hand import LoRALinear

__all__ = ["rslora_scale", "RSLoRALinear", "DoRALinear", "PiSSALinear", "OLoRALinear",
           "loraplus_param_groups", "vera_shared_matrices", "VeRALinear", "trainable_params"]


def rslora_scale(alpha: float, r: int) -> float:
    """rsLoRA's scale of B A: alpha / sqrt(r), where plain LoRA uses alpha / r."""
    return alpha / math.sqrt(r)


class RSLoRALinear(LoRALinear):
    """rsLoRA (Kalajdzievski 2023, arXiv:2312.03732; peft `LoraConfig(use_rslora=True)`): s = alpha / sqrt(r).

    The paper shows that with alpha / r the update's effect shrinks as r grows (learning slows at high
    rank, so a higher rank shows no gain), while alpha / sqrt(r) keeps it the same size at every rank.
    Nothing else changes: the same A, B, start and merge as plain LoRA.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(base, r, alpha, dropout)
        self.scale = rslora_scale(alpha, r)


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024, arXiv:2402.09353; peft `LoraConfig(use_dora=True)`): a length per output row.

    The adapted weight W' = W + s B A is split into a direction (each output row of W' divided by its
    norm ||W'||) and a magnitude m, one trained number per output row: y = m / ||W'|| * (W' x) + bias.
    m starts at the row norms of W (B = 0, so W' = W): the layer starts equal to W. As the paper
    suggests (section 4.3) and peft does, ||W'|| is recomputed in every forward but treated as a
    constant in backward (`.detach()`): no gradient flows through it, which saves memory.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(base, r, alpha, dropout)
        self.m = nn.Parameter(self.row_norms())  # d_out trained lengths: ||W|| of each row at the start

    def row_norms(self) -> torch.Tensor:
        """||W + s B A|| of each output row, detached: a constant for backward."""
        return (self.base.weight + self.scale * self.B @ self.A).norm(dim=1).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.m / self.row_norms()  # each row's trained length over its current length
        xd = self.dropout(x)
        # Without dropout this is g * (W + s B A) x + bias. peft drops out the input of everything DoRA
        # adds to W x + bias, the (g - 1) W x part included, and so does this line.
        lora = xd @ self.A.T @ self.B.T
        return self.base(x) + (g - 1) * (xd @ self.base.weight.T) + g * self.scale * lora

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding m / ||W'|| * W' (each row rescaled), the bias unchanged."""
        out = super().merged()  # W' = W + s B A
        with torch.no_grad():
            out.weight.mul_((self.m / self.row_norms())[:, None])
        return out


class PiSSALinear(LoRALinear):
    """PiSSA (Meng et al. 2024, arXiv:2404.02948; peft `init_lora_weights="pissa"`): train W's main part.

    W = U S V^T, singular values S largest first. A and B start from the top r of them, sqrt(S / s) on
    each side, so that s B A = U_r S_r V_r^T exactly; the frozen weight becomes the residual W - s B A
    (the small singular values). The layer starts equal to W, but B A is not zero, so A and B both get
    gradients from the first step, along W's main directions. Like peft, this rewrites `base.weight`
    in place: keep a copy if the original is needed.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(base, r, alpha, dropout)
        U, S, Vh = torch.linalg.svd(self.base.weight.detach().float(), full_matrices=False)
        root = (S[:r] / self.scale).sqrt()  # divided by s here, multiplied back by s in forward
        with torch.no_grad():
            self.A.copy_(root[:, None] * Vh[:r])  # r x d_in: the top r right singular vectors, scaled
            self.B.copy_(U[:, :r] * root)  # d_out x r: the top r left singular vectors, scaled
            self.base.weight.sub_(self.scale * self.B @ self.A)  # residual: W - U_r S_r V_r^T


class OLoRALinear(LoRALinear):
    """OLoRA (Büyükakyüz 2024, arXiv:2406.01775; peft `init_lora_weights="olora"`): start from W's QR.

    W = Q R, Q's columns orthonormal, R upper triangular. B = the first r columns of Q, A = the first r
    rows of R: B is orthonormal and B A = Q_r Q_r^T W, W projected onto the span of its first r columns.
    Unlike PiSSA nothing is divided by s, so the adapter holds s Q_r R_r; the frozen weight becomes
    W - s B A and the layer starts equal to W. Rewrites `base.weight` in place, as peft does.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(base, r, alpha, dropout)
        Q, R = torch.linalg.qr(self.base.weight.detach().float())
        with torch.no_grad():
            self.A.copy_(R[:r])
            self.B.copy_(Q[:, :r])
            self.base.weight.sub_(self.scale * self.B @ self.A)


def loraplus_param_groups(model: nn.Module, lr: float, ratio: float, weight_decay: float = 0.0,
                          lr_embedding: float = 1e-6) -> list[dict]:
    """LoRA+ (Hayou et al. 2024, arXiv:2402.12354; peft `create_loraplus_optimizer(loraplus_lr_ratio=...)`).

    B learns `ratio` times faster than A (the paper suggests about 16). The groups, formed from the
    names of the trainable parameters as peft forms them:
    A: what no rule below takes (lora_A), at `lr`;
    embedding: the LoRA parameters of embedding layers (lora_embedding_A/B), at `lr_embedding`, not the ratio;
    B: lora_B and every trainable 1-D parameter (DoRA's m, biases, norm weights), at lr * ratio, with
    weight decay except for biases and LayerNorm parameters, which get none.

    Args:
        model: a model whose LoRA parameters are named like peft's (lora_A, lora_B, lora_embedding_A/B).
        lr: A's learning rate. ratio: B's learning rate over A's.
        weight_decay: for every group but the no-decay one (peft's `loraplus_weight_decay`).
        lr_embedding: the embedding group's learning rate (peft's `loraplus_lr_embedding`).

    Returns:
        Param groups for any torch optimizer: `torch.optim.AdamW(loraplus_param_groups(model, 1e-4, 16))`.
    """
    norms = tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, nn.LayerNorm))
    groups: dict[str, list] = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_embedding_" in name:
            groups["embedding"].append(p)
        elif "lora_B" in name or p.ndim == 1:
            groups["B_no_decay" if "bias" in name or name.startswith(norms) else "B"].append(p)
        else:
            groups["A"].append(p)
    settings = {"A": (lr, weight_decay), "embedding": (lr_embedding, weight_decay),
                "B": (lr * ratio, weight_decay), "B_no_decay": (lr * ratio, 0.0)}
    return [{"params": groups[key], "lr": rate, "weight_decay": decay}
            for key, (rate, decay) in settings.items()]


def vera_shared_matrices(r: int, d_in: int, d_out: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """VeRA's frozen random pair, shared by every adapted layer, drawn as peft draws it.

    A is r x d_in and B is d_out x r, where d_in and d_out are the largest input and output sizes among
    the adapted layers (each layer uses the top-left slice it needs). Both are Kaiming-uniform for ReLU
    (bound sqrt(6 / fan_in); fan_in is d_in for A, r for B), drawn A first from one generator seeded
    with `seed` (peft's `projection_prng_key`): the seed alone rebuilds them.

    Args:
        r: VeRA's rank (peft's default is 256: the pair is frozen, so a large r costs few trained numbers).
        d_in, d_out: the largest input and the largest output size among the layers to adapt.
        seed: the generator's seed.

    Returns:
        (A, B), r x d_in and d_out x r.
    """
    generator = torch.Generator().manual_seed(seed)
    A = nn.init.kaiming_uniform_(torch.empty(r, d_in), a=0, generator=generator)
    B = nn.init.kaiming_uniform_(torch.empty(d_out, r), a=0, generator=generator)
    return A, B


class VeRALinear(nn.Module):
    """VeRA (Kopiczko et al. 2023, arXiv:2310.11454; peft `VeraConfig`): two trained vectors per layer.

    y = W x + bias + b * (B (d * (A x))), with A and B frozen slices of `vera_shared_matrices`: d (r
    numbers) scales each of the r random directions, b (d_out numbers) each output. d starts at
    `d_initial` and b at zero, so the layer starts equal to W. There is no alpha / r: b and d set the
    size. r + d_out trained numbers per layer, so r can be large.

    Args:
        base: the frozen layer. shared_A, shared_B: the pair from `vera_shared_matrices`, the same
            tensors for every layer; this layer uses shared_A[:, :d_in] and shared_B[:d_out].
        d_initial: d's starting value (peft's `d_initial`, 0.1). dropout: on the VeRA path's input.
    """

    def __init__(self, base: nn.Linear, shared_A: torch.Tensor, shared_B: torch.Tensor,
                 d_initial: float = 0.1, dropout: float = 0.0):
        super().__init__()
        d_out, d_in = base.weight.shape
        self.base = base.requires_grad_(False)
        # Views of the shared pair, never trained; stored once for the whole model, not per layer.
        self.register_buffer("A", shared_A[:, :d_in], persistent=False)  # r x d_in
        self.register_buffer("B", shared_B[:d_out], persistent=False)  # d_out x r
        self.d = nn.Parameter(torch.full((shared_A.shape[0],), float(d_initial)))
        self.b = nn.Parameter(torch.zeros(d_out))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.b * ((self.d * (self.dropout(x) @ self.A.T)) @ self.B.T)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding W + diag(b) B diag(d) A, the bias unchanged."""
        out = copy.deepcopy(self.base).requires_grad_(True)
        with torch.no_grad():
            out.weight.add_((self.b[:, None] * self.B) @ (self.d[:, None] * self.A))
        return out


def trainable_params(variant: str, d_in: int, d_out: int, r: int) -> int:
    """Trained numbers a variant adds to one d_in -> d_out layer at rank r: its budget.

    LoRA, rsLoRA, PiSSA, OLoRA and LoRA+ train the same A and B: r (d_in + d_out). DoRA adds m, one
    number per output row. VeRA trains only d and b: r + d_out (its shared A and B are frozen, and a
    saved adapter stores them once for the whole model, or only their seed).

    Args:
        variant: "LoRA", "rsLoRA", "DoRA", "PiSSA", "OLoRA", "LoRA+" or "VeRA", in any case
            ("loraplus" for LoRA+).
        d_in, d_out, r: the layer's input and output sizes and the rank.
    """
    key = variant.lower().replace("+", "plus")
    if key == "vera":
        return r + d_out
    if key == "dora":
        return lora_layer_params(d_in, d_out, r) + d_out
    if key in ("lora", "rslora", "pissa", "olora", "loraplus"):
        return lora_layer_params(d_in, d_out, r)
    raise ValueError(f"unknown variant {variant!r}: one of LoRA, rsLoRA, DoRA, PiSSA, OLoRA, LoRA+, VeRA")
