"""Google Drive on Colab: a checkpoint folder that survives a disconnect (opt-in, Colab only)."""

from __future__ import annotations

from pathlib import Path

from . import hardware

__all__ = ["DRIVE_ROOT", "MOUNT_POINT", "drive_checkpoint_dir"]

MOUNT_POINT = "/content/drive"  # where Colab mounts Google Drive
DRIVE_ROOT = Path(MOUNT_POINT) / "MyDrive"  # the learner's "My Drive" once mounted


def drive_checkpoint_dir(run_name: str, mount: bool = True) -> Path | None:
    """A checkpoint folder on Google Drive (Colab only, opt-in), mounting Drive if asked; else None.

    Checkpoints on Drive survive a Colab disconnect: rerun with resume=True and training continues
    from the newest one.
    """
    root = DRIVE_ROOT
    if not root.exists() and mount and hardware.in_colab():
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount(MOUNT_POINT)
    if not root.exists():
        return None
    folder = root / "lora-lab" / run_name / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
