"""What the LoRA rank buys, measured: parameters, file size, recovery, scaling rules, SFT, merging.

Notebook `02_lora_rank_tradeoff` calls these functions; every number it shows comes from them.

1. Parameter math (`parameter_table`, `peft_trainable_params`, `adapter_file_report`): a LoRA
   adapter on a d_in x d_out layer has r * (d_in + d_out) parameters; its safetensors file holds
   bytes-per-value times that, plus a small JSON header.
2. Controlled low-rank recovery (`make_problem`, `fit_lora`, `recovery_sweep`, `knee`): one frozen
   linear layer, a target update of known rank plus noise, LoRA fitted per rank. For inputs drawn
   from N(0, I) the excess held-out error of a fitted update is exactly
   ||dW_fit - dW_true||_F^2, so we report the relative Frobenius error of the update.
3. Scaling rules (`scaling_sweep`): the update is scaled by alpha / r (alpha fixed), 1 (alpha = r)
   or alpha / sqrt(r) (rsLoRA, arXiv 2312.03732); a learning-rate sweep per rank shows which rule
   keeps the best learning rate where it is when the rank changes.
4. SFT sweep (`sft_sweep`): the cpu profile's tiny model on the course's `recall` task. Scale rule
   rsLoRA (alpha / sqrt(r)); each rank's learning rate searched on a ladder (`lr_extensions`);
   full fine-tuning; extra low learning rates at one rank; then, at that rank's best learning
   rate, attention-only vs MLP-only at equal parameter count, dropout, no warmup and QLoRA
   (`followup_configs`); then every compared run with two more seeds (`seed_repeats`), so that each
   verdict can be held against its seed-to-seed spread (`lessons.verdicts`). Every run is also scored
   on the tiny model's pretraining facts (`pretraining_facts`: what it forgot). `accumulation_check`
   compares a batch with its gradient-accumulated split. On the cpu profile a plain PyTorch loop
   trains (fp32 base, LoRA in fp32: the SFTTrainer's fixed costs would dominate runs this short), in
   `workers` processes of one thread;
   on a GPU profile the same configs go through `lora_lab.training.train.sft` (QLoRA, the course's real
   pipeline), each checked by `lora_lab.estimation.gpu_runs.preflight` first.
5. Merging (`merge_report`): logits of the merged and the unmerged model, and forward-pass timings.

Results are cached as JSON under ``<cache root>/rank/`` (`cached`; `lora_lab.runtime.units`), keyed by everything that shapes them,
so a re-run of the notebook only plots.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lora_lab.estimation import gpu_runs, vram
from lora_lab.lessons import sft, verdicts
from lora_lab.lessons.counting import adapter_bytes
from lora_lab.runtime import profiles, units
from lora_lab.training import models, sft_data

#: Ranks the parameter table and the recovery experiment cover.
RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Bytes per stored value by dtype name.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Scaling rules of the LoRA update: name -> what peft multiplies B @ A by.
SCALING_RULES = ("alpha fixed (alpha/r)", "alpha = r (scale 1)", "rsLoRA (alpha/sqrt r)")

# ---------------------------------------------------------------------------------------------
# Cache


def cache_dir() -> Path:
    """Where results are cached: the course's cache root (`lora_lab.runtime.units`, $LORA_LAB_CACHE) / rank."""
    return units.cache_dir("rank")


def _key(payload: dict) -> str:
    import peft

    return units.cache_key({"payload": payload, "peft": peft.__version__})


def cached(name: str, payload: dict, compute: Callable[[], dict | list], use_cache: bool = True):
    """Return the cached result for (`name`, `payload`) or compute, save and return it.

    Args:
        name: file name prefix (e.g. "recovery").
        payload: every setting that shapes the result; its hash is part of the file name.
        compute: builds the result (JSON-serialisable) when there is no cached copy.
        use_cache: False always recomputes (and still writes the cache).
    """
    path = cache_dir() / f"{name}-{_key(payload)}.json"
    if use_cache and path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch threads (None: leave as is). Tiny matmuls run best on one."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# 1. Parameter math


def target_modules(arch: vram.Arch, name: str):
    """peft `target_modules` for a named target set of an architecture.

    Args:
        arch: from `vram.load_arch`.
        name: "q,v" (the LoRA paper's choice), "attention", "mlp" or "all-linear".

    Returns:
        "all-linear" or a tuple of module names that exist in `arch` (Phi-3 fuses q, k and v into
        qkv_proj, so "q,v" and "attention" adapt qkv_proj there).

    Raises:
        ValueError: for an unknown set name.
    """
    names = {li.name for li in arch.linears}
    if name == "all-linear":
        return "all-linear"
    if name == "q,v":
        return ("qkv_proj",) if "qkv_proj" in names else ("q_proj", "v_proj")
    if name == "attention":
        return tuple(li.name for li in arch.linears if li.source in ("attn_in", "attn_out"))
    if name == "mlp":
        return tuple(li.name for li in arch.linears if li.source in ("mlp_in", "mlp_act"))
    raise ValueError(f"Unknown target set {name!r}: choose q,v, attention, mlp or all-linear.")


def lora_params(model, rank: int, targets="all-linear") -> int:
    """Trainable LoRA parameters: layers x sum over adapted matrices of r * (d_in + d_out).

    Args:
        model: anything `vram.load_arch` reads (preset name, config, path, Arch).
        rank: LoRA rank r.
        targets: peft target_modules ("all-linear" or module names).
    """
    return vram.lora_params(vram.load_arch(model), rank, targets)


def parameter_table(model, ranks: Sequence[int] = RANKS, target_sets: Sequence[str] = ("q,v", "all-linear"),
                    dtype: str = "float32") -> list[dict]:
    """Trainable parameters, share of the base model and predicted adapter size per rank and target set.

    Returns:
        One row per (target set, rank): targets, rank, params, share (of the base model's
        parameters), adapter_bytes (tensor bytes at `dtype`).
    """
    arch = vram.load_arch(model)
    rows = []
    for name in target_sets:
        targets = target_modules(arch, name)
        for r in ranks:
            n = vram.lora_params(arch, r, targets)
            rows.append(dict(targets=name, rank=r, params=n, share=n / arch.total_params,
                             adapter_bytes=adapter_bytes(n, DTYPE_BYTES[dtype])))
    return rows


def meta_model(config: dict):
    """A causal LM built on the meta device from a config.json dict: shapes only, no memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if not k.startswith("_")})
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def peft_trainable_params(config: dict, rank: int, targets="all-linear") -> int:
    """peft's own count of trainable parameters for LoRA on a meta-device model built from `config`."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(meta_model(config), LoraConfig(r=rank, lora_alpha=rank, target_modules=
                                                           targets if isinstance(targets, str) else list(targets)))
    trainable, _ = model.get_nb_trainable_parameters()
    return int(trainable)


def adapter_file_report(model, rank: int, targets="all-linear", dtype: str = "float32", seed: int = 0) -> dict:
    """Attach LoRA to a real (small) model, `save_pretrained` it, and compare the file with the formula.

    Args:
        model: a loaded causal LM (not yet PEFT-wrapped); it is wrapped here and unwrapped again.
        rank: LoRA rank.
        targets: peft target_modules.
        dtype: "float32" (peft's default) or "float16"/"bfloat16": the adapter is cast before saving.
        seed: LoRA initialisation seed.

    Returns:
        rank, dtype, params (peft's count), predicted_tensor_bytes, file_bytes, header_bytes,
        tensor_bytes (file minus header).
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=
                                                  targets if isinstance(targets, str) else list(targets)))
    try:
        trainable, _ = peft_model.get_nb_trainable_parameters()
        arch = vram.load_arch(model.config)
        predicted = adapter_bytes(vram.lora_params(arch, rank, targets), DTYPE_BYTES[dtype])
        if dtype != "float32":
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.data = p.data.to(getattr(torch, dtype))
        with tempfile.TemporaryDirectory() as tmp:
            peft_model.save_pretrained(tmp)
            weights = Path(tmp) / "adapter_model.safetensors"
            file_bytes = weights.stat().st_size
            header = models.read_safetensors(weights).header_bytes
    finally:
        peft_model.unload()  # back to the plain base model (adapters removed)
    return dict(rank=rank, dtype=dtype, params=int(trainable), predicted_tensor_bytes=predicted,
                file_bytes=file_bytes, header_bytes=header, tensor_bytes=file_bytes - header)


# ---------------------------------------------------------------------------------------------
# 2. Controlled low-rank recovery


class _OneLayer(torch.nn.Module):
    """A single frozen linear layer (what peft adapts in the controlled experiment)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.layer.weight.data.copy_(weight)
        self.layer.weight.requires_grad_(False)

    def forward(self, x):
        return self.layer(x)


@dataclass(frozen=True)
class Problem:
    """A controlled task: y = (W0 + dW) x + noise, dW of known rank, x ~ N(0, I)."""

    d: int  # layer width (d_in = d_out)
    true_rank: int  # rank of the target update dW
    n_train: int  # training examples
    noise: float  # standard deviation of the label noise, per output
    seed: int  # seeds W0, dW, the inputs and the noise


def make_problem(p: Problem, spectrum: str = "flat") -> dict:
    """The tensors of a `Problem`: W0, dW (||dW||_F^2 = d), and the data in compressed form.

    Args:
        p: the problem.
        spectrum: "flat" (true_rank equal singular values) or "decaying" (singular value i of
            dW proportional to 1 / i over all d directions: `true_rank` is ignored, every rank has
            more to learn).

    Returns:
        w0, dw, x, y, n, const. Least squares only sees the data through X^T X and X^T Y, so with
        X = QR the loss ||Y - X W^T||^2 equals ||Q^T Y - R W^T||^2 + ||Y||^2 - ||Q^T Y||^2. We keep
        x = R and y = Q^T Y (d rows instead of n) and the constant: the same loss, far cheaper steps.
    """
    g = torch.Generator().manual_seed(p.seed)
    w0 = torch.randn(p.d, p.d, generator=g) / math.sqrt(p.d)
    k = p.d if spectrum == "decaying" else p.true_rank
    u, _ = torch.linalg.qr(torch.randn(p.d, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(p.d, k, generator=g))
    s = 1 / torch.arange(1, k + 1, dtype=torch.float32) if spectrum == "decaying" else torch.ones(k)
    s = s * math.sqrt(p.d) / s.norm()  # ||dW||_F^2 = d: each output's signal variance is about 1
    dw = (u * s) @ v.T
    x = torch.randn(p.n_train, p.d, generator=g)
    y = x @ (w0 + dw).T + p.noise * torch.randn(p.n_train, p.d, generator=g)
    q, r = torch.linalg.qr(x)
    qty = q.T @ y
    return dict(w0=w0, dw=dw, x=r, y=qty, n=p.n_train, const=(y.square().sum() - qty.square().sum()).item())


def scale_for(rule: str, rank: int, alpha: float) -> tuple[float, bool]:
    """(lora_alpha, use_rslora) that implement a scaling rule at this rank.

    "alpha fixed (alpha/r)": lora_alpha = alpha; "alpha = r (scale 1)": lora_alpha = r;
    "rsLoRA (alpha/sqrt r)": lora_alpha = alpha with use_rslora=True.
    """
    if rule == SCALING_RULES[0]:
        return alpha, False
    if rule == SCALING_RULES[1]:
        return float(rank), False
    if rule == SCALING_RULES[2]:
        return alpha, True
    raise ValueError(f"Unknown scaling rule {rule!r}: choose one of {SCALING_RULES}.")


def fit_lora(tensors: dict, rank: int, *, steps: int = 300, lr: float = 1e-2, rule: str = SCALING_RULES[2],
             alpha: float = 8.0, seed: int = 0, record_every: int = 0) -> dict:
    """Fit a peft LoRA adapter on the frozen layer W0 to (X, Y) with full-batch Adam and cosine decay.

    Args:
        tensors: from `make_problem`.
        rank: LoRA rank.
        steps: Adam steps.
        lr: peak learning rate.
        rule: one of SCALING_RULES.
        alpha: the alpha of the "alpha fixed" and rsLoRA rules.
        seed: LoRA initialisation (A random, B zero, as peft does).
        record_every: record the relative update error every this many steps (0: never).

    Returns:
        error: ||dW_fit - dW||_F / ||dW||_F (the excess held-out error for x ~ N(0, I)),
        train_mse, curve [(step, error)], diverged (loss not finite).
    """
    from peft import LoraConfig, get_peft_model

    w0, dw, x, y, n, const = (tensors[k] for k in ("w0", "dw", "x", "y", "n", "const"))
    lora_alpha, rslora = scale_for(rule, rank, alpha)
    torch.manual_seed(seed)
    model = get_peft_model(_OneLayer(w0), LoraConfig(r=rank, lora_alpha=lora_alpha, use_rslora=rslora,
                                                     target_modules=["layer"]))
    layer = model.base_model.model.layer
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    norm = dw.norm().item()

    def update_error() -> float:
        with torch.no_grad():
            fitted = layer.get_delta_weight("default")
            return ((fitted - dw).norm() / norm).item()

    curve, diverged, loss = [], False, torch.tensor(0.0)
    for step in range(steps):
        if record_every and step % record_every == 0:
            curve.append((step, update_error()))
        loss = ((model(x) - y).square().sum() + const) / (n * w0.shape[0])  # the mean squared error on (X, Y)
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    error = float("inf") if diverged else update_error()
    if record_every:
        curve.append((steps, error))
    return dict(rank=rank, error=error, train_mse=float(loss.item()), curve=curve, diverged=diverged)


def recovery_sweep(d: int = 128, true_rank: int = 8, n_trains: Sequence[int] = (96, 1024, 16384),
                   ranks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128), noise: float = 1.0, steps: int = 200,
                   lr: float = 1e-2, seed: int = 0) -> list[dict]:
    """Relative update error per rank for each training-set size (rsLoRA scaling, Adam).

    Returns:
        One row per (n_train, rank): n_train, rank, error, train_mse.
    """
    rows = []
    with torch_threads(1):
        for n in n_trains:
            tensors = make_problem(Problem(d, true_rank, n, noise, seed))
            for r in ranks:
                fit = fit_lora(tensors, r, steps=steps, lr=lr, seed=seed)
                rows.append(dict(n_train=n, rank=r, error=fit["error"], train_mse=fit["train_mse"]))
    return rows


def knee(ranks: Sequence[int], errors: Sequence[float], tol: float = 0.25) -> int:
    """The smallest rank whose error is within `tol` (relative) of the best error over all ranks.

    Beyond the knee, more rank buys (almost) nothing. With `tol`=0.25 a rank counts as "there"
    when its error is at most 1.25 x the best.
    """
    best = min(errors)
    for r, e in sorted(zip(ranks, errors, strict=True)):
        if e <= best * (1 + tol):
            return r
    return max(ranks)


# ---------------------------------------------------------------------------------------------
# 3. Scaling rules at fixed learning rates


def scaling_sweep(ranks: Sequence[int] = (2, 8, 32, 128),
                  lrs: Sequence[float] = (5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2e-1, 5e-1),
                  rules: Sequence[str] = SCALING_RULES, d: int = 128, n_train: int = 4096,
                  noise: float = 0.5, steps: int = 60, alpha: float = 8.0, seed: int = 0,
                  curve_lr: float = 1e-2) -> dict:
    """Short fits (a fixed step budget) per scaling rule, rank and learning rate.

    The target update has a decaying spectrum over all d directions, so every rank has more to
    learn and the best fit improves with rank; the budget is
    short on purpose: the scaling rule decides how far one step moves the update, which is what
    a short fine-tuning run feels.

    Returns:
        grid: rows (rule, rank, lr, error); curves: {rule: {rank: [(step, error)]}} at `curve_lr`;
        best_lr: {rule: {rank: lr with the lowest error}}; spread: {rule: max/min of best_lr over ranks}.
    """
    tensors = make_problem(Problem(d, d, n_train, noise, seed), spectrum="decaying")
    grid, curves = [], {}
    with torch_threads(1):
        for rule in rules:
            curves[rule] = {}
            for r in ranks:
                for lr in lrs:
                    rec = max(1, steps // 15) if lr == curve_lr else 0
                    fit = fit_lora(tensors, r, steps=steps, lr=lr, rule=rule, alpha=alpha, seed=seed,
                                   record_every=rec)
                    grid.append(dict(rule=rule, rank=r, lr=lr, error=fit["error"]))
                    if rec:
                        curves[rule][str(r)] = fit["curve"]
    best_lr = {}
    for rule in rules:
        best_lr[rule] = {}
        for r in ranks:
            cells = [g for g in grid if g["rule"] == rule and g["rank"] == r]
            best_lr[rule][str(r)] = min(cells, key=lambda g: g["error"])["lr"]
    spread = {rule: max(v.values()) / min(v.values()) for rule, v in best_lr.items()}
    return dict(grid=grid, curves=curves, best_lr=best_lr, spread=spread, ranks=list(ranks), lrs=list(lrs),
                alpha=alpha, steps=steps, curve_lr=curve_lr)


# ---------------------------------------------------------------------------------------------
# 4. SFT sweep on the course model


#: The sweep's scaling rule: rsLoRA (Kalajdzievski, arXiv 2312.03732; peft `use_rslora=True`).
SWEEP_RULE = SCALING_RULES[2]


@dataclass(frozen=True)
class SweepConfig:
    """One training run of the sweep."""

    name: str  # label in tables and plots
    method: str  # "lora", "qlora" (LoRA on the base rounded to NF4 by bitsandbytes) or "full"
    rank: int | None = None  # LoRA rank (None for full fine-tuning)
    targets: str | tuple[str, ...] = "all-linear"  # peft target_modules
    lr: float | None = None  # peak learning rate (None: the plan's)
    group: str = "rank"  # "rank" (rank x LR grid), "full", "targets", "lr", "dropout", "warmup", "qlora" or "repeat"
    dropout: float | None = None  # lora_dropout (None: the plan's)
    warmup: bool = True  # False: no warmup, the run starts at its peak learning rate
    seed: int = 0  # added to the profile's seed ("repeat" runs: the compared runs again with seeds 1, 2, ...)


@dataclass(frozen=True)
class SweepPlan:
    """What the SFT sweep runs on a profile (the cpu plan fits the notebook's 3-minute budget)."""

    ranks: tuple[int, ...]  # LoRA ranks on all linear layers
    steps: int  # optimizer steps per run
    lora_lr: float  # the LR every rank starts its search from (and the t4 plan's only LoRA LR)
    full_lr: float  # peak LR of the full fine-tuning baseline
    alpha: float  # lora_alpha; with rsLoRA the update is scaled by alpha / sqrt(r)
    lr_rank: int  # the rank of the learning-rate, dropout, warmup, target and seed runs
    lora_lrs: tuple[float, ...]  # extra LRs tried at lr_rank (the low end a common rule of thumb names)
    full_lrs: tuple[float, ...]  # extra full fine-tuning LRs
    equal_budget_unit: int  # attention-only and MLP-only ranks are multiples of the smallest equal pair
    warmup_steps: int = 5  # linear warmup, then linear decay to 0
    threads: int | None = 1  # torch threads per run (cpu: 1 is fastest for a tiny model)
    engine: str = "loop"  # "loop" (plain PyTorch, cpu) or "trainer" (lora_lab.training.train.sft, GPU profiles)
    rule: str = SWEEP_RULE  # one of SCALING_RULES: how alpha and r set the scale
    lr_ladder: tuple[float, ...] = ()  # per-rank LR search: start at lora_lr and its two neighbours here,
    # then step outwards while the best LR sits at an edge of what was tried (empty: no search)
    max_extensions: int = 2  # outward steps of that search per rank
    dropout: float = 0.0  # lora_dropout of every run but the dropout runs
    dropouts: tuple[float, ...] = ()  # the dropout runs at lr_rank (the one equal to `dropout` is shared)
    warmup_check: bool = False  # one run at lr_rank and its best LR without warmup
    qlora_check: bool = False  # one QLoRA run (NF4 base) at lr_rank and its best LR (loop engine)
    seeds: int = 1  # seeds of every run `compared_runs` lists; lessons.verdicts needs 3 before it calls
    # any difference measured
    targets_check: bool = True  # attention-only vs MLP-only at equal parameters, near lr_rank
    workers: int = 1  # processes that train at once (cpu: one per core, each on one thread)
    n_eval: int | None = None  # held-out examples each run is scored on (None: the profile's n_eval)
    grad_accum: int | None = None  # micro-steps per optimizer step of each run (None: the profile's)


PLANS = {
    # 2 cores: two processes of one thread each. ~25 runs x 100 steps; the search around 3e-3 (the cpu
    # profile's LR) brackets each rank's best LR.
    "tiny": SweepPlan(ranks=(1, 4, 16, 64), steps=100, lora_lr=3e-3, full_lr=1e-3, alpha=8.0, lr_rank=16,
                     lora_lrs=(2e-5, 2e-4), full_lrs=(), equal_budget_unit=1,
                     lr_ladder=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2), dropouts=(0.0, 0.05, 0.1),
                     warmup_check=True, qlora_check=True, seeds=3, workers=2),
    # Qwen2.5-1.5B in 4 bits on a T4, within notebook 02's 20 minutes (lora_lab.estimation.t4_budget: 7 runs of about 2
    # minutes each, with loading and scoring): 40 steps of batch 4 without accumulation (cut from 4 x 4 to fit),
    # each scored on 32 held-out examples. Full fine-tuning is skipped by the preflight. rsLoRA with alpha 8
    # gives r=16 the t4 profile's scale (32 / 16 = 2); one LR per rank (no search); attention vs MLP only on
    # cpu (the Colab budget goes to the learning rate and dropout).
    "t4": SweepPlan(ranks=(4, 16, 64), steps=40, lora_lr=2e-4, full_lr=2e-5, alpha=8.0, lr_rank=16,
                    lora_lrs=(2e-5, 1e-3), full_lrs=(), equal_budget_unit=1, threads=None, engine="trainer",
                    dropout=0.05, dropouts=(0.0, 0.05, 0.1), targets_check=False, grad_accum=1, n_eval=32),
}


def lora_alpha_for(plan: SweepPlan, rank: int) -> tuple[float, bool]:
    """(lora_alpha, use_rslora) of a run at `rank` under the plan's scaling rule."""
    return scale_for(plan.rule, rank, plan.alpha)


def equal_param_ranks(model, set_a: str = "attention", set_b: str = "mlp", near: int | None = None) -> tuple[int, int]:
    """Ranks (r_a, r_b) that give target sets A and B exactly the same number of LoRA parameters.

    The per-rank costs are c_a = sum of (d_in + d_out) over A's matrices and c_b likewise;
    r_a * c_a = r_b * c_b has its smallest solution at r_a = c_b / g, r_b = c_a / g with
    g = gcd(c_a, c_b). With `near`, the multiple of that pair whose parameter count is closest to
    all-linear LoRA at rank `near`.
    """
    arch = vram.load_arch(model)
    c_a = vram.lora_params(arch, 1, target_modules(arch, set_a)) // arch.num_layers
    c_b = vram.lora_params(arch, 1, target_modules(arch, set_b)) // arch.num_layers
    g = math.gcd(c_a, c_b)
    r_a, r_b = c_b // g, c_a // g
    if near is not None:
        goal = vram.lora_params(arch, near, "all-linear")
        unit = vram.lora_params(arch, r_a, target_modules(arch, set_a))
        k = max(1, round(goal / unit))
        r_a, r_b = k * r_a, k * r_b
    return r_a, r_b


def _lr_name(rank: int, lr: float) -> str:
    return f"r={rank} lr={lr:g}"


def _start_lrs(plan: SweepPlan) -> list[float]:
    """lora_lr and its neighbours on the ladder (just lora_lr without a ladder)."""
    if not plan.lr_ladder:
        return [plan.lora_lr]
    i = plan.lr_ladder.index(plan.lora_lr)
    return list(plan.lr_ladder[max(0, i - 1): i + 2])


def sweep_configs(plan: SweepPlan, model) -> list[SweepConfig]:
    """The runs that need no earlier result: each rank at its starting LRs, the extra LRs at lr_rank,
    full fine-tuning, and (without an LR search) attention vs MLP and the dropout runs at lora_lr."""
    runs = [SweepConfig(_lr_name(r, lr) if plan.lr_ladder else f"r={r}", "lora", r, "all-linear", lr, "rank")
            for r in plan.ranks for lr in _start_lrs(plan)]
    runs.append(SweepConfig("full", "full", None, "all-linear", plan.full_lr, "full"))
    for lr in plan.lora_lrs:
        if not any(c.rank == plan.lr_rank and c.lr == lr for c in runs):
            runs.append(SweepConfig(_lr_name(plan.lr_rank, lr), "lora", plan.lr_rank, "all-linear", lr, "lr"))
    for lr in plan.full_lrs:
        if lr != plan.full_lr:
            runs.append(SweepConfig(f"full lr={lr:g}", "full", None, "all-linear", lr, "lr"))
    if not plan.lr_ladder:
        runs += followup_configs(plan, model, plan.lora_lr)
    return runs


def lr_extensions(runs: Sequence[dict], plan: SweepPlan) -> list[SweepConfig]:
    """The next LR to try for each rank whose best LR so far is the lowest or highest it tried.

    Returns one config per such rank: the ladder's next value beyond that edge (none past the ladder's end).
    """
    extra = []
    for r in plan.ranks:
        tried = sorted({row["lr"] for row in runs if row["group"] == "rank" and row["rank"] == r})
        if not tried:
            continue
        best = min((row for row in runs if row["group"] == "rank" and row["rank"] == r), key=lambda x: x["eval_loss"])
        i = plan.lr_ladder.index(best["lr"])
        step = -1 if best["lr"] == tried[0] else 1 if best["lr"] == tried[-1] else 0
        if step and 0 <= i + step < len(plan.lr_ladder) and plan.lr_ladder[i + step] not in tried:
            lr = plan.lr_ladder[i + step]
            extra.append(SweepConfig(_lr_name(r, lr), "lora", r, "all-linear", lr, "rank"))
    return extra


def followup_configs(plan: SweepPlan, model, lr: float) -> list[SweepConfig]:
    """Runs at lr_rank and its best LR `lr`: attention vs MLP at equal parameters, dropout, warmup, seed."""
    arch = vram.load_arch(model)
    r_att, r_mlp = equal_param_ranks(arch, near=plan.lr_rank)
    runs = []
    if plan.targets_check:
        runs += [SweepConfig(f"attention r={r_att}", "lora", r_att, target_modules(arch, "attention"), lr, "targets"),
                 SweepConfig(f"mlp r={r_mlp}", "lora", r_mlp, target_modules(arch, "mlp"), lr, "targets")]
    for p in plan.dropouts:
        if p != plan.dropout:
            runs.append(SweepConfig(f"r={plan.lr_rank} dropout {p:g}", "lora", plan.lr_rank, "all-linear", lr,
                                    "dropout", dropout=p))
    if plan.warmup_check:
        runs.append(SweepConfig(f"r={plan.lr_rank} no warmup", "lora", plan.lr_rank, "all-linear", lr, "warmup",
                                warmup=False))
    if plan.qlora_check:
        runs.append(SweepConfig(f"qlora r={plan.lr_rank}", "qlora", plan.lr_rank, "all-linear", lr, "qlora"))
    return runs


#: The fields that make two runs the same configuration (a "repeat" differs from its run by the seed only).
_CONFIG_FIELDS = ("method", "rank", "targets", "lr", "dropout", "warmup")


def compared_runs(runs: Sequence[dict]) -> list[dict]:
    """The runs a lesson compares: each rank at its best LR, full fine-tuning, attention vs MLP, dropout, warmup,
    QLoRA, and the lowest learning rate tried at lr_rank (against that rank's best)."""
    lows = [r for r in runs if r["group"] == "lr" and r["method"] == "lora"]
    return (best_runs(runs) + [r for r in runs if r["group"] in ("full", "targets", "dropout", "warmup", "qlora")]
            + ([min(lows, key=lambda r: r["lr"])] if lows else []))


def seed_repeats(plan: SweepPlan, runs: Sequence[dict]) -> list[SweepConfig]:
    """Every compared run again with seeds 1 .. plan.seeds - 1 (group "repeat"): the seed-to-seed spread."""
    return [SweepConfig(f"{row['name']} seed {s}", row["method"], row["rank"],
                        row["targets"] if isinstance(row["targets"], str) else tuple(row["targets"]), row["lr"],
                        "repeat", dropout=row["dropout"], warmup=row["warmup"], seed=s)
            for row in compared_runs(runs) for s in range(1, plan.seeds)]


def seed_values(runs: Sequence[dict], row: dict, key: str = "eval_loss") -> list[float]:
    """`row[key]` and the same value of each of its repeats with other seeds (lessons.verdicts compares these)."""
    return [row[key]] + [r[key] for r in runs if r["group"] == "repeat" and r["seed"] != row["seed"]
                         and all(r[f] == row[f] for f in _CONFIG_FIELDS)]


def seed_mean(runs: Sequence[dict], row: dict, key: str = "eval_loss") -> float:
    """The mean of `seed_values`: what a table or a figure shows for a run measured with several seeds."""
    return statistics.fmean(seed_values(runs, row, key))


#: The measures a verdict can compare: what each is called in a sentence, and whether lower is better.
METRICS = {"eval_loss": ("held-out loss", True), "exact_match": ("exact match", False),
           "facts_loss": ("loss on pretraining facts", True)}


def verdict(runs: Sequence[dict], a: dict, b: dict, label_a: str | None = None, label_b: str | None = None,
            key: str = "eval_loss") -> verdicts.Verdict:
    """Run `a` against run `b` on `key` (one of METRICS), each with its repeats (`seed_values`), by
    `lessons.verdicts.compare`."""
    metric, lower_is_better = METRICS[key]
    return verdicts.compare(label_a or a["name"], seed_values(runs, a, key), label_b or b["name"],
                            seed_values(runs, b, key), metric=metric, lower_is_better=lower_is_better)


def best_rank_run(runs: Sequence[dict]) -> dict:
    """Among the ranks at their best LR, the run with the lowest held-out loss averaged over its seeds."""
    return min(best_runs(runs), key=lambda r: seed_mean(runs, r))


def rank_verdicts(runs: Sequence[dict]) -> dict[int, verdicts.Verdict]:
    """{rank: that rank against the best rank}, each at its best LR: which ranks this sweep can tell apart."""
    best = best_rank_run(runs)
    return {r["rank"]: verdict(runs, r, best, f"r={r['rank']}", f"r={best['rank']}")
            for r in best_runs(runs) if r is not best}


def smallest_good_rank(runs: Sequence[dict]) -> int:
    """The smallest rank that the sweep cannot tell from the best one (or the best one itself)."""
    return min([best_rank_run(runs)["rank"]] + [r for r, v in rank_verdicts(runs).items() if not v.measurable])


def _first_batch(train_set, batch_size: int, tokenizer, seed: int) -> dict:
    return next(sft.shuffled_batches(train_set["input_ids"], train_set["labels"], batch_size=batch_size, steps=1,
                                     pad_id=tokenizer.pad_token_id, seed=seed))


def load_base(path: str, nf4: bool = False):
    """The base model in fp32, or with its linear weights rounded to NF4 (`nf4`: bitsandbytes, fp32 compute)."""
    from transformers import AutoModelForCausalLM

    quantized = dict(quantization_config=models.bnb_config(compute_dtype=torch.float32)) if nf4 else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **quantized)
    model.config.use_cache = False
    return model


def _wrap(model, cfg: SweepConfig, alpha: float, seed: int, use_rslora: bool = False, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    if cfg.method == "full":
        return model
    torch.manual_seed(seed)
    targets = cfg.targets if isinstance(cfg.targets, str) else list(cfg.targets)
    return get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=alpha, lora_dropout=dropout, use_rslora=use_rslora,
                                            target_modules=targets, bias="none", task_type="CAUSAL_LM"))


def _wrap_for(base, cfg: SweepConfig, plan: SweepPlan, seed: int):
    """A fresh copy of `base` with the run's adapter (scale by the plan's rule, the run's dropout)."""
    import copy

    alpha, rslora = lora_alpha_for(plan, cfg.rank) if cfg.method != "full" else (plan.alpha, False)
    dropout = plan.dropout if cfg.dropout is None else cfg.dropout
    return _wrap(copy.deepcopy(base), cfg, alpha, seed, use_rslora=rslora, dropout=dropout)


def run_one(cfg: SweepConfig, plan: SweepPlan, model_path: str, train_set, eval_set, *, batch_size: int,
            tokenizer, seed: int = 0, base=None) -> dict:
    """Train one sweep config with the plain loop and measure it (cpu engine).

    Args:
        base: the loaded base model (copied, never changed); loaded from `model_path` when None.

    Returns:
        The config's fields plus trainable (parameters), memory (bytes of one training step by
        `lora_lab.estimation.memory.measure_step`: weights + gradients + optimizer states + saved activations,
        and each category), seconds_per_step, eval_loss, exact_match, final_train_loss, losses, and
        facts_loss, facts_accuracy (`pretraining_facts`).
    """
    from lora_lab.estimation import memory

    base = base if base is not None else load_base(model_path, nf4=cfg.method == "qlora")
    seed = seed + cfg.seed
    lr = cfg.lr or (plan.full_lr if cfg.method == "full" else plan.lora_lr)
    # Memory of one step, measured on a fresh copy (the step changes the weights).
    probe = _wrap_for(base, cfg, plan, seed)
    opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=lr)
    measured = memory.measure_step(probe, _first_batch(train_set, batch_size, tokenizer, seed), opt)
    del probe, opt
    model = _wrap_for(base, cfg, plan, seed)
    torch.manual_seed(seed)
    trained = sft.train_loop(model, train_set, steps=plan.steps, lr=lr, batch_size=batch_size,
                         pad_id=tokenizer.pad_token_id, warmup_steps=plan.warmup_steps if cfg.warmup else 0, seed=seed)
    eval_loss, em = sft.loss_and_greedy_match(model, eval_set, tokenizer.pad_token_id)
    facts = pretraining_facts(model, tokenizer)
    return dict(asdict(cfg), lr=lr, targets=cfg.targets if isinstance(cfg.targets, str) else list(cfg.targets),
                dropout=plan.dropout if cfg.dropout is None else cfg.dropout,
                trainable=measured.trainable_params, total_params=measured.total_params,
                memory=measured.total, memory_weights=measured.weights, memory_gradients=measured.gradients,
                memory_optimizer=measured.optimizer_states, memory_activations=measured.activations,
                seconds_per_step=trained["seconds_per_step"], eval_loss=eval_loss, exact_match=em,
                final_train_loss=trained["losses"][-1][1], losses=trained["losses"],
                facts_loss=facts["loss"], facts_accuracy=facts["accuracy"])


#: Every FACT_STRIDE-th fact of the course world is the forgetting probe (300 of 1,200: a fifth of a second a run).
FACT_STRIDE = 4


def pretraining_facts(model, tokenizer) -> dict:
    """What the tiny model still knows from pretraining: `quant.completion_loss` on a fixed quarter of the
    course world's fact sentences ("the color of mipoka is" -> " orange"), a format fine-tuning never shows."""
    from lora_lab.experiments import quant

    prompts, answers = quant.fact_prompts()
    return quant.completion_loss(model, tokenizer, prompts[::FACT_STRIDE], answers[::FACT_STRIDE])


def prepared_data(profile, tokenizer) -> tuple:
    """The profile's train and eval sets, tokenized by `lora_lab.training.sft_data.prepare_sft_data` (labels on answers)."""
    from lora_lab.training import data

    splits = data.load_profile_dataset(profile)
    train_set, _ = sft_data.prepare_sft_data(tokenizer, splits["train"], profile.max_length, "train", verbose=False)
    eval_set, _ = sft_data.prepare_sft_data(tokenizer, splits["eval"], profile.max_length, "eval", verbose=False)
    return splits, train_set, eval_set


#: What a process of the cpu sweep keeps between runs: tokenizer, data, base model (per model path).
_WORKER_STATE: dict = {}


def _worker_state(profile, path: str) -> dict:
    key = (profile, path)
    if key not in _WORKER_STATE:
        from transformers import AutoTokenizer

        from lora_lab.runtime.quiet import quiet_library_noise

        quiet_library_noise()  # a spawned worker starts without the notebook's filters
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a worker's "Loading weights" bar would print in the Jupyter server's log

        tokenizer = AutoTokenizer.from_pretrained(path)
        _, train_set, eval_set = prepared_data(profile, tokenizer)
        _WORKER_STATE.clear()
        _WORKER_STATE[key] = dict(tokenizer=tokenizer, train=train_set, eval=eval_set, base=load_base(path))
    return _WORKER_STATE[key]


def _run_task(cfg: SweepConfig, plan: SweepPlan, profile, path: str) -> dict:
    """One run of the cpu sweep, in this process or a worker (which keeps its data between runs)."""
    state = _worker_state(profile, path)
    if cfg.method == "qlora" and "base_nf4" not in state:
        state["base_nf4"] = load_base(path, nf4=True)
    with torch_threads(plan.threads):
        return run_one(cfg, plan, path, state["train"], state["eval"], batch_size=profile.batch_size,
                       tokenizer=state["tokenizer"], seed=profile.seed,
                       base=state["base_nf4" if cfg.method == "qlora" else "base"])


class _Runner:
    """Runs sweep configs: cached ones are read, the others train in `plan.workers` processes at once."""

    def __init__(self, profile, plan: SweepPlan, path: str, base_key: dict, use_cache: bool, verbose: bool):
        self.profile, self.plan, self.path, self.base_key = profile, plan, path, base_key
        self.use_cache, self.verbose, self.pool, self.broken = use_cache, verbose, None, False

    def payload(self, cfg: SweepConfig) -> dict:
        return dict(self.base_key, cfg=asdict(cfg), steps=self.plan.steps, alpha=self.plan.alpha,
                    rule=self.plan.rule, warmup=self.plan.warmup_steps, dropout=self.plan.dropout)

    def run(self, configs: Sequence[SweepConfig]) -> list[dict]:
        rows: dict[int, dict] = {}
        todo = []
        for i, cfg in enumerate(configs):
            path = cache_dir() / f"sft-{_key(self.payload(cfg))}.json"
            if self.use_cache and path.exists():
                rows[i] = json.loads(path.read_text())
                self._say(rows[i], "cached")
            else:
                todo.append(i)
        workers = min(self.plan.workers, len(todo), os.cpu_count() or 1)
        if workers > 1 and not self.broken:
            import concurrent.futures
            import multiprocessing

            if self.pool is None:
                self.pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            futures = {self.pool.submit(_run_task, configs[i], self.plan, self.profile, self.path): i for i in todo}
            start = time.perf_counter()
            try:
                for fut in concurrent.futures.as_completed(futures):
                    i = futures[fut]
                    rows[i] = self._store(configs[i], fut.result(), f"done at {time.perf_counter() - start:.1f} s")
            except concurrent.futures.process.BrokenProcessPool as err:
                # A script without an `if __name__ == "__main__":` guard cannot start spawned workers:
                # go on in this process (same results, only slower).
                print(f"worker processes failed ({err}); training the remaining runs in this process")
                self.broken = True
                self.close()
        for i in todo:
            if i not in rows:
                t = time.perf_counter()
                row = _run_task(configs[i], self.plan, self.profile, self.path)
                rows[i] = self._store(configs[i], row, f"{time.perf_counter() - t:.1f} s")
        return [rows[i] for i in range(len(configs))]

    def _store(self, cfg: SweepConfig, row: dict, note: str) -> dict:
        cached("sft", self.payload(cfg), lambda: row, use_cache=False)
        self._say(row, note)
        return row

    def _say(self, row: dict, note: str) -> None:
        if self.verbose:
            print(f"{row['name']:<20} eval loss {row['eval_loss']:.3f}  exact match {row['exact_match']:6.1%}  "
                  f"{row['trainable']:>9,} trainable  {row['memory'] / units.MIB:6.2f} MiB/step  "
                  f"{row['seconds_per_step'] * 1000:6.1f} ms/step  ({note})")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def sft_sweep(profile, plan: SweepPlan | None = None, *, model_path: str | None = None, use_cache: bool = True,
              only: Sequence[str] | None = None, verbose: bool = True) -> dict:
    """Run (or load from the cache) every config of the profile's sweep plan.

    On the loop engine (cpu) the runs come in four waves: each rank at its starting LRs (plus the
    extra LRs and full fine-tuning); outward steps of the per-rank LR search while a rank's best LR
    sits at an edge of what it tried; the runs at `lr_rank`'s best LR (attention vs MLP, dropout, no
    warmup); then every compared run with the plan's other seeds (`seed_repeats`).

    Args:
        profile: the run profile (its model, data, batch size, max_length and seed).
        plan: defaults to PLANS[profile.name].
        model_path: overrides the profile's model (tests).
        use_cache: load runs cached under `cache_dir()` when present.
        only: run just the first-wave configs with these names (tests).
        verbose: one line per run.

    Returns:
        runs: one result dict per config (see `run_one`), plan, baseline (eval loss, exact match and
        `pretraining_facts` of the untouched base model), best_lr ({rank: best LR}, from the search).
    """
    from lora_lab.standins import tiny

    plan = plan or PLANS[profile.name]
    path = str(model_path or tiny.resolve_model_path(profile.model_id))
    if plan.engine != "loop":
        return _trainer_sweep(profile, plan, path, only=only, verbose=verbose)
    base_key = dict(model=Path(path).name, tasks=profile.tasks, seed=profile.seed, n_eval=profile.n_eval,
                    max_length=profile.max_length, batch=profile.batch_size, facts_stride=FACT_STRIDE)

    def baseline():
        state = _worker_state(profile, path)
        with torch_threads(plan.threads):
            loss, em = sft.loss_and_greedy_match(state["base"], state["eval"], state["tokenizer"].pad_token_id)
            facts = pretraining_facts(state["base"], state["tokenizer"])
        return dict(eval_loss=loss, exact_match=em, n_train=len(state["train"]), facts_loss=facts["loss"],
                    facts_accuracy=facts["accuracy"])

    base = cached("sft-base", base_key, baseline, use_cache)
    runner = _Runner(profile, plan, path, base_key, use_cache, verbose)
    try:
        first = [c for c in sweep_configs(plan, path) if only is None or c.name in only]
        runs = runner.run(first)
        if only is None and plan.lr_ladder:
            for _ in range(plan.max_extensions):
                extra = lr_extensions(runs, plan)
                if not extra:
                    break
                runs += runner.run(extra)
            runs += runner.run(followup_configs(plan, path, best_rank_lrs(runs)[plan.lr_rank]))
            runs += runner.run(seed_repeats(plan, runs))
    finally:
        runner.close()
    return dict(runs=runs, plan=asdict(plan), baseline=base, best_lr=best_rank_lrs(runs))


def best_rank_lrs(runs: Sequence[dict]) -> dict[int, float]:
    """{rank: the LR of its lowest held-out loss} over the rank runs (all-linear, dropout as planned).

    Only the "rank" group counts (the LRs every rank tried), so that each rank is compared on the same
    footing; the extra LRs at lr_rank ("lr" group) teach the learning rate and are read separately.
    """
    best: dict[int, dict] = {}
    for row in runs:
        if row["group"] == "rank" and row["method"] == "lora" and row["targets"] == "all-linear":
            if row["rank"] not in best or row["eval_loss"] < best[row["rank"]]["eval_loss"]:
                best[row["rank"]] = row
    return {r: row["lr"] for r, row in sorted(best.items())}


def best_runs(runs: Sequence[dict]) -> list[dict]:
    """Per rank, the run at its best LR (sorted by rank): the rank sweep's verdict is read from these."""
    lrs = best_rank_lrs(runs)
    return [next(row for row in runs if row["group"] == "rank" and row["method"] == "lora"
                 and row["targets"] == "all-linear" and row["rank"] == r and row["lr"] == lr)
            for r, lr in lrs.items()]


def accumulation_check(profile, *, rank: int, lr: float, steps: int = 6, grad_accum: int = 2,
                       model_path: str | None = None, plan: SweepPlan | None = None, use_cache: bool = True) -> dict:
    """Same effective batch, with and without gradient accumulation: the loss curves and the memory of a step.

    Trains LoRA at `rank` for `steps` steps of `profile.batch_size` examples twice: in one piece,
    and as `grad_accum` micro-batches. Returns losses_full, losses_accum, max_loss_diff, and the
    measured memory of one step (micro-batch) of each: memory_full, memory_accum,
    activations_full, activations_accum.
    """
    from lora_lab.estimation import memory
    from lora_lab.standins import tiny

    plan = plan or PLANS[profile.name]
    path = str(model_path or tiny.resolve_model_path(profile.model_id))
    payload = dict(model=Path(path).name, tasks=profile.tasks, seed=profile.seed, batch=profile.batch_size,
                   max_length=profile.max_length, rank=rank, lr=lr, steps=steps, accum=grad_accum, rule=plan.rule,
                   alpha=plan.alpha)

    def compute():
        state = _worker_state(profile, path)
        cfg = SweepConfig("accumulation", "lora", rank, "all-linear", lr, "accumulation")
        out = {}
        with torch_threads(plan.threads):
            for name, accum in (("full", 1), ("accum", grad_accum)):
                model = _wrap_for(state["base"], cfg, plan, profile.seed)
                batch = _first_batch(state["train"], profile.batch_size // accum, state["tokenizer"], profile.seed)
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
                measured = memory.measure_step(model, batch, opt)
                out[f"memory_{name}"], out[f"activations_{name}"] = measured.total, measured.activations
                model = _wrap_for(state["base"], cfg, plan, profile.seed)
                torch.manual_seed(profile.seed)
                out[f"losses_{name}"] = sft.train_loop(model, state["train"], steps=steps, lr=lr,
                                                   batch_size=profile.batch_size, pad_id=state["tokenizer"].pad_token_id,
                                                   warmup_steps=plan.warmup_steps, seed=profile.seed,
                                                   grad_accum=accum)["losses"]
        out["max_loss_diff"] = max(abs(a[1] - b[1]) for a, b in zip(out["losses_full"], out["losses_accum"],
                                                                    strict=True))
        return dict(out, batch=profile.batch_size, grad_accum=grad_accum, steps=steps)

    return cached("accumulation", payload, compute, use_cache)


def _trainer_sweep(profile, plan: SweepPlan, path: str, only=None, verbose=True) -> dict:
    """The sweep through `lora_lab.training.train.sft` (QLoRA on a GPU profile); same result fields as the loop."""
    from lora_lab.training import evaluate, train

    runs, skipped = [], []
    splits = None
    hw = models.hardware_for(profile)
    # Every run at full size (the profile's real model) against the memory free when it starts.
    real = gpu_runs.estimator_model(profiles.PROFILES[profile.name].model_id)
    planned = gpu_runs.sweep_runs(profile, plan, sweep_configs(plan, real))
    for cfg, run in zip(sweep_configs(plan, path), planned, strict=True):
        if only is not None and cfg.name not in only:
            continue
        decision = gpu_runs.preflight(run, hw, verbose=verbose)
        if not decision.runs:
            skipped.append(decision.to_dict())
            continue
        run_profile = decision.apply(profile)
        if not cfg.warmup:
            run_profile = run_profile.replace(warmup_ratio=0.0)
        method = "full" if cfg.method == "full" else profile.method
        model, tokenizer = train.load_model_and_tokenizer(run_profile, method, hw=hw, model_path=path)
        if splits is None:
            splits, train_set, eval_set = prepared_data(profile.replace(n_eval=plan.n_eval or profile.n_eval),
                                                        tokenizer)
        lora = None
        if cfg.method != "full":
            alpha, rslora = lora_alpha_for(plan, cfg.rank)
            lora = train.lora_config(run_profile, r=cfg.rank, alpha=alpha, targets=cfg.targets, use_rslora=rslora,
                                     dropout=plan.dropout if cfg.dropout is None else cfg.dropout)
        with tempfile.TemporaryDirectory() as tmp:
            result = train.sft(model, tokenizer, train_set, run_profile, tmp, method=method, lora=lora,
                               max_steps=plan.steps, learning_rate=cfg.lr, seed=profile.seed + cfg.seed, hw=hw,
                               verbose=False)
        m = result.model
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        loss = evaluate.eval_loss(m, tokenizer, eval_set, profile.max_length)
        em, _ = evaluate.exact_match(m, tokenizer, splits["eval"], profile.max_new_tokens)
        row = dict(asdict(cfg), targets=cfg.targets if isinstance(cfg.targets, str) else list(cfg.targets),
                   dropout=plan.dropout if cfg.dropout is None else cfg.dropout,
                   trainable=trainable, memory=result.metrics["peak_memory_bytes"],
                   seconds_per_step=result.metrics["train_runtime_s"] / max(1, result.metrics["global_step"]),
                   eval_loss=loss, exact_match=em, final_train_loss=result.metrics["final_loss"],
                   losses=result.losses)
        if verbose:
            print(f"{cfg.name:<20} eval loss {loss:.3f}  exact match {em:6.1%}  {trainable:,} trainable")
        runs.append(row)
        del model, m, result
        gpu_runs.free_gpu_memory()  # the next run starts from an empty cache
    return dict(runs=runs, plan=asdict(plan), baseline=None, skipped=skipped, best_lr=best_rank_lrs(runs))


def follow_up_pair(runs: Sequence[dict], group: str) -> tuple[list[dict], dict | None]:
    """The runs of a follow-up `group` ("dropout", "warmup") and the rank run they vary:
    same rank, learning rate and targets, the plan's dropout, with warmup and the first seed (None if absent)."""
    rows = [r for r in runs if r["group"] == group]
    if not rows:
        return [], None
    ref = next((r for r in runs if r["group"] in ("rank", "lr") and r["rank"] == rows[0]["rank"]
                and r["lr"] == rows[0]["lr"] and r["targets"] == "all-linear"), None)
    return rows, ref


def best_lr(runs: Sequence[dict], method: str, rank: int | None = None) -> tuple[float, float]:
    """(learning rate, eval loss) of the run with the lowest held-out loss among one method's LR sweep."""
    cands = [r for r in runs if r["method"] == method and (rank is None or r["rank"] == rank)
             and r["group"] in ("lr", "rank", "full") and r["targets"] == "all-linear"]
    best = min(cands, key=lambda r: r["eval_loss"])
    return best["lr"], best["eval_loss"]


# ---------------------------------------------------------------------------------------------
# 5. Merging


def _median_time(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


@torch.no_grad()
def merge_report(model_path: str, rank: int = 16, targets="all-linear", *, batch_size: int = 16, seq_len: int = 64,
                 repeats: int = 30, seed: int = 0, threads: int | None = 1) -> dict:
    """Merged vs unmerged adapter: largest logit difference (fp32) and forward-pass timings.

    The adapter's B matrices are filled with seeded random values (a freshly initialised adapter
    has B = 0 and would merge trivially). Timings interleave base, unmerged and merged forward
    passes round-robin so background load hits all three alike; each figure is a median.

    Returns:
        max_abs_diff, max_abs_logit, base_ms, unmerged_ms, merged_ms (medians), repeats, rank,
        adapted_layers.
    """
    from peft import LoraConfig, get_peft_model

    with torch_threads(threads):
        base = load_base(model_path).eval()
        torch.manual_seed(seed)
        peft_model = get_peft_model(load_base(model_path), LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=targets if isinstance(targets, str) else list(targets)))
        g = torch.Generator().manual_seed(seed)
        adapted = 0
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                adapted += 1
        peft_model.eval()
        vocab = base.config.vocab_size
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g)
        unmerged_logits = peft_model(input_ids=ids).logits
        merged = get_peft_model(load_base(model_path), peft_model.peft_config["default"])
        merged.load_state_dict(peft_model.state_dict())
        merged = merged.merge_and_unload().eval()
        merged_logits = merged(input_ids=ids).logits
        diff = (merged_logits - unmerged_logits).abs().max().item()
        runs = {"base": lambda: base(input_ids=ids), "unmerged": lambda: peft_model(input_ids=ids),
                "merged": lambda: merged(input_ids=ids)}
        for fn in runs.values():  # warm up
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for k, fn in runs.items():
                times[k] += _median_time(fn, 1)
    return dict(max_abs_diff=diff, max_abs_logit=unmerged_logits.abs().max().item(),
                base_ms=statistics.median(times["base"]) * 1000, unmerged_ms=statistics.median(times["unmerged"]) * 1000,
                merged_ms=statistics.median(times["merged"]) * 1000, repeats=repeats, rank=rank,
                adapted_layers=adapted, batch_size=batch_size, seq_len=seq_len,
                times_ms={k: [t * 1000 for t in v] for k, v in times.items()})


# ---------------------------------------------------------------------------------------------
# 6. Takeaways


@dataclass
class Summary:
    """Findings computed from the results (the notebook's takeaways), one line each."""

    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(text)

    def __str__(self) -> str:
        return "\n".join(f"- {line}" for line in self.lines)
