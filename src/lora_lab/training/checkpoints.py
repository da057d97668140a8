"""Which checkpoint a run can resume from: complete ones only, newest first, and made by the same run.

A Colab disconnect (or Ctrl-C, or a full disk) can cut a save short. The Trainer writes a
checkpoint in this order: weights, optimizer, scheduler, (grad scaler), RNG state, and
`trainer_state.json` last. `--resume` must skip a checkpoint that lacks any of them, or whose
files were cut off, and take the newest complete one instead; it says which it skipped and why.

A checkpoint also records the run that wrote it (`lora_lab_run.json`: method and LoRA rank,
written by `RunInfoCallback`), so resuming with a different rank or method stops with a message
naming both instead of a page of size-mismatch errors.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from lora_lab.training.models import safetensors_problem

#: Written into every checkpoint by `RunInfoCallback`: what the run that saved it trained.
RUN_INFO = "lora_lab_run.json"
#: The model weights of a checkpoint: the adapter (LoRA, QLoRA) or the full model, one of them.
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")
#: Saved with torch.save (zip archives) by the Trainer; resuming reads each of them.
STATE_FILES = ("optimizer.pt", "scheduler.pt")
_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(folder) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when everything resuming reads is there."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the save was cut short)"
    try:
        recorded = json.loads(state.read_text())
    except (ValueError, OSError):
        return "trainer_state.json is cut short or corrupt"
    if not isinstance(recorded, dict) or not isinstance(recorded.get("global_step"), int):
        return "trainer_state.json has no global_step (corrupt)"
    if (folder / RUN_INFO).is_file():
        try:
            info = json.loads((folder / RUN_INFO).read_text())
        except (ValueError, OSError):
            info = None
        if not isinstance(info, dict):
            return f"{RUN_INFO} is corrupt"
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        return f"no weights ({' or '.join(WEIGHT_FILES)})"
    problem = safetensors_problem(weights[0])
    if problem:
        return problem
    for name in STATE_FILES:
        if not (folder / name).is_file():
            return f"no {name}"
    if not any(folder.glob("rng_state*.pth")):
        return "no rng_state.pth"
    for path in [folder / n for n in STATE_FILES] + sorted(folder.glob("rng_state*.pth")):
        try:
            with zipfile.ZipFile(path) as archive:  # torch.save writes a zip; a cut one has no directory
                archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return f"{path.name} is truncated or corrupt"
    return None


def step_of(folder) -> int | None:
    """The step number of a `checkpoint-N` folder (None for other names)."""
    match = _STEP.match(Path(folder).name)
    return int(match.group(1)) if match else None


def newest_complete(folder) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete checkpoint in `folder`, and the newer ones skipped with the reason.

    Returns:
        (path of the checkpoint or None, [(skipped checkpoint name, why), ...]).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None, []
    found = sorted((p for p in folder.iterdir() if p.is_dir() and step_of(p) is not None), key=step_of, reverse=True)
    skipped = []
    for path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path), skipped
        skipped.append((path.name, problem))
    return None, skipped


def run_info(checkpoint) -> dict:
    """Method and rank of the run that wrote a checkpoint (from RUN_INFO, else read from its files)."""
    checkpoint = Path(checkpoint)
    if (checkpoint / RUN_INFO).is_file():
        return json.loads((checkpoint / RUN_INFO).read_text())
    if (checkpoint / "adapter_config.json").is_file():
        return {"method": None, "rank": json.loads((checkpoint / "adapter_config.json").read_text()).get("r")}
    return {"method": "full", "rank": None}


def _describe(method, rank) -> str:
    return f"method {method}" + (f", rank {rank}" if rank is not None else "")


def check_compatible(checkpoint, method: str, rank: int | None) -> None:
    """Refuse to resume a checkpoint written with another method or LoRA rank, naming both.

    Raises:
        ValueError: saying what the checkpoint holds, what this run asks for, and what to do.
    """
    saved = run_info(checkpoint)
    want_rank = None if method == "full" else rank
    saved_method = saved.get("method") or ("lora or qlora" if method == "full" else method)
    saved_rank = saved.get("rank")
    if saved_method == method and (want_rank is None or saved_rank is None or saved_rank == want_rank):
        return
    flags = f"--method {saved_method}" if saved.get("method") else ""
    flags += f" --rank {saved_rank}" if saved_rank is not None else ""
    raise ValueError(
        f"Cannot resume from {checkpoint}: it was trained with {_describe(saved_method, saved_rank)}, this run "
        f"asks for {_describe(method, want_rank)}. Resume with the same settings ({flags.strip() or 'as before'}), "
        "or start a fresh run in another --output-dir / --checkpoint-dir."
    )


def run_info_callback(method: str, rank: int | None):
    """A `TrainerCallback` that writes RUN_INFO into every checkpoint the Trainer saves."""
    from transformers import TrainerCallback

    class RunInfoCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                (folder / RUN_INFO).write_text(json.dumps({"method": method, "rank": rank}))

    return RunInfoCallback()
