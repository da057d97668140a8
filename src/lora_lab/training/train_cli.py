"""The command line of `python -m lora_lab.training.train`, importable without torch.

`lora_lab.training.train` parses its arguments with this parser before its heavy imports (torch,
transformers, peft, trl), so `--help` and a mistyped flag answer in a fraction of a second, and a
Ctrl-C while those libraries load ends with one line (`stop_quietly_while_starting`).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys

from lora_lab.runtime import profiles
from lora_lab.runtime.drive import DRIVE_ROOT

#: The training methods (`lora_lab.training.models.check_method` accepts these).
METHODS = ("qlora", "lora", "full")


def stop_quietly_while_starting() -> None:
    """Until `main` starts the run, Ctrl-C ends the process with one line instead of an import traceback."""
    def stop(*_):
        print("\nInterrupted while starting: nothing was trained or written.", file=sys.stderr)
        os._exit(130)

    signal.signal(signal.SIGINT, stop)


def _positive(kind):
    """An argparse type: a number of `kind` (int or float) above zero, else a message naming the value."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or not math.isfinite(value):
            noun = "whole number" if kind is int else "finite number"
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lora_lab.training.train",
        description="QLoRA/LoRA/full SFT, end to end: preflight, train, evaluate, save, reload, merge, metrics.json.")
    parser.add_argument("--profile", choices=profiles.available(), default=None,
                        help="run profile (default: $LORA_LAB_PROFILE, else t4 with a GPU, else cpu)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run a GPU profile (t4) without a CUDA GPU anyway (slow: hours for a 1.5B model)")
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the profile's)")
    parser.add_argument("--dataset", default=None,
                        help="dataset Hub id, local folder, or one .jsonl/.json/.parquet file (default: the profile's)")
    parser.add_argument("--dataset-config", default=None, help="the dataset's configuration name")
    parser.add_argument("--eval-size", type=_positive(int), default=None,
                        help="held-out examples for evaluation (default: the profile's)")
    parser.add_argument("--max-length", type=_positive(int), default=None,
                        help="longest example in tokens; longer ones are dropped whole (default: the profile's)")
    parser.add_argument("--batch-size", type=_positive(int), default=None,
                        help="examples per micro-step (default: the profile's)")
    parser.add_argument("--grad-accum", type=_positive(int), default=None,
                        help="micro-steps per optimizer step (default: the profile's)")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute activations in backward: less memory, more time (default: the profile's)")
    parser.add_argument("--method", choices=METHODS, default=None, help="default: the profile's (qlora)")
    parser.add_argument("--rank", type=_positive(int), default=None, help="LoRA rank (default: the profile's)")
    parser.add_argument("--max-steps", type=_positive(int), default=None,
                        help="optimizer steps (default: the profile's)")
    parser.add_argument("--learning-rate", type=_positive(float), default=None, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the profile's)")
    parser.add_argument("--output-dir", default="runs/sft", help="where metrics.json, adapter and merged model go")
    parser.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: OUTPUT_DIR/checkpoints)")
    parser.add_argument("--drive", nargs="?", const="", default=None, metavar="MOUNTED_PATH",
                        help="checkpoints to Google Drive, which a notebook cell must have mounted first "
                             f"(default path: {DRIVE_ROOT}/lora-lab/RUN/checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --output-dir (its checkpoints and results are deleted)")
    parser.add_argument("--no-merge", action="store_true", help="skip merging into the base the adapter trained on (16-bit copy)")
    return parser
