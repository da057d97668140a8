"""lora_lab.runtime.drive: a checkpoint folder on Google Drive only on Colab, mounting Drive when asked."""

import sys
import types

from lora_lab.runtime import drive, hardware


def fake_colab(monkeypatch, tmp_path):
    """Colab as far as `drive_checkpoint_dir` can tell: `google.colab.drive.mount` creates the Drive folder."""
    root = tmp_path / "content" / "drive" / "MyDrive"
    mounts = []

    def mount(point):
        mounts.append(point)
        root.mkdir(parents=True)

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mount)
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(drive, "DRIVE_ROOT", root)
    monkeypatch.setattr(hardware, "in_colab", lambda: True)
    return root, mounts


def test_on_colab_drive_is_mounted_and_the_run_gets_its_own_folder(monkeypatch, tmp_path):
    root, mounts = fake_colab(monkeypatch, tmp_path)
    folder = drive.drive_checkpoint_dir("03_qlora_sft-t4")
    assert mounts == [drive.MOUNT_POINT]
    assert folder == root / "lora-lab" / "03_qlora_sft-t4" / "checkpoints" and folder.is_dir()
    assert drive.drive_checkpoint_dir("03_qlora_sft-t4") == folder and mounts == [drive.MOUNT_POINT]  # once


def test_without_mounting_or_off_colab_there_is_no_drive_folder(monkeypatch, tmp_path):
    root, mounts = fake_colab(monkeypatch, tmp_path)
    assert drive.drive_checkpoint_dir("run", mount=False) is None and mounts == []
    monkeypatch.setattr(hardware, "in_colab", lambda: False)
    assert drive.drive_checkpoint_dir("run") is None and mounts == [] and not root.exists()
