"""Google Drive on Colab: a checkpoint folder that survives a disconnect (opt-in, Colab only)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DRIVE_ROOT", "MOUNT_POINT", "drive_checkpoint_dir", "drive_dir_from_cli"]

MOUNT_POINT = "/content/drive"  # where Colab mounts Google Drive
DRIVE_ROOT = Path(MOUNT_POINT) / "MyDrive"  # the learner's "My Drive" once mounted


def drive_checkpoint_dir(run_name: str, mount: bool = True) -> Path | None:
    """A checkpoint folder on Google Drive (Colab only, opt-in), mounting Drive if asked; else None.

    Checkpoints on Drive survive a Colab disconnect: set `RESUME = True` in notebook 03 (or pass
    `--resume` to `python -m lora_lab.training.train`) and training continues from the newest one.
    """
    root = DRIVE_ROOT
    from lora_lab.runtime import hardware

    if not root.exists() and mount and hardware.in_colab():
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount(MOUNT_POINT)
    if not root.exists():
        return None
    folder = root / "lora-lab" / run_name / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


_MOUNT_HINT = ("run `from google.colab import drive; drive.mount('/content/drive')` in a notebook cell first "
               "(a command started with `!python` is a separate process and cannot mount Drive itself)")


def drive_dir_from_cli(value: str, run_name: str, drive_root: Path = DRIVE_ROOT) -> Path:
    """The checkpoint folder `--drive [MOUNTED_PATH]` asks for, on a Drive already mounted by the notebook.

    Raises:
        ValueError: Drive is not mounted (the message says how to mount it and what to pass).
    """
    default = drive_root / "lora-lab" / run_name / "checkpoints"
    folder = Path(value) if value else default
    mount_point = drive_root.parent.parent  # /content/drive
    if not drive_root.is_dir() and (not value or folder.is_relative_to(mount_point)):
        raise ValueError(f"--drive: Google Drive is not mounted at {drive_root}. To keep checkpoints on Drive, "
                         f"{_MOUNT_HINT}; then rerun with --drive {default}.")
    if value and not folder.parent.is_dir():
        raise ValueError(f"--drive {value}: the folder {folder.parent} does not exist. Pass a folder on the mounted "
                         f"Drive, e.g. --drive {default}.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
