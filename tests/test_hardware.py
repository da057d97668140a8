"""The dtype decision is made by compute capability, never by torch.cuda.is_bf16_supported()."""

from types import SimpleNamespace

import pytest
import torch

from lora_lab.runtime import hardware
from lora_lab.runtime.units import GIB


def fake_gpu(monkeypatch, name, major, minor, free=14 * GIB, total=int(14.74 * GIB)):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name=name, major=major, minor=minor))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (free, total))
    # What a T4 really answers (bf16 by emulation): detect() must not believe it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_t4_gets_fp16_and_no_native_bf16(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", 7, 5)
    hw = hardware.detect()
    assert hw.device_type == "cuda" and hw.gpu_name == "Tesla T4"
    assert hw.compute_capability == (7, 5)
    assert hw.native_bf16 is False
    assert hw.compute_dtype == "float16" and hw.torch_dtype == torch.float16
    assert hw.gpu_total_bytes == int(14.74 * GIB)


def test_ampere_gets_bf16(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", 8, 0)
    hw = hardware.detect()
    assert hw.native_bf16 is True and hw.compute_dtype == "bfloat16"


def test_cpu_gets_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hw = hardware.detect()
    assert hw.device_type == "cpu" and hw.gpu_name is None
    assert hw.native_bf16 is False and hw.compute_dtype == "float32"
    assert hw.disk_free_bytes > 0


@pytest.mark.parametrize(
    "device, capability, expected",
    [("cuda", (7, 5), "float16"), ("cuda", (7, 0), "float16"), ("cuda", (8, 6), "bfloat16"),
     ("cuda", (9, 0), "bfloat16"), ("cpu", None, "float32")],
)
def test_compute_dtype_rule(device, capability, expected):
    assert hardware.compute_dtype_for(device, capability) == expected


def test_preflight_warns_about_bf16_on_a_t4(monkeypatch, capsys):
    fake_gpu(monkeypatch, "Tesla T4", 7, 5)
    hardware.preflight(requested_dtype="bf16")
    out = capsys.readouterr().out
    assert "Tesla T4" in out and "float16" in out
    assert "WARNING" in out and "no native bf16" in out and "use fp16" in out


def test_preflight_warns_about_low_memory_and_disk(monkeypatch, capsys):
    fake_gpu(monkeypatch, "Tesla T4", 7, 5, free=2 * GIB)
    monkeypatch.setattr(hardware.shutil, "disk_usage", lambda p: SimpleNamespace(free=3 * GIB))
    hardware.preflight()
    out = capsys.readouterr().out
    assert "Only 2.0 GiB of GPU memory is free" in out
    assert "Only 3.0 GiB of disk is free" in out


def test_preflight_is_quiet_on_a_healthy_cpu_machine(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware.shutil, "disk_usage", lambda p: SimpleNamespace(free=100 * GIB))
    hardware.preflight()
    out = capsys.readouterr().out
    assert "WARNING" not in out
    assert "transformers" in out and "peft" in out
