"""A run's output folder: one live run at a time, and no run silently replacing another.

`claim(output_dir, checkpoint_dir, resume=..., overwrite=..., max_steps=...)` is what
`python -m lora_lab.training.train` does before anything heavy:

- an empty `--output-dir` is refused (it would write into the current folder);
- a lock file (`.lora_lab_run.lock`, holding the process id) refuses a second live run into the
  same folder; a lock left by a process that no longer runs is taken over;
- a folder holding another run's checkpoints or results is refused unless the run resumes it
  (`--resume`) or replaces it (`--overwrite`, which deletes only `checkpoint-N` folders and the
  files a run writes);
- resuming a checkpoint that has already trained `max_steps` steps is refused: it would train
  nothing and report the old result as this run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from lora_lab.training import checkpoints

LOCK = ".lora_lab_run.lock"
#: What a finished or interrupted run leaves in its output folder (besides checkpoint-N folders).
RUN_FILES = ("metrics.json", "loss.png", "adapter", "merged", "model")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _take_lock(folder: Path) -> Path:
    lock = folder / LOCK
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise ValueError(f"Another run (process {pid}) is writing to {folder}: wait for it to finish, or "
                                 "choose another --output-dir.") from None
            lock.unlink(missing_ok=True)  # left by a run that no longer exists
            continue
        with os.fdopen(handle, "w") as out:
            out.write(str(os.getpid()))
        return lock
    raise ValueError(f"Could not take the run lock {lock}: remove it if no run is writing to {folder}.")


def previous_run(output_dir: Path, checkpoint_dir: Path) -> list[str]:
    """What another run left in these folders: checkpoint-N folders and result files, by name."""
    found = []
    if checkpoint_dir.is_dir():
        found += sorted((p.name for p in checkpoint_dir.iterdir() if p.is_dir() and checkpoints.step_of(p) is not None),
                        key=lambda name: checkpoints.step_of(name))
    found += [name for name in RUN_FILES if (output_dir / name).exists()]
    return found


def trained_steps(checkpoint: str | os.PathLike) -> int:
    """The optimizer steps a checkpoint has trained (its trainer_state.json's global_step)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state["global_step"])


@contextlib.contextmanager
def claim(output_dir, checkpoint_dir, *, resume: bool, overwrite: bool, max_steps: int):
    """Hold `output_dir` for this run (see the module docstring); the lock goes when the block ends.

    Raises:
        ValueError: one line saying what to change.
    """
    if not str(output_dir).strip():
        raise ValueError("--output-dir is empty: name a folder for this run, e.g. --output-dir runs/sft.")
    if resume and overwrite:
        raise ValueError("--resume continues the run in the folder and --overwrite replaces it: pass one of them.")
    out, ckpt = Path(output_dir), Path(checkpoint_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} is a file, not a folder: choose another path.")
    out.mkdir(parents=True, exist_ok=True)
    lock = _take_lock(out)
    try:
        found = previous_run(out, ckpt)
        if found and not resume and not overwrite:
            raise ValueError(f"{out} already holds a run ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}): "
                             "rerun with --resume to continue it, --overwrite to replace it, or choose another "
                             "--output-dir.")
        if overwrite:
            for name in found:
                target = (ckpt if name.startswith("checkpoint-") else out) / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        if resume:
            newest, _ = checkpoints.newest_complete(ckpt)
            if newest and trained_steps(newest) >= max_steps:
                raise ValueError(f"{Path(newest).name} has already trained {trained_steps(newest)} steps and this run "
                                 f"asks for {max_steps} in all: nothing would be trained. Raise --max-steps above "
                                 f"{trained_steps(newest)} to train further, or start again with --overwrite.")
        yield out
    finally:
        lock.unlink(missing_ok=True)
