"""Published GPU memory measurements, shipped with the package, and the estimate beside each.

`published_memory.json` (package data) holds each point with its public source and the settings
that source states. `points()` reads them; `compare()` puts `lora_lab.estimation.vram.estimate` beside each
in the quantity the source measured (peak allocated memory, or the whole card for "the longest
run that fits"). Tests hold the estimator to them and notebook 01 shows the table.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from lora_lab.estimation import vram

GB = 10**9  # the sources publish GB; we read them as 1e9 bytes


@functools.lru_cache(maxsize=1)
def _data() -> dict:
    return json.loads((resources.files("lora_lab") / "published_memory.json").read_text())


def sources() -> dict[str, dict]:
    """Source name -> {"url", "what"}: where each point comes from and what it measured."""
    return _data()["sources"]


def points() -> list[dict]:
    """Every published point: model, method, the source's settings, quantity and value (GB)."""
    data = _data()
    return [{**data["settings"][p["source"]], **p} for p in data["points"]]


def estimate_for(point: dict) -> vram.MemoryEstimate:
    """`vram.estimate` with the settings of a published point."""
    keys = ("method", "rank", "target_modules", "batch_size", "seq_len", "gradient_checkpointing", "precision",
            "autocast", "optimizer", "attention", "double_quant")
    kwargs = {k: point[k] for k in keys if k in point}
    if isinstance(kwargs.get("target_modules"), list):
        kwargs["target_modules"] = tuple(kwargs["target_modules"])
    return vram.quiet_estimate(point["model"], **kwargs)


def compare() -> list[dict]:
    """One row per point: the published and estimated bytes and the relative error.

    `error` is estimate / published - 1: positive where the estimate errs high (the safe side).
    """
    rows = []
    for p in points():
        est = estimate_for(p)
        predicted = getattr(est, p["quantity"])
        published = int(p["gb"] * GB)
        rows.append(dict(source=p["source"], model=p["model"], method=p["method"], batch_size=p.get("batch_size"),
                         seq_len=p.get("seq_len"), quantity=p["quantity"], published=published, predicted=predicted,
                         error=predicted / published - 1))
    return rows


def implied_allocator_slack(source: str = "unsloth") -> float:
    """The allocator slack a published "longest run that fits" line implies.

    Between its shortest and longest points the published memory grows by some bytes per token;
    the estimate without slack grows by less. The difference, as a share of the growth of the
    step's dynamic memory (activations and transients), is the slack the line implies.
    """
    line = sorted((p for p in points() if p["source"] == source and p["quantity"] == "total"),
                  key=lambda p: p["seq_len"])
    first, last = line[0], line[-1]
    a, b = estimate_for(first), estimate_for(last)
    tokens = last["seq_len"] - first["seq_len"]
    published = (last["gb"] - first["gb"]) * GB / tokens

    def without_slack(e):
        return e.total - e.overhead_terms["allocator_slack"]

    model = (without_slack(b) - without_slack(a)) / tokens
    dynamic = (b.activations + b.transient - a.activations - a.transient) / tokens
    return (published - model) / dynamic
