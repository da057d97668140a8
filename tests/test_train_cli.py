"""The training command line refuses bad input with one clear line: exit code 2, no traceback, nothing saved.

Each case runs `lora_lab.training.train.main` in this process, as `python -m lora_lab.training.train ...` would,
and checks the exit code, that the message names the problem, that no traceback reached the
user, and that no result (metrics.json, adapter, merged model) was written.
"""

import json

import pytest
from transformers import TrainerCallback

from lora_lab.runtime import drive, profiles
from lora_lab.training import train

USER = {"role": "user", "content": "what is the color of mipoka ?"}


def run_cli(capsys, *argv):
    """main(argv) -> (exit code, stdout + stderr)."""
    try:
        code = train.main(list(argv))
    except SystemExit as stop:  # argparse refuses a value
        code = stop.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text


def nothing_saved(folder):
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.mark.parametrize("flag, value", [("--max-steps", "0"), ("--max-steps", "-1"), ("--rank", "0"),
                                         ("--learning-rate", "0"), ("--learning-rate", "-0.0001"),
                                         ("--eval-size", "0"), ("--max-length", "-5"), ("--rank", "eight"),
                                         ("--learning-rate", "inf"), ("--learning-rate", "nan")])
def test_non_positive_numbers_are_refused_by_name(capsys, tmp_path, flag, value):
    code, text = run_cli(capsys, "--profile", "tiny", flag, value, "--output-dir", str(tmp_path / "run"))
    assert code == 2 and f"argument {flag}: must be a positive" in text and repr(value) in text
    assert nothing_saved(tmp_path / "run")


def test_the_same_settings_are_refused_through_the_api():
    with pytest.raises(ValueError, match=r"max_steps must be a positive finite number, got 0 \(command line: --max-steps\)"):
        train.check_settings(max_steps=0)
    with pytest.raises(ValueError, match="rank must be a positive finite number, got -2"):
        train.run_pipeline(profiles.get_profile("tiny"), rank=-2, verbose=False)
    train.check_settings(max_steps=1, rank=None, learning_rate=1e-4)  # None means "the profile's"


def test_unknown_profile_in_the_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(profiles.PROFILE_ENV, "bogus")
    code, text = run_cli(capsys, "--output-dir", str(tmp_path / "run"))
    assert code == 2 and "LORA_LAB_PROFILE='bogus' names no run profile" in text
    assert nothing_saved(tmp_path / "run")


def test_t4_profile_without_a_gpu_stops_at_once_unless_overridden(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    code, text = run_cli(capsys, "--profile", "t4", "--output-dir", str(tmp_path / "run"))
    assert code == 2 and "no CUDA GPU" not in text and "this machine has none" in text and "--allow-cpu" in text
    assert nothing_saved(tmp_path / "run")
    seen = {}
    monkeypatch.setattr(train, "run_pipeline", lambda profile, **kw: seen.setdefault("profile", profile) and {})
    code, _ = run_cli(capsys, "--profile", "t4", "--allow-cpu", "--output-dir", str(tmp_path / "run"))
    assert code == 0 and seen["profile"].name == "t4"


def test_eval_size_and_max_length_flags_reach_the_run(capsys, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(train, "run_pipeline", lambda profile, **kw: seen.update(profile=profile, **kw) or {})
    data_file = write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, {"role": "assistant", "content": "red"}]}] * 9)
    code, _ = run_cli(capsys, "--profile", "tiny", "--dataset", data_file, "--eval-size", "3", "--max-length", "48",
                      "--output-dir", str(tmp_path / "run"))
    assert code == 0
    assert (seen["profile"].n_eval, seen["profile"].max_length, seen["profile"].dataset_id) == (3, 48, data_file)
    assert seen["checkpoint_dir"] == tmp_path / "run" / "checkpoints"


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ([{"messages": [USER, {"role": "assistant", "content": "  "}]}] * 20, ["--eval-size", "2"], "answer is empty"),
        ([{"messages": [USER, {"role": "assistant", "content": "red"}, USER]}] * 20, ["--eval-size", "2"],
         "ends on a user turn"),
        ([{"messages": [USER, {"role": "assistant", "content": "red"}]}] * 20, [],
         r"has 20 examples, and the eval split needs 100 plus at least one to train on: pass a smaller eval size "
         r"\(--eval-size 4"),
        ([{"messages": [USER, {"role": "assistant", "content": "red " * 40}]}] * 20,
         ["--eval-size", "2", "--max-length", "8"], "longer than max_length=8 tokens"),
        ([], [], r"d\.jsonl is empty"),
    ],
)
def test_bad_data_files_are_refused_before_training(capsys, tmp_path, rows, extra, message):
    import re

    data_file = write_jsonl(tmp_path / "d.jsonl", rows)
    code, text = run_cli(capsys, "--profile", "tiny", "--dataset", data_file, *extra, "--output-dir",
                         str(tmp_path / "run"))
    assert code == 2 and re.search(message, text), text[-500:]
    assert nothing_saved(tmp_path / "run")


def test_a_missing_dataset_file_is_named(capsys, tmp_path):
    code, text = run_cli(capsys, "--profile", "tiny", "--dataset", str(tmp_path / "nope.jsonl"), "--output-dir",
                         str(tmp_path / "run"))
    assert code == 2 and "nope.jsonl" in text
    assert nothing_saved(tmp_path / "run")


def test_drive_needs_a_drive_mounted_by_the_notebook(capsys, tmp_path):
    with pytest.raises(ValueError, match=r"not mounted.*drive\.mount\('/content/drive'\).*separate process"):
        drive.drive_dir_from_cli("", "sft", drive_root=tmp_path / "drive" / "MyDrive")
    mounted = tmp_path / "drive" / "MyDrive"
    mounted.mkdir(parents=True)
    assert drive.drive_dir_from_cli("", "sft", drive_root=mounted) == mounted / "lora-lab" / "sft" / "checkpoints"
    assert drive.drive_dir_from_cli(str(mounted / "mine"), "sft", drive_root=mounted) == mounted / "mine"
    if not drive.DRIVE_ROOT.is_dir():  # this machine has no Drive: the command line says what to do
        code, text = run_cli(capsys, "--profile", "tiny", "--drive", "--output-dir", str(tmp_path / "run"))
        assert code == 2 and "drive.mount" in text and "--drive /content/drive/MyDrive/lora-lab/run/checkpoints" in text
        assert nothing_saved(tmp_path / "run")


class CtrlCAt(TrainerCallback):
    """Raises KeyboardInterrupt at the end of an optimizer step, as Ctrl-C during training does."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_ends_with_one_line_saying_how_to_resume(capsys, tmp_path, monkeypatch):
    real = train.run_pipeline

    def interrupted(profile, **kw):
        return real(profile.replace(save_steps=2, batch_size=8), callbacks=[CtrlCAt(3)], n_show=1, **kw)

    monkeypatch.setattr(train, "run_pipeline", interrupted)
    code, text = run_cli(capsys, "--profile", "tiny", "--max-steps", "6", "--eval-size", "4", "--output-dir",
                         str(tmp_path / "run"))
    assert code == 130
    lines = [line.strip() for line in text.splitlines() if "Interrupted" in line]
    assert lines == [(f"Interrupted. The newest complete checkpoint is {tmp_path / 'run' / 'checkpoints' / 'checkpoint-2'}"
                         ": rerun the same command with --resume to continue from it.")]
    assert "KeyboardInterrupt" not in text
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "adapter").exists()


@pytest.mark.parametrize("args, message", [
    (["--output-dir", ""], "--output-dir is empty"),
    (["--eval-size", "100000"], "eval_size 100000 is more than the 2000"),
    (["--resume", "--overwrite"], "pass one of them"),
])
def test_bad_run_settings_are_refused_in_one_line_before_anything_runs(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(capsys, "--profile", "tiny", *args)
    assert code == 2 and message in text
    assert not any(tmp_path.iterdir())  # nothing written, not even into the current folder


def test_a_folder_holding_another_run_is_refused_without_resume_or_overwrite(capsys, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-50").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    code, text = run_cli(capsys, "--profile", "tiny", "--output-dir", str(out))
    assert code == 2 and "already holds a run (checkpoint-50, metrics.json)" in text and "--resume" in text
    assert (out / "checkpoints" / "checkpoint-50").is_dir() and (out / "metrics.json").read_text() == "{}"


def test_help_and_bad_flags_answer_before_torch_is_imported():
    import subprocess
    import sys

    for args in (["--help"], ["--max-steps", "0"]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "lora_lab.training.train", *args],
                              capture_output=True, text=True, timeout=60)
        imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
        assert "torch" not in imported and "transformers" not in imported, args
        assert done.returncode == (0 if args == ["--help"] else 2)


def test_ctrl_c_while_the_libraries_load_ends_in_one_line():
    import subprocess
    import sys

    code = ("from lora_lab.training.train_cli import stop_quietly_while_starting; stop_quietly_while_starting(); "
            "import os, signal, time; os.kill(os.getpid(), signal.SIGINT); time.sleep(30)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130
    assert done.stderr.strip() == "Interrupted while starting: nothing was trained or written."
