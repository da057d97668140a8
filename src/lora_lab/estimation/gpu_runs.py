"""Every GPU training run of the course, checked by the estimator at full size before it starts.

A notebook describes each run it is about to start as a `PlannedRun`: the real model's architecture
and the exact arguments `lora_lab.estimation.vram.estimate` takes for it. `preflight` then asks the estimator
against the GPU memory free *right then* (not when the notebook started: earlier cells may still
hold a model) and returns a decision:

- ``run``: the estimate fits;
- ``shrunk``: it did not, and a cheaper setting that the estimator says fits is used instead, in
  this order: gradient checkpointing on, a smaller batch with more gradient accumulation (same
  effective batch), a shorter maximum length (down to `MIN_SEQ_LEN`);
- ``skipped``: nothing fits; the run is not started and the notebook prints why.

`free_gpu_memory` runs between runs (garbage collection and `torch.cuda.empty_cache`).

`lora_lab.tooling.course.t4_plan()` lists every training run of every notebook as a Colab T4 would plan it, built by the
same functions the notebooks call (`sft_run`, `sweep_runs`, `specialist_runs`, `seven_b_run`);
``python -m lora_lab.tooling.course t4-plan --json`` prints it, one JSON object per run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lora_lab.estimation import vram
from lora_lab.runtime import hardware
from lora_lab.runtime.units import GIB
from lora_lab.training.callbacks import free_gpu_memory

__all__ = ["PlannedRun", "T4_PLAN_BUDGET", "fit", "free_gpu_memory", "free_bytes_now", "preflight", "seven_b_run",
           "sft_run", "specialist_runs", "sweep_runs"]

#: What a planned run may predict on a Colab T4: Colab has reported 14.56-14.74 GiB usable.
T4_PLAN_BUDGET = int(14.0 * GIB)
#: Shortest maximum length a shrunk run may use: shorter examples would no longer hold a task.
MIN_SEQ_LEN = 256


@dataclass(frozen=True)
class PlannedRun:
    """One training run as the estimator sees it, and what the preflight decided."""

    notebook: str  # "02", "03", "05"
    run: str  # the run's name in that notebook ("r=16", "full", "main", "sql", ...)
    model: str  # the architecture the estimator reads (a preset of lora_lab/configs)
    estimate_kwargs: dict  # exactly what vram.estimate(model, **estimate_kwargs) takes
    grad_accum: int = 1  # micro-steps per optimizer step (shrinking the batch raises it)
    action: str = "run"  # "run", "shrunk" or "skipped"
    note: str = ""  # what the preflight changed, or why it skipped
    budget_bytes: int | None = None  # the memory the decision was made against
    predicted_peak_bytes: int = field(default=0)  # vram.estimate(...).total for estimate_kwargs
    # What the run's time depends on (lora_lab.estimation.t4_budget): optimizer steps, held-out examples, and how many
    # held-out evaluations the notebook runs around it; an optional run is outside the notebook's budget.
    steps: int = 0
    n_eval: int = 0
    evaluations: int = 1
    optional: bool = False

    def estimate(self) -> vram.MemoryEstimate:
        return vram.estimate(self.model, **self.estimate_kwargs)

    @property
    def runs(self) -> bool:
        return self.action != "skipped"

    def apply(self, profile):
        """`profile` with this decision's batch, accumulation, max length and checkpointing."""
        kw = self.estimate_kwargs
        return profile.replace(batch_size=kw["batch_size"], grad_accum=self.grad_accum, max_length=kw["seq_len"],
                               gradient_checkpointing=kw["gradient_checkpointing"])

    def to_dict(self) -> dict:
        return {"notebook": self.notebook, "run": self.run, "model": self.model,
                "estimate_kwargs": dict(self.estimate_kwargs), "predicted_peak_bytes": self.predicted_peak_bytes,
                "grad_accum": self.grad_accum, "action": self.action, "note": self.note, "steps": self.steps,
                "n_eval": self.n_eval, "optional": self.optional}


def _with_estimate(run: PlannedRun, **changes) -> PlannedRun:
    run = dataclasses.replace(run, **changes)
    return dataclasses.replace(run, predicted_peak_bytes=int(run.estimate().total))


def estimator_model(model_id: str) -> str:
    """What the estimator reads for a model id: the preset (an instruct model has its base model's
    architecture), or the local folder of a model the course builds (the cpu profile's tiny one)."""
    from lora_lab.runtime.profiles import TINY_MODEL_ID

    if model_id == TINY_MODEL_ID:
        from lora_lab.standins.tiny import resolve_model_path

        return resolve_model_path(model_id)
    for name in (model_id, model_id.replace("-Instruct", "")):
        if name in vram.preset_names():
            return name
    return model_id


def sft_run(notebook: str, run: str, profile, method: str | None = None, *, model_id: str | None = None,
            rank: int | None = None, alpha: float | None = None, targets=None, capability: tuple[int, int] = (7, 5),
            optimizer: str | None = None, gradient_checkpointing: bool | None = None) -> PlannedRun:
    """A `PlannedRun` for `lora_lab.training.train.sft` with `profile`'s settings (each argument overrides one)."""
    method = method or profile.method
    kwargs = dict(
        method=method,
        rank=profile.lora_r if rank is None else rank,
        lora_alpha=profile.lora_alpha if alpha is None else alpha,
        target_modules=profile.lora_targets if targets is None else targets,
        batch_size=profile.batch_size,
        seq_len=profile.max_length,
        gradient_checkpointing=profile.gradient_checkpointing if gradient_checkpointing is None
        else gradient_checkpointing,
        optimizer=optimizer or profile.optimizer,
        precision=vram.training_precision(method, hardware.compute_dtype_for("cuda", capability)),
        lora_dropout=profile.lora_dropout,
        device="cuda",
    )
    if method == "full":  # no adapters: the estimator warns when it is given LoRA-only settings
        for key in ("rank", "lora_alpha", "target_modules", "lora_dropout"):
            del kwargs[key]
    elif isinstance(kwargs["target_modules"], tuple):
        kwargs["target_modules"] = list(kwargs["target_modules"])
    if model_id is None:  # a rehearsal asks about the real model it stands in for
        from lora_lab.runtime.profiles import PROFILES

        model_id = PROFILES[profile.name].model_id if profile.rehearsal else profile.model_id
    model = estimator_model(model_id)
    return _with_estimate(PlannedRun(notebook, run, model, kwargs, grad_accum=profile.grad_accum,
                                     steps=profile.max_steps, n_eval=profile.n_eval))


def fit(run: PlannedRun, budget_bytes: int) -> PlannedRun:
    """Run as planned, shrink (checkpointing, batch, length), or skip: whichever first fits `budget_bytes`."""
    est = run.estimate()
    if est.total <= budget_bytes:
        return _with_estimate(run, action="run", budget_bytes=budget_bytes)
    kwargs = dict(run.estimate_kwargs)
    accum = run.grad_accum
    changes = []

    def fits() -> bool:
        return vram.estimate(run.model, **kwargs).total <= budget_bytes

    if not kwargs["gradient_checkpointing"]:
        kwargs["gradient_checkpointing"] = True
        changes.append("gradient checkpointing on")
    while not fits() and kwargs["batch_size"] > 1:
        kwargs["batch_size"] //= 2
        accum *= 2
        changes.append(f"batch {kwargs['batch_size']} x accumulation {accum}")
    while not fits() and kwargs["seq_len"] // 2 >= MIN_SEQ_LEN:
        kwargs["seq_len"] //= 2
        changes.append(f"max length {kwargs['seq_len']}")
    if fits():
        note = (f"shrunk to fit {budget_bytes / GIB:.2f} GiB (planned {est.total / GIB:.2f} GiB): "
                + "; ".join(dict.fromkeys(changes)))
        return _with_estimate(run, estimate_kwargs=kwargs, grad_accum=accum, action="shrunk", note=note,
                              budget_bytes=budget_bytes)
    smallest = vram.smallest_gpu(run.model, **kwargs)
    note = (f"skipped: {run.run} needs {vram.estimate(run.model, **kwargs).total / GIB:.2f} GiB even at batch "
            f"{kwargs['batch_size']} x {kwargs['seq_len']} tokens with checkpointing, and {budget_bytes / GIB:.2f} GiB "
            "is free" + (f" (smallest GPU it fits: {smallest})" if smallest else ""))
    return _with_estimate(run, action="skipped", note=note, budget_bytes=budget_bytes)


def free_bytes_now(hw=None) -> int:
    """GPU memory free at this moment (`torch.cuda.mem_get_info`), after freeing what nothing uses.

    Without a CUDA GPU (a rehearsal, or planning on a laptop): the free memory of the hardware
    reading `hw` (a simulated T4: its usable 14.74 GiB), else the plan's T4 budget.
    """
    import torch

    free_gpu_memory()
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    if hw is not None and hw.gpu_free_bytes:
        return int(hw.gpu_free_bytes)
    return T4_PLAN_BUDGET


def preflight(run: PlannedRun, hw=None, verbose: bool = True) -> PlannedRun:
    """Decide `run` against the GPU memory free right now; print the decision; return it."""
    decision = fit(run, free_bytes_now(hw))
    if verbose:
        head = f"preflight [{decision.notebook} {decision.run}]"
        if decision.action == "run":
            print(f"{head}: {decision.model} {decision.estimate_kwargs['method']} predicted "
                  f"{decision.predicted_peak_bytes / GIB:.2f} GiB of {decision.budget_bytes / GIB:.2f} GiB free: runs")
        else:
            print(f"{head}: {decision.note}")
    return decision


# ---------------------------------------------------------------------------------------------
# The runs of each notebook (the notebooks and `tooling.course.t4_plan` build them with the same functions)


def sweep_runs(profile, plan, configs) -> list[PlannedRun]:
    """Notebook 02's SFT sweep on a GPU profile: one `PlannedRun` per `rank.SweepConfig`."""
    runs = []
    for cfg in configs:
        method = "full" if cfg.method == "full" else profile.method
        dropout = plan.dropout if cfg.dropout is None else cfg.dropout  # the dropout runs copy more activations
        run_profile = profile.replace(lora_dropout=dropout, grad_accum=plan.grad_accum or profile.grad_accum)
        run = sft_run("02", cfg.name, run_profile, method,
                      rank=cfg.rank or profile.lora_r, alpha=plan.alpha, targets=cfg.targets)
        runs.append(dataclasses.replace(run, steps=plan.steps, n_eval=plan.n_eval or profile.n_eval))
    return runs


def specialist_runs(profile, recipes) -> list[PlannedRun]:
    """Notebook 05's specialists: one `PlannedRun` per `adapters.SpecialistRecipe`."""
    return [specialist_run(profile, recipe) for recipe in recipes.values()]


def specialist_run(profile, recipe) -> PlannedRun:
    run = sft_run("05", recipe.task, profile, recipe.method, rank=recipe.r, alpha=recipe.alpha,
                  optimizer=recipe.optimizer, gradient_checkpointing=recipe.gradient_checkpointing)
    return dataclasses.replace(run, steps=recipe.max_steps, evaluations=0)  # scored together afterwards


def seven_b_profile(profile):
    """Notebook 03's optional cell: a 7B instruct model, QLoRA at batch 1 x the profile's length, 10 steps."""
    return profile.replace(model_id="Qwen/Qwen2.5-7B-Instruct", batch_size=1, grad_accum=16, max_steps=10,
                           save_steps=1000, logging_steps=2)


def seven_b_run(profile) -> PlannedRun:
    return dataclasses.replace(sft_run("03", "7B QLoRA (optional)", seven_b_profile(profile), "qlora"),
                               optional=True, evaluations=0)
