"""Colab: every notebook has its badge and one Colab-only install cell that leaves torch alone."""

import re
from pathlib import Path

import pytest

from lora_lab.tooling import colab

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_notebook_has_badge_and_only_the_colab_install_cell(source):
    assert colab.notebook_problems(source) == []


def test_check_catches_a_stray_install_and_a_missing_badge(tmp_path):
    good = SOURCES[0].read_text()
    bad = tmp_path / "09_bad.py"
    bad.write_text(good.replace("Open In Colab", "x").replace("](https://colab", "](https://example")
                   + '\n# %%\nimport subprocess\nsubprocess.run(["pip", "install", "torch"])\n')
    problems = " ".join(colab.notebook_problems(bad))
    assert "badge" in problems and "installs something" in problems


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


def test_set_repo_rewrites_badges_and_install_cells(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for src in SOURCES[:2]:
        (folder / src.name).write_text(src.read_text())
    monkeypatch.setattr(colab, "REPO_FILE", tmp_path / "REPO")
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    changed = colab.set_repo("someone/fork", folder, readme)
    assert "lora-lab/lora-lab" not in readme.read_text() and colab.badge_url("someone/fork", "00_preflight.ipynb") in readme.read_text()
    assert len(changed) == len(SOURCES[:2])
    assert colab.course_repo() == "someone/fork"
    for path in changed:
        assert colab.notebook_problems(path, "someone/fork") == []
        assert "lora-lab/lora-lab" not in path.read_text()


@pytest.mark.parametrize("repo", ["", "just-a-name", "a/b/c", "owner/na me"])
def test_set_repo_refuses_a_bad_address(repo):
    with pytest.raises(ValueError, match="owner/name"):
        colab.check_repo(repo)


def test_readme_colab_section_lists_every_notebook_with_its_badge():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On Google Colab", 1)[1].split("\n## ", 1)[0]
    for source in SOURCES:
        assert colab.badge_url(colab.course_repo(), source.with_suffix(".ipynb").name) in section, source.name


@pytest.mark.parametrize("repo", ["me/fork\n", "../..", "owner/..", "owner/.", "-me/fork", "me-/fork", "me--x/fork",
                                  "me/fork\"; import os", "me/", "/fork", "m\u00e9/fork", "me/fork ", "a" * 40 + "/x"])
def test_set_repo_accepts_only_a_github_owner_and_name(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(colab, "REPO_FILE", tmp_path / "REPO")
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
    assert "No notebook sources" in capsys.readouterr().err
