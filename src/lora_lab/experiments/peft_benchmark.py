"""PEFT's own benchmark of LoRA's variants, read from the result files the course ships (notebook 07).

The huggingface/peft repository keeps a method comparison under ``method_comparison/MetaMathQA/``:
every experiment fine-tunes meta-llama/Llama-3.2-3B on MetaMathQA for 5000 steps (batch 4, bfloat16,
AdamW with a cosine schedule unless the experiment says otherwise) and then generates answers for the
whole GSM8K test set. Each run is committed as one JSON file in ``results/``, named after the
experiment (``lora/llama-3.2-3B-rank32`` -> ``lora--llama-3.2-3B-rank32.json``). The course ships,
byte for byte, the files for its own variants in ``lora_lab/texts/peft_metamathqa/``;
``SOURCE.md`` there names the commit, each file's path and blob hash, and the license (Apache-2.0).

What the fields mean, as PEFT's ``run.py`` and ``utils.py`` write them at that commit:

* ``train_info.metrics``: one entry per validation round (``"valid accuracy"``) and, last, one
  with ``"test accuracy"``: the fraction of GSM8K test questions whose final number is right, 0 to 1.
* ``train_info.accelerator_memory_max``: bytes. The peak GPU memory reserved by PyTorch's caching
  allocator over the whole run, less what was reserved before the model was loaded: weights,
  gradients, optimizer states, activations and the allocator's slack, test generation included.
* ``train_info.train_time``: seconds of wall time for the training loop and the final test
  evaluation, without the periodic validation rounds. ``run_info.total_time`` is the whole script.
* ``train_info.num_trainable_params``: parameters the optimizer updates.
* ``train_info.status``: ``"success"``, ``"failed"`` or ``"canceled"``; PEFT only commits
  successful runs, and this reader refuses any other.
* ``run_info.peft_config``: the adapter's config (``null`` for full fine-tuning).

All runs of the shipped files were made on one NVIDIA L40S, so memory and time compare across
rows, though not with the course's own runs, which use another model, task and machine: compare
orderings (`ordering_agreement`), not values.

PEFT has no MetaMathQA result for PiSSA, OLoRA or LoRA+ at that commit (its harness can run
LoRA+ through ``optimizer_type: "lora+"``, but no such experiment is committed), and its only
rsLoRA run is at rank 64, so plain LoRA at rank 64 is shipped as its same-rank partner.

Standard library only (no torch), so a notebook can read the table before anything heavy loads.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.abc import Traversable

__all__ = [
    "VARIANT_ORDER",
    "REFERENCE",
    "SHIPPED",
    "course_variant",
    "read_result",
    "load_results",
    "relative_to",
    "peft_scores",
    "ordering_agreement",
    "table",
]

#: The course's variant labels in notebook 07's order (the names of `experiments.variants.VARIANTS`).
VARIANT_ORDER = ("LoRA", "rsLoRA", "DoRA", "PiSSA", "OLoRA", "LoRA+", "VeRA", "full")
#: PEFT's plain LoRA run that the other rows are measured against.
REFERENCE = "lora/llama-3.2-3B-rank32"
#: The rank PEFT's LoRA-family reference runs use; within a variant, runs at this rank sort first.
REFERENCE_RANK = 32
#: The shipped folder, inside the installed package.
SHIPPED = "texts/peft_metamathqa"

_GIB = 2**30
#: Optimizers of PEFT's harness that are methods of their own, not plain torch optimizers.
_METHOD_OPTIMIZERS = {"lora+": "LoRA+"}


def _fail(source: str, what: str) -> ValueError:
    return ValueError(f"{source}: {what}")


def _field(mapping: object, key: str, where: str, source: str) -> object:
    if not isinstance(mapping, dict) or key not in mapping:
        name = f"{where}.{key}" if where else key
        raise _fail(source, f"not a PEFT method_comparison result: no '{name}'")
    return mapping[key]


def _number(value: object, where: str, source: str, *, integer: bool = False) -> float | int:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise _fail(source, f"'{where}' is {value!r}, not {kind}")
    return value


def course_variant(peft_config: dict | None, train_config: dict) -> str | None:
    """The course's label for one PEFT experiment, or None when it is none of the course's variants.

    Args:
        peft_config: ``run_info.peft_config`` of a result file (None for full fine-tuning).
        train_config: ``run_info.train_config`` of the same file (its ``optimizer_type`` marks LoRA+).

    Returns:
        One of `VARIANT_ORDER`, or None for other methods (IA3, LoKr, ...) and for LoRA runs that
        change something the course does not (LoRA-FA's optimizer, MiCA's init, two variants at once).
    """
    if peft_config is None:
        return "full"
    peft_type = peft_config.get("peft_type")
    if peft_type == "VERA":
        return "VeRA"
    if peft_type != "LORA":
        return None
    optimizer = str(train_config.get("optimizer_type", "AdamW"))
    init = peft_config.get("init_lora_weights", True)
    marks = []
    if optimizer in _METHOD_OPTIMIZERS:
        marks.append(_METHOD_OPTIMIZERS[optimizer])
    elif optimizer.lower() in {"lora-fa", "riemannian"}:
        return None
    if peft_config.get("use_dora"):
        marks.append("DoRA")
    if peft_config.get("use_rslora"):
        marks.append("rsLoRA")
    if peft_config.get("use_bdlora"):
        return None
    if isinstance(init, str) and init.lower().startswith("pissa"):
        marks.append("PiSSA")
    elif isinstance(init, str) and init.lower() == "olora":
        marks.append("OLoRA")
    elif init is not True:
        return None
    if len(marks) > 1:
        return None
    return marks[0] if marks else "LoRA"


def read_result(path: str | os.PathLike | Traversable) -> dict:
    """One PEFT MetaMathQA result file as a flat row.

    Args:
        path: a ``results/*.json`` file of PEFT's method comparison (a path or a package resource).

    Returns:
        A dict with ``experiment`` (PEFT's name, e.g. "lora/llama-3.2-3B-rank32"), ``variant`` (the
        course's label, or None), ``peft_type`` (PEFT's, or "full-finetuning"), ``rank`` (the adapter's
        ``r``, None for full fine-tuning), ``test_accuracy`` (GSM8K test, 0 to 1),
        ``peak_memory_bytes`` (PEFT's ``accelerator_memory_max``) and ``peak_memory_gib`` (the same
        over 2**30), ``train_time_s``, ``total_time_s``, ``trainable_params``, ``total_params``,
        ``forgetting`` (rise of the mean per-token loss on PEFT's Wikipedia sample; None if absent),
        ``lr``, ``status``, ``accelerator``, ``created_at`` and ``source`` (the file's name).

    Raises:
        ValueError: one line naming the file, when it is missing, not JSON, lacks a field, holds
            a value of the wrong kind, or records a run whose status is not "success".
    """
    p = Path(path) if isinstance(path, (str, os.PathLike)) else path
    source = p.name
    try:
        text = p.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _fail(str(path), "no such result file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(source, f"not valid JSON ({exc.msg}, line {exc.lineno})") from None

    run_info = _field(data, "run_info", "", source)
    train_info = _field(data, "train_info", "", source)
    status = _field(train_info, "status", "train_info", source)
    if status != "success":
        error = " ".join(str(run_info.get("error_msg") or "").split())[:160] if isinstance(run_info, dict) else ""
        raise _fail(source, f"run status is {status!r}, not 'success'" + (f" ({error})" if error else ""))

    experiment = _field(run_info, "experiment_name", "run_info", source)
    train_config = _field(run_info, "train_config", "run_info", source)
    peft_config = _field(run_info, "peft_config", "run_info", source)
    if not isinstance(train_config, dict) or not (peft_config is None or isinstance(peft_config, dict)):
        raise _fail(source, "'run_info.train_config' or 'run_info.peft_config' is not an object")

    metrics = _field(train_info, "metrics", "train_info", source)
    tests = [m for m in metrics if isinstance(m, dict) and "test accuracy" in m] if isinstance(metrics, list) else []
    if not tests:
        raise _fail(source, "no entry with 'test accuracy' in 'train_info.metrics'")
    final = tests[-1]
    accuracy = _number(final["test accuracy"], "test accuracy", source)
    if not 0.0 <= accuracy <= 1.0:
        raise _fail(source, f"'test accuracy' is {accuracy!r}, outside 0..1")
    memory = _number(_field(train_info, "accelerator_memory_max", "train_info", source),
                     "train_info.accelerator_memory_max", source, integer=True)
    train_time = _number(_field(train_info, "train_time", "train_info", source), "train_info.train_time", source)
    trainable = _number(_field(train_info, "num_trainable_params", "train_info", source),
                        "train_info.num_trainable_params", source, integer=True)
    for name, value in (("accelerator_memory_max", memory), ("train_time", train_time),
                        ("num_trainable_params", trainable)):
        if value <= 0:
            raise _fail(source, f"'train_info.{name}' is {value!r}, not positive")
    total_time = run_info.get("total_time")
    forgetting = final.get("forgetting")
    meta = data.get("meta_info") or {}

    return {
        "experiment": experiment,
        "variant": course_variant(peft_config, train_config),
        "peft_type": peft_config.get("peft_type") if peft_config else "full-finetuning",
        "rank": peft_config.get("r") if peft_config else None,
        "test_accuracy": float(accuracy),
        "peak_memory_bytes": memory,
        "peak_memory_gib": memory / _GIB,
        "train_time_s": float(train_time),
        "total_time_s": None if total_time is None else float(_number(total_time, "run_info.total_time", source)),
        "trainable_params": trainable,
        "total_params": train_info.get("num_total_params"),
        "forgetting": None if forgetting is None else float(_number(forgetting, "forgetting", source)),
        "lr": (train_config.get("optimizer_kwargs") or {}).get("lr"),
        "status": status,
        "accelerator": (meta.get("system_info") or {}).get("accelerator"),
        "created_at": run_info.get("created_at"),
        "source": source,
    }


def _order(row: Mapping) -> tuple:
    variant = row.get("variant")
    place = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)
    rank = row.get("rank")
    distance = abs(rank - REFERENCE_RANK) if isinstance(rank, int) else 0
    return place, distance, rank or 0, str(row.get("experiment"))


def load_results(folder: str | os.PathLike | None = None) -> list[dict]:
    """Every ``*.json`` result in `folder` (default: the shipped one), in the course's variant order.

    Within a variant, the run at rank 32 (PEFT's reference rank) comes first, then the nearest ranks.

    Args:
        folder: a folder of PEFT result files; None reads ``lora_lab/texts/peft_metamathqa``.

    Returns:
        One `read_result` row per file; other methods (variant None) last.

    Raises:
        ValueError: the folder holds no result file, or one of its files is refused by `read_result`.
    """
    base = resources.files("lora_lab").joinpath(SHIPPED) if folder is None else Path(folder)
    if not base.is_dir():
        raise _fail(str(folder if folder is not None else SHIPPED), "no such folder")
    files = sorted((f for f in base.iterdir() if f.name.endswith(".json")), key=lambda f: f.name)
    if not files:
        raise _fail(str(folder if folder is not None else SHIPPED), "no PEFT result files (*.json) in the folder")
    return sorted((read_result(f) for f in files), key=_order)


def relative_to(rows: Sequence[Mapping], reference: str = REFERENCE) -> list[dict]:
    """Each row beside the reference run: accuracy in points, memory and time as ratios.

    Args:
        rows: rows of `read_result` / `load_results`.
        reference: the ``experiment`` name of the row to compare against.

    Returns:
        Copies of `rows` with ``reference``, ``accuracy_diff_points`` (100 x (accuracy - reference's)),
        ``memory_ratio`` (peak memory / reference's) and ``time_ratio`` (train time / reference's)
        added; the reference row itself gets 0.0, 1.0 and 1.0.

    Raises:
        ValueError: no row is named `reference`.
    """
    found = [r for r in rows if r["experiment"] == reference]
    if not found:
        names = ", ".join(str(r["experiment"]) for r in rows) or "none"
        raise ValueError(f"reference {reference!r} is not among the rows ({names})")
    ref = found[0]
    out = []
    for row in rows:
        new = dict(row)
        new["reference"] = reference
        new["accuracy_diff_points"] = 100.0 * (row["test_accuracy"] - ref["test_accuracy"])
        new["memory_ratio"] = row["peak_memory_bytes"] / ref["peak_memory_bytes"]
        new["time_ratio"] = row["train_time_s"] / ref["train_time_s"]
        out.append(new)
    return out


def peft_scores(rows: Iterable[Mapping], key: str = "test_accuracy",
                pick: Mapping[str, str] | None = None) -> dict[str, float]:
    """One value per course variant from PEFT's rows, for `ordering_agreement`.

    Mind the ranks: PEFT's rsLoRA run is at rank 64, so by default it meets LoRA at rank 32; pass
    ``pick={"LoRA": "lora/llama-3.2-3B-rank64"}`` to compare it with LoRA at its own rank.

    Args:
        rows: rows in `load_results` order; for a variant with several runs the first is taken
            (the rank-32 one where there is one). Rows of no course variant are skipped.
        key: the row field to take, e.g. "test_accuracy", "peak_memory_bytes", "train_time_s".
        pick: {variant label: PEFT experiment name} choosing the run of a variant instead.

    Returns:
        {variant label: value}.

    Raises:
        ValueError: a run named in `pick` is not among the rows, or is of another variant.
    """
    rows = list(rows)
    chosen: dict[str, Mapping] = {}
    for row in rows:
        variant = row.get("variant")
        if variant is not None and variant not in chosen:
            chosen[variant] = row
    for variant, experiment in (pick or {}).items():
        found = [r for r in rows if r["experiment"] == experiment]
        if not found or found[0].get("variant") != variant:
            raise ValueError(f"pick: no {variant} run named {experiment!r} among the rows")
        chosen[variant] = found[0]
    return {variant: row[key] for variant, row in chosen.items()}


def _checked(scores: Mapping[str, float], side: str) -> dict[str, float]:
    out = {}
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{side} score of {name!r} is {value!r}, not a finite number")
        out[name] = float(value)
    return out


def _better(a: str, b: str, va: float, vb: float, higher: bool, tol: float) -> str | None:
    if abs(va - vb) <= tol:
        return None
    return a if (va > vb) == higher else b


def ordering_agreement(course: Mapping[str, float], peft: Mapping[str, float], higher_is_better: bool, *,
                       peft_higher_is_better: bool | None = None, course_tol: float = 0.0,
                       peft_tol: float = 0.0) -> dict:
    """Which pairs of variants the course's run and PEFT's table put in the same order.

    Each pair of variants present on both sides gets a verdict: "agrees" when both sides name the
    same one as better, "disagrees" when they name different ones, "tie" when either side cannot
    tell them apart (values no more than its tolerance apart; exactly equal by default).

    Args:
        course: {variant label: score} from the course's own run.
        peft: {variant label: score} from PEFT's table (e.g. `peft_scores(load_results())`).
        higher_is_better: the direction of the course's score (True for accuracy, False for a loss).
        peft_higher_is_better: the direction of PEFT's score when it differs (the course's eval loss
            against PEFT's accuracy); None means the same as `higher_is_better`.
        course_tol, peft_tol: differences up to these count as ties (e.g. the course's seed spread).

    Returns:
        A dict with ``pairs`` (every pair, in the course's variant order), ``agrees``, ``disagrees``
        and ``ties`` (the same pair dicts, split by verdict), ``only_course`` and ``only_peft``
        (variants missing on the other side, left out of the pairs). A pair dict holds ``a``, ``b``,
        ``course`` and ``peft`` (each the (a, b) values), ``course_better`` and ``peft_better`` (a
        label, or None on a tie) and ``verdict``.

    Raises:
        ValueError: a score is not a finite number, or a tolerance is negative.
    """
    if course_tol < 0 or peft_tol < 0:
        raise ValueError(f"tolerances must be >= 0, got course_tol={course_tol}, peft_tol={peft_tol}")
    course_s, peft_s = _checked(course, "course"), _checked(peft, "PEFT")
    peft_higher = higher_is_better if peft_higher_is_better is None else peft_higher_is_better

    def place(name: str) -> tuple:
        return (VARIANT_ORDER.index(name) if name in VARIANT_ORDER else len(VARIANT_ORDER), name)

    shared = sorted(set(course_s) & set(peft_s), key=place)
    result: dict = {"pairs": [], "agrees": [], "disagrees": [], "ties": [],
                    "only_course": sorted(set(course_s) - set(peft_s), key=place),
                    "only_peft": sorted(set(peft_s) - set(course_s), key=place)}
    for i, a in enumerate(shared):
        for b in shared[i + 1:]:
            cb = _better(a, b, course_s[a], course_s[b], higher_is_better, course_tol)
            pb = _better(a, b, peft_s[a], peft_s[b], peft_higher, peft_tol)
            verdict = "tie" if cb is None or pb is None else ("agrees" if cb == pb else "disagrees")
            pair = {"a": a, "b": b, "course": (course_s[a], course_s[b]), "peft": (peft_s[a], peft_s[b]),
                    "course_better": cb, "peft_better": pb, "verdict": verdict}
            result["pairs"].append(pair)
            result[{"tie": "ties", "agrees": "agrees", "disagrees": "disagrees"}[verdict]].append(pair)
    return result


def table(rows: Sequence[Mapping]) -> str:
    """A fixed-width text table of PEFT's rows, one line each, with the file each line comes from.

    Columns: variant, PEFT's experiment, GSM8K test accuracy (%), peak memory (GiB), train time (s),
    trainable parameters, then, for rows from `relative_to`, the accuracy difference (points) and
    the memory and time ratios to the reference, and last the source file.

    Args:
        rows: rows of `read_result`, `load_results` or `relative_to`.

    Returns:
        The table as one string (header, rule, one line per row), no trailing newline.
    """
    relative = bool(rows) and all("accuracy_diff_points" in r for r in rows)
    header = ["variant", "PEFT experiment", "acc %", "peak GiB", "train s", "trainable"]
    if relative:
        header += ["d acc pts", "mem x", "time x"]
    header.append("source file")
    lines = []
    for r in rows:
        cells = [r.get("variant") or "-", str(r["experiment"]), f"{100 * r['test_accuracy']:.1f}",
                 f"{r['peak_memory_gib']:.2f}", f"{r['train_time_s']:.0f}", f"{r['trainable_params']:,}"]
        if relative:
            cells += [f"{r['accuracy_diff_points']:+.1f}", f"{r['memory_ratio']:.2f}", f"{r['time_ratio']:.2f}"]
        cells.append(str(r["source"]))
        lines.append(cells)
    numeric = set(range(2, len(header) - 1))
    widths = [max([len(header[i])] + [len(c[i]) for c in lines]) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])
