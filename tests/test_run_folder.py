"""lora_lab.training.run_folder: one live run per folder, and no run silently replacing another."""

import os
from pathlib import Path

import pytest
from test_units import make_checkpoint

from lora_lab.training import run_folder


def claim(out, **kwargs):
    settings = dict(resume=False, overwrite=False, max_steps=100)
    return run_folder.claim(out, Path(out) / "checkpoints", **{**settings, **kwargs})


def test_a_fresh_folder_is_claimed_locked_and_released(tmp_path):
    out = tmp_path / "run"
    with claim(out):
        assert (out / run_folder.LOCK).read_text() == str(os.getpid())
    assert not (out / run_folder.LOCK).exists()


def test_a_second_live_run_is_refused_and_a_stale_lock_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / run_folder.LOCK).write_text(str(os.getppid()))  # a live process: this test's parent
    with pytest.raises(ValueError, match=f"Another run \\(process {os.getppid()}\\) is writing"), claim(out):
        pass
    (out / run_folder.LOCK).write_text("999999999")  # no such process
    with claim(out):
        assert (out / run_folder.LOCK).read_text() == str(os.getpid())


def test_another_runs_results_are_refused_kept_or_replaced_only_on_request(tmp_path):
    out = tmp_path / "run"
    make_checkpoint(out / "checkpoints" / "checkpoint-10")
    (out / "checkpoints" / "notes.txt").parent.mkdir(exist_ok=True)
    (out / "checkpoints" / "notes.txt").write_text("mine")
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint-10, metrics.json\)"), claim(out):
        pass
    assert (out / "checkpoints" / "checkpoint-10").is_dir()
    with claim(out, resume=True):
        assert (out / "checkpoints" / "checkpoint-10").is_dir()
    with claim(out, overwrite=True):
        assert not (out / "checkpoints" / "checkpoint-10").exists() and not (out / "metrics.json").exists()
        assert (out / "checkpoints" / "notes.txt").read_text() == "mine"  # only what a run writes is deleted


def test_resuming_a_checkpoint_that_already_trained_every_step_is_refused(tmp_path):
    out = tmp_path / "run"
    make_checkpoint(out / "checkpoints" / "checkpoint-100", state='{"global_step": 100}')
    with pytest.raises(ValueError, match="checkpoint-100 has already trained 100 steps.*asks for 20"), \
            claim(out, resume=True, max_steps=20):
        pass
    with claim(out, resume=True, max_steps=150):
        pass


def test_an_empty_name_or_a_file_is_not_a_run_folder(tmp_path):
    with pytest.raises(ValueError, match="--output-dir is empty"), claim(""):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"), claim(tmp_path / "file"):
        pass
