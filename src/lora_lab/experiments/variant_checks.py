"""The lesson's LoRA variants checked against peft: `lessons.variants` beside peft's own layers (notebook 07).

Each check builds peft's adapter the way a learner would (`peft.get_peft_model` on a stand-in model
whose Linear layer is named "proj"), builds the hand-written layer around a copy of the same base
layer, and measures: how each starts (against the original layer, and against peft's start where
that start is not random: PiSSA's and OLoRA's A, B and residual, DoRA's m, VeRA's shared matrices),
then, once the trained parameters have been moved away from their start (the same values in both),
the largest |ours - peft's| over random inputs (eval mode, and in training mode with the dropout masks
drawn from the same seed), the largest difference between the two layers' gradients, both merges,
and the trainable parameters of ours, of peft's and of `lessons.variants.trainable_params`. LoRA+
changes only the optimizer, so its check compares learning rates and weight decays per parameter
with peft's `create_loraplus_optimizer`. `check_all` returns one row per variant, as plain dicts, each
with its verdict (`agrees`: every difference within `TOLERANCE` of the size compared, every count
equal), and `format_table` prints them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lora_lab.lessons.lora_by_hand import LoRALinear
from lora_lab.lessons.variants import (
    DoRALinear,
    OLoRALinear,
    PiSSALinear,
    RSLoRALinear,
    VeRALinear,
    loraplus_param_groups,
    trainable_params,
    vera_shared_matrices,
)

__all__ = ["VARIANTS", "PEFT_SWITCH", "TOLERANCE", "agrees", "check_layer", "check_vera", "check_loraplus",
           "check_all", "format_table"]

#: Every variant `check_all` checks, in the order of its rows.
VARIANTS = ("lora", "rslora", "dora", "pissa", "olora", "loraplus", "vera")
#: How peft is asked for each variant: a `LoraConfig` argument, or peft's function or config.
PEFT_SWITCH = {"lora": "LoraConfig()", "rslora": "use_rslora=True", "dora": "use_dora=True",
               "pissa": 'init_lora_weights="pissa"', "olora": 'init_lora_weights="olora"',
               "loraplus": "create_loraplus_optimizer", "vera": "VeraConfig()"}
#: A difference counts as agreement up to this fraction of the largest output (or gradient) compared.
TOLERANCE = 1e-5
_HAND = {"lora": LoRALinear, "rslora": RSLoRALinear, "dora": DoRALinear, "pissa": PiSSALinear,
         "olora": OLoRALinear}


class _StandIn(nn.Module):
    """A stand-in model holding the layers to adapt as named attributes (peft finds targets by name)."""

    def __init__(self, **layers: nn.Module):
        super().__init__()
        for name, layer in layers.items():
            setattr(self, name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _lora_config(variant: str, r: int, alpha: float, dropout: float, **extra):
    from peft import LoraConfig

    switch = {"rslora": dict(use_rslora=True), "dora": dict(use_dora=True),
              "pissa": dict(init_lora_weights="pissa"),
              "olora": dict(init_lora_weights="olora")}.get(variant, {})
    settings = {"target_modules": ["proj"], **switch, **extra}
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, **settings)


def _trained(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _compare(pairs: list[tuple[nn.Module, nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]], x: dict,
             g: torch.Generator, seed: int) -> dict:
    """Outputs (eval and dropout), gradients and merges of hand-written layers against peft's, pair by pair.

    `pairs` holds (ours, peft's, [(our parameter, peft's parameter), ...]) for each adapted layer; their
    trained parameters are moved off their start (the same values in both) before anything is compared.
    """
    with torch.no_grad():
        for _ours, _theirs, params in pairs:
            for mine, theirs in params:
                mine.add_(0.1 * torch.randn(mine.shape, generator=g))  # as if training had moved it
                theirs.copy_(mine)
    out = dict(vs_peft=0.0, vs_peft_dropout=0.0, grad_vs_peft=0.0, max_abs_output=0.0, max_abs_grad=0.0,
               merged_vs_unmerged=0.0, peft_merged_vs_ours=0.0)
    for ours, theirs, params in pairs:
        inputs = x[ours]
        ours.eval(), theirs.eval()
        y = ours(inputs)
        weights = torch.randn(y.shape, generator=g)  # a loss that weighs every output differently
        (y * weights).sum().backward()
        (theirs(inputs) * weights).sum().backward()
        with torch.no_grad():
            out["vs_peft"] = max(out["vs_peft"], _max_diff(y, theirs(inputs)))
            out["max_abs_output"] = max(out["max_abs_output"], y.abs().max().item())
            out["grad_vs_peft"] = max([out["grad_vs_peft"]] + [_max_diff(a.grad, b.grad) for a, b in params])
            out["max_abs_grad"] = max([out["max_abs_grad"]] + [a.grad.abs().max().item() for a, _ in params])
            ours.train(), theirs.train()
            torch.manual_seed(seed + 1)
            y_drop = ours(inputs)
            torch.manual_seed(seed + 1)
            out["vs_peft_dropout"] = max(out["vs_peft_dropout"], _max_diff(y_drop, theirs(inputs)))
            ours.eval(), theirs.eval()
            out["merged_vs_unmerged"] = max(out["merged_vs_unmerged"], _max_diff(ours.merged()(inputs), y))
            theirs.merge()
            out["peft_merged_vs_ours"] = max(out["peft_merged_vs_ours"], _max_diff(theirs(inputs), y))
    return out


def agrees(row: dict) -> bool:
    """A check's verdict: every difference within TOLERANCE of the size it compares, every count equal.

    For LoRA+: every parameter's learning rate and weight decay equal to peft's, B's rate `ratio` times A's.
    """
    counts = row["params"] == row["peft_params"] == row["formula"] and row["scale"] == row["peft_scale"]
    if row["variant"] == "loraplus":
        same = row["vs_peft"] == row["edge_vs_peft"] == 0.0
        return counts and same and row["ratio_B_over_A"] == row["ratio"]
    outputs = ("vs_peft", "vs_peft_dropout", "init_vs_base", "peft_init_vs_base", "merged_vs_unmerged",
               "peft_merged_vs_ours", "init_vs_peft", "m_vs_row_norms", "shared_vs_peft")
    within = all(row.get(key) is None or row[key] <= TOLERANCE * row["max_abs_output"] for key in outputs)
    grads = row["grad_vs_peft"] <= TOLERANCE * row["max_abs_grad"]
    return counts and within and grads and row["max_abs_output"] > 0 and row["max_abs_grad"] > 0


def _with_verdict(row: dict) -> dict:
    return {**row, "agrees": bool(agrees(row))}


def check_layer(variant: str, d_in: int = 64, d_out: int = 48, r: int = 8, alpha: float = 16.0,
                dropout: float = 0.1, batch: int = 32, seed: int = 0) -> dict:
    """One LoRA-family variant (lora, rslora, dora, pissa or olora) by hand against peft's layer.

    Args:
        variant: which hand-written layer of `lessons.variants` (or plain `LoRALinear`) and which peft switch.
        d_in, d_out: the base layer's shape (an nn.Linear with bias).
        r, alpha, dropout: the adapter's settings, the same for both.
        batch: rows of the random input.
        seed: seeds the base layer, A's random start, the inputs, the moved parameters and the dropout masks.

    Returns:
        A row: init_vs_base, peft_init_vs_base: largest |output at the start - the original layer's|;
        init_vs_peft: largest difference between our start and peft's for what is not random (A, B
        and the residual base for PiSSA/OLoRA, m for DoRA; None for lora/rslora, whose A is copied);
        m_vs_row_norms (DoRA): |m - the row norms of W| for ours and peft's (the larger);
        then `_compare`'s vs_peft, vs_peft_dropout, grad_vs_peft, max_abs_output, max_abs_grad,
        merged_vs_unmerged, peft_merged_vs_ours; params, peft_params, formula; scale, peft_scale.
    """
    from peft import get_peft_model

    if variant not in _HAND:
        raise ValueError(f"check_layer checks {sorted(_HAND)}; LoRA+ and VeRA have their own checks")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    original = nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in, generator=g)
    ours = _HAND[variant](copy.deepcopy(original), r, alpha, dropout).eval()
    model = get_peft_model(_StandIn(proj=copy.deepcopy(original)), _lora_config(variant, r, alpha, dropout))
    theirs = model.base_model.model.proj.eval()
    A, B = theirs.lora_A["default"].weight, theirs.lora_B["default"].weight
    params = [(ours.A, A), (ours.B, B)]
    init_vs_peft = m_vs_row_norms = None
    with torch.no_grad():
        row = dict(init_vs_base=_max_diff(ours(x), original(x)),
                   peft_init_vs_base=_max_diff(theirs(x), original(x)))
        if variant in ("pissa", "olora"):
            init_vs_peft = max(_max_diff(ours.A, A), _max_diff(ours.B, B),
                               _max_diff(ours.base.weight, theirs.base_layer.weight))
        else:
            A.copy_(ours.A)  # A starts random: give peft's layer our draw
        if variant == "dora":
            m = theirs.lora_magnitude_vector["default"].weight
            init_vs_peft = _max_diff(ours.m, m)
            norms = original.weight.norm(dim=1)
            m_vs_row_norms = max(_max_diff(ours.m, norms), _max_diff(m, norms))
            params.append((ours.m, m))
    row.update(_compare([(ours, theirs, params)], {ours: x}, g, seed))
    return _with_verdict(dict(variant=variant, peft_switch=PEFT_SWITCH[variant], **row,
                              init_vs_peft=init_vs_peft, m_vs_row_norms=m_vs_row_norms, params=_trained(ours),
                              peft_params=_trained(model), formula=trainable_params(variant, d_in, d_out, r),
                              scale=ours.scale, peft_scale=theirs.scaling["default"], d_in=d_in, d_out=d_out,
                              r=r, alpha=alpha, dropout=dropout))


def check_vera(d_in: int = 64, d_out: int = 48, r: int = 8, dropout: float = 0.1, batch: int = 32,
               seed: int = 0) -> dict:
    """VeRA by hand against peft on two layers of different shapes sharing one random pair.

    The stand-in model has "proj" (d_in -> d_out) and "up" (d_in // 2 -> 2 d_out), so the shared
    matrices are r x d_in and 2 d_out x r and each layer takes its own slice of them.

    Returns:
        A row like `check_layer`'s, the numbers covering both layers (the larger of the two):
        shared_vs_peft: |our shared pair - peft's vera_A, vera_B| (drawn from the same seed, not copied);
        shared_shapes: their shapes; init_vs_peft: |our d, b at the start - peft's|; params, peft_params
        and formula count both layers; scale and peft_scale are None (VeRA has none).
    """
    from peft import VeraConfig, get_peft_model

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    shapes = {"proj": (d_in, d_out), "up": (d_in // 2, 2 * d_out)}
    originals = {name: nn.Linear(i, o) for name, (i, o) in shapes.items()}
    largest_in, largest_out = (max(sizes) for sizes in zip(*shapes.values(), strict=True))
    A, B = vera_shared_matrices(r, largest_in, largest_out, seed)
    config = VeraConfig(r=r, target_modules=list(shapes), vera_dropout=dropout, projection_prng_key=seed)
    model = get_peft_model(_StandIn(**{k: copy.deepcopy(v) for k, v in originals.items()}), config)
    pairs, x = [], {}
    row = dict(init_vs_base=0.0, peft_init_vs_base=0.0, init_vs_peft=0.0)
    for name, original in originals.items():
        ours = VeRALinear(copy.deepcopy(original), A, B, dropout=dropout).eval()
        theirs = getattr(model.base_model.model, name).eval()
        d, b = theirs.vera_lambda_d["default"], theirs.vera_lambda_b["default"]
        x[ours] = torch.randn(batch, original.in_features, generator=g)
        with torch.no_grad():
            y = original(x[ours])
            row["init_vs_base"] = max(row["init_vs_base"], _max_diff(ours(x[ours]), y))
            row["peft_init_vs_base"] = max(row["peft_init_vs_base"], _max_diff(theirs(x[ours]), y))
            row["init_vs_peft"] = max(row["init_vs_peft"], _max_diff(ours.d, d), _max_diff(ours.b, b))
        pairs.append((ours, theirs, [(ours.d, d), (ours.b, b)]))
    shared = model.base_model.vera_A["default"], model.base_model.vera_B["default"]
    row.update(shared_vs_peft=max(_max_diff(A, shared[0]), _max_diff(B, shared[1])),
               shared_shapes=(tuple(A.shape), tuple(B.shape)),
               peft_shared_shapes=tuple(tuple(t.shape) for t in shared))
    row.update(_compare(pairs, x, g, seed))
    return _with_verdict(dict(variant="vera", peft_switch=PEFT_SWITCH["vera"], **row,
                              params=sum(_trained(ours) for ours, _, _ in pairs), peft_params=_trained(model),
                              formula=sum(trainable_params("vera", i, o, r) for i, o in shapes.values()),
                              scale=None, peft_scale=None, d_in=d_in, d_out=d_out, r=r, alpha=None,
                              dropout=dropout))


def _groups_by_parameter(groups: list[dict]) -> dict[int, tuple[float, float]]:
    """id(parameter) -> (learning rate, weight decay), from optimizer-style param groups."""
    return {id(p): (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}


def _lr_mismatch(ours: dict, theirs: dict) -> float:
    """Largest learning-rate difference over all parameters; inf if the sets or weight decays differ."""
    if ours.keys() != theirs.keys() or any(ours[k][1] != theirs[k][1] for k in ours):
        return float("inf")
    return max(abs(ours[k][0] - theirs[k][0]) for k in ours)


def check_loraplus(d_in: int = 64, d_out: int = 48, r: int = 8, alpha: float = 16.0, lr: float = 1e-4,
                   ratio: float = 16.0, weight_decay: float = 0.01, seed: int = 0) -> dict:
    """LoRA+'s param groups by hand against peft's `create_loraplus_optimizer`, parameter by parameter.

    Two models: plain LoRA on one Linear "proj" (the row's numbers), and an edge-case model: LoRA with
    DoRA on an nn.Embedding "emb" and on "proj" (its bias trained too, bias="lora_only"), plus a trained
    LayerNorm "norm" (modules_to_save), to see where embeddings, DoRA's m, biases and norms go.

    Returns:
        A row: vs_peft, edge_vs_peft: the largest learning-rate difference over all parameters
        (inf if a parameter is missing or its weight decay differs); ratio_B_over_A: B's rate over A's
        in our groups; edge_groups, peft_edge_groups: parameter names per group (ours, peft's);
        peft_weight_decay_when_passed_as_weight_decay: the largest weight decay in peft's groups when
        `weight_decay=` is passed instead of `loraplus_weight_decay=`; params, peft_params (numbers in
        the groups), formula; scale, peft_scale (LoRA's alpha / r).
    """
    from peft import get_peft_model
    from peft.optimizers import create_loraplus_optimizer

    torch.manual_seed(seed)
    model = get_peft_model(_StandIn(proj=nn.Linear(d_in, d_out)), _lora_config("lora", r, alpha, 0.0))
    ours = loraplus_param_groups(model, lr, ratio, weight_decay)
    theirs = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio,
                                       loraplus_weight_decay=weight_decay).param_groups
    rates = _groups_by_parameter(ours)
    layer = model.base_model.model.proj
    rate_A, rate_B = (rates[id(getattr(layer, name)["default"].weight)][0] for name in ("lora_A", "lora_B"))
    ignored = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio,
                                        weight_decay=0.1).param_groups

    edge = _StandIn(emb=nn.Embedding(100, d_in), proj=nn.Linear(d_in, d_out), norm=nn.LayerNorm(d_out))
    config = _lora_config("dora", r, alpha, 0.0, target_modules=["emb", "proj"], bias="lora_only",
                          modules_to_save=["norm"])
    edge = get_peft_model(edge, config)
    edge_ours = loraplus_param_groups(edge, lr, ratio, weight_decay)
    edge_theirs = create_loraplus_optimizer(edge, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio,
                                            loraplus_weight_decay=weight_decay).param_groups
    names = {id(p): n.removeprefix("base_model.model.") for n, p in edge.named_parameters()}

    def named(groups: list[dict]) -> dict[str, list[str]]:
        keys = ("A", "embedding", "B", "B_no_decay")  # both lists of groups come in this order
        return {key: sorted(names[id(p)] for p in group["params"])
                for key, group in zip(keys, groups, strict=True)}

    return _with_verdict(dict(variant="loraplus", peft_switch=PEFT_SWITCH["loraplus"],
                vs_peft=_lr_mismatch(rates, _groups_by_parameter(theirs)),
                edge_vs_peft=_lr_mismatch(_groups_by_parameter(edge_ours), _groups_by_parameter(edge_theirs)),
                ratio_B_over_A=rate_B / rate_A,
                edge_groups=named(edge_ours), peft_edge_groups=named(edge_theirs),
                peft_weight_decay_when_passed_as_weight_decay=max(group["weight_decay"] for group in ignored),
                params=sum(p.numel() for group in ours for p in group["params"]),
                peft_params=sum(p.numel() for group in theirs for p in group["params"]),
                formula=trainable_params("loraplus", d_in, d_out, r), scale=layer.scaling["default"],
                peft_scale=layer.scaling["default"], lr=lr, ratio=ratio, d_in=d_in, d_out=d_out, r=r,
                alpha=alpha))


def check_all(seed: int = 0) -> list[dict]:
    """One row per variant (`VARIANTS`' order) at the checks' default sizes, for notebook 07's table."""
    rows = {name: check_layer(name, seed=seed) for name in _HAND}
    rows.update(loraplus=check_loraplus(seed=seed), vera=check_vera(seed=seed))
    return [rows[name] for name in VARIANTS]


def format_table(rows: list[dict]) -> str:
    """`check_all`'s rows as a text table: differences relative to the size compared, counts, scale, verdict.

    vs peft: outputs in eval mode; dropout: in training mode, same masks; grads: gradients of the trained
    parameters; start: the output at the start against the original layer; merged: peft's merged layer
    against ours unmerged. For LoRA+ "vs peft" is the largest learning-rate difference (absolute).
    """
    def rel(row: dict, key: str, size: str = "max_abs_output") -> str:
        return "-" if row.get(key) is None else f"{row[key] / row[size]:.0e}"

    head = (f"{'variant':<9}{'peft':<26}{'vs peft':>8}{'dropout':>8}{'grads':>7}{'start':>7}{'merged':>7}"
            f"{'params ours/peft/formula':>26}{'scale':>6}  agrees")
    lines = [head, "-" * len(head)]
    for row in rows:
        if row["variant"] == "loraplus":
            diffs = [f"{row['vs_peft']:.0e}"] + ["-"] * 4
        else:
            diffs = [rel(row, "vs_peft"), rel(row, "vs_peft_dropout"),
                     rel(row, "grad_vs_peft", "max_abs_grad"), rel(row, "init_vs_base"),
                     rel(row, "peft_merged_vs_ours")]
        counts = f"{row['params']}/{row['peft_params']}/{row['formula']}"
        scale = "-" if row["scale"] is None else f"{row['scale']:.2f}"
        cells = "".join(f"{d:>{w}}" for d, w in zip(diffs, (8, 8, 7, 7, 7), strict=True))
        lines.append(f"{row['variant']:<9}{row['peft_switch']:<26}{cells}{counts:>26}{scale:>6}  "
                     + ("yes" if row["agrees"] else "NO"))
    return "\n".join(lines)
