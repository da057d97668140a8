"""Units and places shared by every module: one `GIB`, one cache root.

Why a module of its own: the byte unit and the cache location were defined in several
modules with different defaults; every module now imports them from here.
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
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


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
