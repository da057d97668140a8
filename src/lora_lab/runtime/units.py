"""Units and places shared by every module: one `GIB`, one cache root, one way to name and build a cache entry.

Why a module of its own: the byte unit, the cache location, cache keys and content hashes were
defined in several modules; every module now imports them from here.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

GIB = 2**30  # bytes in a gibibyte; every memory figure in the course is in GiB
MIB = 2**20  # bytes in a mebibyte

CACHE_ENV = "LORA_LAB_CACHE"  # the one environment variable that moves every cache of the course


def cache_root() -> Path:
    """Where the course caches what it builds: $LORA_LAB_CACHE, else ~/.cache/lora_lab; always an absolute
    path (the GGUF tools run in other working directories)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lora_lab").expanduser().absolute()


def cache_dir(kind: str) -> Path:
    """One sub-folder of the cache root per kind of artefact (`tiny`, `rank`, `adapters`, ...)."""
    return cache_root() / kind


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A short hash of the package's own source: part of every cache key, so that results cached under
    the cache root (which outlives a checkout) are recomputed whenever the code that made them changes."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cache_key(payload: dict, length: int = 12) -> str:
    """A short sha256 naming a cache entry: `payload` (JSON, keys sorted) with the versions of the
    libraries that shape results and the package's own source (`code_version`)."""
    import json

    import tokenizers
    import torch
    import transformers

    full = {"payload": payload, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "code": code_version()}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(named_tensors) -> str:
    """The sha256 over (name, tensor) pairs in name order, each tensor's raw bytes: equal hashes, equal tensors."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_once(target: Path, build) -> Path:
    """`target`, built by `build(folder)` into a temporary sibling folder and renamed into place.

    A build that is interrupted or fails leaves no half-written `target` behind (its temporary folder
    is removed), and a second process that finishes first wins: the slower one discards its copy.
    """
    import shutil
    import tempfile

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(scratch)
        if target.exists():
            shutil.rmtree(scratch)
        else:
            scratch.rename(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target
