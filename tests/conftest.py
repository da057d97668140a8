"""Shared fixtures: the cpu profile's tiny model, built once per machine and cached."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test touches the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_path():
    """Folder of the cpu profile's tiny base model (built on first use, then reused)."""
    from lora_lab import tiny

    return tiny.ensure_tiny_model()
