"""Colab: every notebook has its badge and one Colab-only install cell that leaves torch alone, and
`make colab-links REPO=owner/name REF=...` points all of them at a fork with plain python3 (no install)."""

import json
import re
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from lora_lab.tooling import colab, course

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LEARNER_NOTEBOOKS = sorted((ROOT / "notebooks" / "learners").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", SOURCES + NOTEBOOKS + LEARNER_NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_has_badge_and_only_the_colab_install_cell(path):
    assert colab.notebook_problems(path) == []


def test_the_colab_check_passes_on_this_checkout(capsys):
    assert colab.main(["check"]) == 0, capsys.readouterr().out
    assert f"{colab.course_repo()}@{colab.course_ref()}" in capsys.readouterr().out


def test_check_catches_a_stray_install_and_a_missing_badge(tmp_path):
    good = SOURCES[0].read_text()
    bad = tmp_path / "09_bad.py"
    bad.write_text(good.replace("Open In Colab", "x").replace("](https://colab", "](https://example")
                   + '\n# %%\nimport subprocess\nsubprocess.run(["pip", "install", "torch"])\n')
    problems = " ".join(colab.notebook_problems(bad))
    assert "badge" in problems and "installs something" in problems


def test_check_catches_an_install_cell_left_on_another_ref(tmp_path):
    stale = tmp_path / NOTEBOOKS[0].name
    stale.write_text(NOTEBOOKS[0].read_text())
    problems = colab.notebook_problems(stale, colab.course_repo(), "v9")
    assert len(problems) == 2 and "badge" in problems[0] and "at v9" in problems[1]


def test_requirements_pin_everything_and_leave_torch_and_numpy_alone():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "colab" / "requirements.txt").read_text().splitlines()]
    packages = [ln for ln in lines if ln]
    assert packages, "colab/requirements.txt is empty"
    for line in packages:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9.]*", line), f"not pinned: {line}"
    names = {ln.split("==")[0].lower() for ln in packages}
    assert not names & {"torch", "numpy", "torchvision", "torchaudio"}
    # Same versions as the tested stack.
    local = dict(ln.split("==") for ln in (r.split("#")[0].strip() for r in (ROOT / "requirements.txt").read_text().splitlines()) if "==" in ln)
    for line in packages:
        name, version = line.split("==")
        assert local.get(name) == version, f"{name}: colab pins {version}, requirements.txt {local.get(name)}"


def fresh_copy(tmp_path: Path) -> Path:
    """What a fresh clone holds for `make colab-links` (no .venv, no install stamp), plus a learner copy."""
    root = tmp_path / "clone"
    root.mkdir()
    for name in ("Makefile", "README.md"):
        shutil.copy(ROOT / name, root / name)
    (root / "docs").mkdir()
    shutil.copy(ROOT / colab.LEARNER_PAGE, root / colab.LEARNER_PAGE)
    # as a clone has it: no bytecode cache (a test that imported colab/twin.py may have left one here)
    shutil.copytree(ROOT / "colab", root / "colab", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "notebooks").mkdir()
    for path in SOURCES + NOTEBOOKS:
        shutil.copy(path, root / "notebooks" / path.name)
    learners = root / "notebooks" / "learners"
    learners.mkdir()
    for path in LEARNER_NOTEBOOKS or NOTEBOOKS:  # stand-in learner copies until they are generated
        text = path.read_text()
        if not LEARNER_NOTEBOOKS:
            text = text.replace(f"/notebooks/{path.name}", f"/notebooks/learners/{path.name}")
        (learners / path.name).write_text(text)
    tooling = root / "src" / "lora_lab" / "tooling"
    tooling.mkdir(parents=True)
    shutil.copy(ROOT / "src" / "lora_lab" / "tooling" / "colab.py", tooling / "colab.py")
    assert not (root / ".venv").exists()
    return root


def make_colab_links(root: Path, *args: str) -> subprocess.CompletedProcess:
    # `-I -S`: no site-packages at all, so only the standard library can be imported (no torch, no jupytext).
    python = f"{sys.executable} -I -S"
    return subprocess.run(["make", "--no-print-directory", "-C", str(root), "colab-links", f"PYTHON={python}", *args],
                          capture_output=True, text=True, timeout=120)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_colab_links_in_a_fresh_clone_rewrites_everything_with_the_standard_library(tmp_path):
    root = fresh_copy(tmp_path)
    result = make_colab_links(root, "REPO=some-one/my.fork", "REF=v1")
    assert result.returncode == 0, result.stderr
    assert not (root / ".venv").exists()  # nothing was installed
    assert (root / "colab" / "REPO").read_text() == "some-one/my.fork\n"
    assert (root / "colab" / "REF").read_text() == "v1\n"
    files = colab.course_files(root)
    assert len(files) == 2 + len(SOURCES) + 2 * len(NOTEBOOKS)  # README, learners' page, sources, twins, learners
    for path in files:
        text = path.read_text()
        assert "lora-lab/lora-lab" not in text, path
        assert "/blob/main/" not in text and "LORA_LAB_REF = \\\"main\\\"" not in text, path
        urls = re.findall(r"https://colab\.research\.google\.com/github/\S+?/notebooks/[^)\s\"]+", text)
        assert urls and all(u.startswith("https://colab.research.google.com/github/some-one/my.fork/blob/v1/")
                            for u in urls), path
    for path in files:
        if path.suffix != ".md":
            assert colab.notebook_problems(path, "some-one/my.fork", "v1") == [], path
    learner = next((root / "notebooks" / "learners").glob("*.ipynb"))
    assert colab.badge_url("some-one/my.fork", f"learners/{learner.name}", "v1") in learner.read_text()
    # The .py sources and their .ipynb twins still pair up cell for cell (what `make check-sync` checks).
    assert course.check(root / "notebooks") == []
    # The install cell pins the package to the ref: pip reads git+https://github.com/some-one/my.fork@v1.
    cells = json.loads((root / "notebooks" / NOTEBOOKS[0].name).read_text())["cells"]
    install = "".join(cells[1]["source"])
    assert 'LORA_LAB_REF = "v1"' in install and "git+https://github.com/{LORA_LAB_REPO}@{LORA_LAB_REF}" in install
    # And the stdlib check agrees, also run without site-packages.
    check = subprocess.run([sys.executable, "-I", "-S", str(root / "src/lora_lab/tooling/colab.py"), "check"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "some-one/my.fork@v1" in check.stdout, check.stdout + check.stderr


def test_make_colab_links_is_idempotent_and_ref_defaults_to_main(tmp_path):
    root = fresh_copy(tmp_path)
    assert make_colab_links(root, "REPO=me/fork", "REF=v1").returncode == 0
    once = snapshot(root)
    second = make_colab_links(root, "REPO=me/fork", "REF=v1")
    assert second.returncode == 0 and "rewrote 0 files" in second.stdout
    assert snapshot(root) == once
    assert make_colab_links(root, "REPO=me/fork").returncode == 0
    assert (root / "colab" / "REF").read_text() == "main\n"
    back = make_colab_links(root, "REPO=lora-lab/lora-lab")
    assert back.returncode == 0
    for path in [*SOURCES, *NOTEBOOKS, ROOT / "README.md"]:  # back where it started, byte for byte
        assert (root / path.relative_to(ROOT)).read_text() == path.read_text(), path


@pytest.mark.parametrize("args, message", [
    (["REPO=bad repo"], "REPO must be"), (["REPO=a/b/c"], "REPO must be"), (["REPO=me/fork", "REF=feature/x"], "REF must be"),
    (["REPO=me/fork", "REF=..bad"], "REF must be"), (["REPO=me/fork", "REF=v1 v2"], "REF must be"), ([], "usage: make colab-links"),
    (["REPO=a/b'; touch pwned; echo '"], "REPO must be"), (['REPO=a/b"; touch pwned; echo "'], "REPO must be"),
    (["REPO=me/fork", "REF=main'; touch pwned; echo '"], "REF must be"), (["REPO=me/fork.git"], "REPO is owner/name without"),
])
def test_make_colab_links_refuses_a_bad_repo_or_ref_in_one_line_and_writes_nothing(tmp_path, args, message):
    root = fresh_copy(tmp_path)
    before = snapshot(root)
    result = make_colab_links(root, *args)
    assert result.returncode != 0
    errors = [ln for ln in result.stderr.splitlines() if not ln.startswith("make")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert snapshot(root) == before and not (root / "pwned").exists()  # nothing written, nothing run


def test_the_makefile_target_needs_no_install():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ncolab-links:", 1)[1].split("\n\n", 1)[0]
    first = recipe.splitlines()[0]
    assert "$(STAMP)" not in first and "$(BIN)" not in recipe and "sync" not in recipe and "pip" not in recipe
    assert "$(PYTHON) src/lora_lab/tooling/colab.py set-repo" in recipe
    imports = re.findall(r"^(?:from|import) (\w+)", (ROOT / "src/lora_lab/tooling/colab.py").read_text(), re.M)
    assert set(imports) <= {"__future__", "argparse", "json", "os", "re", "sys", "urllib", "pathlib"}
    assert "'$(REPO)'" not in recipe and '"$(REPO)"' not in recipe  # no user text inside shell text


@pytest.mark.parametrize("repo", ["", "just-a-name", "a/b/c", "owner/na me"])
def test_set_repo_refuses_a_bad_address(repo):
    with pytest.raises(ValueError, match="owner/name"):
        colab.check_repo(repo)


@pytest.mark.parametrize("ref", ["", "feature/x", "..", "a..b", "-x", ".x", "x.", "x.lock", "v 1", "v1\n", "v1;rm", "x" * 101])
def test_check_ref_refuses_what_git_or_the_urls_cannot_take(ref):
    with pytest.raises(ValueError, match="REF must be"):
        colab.check_ref(ref)


@pytest.mark.parametrize("ref", ["main", "v1", "v1.2.0", "workshop_2026-03", "3f2c9e1d0b7a5c4e3f2c9e1d0b7a5c4e3f2c9e1d"])
def test_check_ref_accepts_branches_tags_and_commits(ref):
    assert colab.check_ref(ref) == ref


def test_readme_colab_table_has_a_learner_and_a_solutions_badge_per_notebook():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On Google Colab", 1)[1].split("\n## ", 1)[0]
    repo, ref = colab.course_repo(), colab.course_ref()
    for source in SOURCES:
        name = source.with_suffix(".ipynb").name
        row = next(ln for ln in section.splitlines() if ln.startswith(f"| `{source.stem}`"))
        learner, solutions = colab.badge_url(repo, f"learners/{name}", ref), colab.badge_url(repo, name, ref)
        assert learner in row and solutions in row and row.index(learner) < row.index(solutions), source.name
    header = next(ln for ln in section.splitlines() if ln.startswith("| notebook |"))
    assert "learner" in header and "with solutions" in header


@pytest.mark.parametrize("repo", ["me/fork\n", "../..", "owner/..", "owner/.", "-me/fork", "me-/fork", "me--x/fork",
                                  "me/fork\"; import os", "me/", "/fork", "m\u00e9/fork", "me/fork ", "a" * 40 + "/x"])
def test_set_repo_accepts_only_a_github_owner_and_name(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(colab, "REPO_FILE", tmp_path / "REPO")
    monkeypatch.setattr(colab, "REF_FILE", tmp_path / "REF")
    monkeypatch.setattr(colab, "NOTEBOOKS", tmp_path)
    assert colab.main(["set-repo", "--", repo]) == 2
    assert "owner/name" in capsys.readouterr().err
    assert not (tmp_path / "REPO").exists()


@pytest.mark.parametrize("repo", ["lora-lab/lora-lab", "Me/my.fork_2", "a/b", "x1-y2/.github"])
def test_set_repo_accepts_real_addresses(repo):
    assert colab.check_repo(repo) == repo


def test_colab_check_fails_without_notebooks(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(colab, "NOTEBOOKS", tmp_path)
    assert colab.main(["check"]) == 2
    assert "No notebooks" in capsys.readouterr().err


def served_by(files: dict[str, bytes]):
    """A stand-in for the network: GitHub serving `files` (raw URL -> body), 404 for anything else."""
    def fetch(url):
        if url not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return files[url]
    return fetch


def test_online_check_says_private_or_unpushed_and_catches_a_stale_push():
    repo, ref = "me/fork", "v1"
    paths = NOTEBOOKS[:2]
    tagged = lambda *_: "0123abcd\trefs/tags/v1\n"  # noqa: E731  the fork as git ls-remote lists it
    private = colab.online_problems(paths, repo, ref, served_by({}), tagged)
    assert len(private) == 1 and "public" in private[0] and "pushed" in private[0]
    fresh = NOTEBOOKS[0].read_bytes().replace(b"lora-lab/lora-lab", repo.encode()).replace(
        b'LORA_LAB_REF = \\"main\\"', b'LORA_LAB_REF = \\"v1\\"')
    files = {colab.raw_url(repo, "colab/requirements.txt", ref): b"peft==0.21.2\n",
             colab.raw_url(repo, f"notebooks/{paths[0].name}", ref): fresh,
             colab.raw_url(repo, f"notebooks/{paths[1].name}", ref): paths[1].read_bytes()}  # pushed before the rewrite
    problems = colab.online_problems(paths, repo, ref, served_by(files), tagged)
    assert len(problems) == 1 and paths[1].name in problems[0] and "push" in problems[0]


def test_the_learners_page_has_one_badge_per_learner_notebook_and_is_checked(tmp_path):
    page = (ROOT / colab.LEARNER_PAGE).read_text()
    opened = re.findall(r"colab\.research\.google\.com/github/[^/]+/[^/]+/blob/[^/]+/notebooks/(\S+?\.ipynb)", page)
    assert opened == [f"learners/{p.name}" for p in NOTEBOOKS]
    assert "docs/learners.md" in (ROOT / "README.md").read_text() and "docs/pre-workshop.md" in (ROOT / "README.md").read_text()
    stale = tmp_path / "learners.md"
    stale.write_text(page.replace("/blob/main/", "/blob/v9/"))
    problems = colab.readme_problems(stale, "lora-lab/lora-lab", "main", ROOT)
    assert len(problems) == len(NOTEBOOKS) and "not lora-lab/lora-lab@main" in problems[0]


def test_the_online_check_fails_when_ref_is_not_on_the_fork():
    untagged = lambda *_: "0123abcd\trefs/heads/main\n"  # noqa: E731
    problems = colab.online_problems(NOTEBOOKS[:1], "me/fork", "v2", served_by({}), untagged)
    assert len(problems) == 1 and "REF v2 is neither a branch nor a tag" in problems[0]
    assert "git tag v2 && git push origin v2" in problems[0]
    assert colab.ref_problem("me/fork", "main", untagged) is None
    assert colab.ref_problem("me/fork", "0123abcd", untagged) is None  # a commit: the file check decides


def test_checkout_hints_point_a_colab_learner_at_github_not_at_a_clone(monkeypatch):
    from lora_lab.runtime import hardware

    monkeypatch.setattr(hardware, "in_colab", lambda: False)
    local = hardware.checkout_hint("python benchmarks/vram_accuracy.py", "benchmarks/results/vram_accuracy_cpu.csv")
    assert "from the repository root" in local
    monkeypatch.setattr(hardware, "in_colab", lambda: True)
    monkeypatch.setattr(hardware, "installed_from", lambda: ("https://github.com/me/fork", "0123abc"))
    on_colab = hardware.checkout_hint("python benchmarks/vram_accuracy.py", "benchmarks/results/vram_accuracy_cpu.csv")
    assert "repository root" not in on_colab and "not on this Colab runtime" in on_colab
    assert "https://github.com/me/fork/blob/0123abc/benchmarks/results/vram_accuracy_cpu.csv" in on_colab


def test_installed_from_reads_pips_record_of_a_git_install(monkeypatch):
    import importlib.metadata

    from lora_lab.runtime import hardware

    class Dist:
        def __init__(self, text):
            self.text = text

        def read_text(self, name):
            return self.text if name == "direct_url.json" else None

    record = '{"url": "https://github.com/me/fork.git", "vcs_info": {"vcs": "git", "requested_revision": "v1", "commit_id": "abc"}}'
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist(record))
    assert hardware.installed_from() == ("https://github.com/me/fork", "abc")
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist('{"url": "file:///x", "dir_info": {"editable": true}}'))
    assert hardware.installed_from() is None


def test_a_colab_runtime_without_a_gpu_says_the_cpu_profile_runs_and_how_to_get_a_gpu(monkeypatch):
    import dataclasses

    from lora_lab.runtime import hardware, profiles

    hw = dataclasses.replace(hardware.detect(), device_type="cpu", in_colab=True)
    notes = [w for w in hardware.warnings_for(hw) if "no GPU" in w]
    assert len(notes) == 1 and "cpu profile" in notes[0] and "T4 GPU" in notes[0] and "quota" in notes[0]
    assert not [w for w in hardware.warnings_for(dataclasses.replace(hw, in_colab=False)) if "no GPU" in w]
    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    monkeypatch.setattr(hardware, "in_colab", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    profile = profiles.get_profile()
    assert profile.name == "cpu"
    assert "Colab runtime has no GPU" in profiles.why(profile) and "quota" in profiles.why(profile)


def load_colab_script(name: str):
    """colab/NAME.py as a module (the colab/ scripts are plain files, not part of the package)."""
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "colab"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


def test_colabs_freeze_is_read_as_pip_would_install_it(tmp_path):
    check = load_colab_script("check_install")
    committed = check.colab_versions()
    assert committed["torch"] == "2.11.0" and committed["numpy"] == "2.1.3"  # +cu128 dropped: PyPI's version
    assert committed["ipywidgets"] == "7.7.1" and committed["jupyter-client"] == "7.4.9"  # names normalised
    assert check.COLAB_TORCH == committed["torch"]
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("# a comment==1.0\ngoogle-colab @ file:///colabtools/dist/google_colab-1.0.0.tar.gz\n"
                      "Torch==2.9.1+cu126  # trailing\n\nnot a pin\nJupyter_Core==5.7.2\n")
    assert check.colab_versions(freeze) == {"torch": "2.9.1", "jupyter-core": "5.7.2"}


def test_the_twin_preinstalls_what_colab_has_and_checks_what_it_must_keep():
    twin = load_colab_script("twin")
    colab_has = load_colab_script("check_install").colab_versions()
    assert set(twin.KEPT) <= set(twin.PREINSTALLED) <= set(colab_has)
    assert {"torch", "numpy", "ipywidgets", "matplotlib", "jupytext"} == set(twin.KEPT)
    for test in twin.WIDGET_TESTS:
        path = test.split("::")[0]
        assert (Path(__file__).resolve().parents[1] / path).exists(), path


def test_the_twin_refuses_in_one_line_when_the_disk_cannot_hold_colabs_torch(tmp_path, monkeypatch, capsys):
    twin = load_colab_script("twin")
    monkeypatch.setattr(twin, "NEEDS_GB", 1e9)  # more than any disk: the check must refuse
    monkeypatch.setattr(twin, "find_python", lambda: "/usr/bin/python3")
    built = []
    monkeypatch.setattr(twin, "build", lambda *args: built.append(args) or 0)
    assert twin.main(["--workdir", str(tmp_path / "twin")]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "needs about 1000000000 GB free" in message and "--workdir" in message
    assert built == []
    monkeypatch.setattr(twin, "NEEDS_GB", 0.0)  # room enough: it builds, then removes the venv it built
    (tmp_path / "twin" / "venv").mkdir(parents=True)
    monkeypatch.setattr(twin, "build", lambda python, workdir, log: built.append((workdir / "venv").mkdir() or python) or 0)
    monkeypatch.setattr(twin, "rehearse", lambda python, workdir, log: built.append("rehearsed") or 0)
    assert twin.main(["--workdir", str(tmp_path / "twin")]) == 0
    assert built == ["/usr/bin/python3", "rehearsed"] and not (tmp_path / "twin" / "venv").exists()


def test_the_twin_installs_in_one_phase_and_rehearses_in_the_next(tmp_path, monkeypatch, capsys):
    twin = load_colab_script("twin")
    monkeypatch.setattr(twin, "NEEDS_GB", 0.0)
    monkeypatch.setattr(twin, "find_python", lambda: "/usr/bin/python3")
    done = []

    def build(python, workdir, log):
        (workdir / "venv" / "bin").mkdir(parents=True)
        (workdir / "venv" / "bin" / "python").touch()
        done.append("built")
        return 0

    monkeypatch.setattr(twin, "build", build)
    monkeypatch.setattr(twin, "rehearse", lambda python, workdir, log: done.append("rehearsed") or 0)
    workdir = tmp_path / "twin"
    assert twin.main(["--workdir", str(workdir), "--phase", "rehearse"]) == 2  # nothing installed yet
    assert "--phase install" in capsys.readouterr().err
    assert twin.main(["--workdir", str(workdir), "--phase", "install"]) == 0
    assert done == ["built"] and (workdir / "venv").exists()  # kept for the rehearsal
    assert twin.main(["--workdir", str(workdir), "--phase", "rehearse"]) == 0
    assert done == ["built", "rehearsed"] and not (workdir / "venv").exists()
