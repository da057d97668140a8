"""Check that the Colab install step leaves Colab's own torch and numpy alone (`make colab-check-install`).

Colab ships its own CUDA build of torch and its own numpy; the notebooks' install cell must not
replace either (a new torch breaks CUDA, a new numpy forces a runtime restart). This script builds
a Colab-like environment and asks pip's resolver what the install cell would do there:

1. a fresh virtualenv holding stand-in `torch` and `numpy` distributions at Colab's versions (read
   from `colab/pip-freeze.gpu.txt`, Colab's published freeze): wheels with metadata only, built here,
   so nothing large is downloaded (`make colab-twin` installs the real ones);
2. `pip install --dry-run --report` of `colab/requirements.txt` plus this package (from the
   checkout; on Colab it comes from GitHub with the same metadata), exactly the install cell's
   requirements;
3. a failure if the plan installs, upgrades or downgrades torch or numpy.

It needs the package registry (pip resolves against PyPI), so it is a make target that CI calls,
not a unit test. Usage: python colab/check_install.py [--torch VERSION] [--numpy VERSION] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Colab's GPU runtime as Google publishes it (googlecolab/backend-info's pip-freeze.gpu.txt), committed.
COLAB_FREEZE = ROOT / "colab" / "pip-freeze.gpu.txt"


def colab_versions(path: Path = COLAB_FREEZE) -> dict[str, str]:
    """Distribution name (lower case, `-` for `_`) -> version, from a `pip freeze` file.

    Local version labels are dropped (Colab's `torch==2.11.0+cu128` is `2.11.0`, what PyPI serves);
    comments and lines that are not `name==version` (URLs, `@ file://` builds) are skipped.
    """
    versions = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name, sep, version = line.partition("==")
        if sep and name and version and " " not in name:
            versions[name.strip().lower().replace("_", "-")] = version.strip().split("+", 1)[0]
    return versions


#: Versions of Colab's preinstalled builds that the install cell must leave alone.
COLAB_TORCH = colab_versions().get("torch", "")
COLAB_NUMPY = colab_versions().get("numpy", "")
#: Distributions the install cell must leave alone.
PROTECTED = ("torch", "numpy")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def stand_in_wheel(name: str, version: str, folder: Path) -> Path:
    """A wheel that installs only the metadata of `name==version` (no code): pip sees it as installed."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 "Summary: stand-in for Colab's preinstalled build (metadata only)\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: lora-lab colab check\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n",
    }
    record = [_record_line(path, data) for path, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def colab_like_env(workdir: Path, torch_version: str, numpy_version: str) -> Path:
    """A fresh virtualenv with the stand-ins installed; returns its python."""
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "wheels").mkdir(parents=True)
    venv.create(workdir / "venv", with_pip=True)
    python = workdir / "venv" / "bin" / "python"
    wheels = [stand_in_wheel("torch", torch_version, workdir / "wheels"),
              stand_in_wheel("numpy", numpy_version, workdir / "wheels")]
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *map(str, wheels)], check=True)
    return python


def planned_changes(python: Path, report: Path) -> dict[str, str]:
    """What the install cell's requirements would install in that environment: name -> version."""
    cmd = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
           "-r", str(ROOT / "colab" / "requirements.txt"), str(ROOT)]
    subprocess.run(cmd, check=True)
    plan = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in plan}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default=COLAB_TORCH, help="Colab's torch version to stand in for")
    parser.add_argument("--numpy", default=COLAB_NUMPY, help="Colab's numpy version to stand in for")
    parser.add_argument("--workdir", default=str(ROOT / "build" / "colab-check"), help="scratch folder")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    python = colab_like_env(workdir, args.torch, args.numpy)
    plan = planned_changes(python, workdir / "report.json")
    print(f"colab install plan (torch {args.torch} and numpy {args.numpy} preinstalled): {len(plan)} packages: "
          + ", ".join(f"{name}=={version}" for name, version in sorted(plan.items())))
    touched = {name: plan[name] for name in PROTECTED if name in plan}
    if touched:
        print("FAIL: the Colab install step would replace Colab's own "
              + ", ".join(f"{name} (with {version})" for name, version in touched.items())
              + ". Remove the pin or the dependency that asks for it.", file=sys.stderr)
        return 1
    print("ok: Colab's torch and numpy stay as they are.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
