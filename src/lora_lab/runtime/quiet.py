"""Silence the library messages a learner can neither act on nor learn from, and only those.

`hardware.preflight()`, which every notebook runs first, calls `quiet_library_noise()`. Each
entry below names the library, the message and why it is noise on this course's runs; anything
else still shows. Our own calls use current APIs instead of being silenced (the tests fail when
the package calls a deprecated one: tests/conftest.py).
"""

from __future__ import annotations

import logging
import warnings

#: (category, message regex, why it is silenced) for Python warnings.
LIBRARY_WARNINGS = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated",
     "peft 0.19 reads transformers' deprecated `is_gradient_checkpointing` inside `get_peft_model` and "
     "`PeftModel.from_pretrained`; the course's own calls use `activation_checkpointing_enable`."),
    (UserWarning, r"Paged optimizers are not supported on CPU",
     "bitsandbytes, on the cpu profile only: it runs the T4 recipe (paged 8-bit AdamW) on purpose, and "
     "paging exists only on a GPU."),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found",
     "torch's DataLoader on a CPU-only machine, for data loaders the course does not configure itself "
     "(its own SFT runs set dataloader_pin_memory only with a GPU)."),
)
#: (logger, message fragment, why) for log records.
LIBRARY_LOG_LINES = (
    ("bitsandbytes.backends.cpu.ops", "kernels-community",
     "bitsandbytes on a CPU with AVX512-BF16 tries an optional Hub package (`kernels`) for a faster 4-bit "
     "kernel, and falls back to its own; nothing downloads here, and the fallback gives the same numbers."),
    ("transformers.trainer_utils", "mtime may not be reliable",
     "transformers, when checkpoints are written less than a second apart (the small runs here save every "
     "step or few): it then orders them by step number, which is the order resuming needs anyway."),
)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def quiet_library_noise() -> None:
    """Install the filters above (idempotent): the notebooks' stderr keeps only what a learner can use."""
    for category, message, _why in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, fragment, _why in LIBRARY_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropMessage(fragment))
