"""Profile selection: GPU -> t4, CPU -> cpu, LORA_LAB_PROFILE overrides, unknown names refused."""

import dataclasses

import pytest
import torch

from lora_lab.runtime import profiles


def test_cpu_without_gpu(monkeypatch):
    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profiles.get_profile().name == "cpu"


def test_t4_with_gpu(monkeypatch):
    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profiles.get_profile().name == "t4"


def test_environment_overrides(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(profiles.PROFILE_ENV, "CPU")
    assert profiles.get_profile().name == "cpu"
    assert profiles.PROFILE_ENV in profiles.why(profiles.get_profile())


def test_unknown_profile_lists_the_choices(monkeypatch):
    monkeypatch.setenv(profiles.PROFILE_ENV, "a100")
    with pytest.raises(ValueError, match=r"Unknown run profile 'a100'.*cpu, t4, tiny"):
        profiles.get_profile()


def test_profiles_are_complete_and_frozen():
    t4, cpu, tiny = profiles.PROFILES["t4"], profiles.PROFILES["cpu"], profiles.PROFILES["tiny"]
    assert tiny.is_local and not t4.is_local and not cpu.is_local
    assert cpu.model_is_installed and tiny.model_is_installed and not t4.model_is_installed
    assert cpu.task == t4.task == "sql"  # the cpu profile learns the t4 profile's task, on a real model
    assert "/" in t4.model_id and "/" in t4.dataset_id  # real Hub ids
    assert t4.optimizer == "paged_adamw_8bit" and t4.gradient_checkpointing
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.max_steps = 1
    changed = cpu.replace(max_steps=7)
    assert changed.max_steps == 7 and cpu.max_steps != 7
    assert f"r={cpu.lora_r}" in cpu.summary()


def test_an_unknown_profile_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv(profiles.PROFILE_ENV, "bogus")
    with pytest.raises(ValueError, match=r"Unknown run profile 'bogus'.*cpu, t4, tiny.*LORA_LAB_PROFILE='bogus' names no run profile"):
        profiles.get_profile()
    assert profiles.get_profile("cpu").name == "cpu"  # an explicit name wins over the variable


def test_quick_profile_gives_the_tiny_model_on_the_cpu_only():
    cpu, t4 = profiles.PROFILES["cpu"], profiles.PROFILES["t4"]
    assert profiles.quick_profile(cpu) is profiles.PROFILES["tiny"]
    assert profiles.quick_profile(t4) is t4
    rehearsal = profiles.rehearsal_of(t4)
    assert profiles.quick_profile(rehearsal) is rehearsal
