"""What machine are we on, and what should we compute in?

`detect()` reads the device once and returns a `Hardware` record; `preflight()` prints it as a
short table with the package versions and warnings a learner needs before training.

The dtype rule is the one that breaks most Colab notebooks: a T4 is compute capability 7.5,
which has no native bfloat16. `torch.cuda.is_bf16_supported()` still answers True there
(it emulates), so we decide by capability alone: bf16 from 8.0 (Ampere) up, fp16 below, fp32 on
the CPU.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass

import torch

from lora_lab.runtime.units import GIB

#: Compute capability from which bfloat16 runs natively (Ampere).
BF16_MIN_CAPABILITY = (8, 0)
#: Below this much free accelerator memory a QLoRA run of a 1-3B model gets tight.
LOW_GPU_MEMORY_BYTES = 6 * GIB
#: A model, its checkpoints and a merged copy need room on disk.
LOW_DISK_BYTES = 10 * GIB
#: Loading and merging a 16-bit copy of a small model needs host RAM.
LOW_RAM_BYTES = 8 * GIB

#: Packages whose versions preflight reports (the pinned stack in requirements.txt).
REPORTED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "datasets",
    "accelerate",
    "lora-lab",
)


@dataclass(frozen=True)
class Hardware:
    """One reading of the machine. Memory and disk figures are bytes."""

    device_type: str  # "cuda" or "cpu"
    gpu_name: str | None  # e.g. "Tesla T4"; None on the CPU
    gpu_total_bytes: int | None  # what torch reports as the card's total memory
    gpu_free_bytes: int | None  # free right now (other processes and our own tensors excluded)
    compute_capability: tuple[int, int] | None  # (7, 5) on a T4, (8, 0) on an A100
    native_bf16: bool  # capability >= 8.0; never taken from torch.cuda.is_bf16_supported()
    compute_dtype: str  # "bfloat16", "float16" or "float32": what the course computes in
    in_colab: bool  # running inside Google Colab
    disk_free_bytes: int  # free space where the course writes (current folder)
    ram_total_bytes: int | None  # host memory, None where the OS does not say
    ram_available_bytes: int | None  # host memory available now

    @property
    def torch_dtype(self) -> torch.dtype:
        """The compute dtype as a torch dtype."""
        return getattr(torch, self.compute_dtype)

    def to_dict(self) -> dict:
        return asdict(self)


def compute_dtype_for(device_type: str, capability: tuple[int, int] | None) -> str:
    """The dtype to compute in: bf16 on capability >= 8.0, fp16 on older CUDA GPUs, fp32 on CPU."""
    if device_type != "cuda":
        return "float32"
    if capability is not None and tuple(capability) >= BF16_MIN_CAPABILITY:
        return "bfloat16"
    return "float16"


def has_native_bf16(device_type: str, capability: tuple[int, int] | None) -> bool:
    """True only where the GPU runs bf16 in hardware (capability >= 8.0)."""
    return device_type == "cuda" and capability is not None and tuple(capability) >= BF16_MIN_CAPABILITY


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def installed_from() -> tuple[str, str] | None:
    """(repository URL, commit) that pip installed this package from with `git+https://...` (Colab's
    install cell does), read from the install's `direct_url.json` (PEP 610); None for a local or editable install."""
    try:
        text = importlib.metadata.distribution("lora-lab").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        info = json.loads(text or "{}")
    except ValueError:
        return None
    vcs = info.get("vcs_info") or {}
    if not vcs or not info.get("url"):
        return None
    url = info["url"].removesuffix(".git")
    return url, vcs.get("commit_id") or vcs.get("requested_revision") or "main"


def checkout_hint(command: str, produces: str) -> str:
    """What to print when `produces`, a repository file that `command` writes in a clone of the course, is missing.

    In a clone: run the command from the repository root. On Colab the notebook runs without a clone
    (the install cell pip-installs the package), so no such command can run there: say so, and where
    to read the committed file on GitHub instead.
    """
    if not in_colab():
        return f"run `{command}` from the repository root to produce {produces}"
    source = installed_from()
    where = f"{source[0]}/blob/{source[1]}/{produces}" if source else f"{produces} in the course repository on GitHub"
    return (f"{produces} is not on this Colab runtime (`{command}` writes it in a clone of the course "
            f"repository): read the committed results at {where}")


def _host_memory() -> tuple[int | None, int | None]:
    """(total, available) host RAM in bytes from /proc/meminfo, or (None, None) elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemTotal"), info.get("MemAvailable")
    except (OSError, ValueError, IndexError):
        return None, None


def detect(path: str = ".") -> Hardware:
    """Read the machine: the first CUDA device if there is one, else the CPU.

    Args:
        path: where the course will write (checkpoints, adapters); its free disk is reported.
    """
    ram_total, ram_available = _host_memory()
    disk_free = shutil.disk_usage(path).free
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        capability = (props.major, props.minor)
        free, total = torch.cuda.mem_get_info(0)
        return Hardware(
            device_type="cuda",
            gpu_name=props.name,
            gpu_total_bytes=int(total),
            gpu_free_bytes=int(free),
            compute_capability=capability,
            native_bf16=has_native_bf16("cuda", capability),
            compute_dtype=compute_dtype_for("cuda", capability),
            in_colab=in_colab(),
            disk_free_bytes=disk_free,
            ram_total_bytes=ram_total,
            ram_available_bytes=ram_available,
        )
    return Hardware(
        device_type="cpu",
        gpu_name=None,
        gpu_total_bytes=None,
        gpu_free_bytes=None,
        compute_capability=None,
        native_bf16=False,
        compute_dtype="float32",
        in_colab=in_colab(),
        disk_free_bytes=disk_free,
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
    )


def package_versions(names=REPORTED_PACKAGES) -> dict[str, str]:
    """Installed version of each package, or "missing"."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def warnings_for(hw: Hardware, requested_dtype: str | None = None) -> list[str]:
    """Problems worth fixing before training, each with what to do about it."""
    out = []
    if requested_dtype in ("bf16", "bfloat16") and hw.device_type == "cuda" and not hw.native_bf16:
        out.append(
            f"bf16 was requested but {hw.gpu_name} (capability "
            f"{hw.compute_capability[0]}.{hw.compute_capability[1]}) has no native bf16: use fp16 "
            "(the course picks it for you). torch.cuda.is_bf16_supported() says True here only by emulation."
        )
    if hw.in_colab and hw.device_type == "cpu":
        out.append(
            "This Colab runtime has no GPU, so the notebooks run the cpu profile: a tiny model built here, "
            "the same code, smaller numbers. For the t4 profile pick Runtime > Change runtime type > T4 GPU; "
            "if Colab offers no GPU (your GPU quota is used up, or another notebook holds your GPU session: "
            "Runtime > Manage sessions), carry on here on the cpu profile."
        )
    if hw.gpu_free_bytes is not None and hw.gpu_free_bytes < LOW_GPU_MEMORY_BYTES:
        out.append(
            f"Only {hw.gpu_free_bytes / GIB:.1f} GiB of GPU memory is free: restart the runtime to "
            "release memory held by earlier cells, or pick a smaller model."
        )
    if hw.disk_free_bytes < LOW_DISK_BYTES:
        out.append(
            f"Only {hw.disk_free_bytes / GIB:.1f} GiB of disk is free: checkpoints and a merged model "
            "may not fit; delete old runs or save to Google Drive."
        )
    if hw.ram_available_bytes is not None and hw.ram_available_bytes < LOW_RAM_BYTES and hw.device_type == "cuda":
        out.append(
            f"Only {hw.ram_available_bytes / GIB:.1f} GiB of RAM is available: merging into a 16-bit "
            "copy of the base may run out of host memory."
        )
    return out


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.1f} GiB"


def preflight(requested_dtype: str | None = None, hw: Hardware | None = None, file=None) -> Hardware:
    """Print the machine, the packages and any warnings as a short table; return the reading.

    Also silences the library messages a learner cannot act on (`lora_lab.runtime.quiet` lists each and why).
    """
    from lora_lab.runtime.quiet import quiet_library_noise

    quiet_library_noise()
    hw = hw or detect()
    cap = hw.compute_capability
    rows = [
        ("device", hw.device_type if hw.gpu_name is None else f"{hw.device_type} ({hw.gpu_name})"),
        ("compute capability", "-" if cap is None else f"{cap[0]}.{cap[1]}"),
        ("native bf16", "yes" if hw.native_bf16 else "no"),
        ("compute dtype", hw.compute_dtype),
        ("GPU memory free / total", f"{_fmt_bytes(hw.gpu_free_bytes)} / {_fmt_bytes(hw.gpu_total_bytes)}"),
        ("RAM available / total", f"{_fmt_bytes(hw.ram_available_bytes)} / {_fmt_bytes(hw.ram_total_bytes)}"),
        ("disk free", _fmt_bytes(hw.disk_free_bytes)),
        ("Colab", "yes" if hw.in_colab else "no"),
        ("python", sys.version.split()[0]),
    ]
    rows += list(package_versions().items())
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=file)
    for warning in warnings_for(hw, requested_dtype):
        print(f"WARNING: {warning}", file=file)
    return hw
