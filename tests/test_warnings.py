"""Warnings: the package's own deprecated calls fail the tests; the library noise learners see is silenced."""

import logging
import warnings
from pathlib import Path

import pytest
import torch

import lora_lab
from lora_lab.runtime import quiet


def deprecated_api():
    warnings.warn("`old_api` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)


def library_pointing_at_its_caller():
    warnings.warn("`other_api` is deprecated.", DeprecationWarning, stacklevel=2)


def call_from(filename: str, source: str):
    code = compile(source, filename, "exec")
    exec(code, {"deprecated_api": deprecated_api, "library_pointing_at_its_caller": library_pointing_at_its_caller})


@pytest.mark.parametrize("source", ["deprecated_api()", "library_pointing_at_its_caller()"])
def test_a_deprecated_call_from_the_package_fails(source):
    inside = str(Path(lora_lab.__file__).parent / "some_module.py")
    with pytest.raises((FutureWarning, DeprecationWarning), match=r"is deprecated.*called from .*some_module\.py"):
        call_from(inside, source)
    # The same call from anywhere else is an ordinary warning.
    with pytest.warns((FutureWarning, DeprecationWarning), match="is deprecated"):
        call_from("/somewhere/else.py", source)


def test_the_package_calls_current_checkpointing_apis(tiny_model_path):
    """Loading for QLoRA training enables checkpointing through `activation_checkpointing_enable`."""
    from lora_lab.runtime import profiles
    from lora_lab.training import models

    profile = profiles.get_profile("tiny").replace(gradient_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = models.load_model_and_tokenizer(profile, "qlora")
        models.attach_lora(model, models.lora_config(profile))
    assert model.is_activation_checkpointing
    assert not [w for w in caught if "`gradient_checkpointing_enable`" in str(w.message)]


def test_quiet_silences_only_the_listed_library_messages(caplog):
    quiet.quiet_library_noise()
    quiet.quiet_library_noise()  # idempotent: one filter per logger line
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert sum(isinstance(f, quiet._DropMessage) for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: offline.")
        logger.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.quiet_library_noise()
        warnings.warn("Paged optimizers are not supported on CPU. Falling back.", UserWarning, stacklevel=1)
        warnings.warn("a warning the learner should see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning the learner should see"]


def test_sft_runs_do_not_pin_memory_without_a_gpu():
    from lora_lab.runtime import hardware, profiles
    from lora_lab.training import models, train

    precision = models.decide_precision(hardware.detect(), "qlora")
    kwargs = train.sft_config_kwargs(profiles.get_profile("tiny"), "out", precision)
    assert kwargs["dataloader_pin_memory"] is torch.cuda.is_available()


def test_quiet_drops_transformers_checkpoint_ordering_note_only():
    """Checkpoints saved within a second make transformers log an mtime note a learner cannot act on."""
    quiet.quiet_library_noise()
    logger = logging.getLogger("transformers.trainer_utils")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning("mtime may not be reliable on this filesystem, falling back to numerical ordering")
        logger.warning("a checkpoint could not be deleted")
    finally:
        logger.removeHandler(handler)
    assert seen == ["a checkpoint could not be deleted"]
