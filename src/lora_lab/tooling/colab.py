"""The Colab side of the course: the repository address, badges and the install cell.

Every notebook starts with an Open-in-Colab badge and one install cell that runs only on Colab.
Both name the course repository, whose address lives in one place, `colab/REPO`;
`python -m lora_lab.tooling.colab set-repo owner/name` (``make colab-links REPO=owner/name``) writes it
there and rewrites every notebook's badge and install cell from it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
REPO_FILE = ROOT / "colab" / "REPO"
NOTEBOOKS = ROOT / "notebooks"
INSTALL_TAG = "colab-install"
#: GitHub's rules: an owner is 1-39 letters, digits or single hyphens (not first or last); a repository
#: name is letters, digits, '.', '_' and '-' (and never '.' or '..'). Matched with fullmatch: `$` would
#: also accept a trailing newline.
_REPO_RE = re.compile(r"(?!-)(?!.*--)[A-Za-z0-9-]{1,39}(?<!-)/[A-Za-z0-9_.-]{1,100}")
_BADGE_RE = re.compile(r"https://colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/blob/main/notebooks/([^)\s]+)")
_CELL_RE = re.compile(r'^LORA_LAB_REPO = "([^"]*)"', re.MULTILINE)
#: Words that mean a cell installs something.
INSTALL_PATTERNS = re.compile(r"pip\s+install|\"pip\"|'pip'|apt-get|conda\s+install|uv\s+pip")


def course_repo() -> str:
    """The course repository, owner/name, as set in colab/REPO."""
    return REPO_FILE.read_text().strip()


def badge_url(repo: str, notebook: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{notebook}"


def check_repo(repo: str) -> str:
    """`repo` if it looks like owner/name, else a ValueError saying what to pass."""
    if not isinstance(repo, str) or not _REPO_RE.fullmatch(repo) or repo.split("/")[1] in (".", ".."):
        raise ValueError(f"REPO must be a GitHub repository as owner/name (letters, digits, '-' in the owner; also "
                         f"'.' and '_' in the name; no spaces or newlines), got {repo!r}.")
    return repo


def rewrite_notebook_source(text: str, repo: str, notebook: str) -> str:
    """The .py source with its badge and install cell pointing at `repo`."""
    text = _BADGE_RE.sub(badge_url(repo, notebook), text)
    return _CELL_RE.sub(f'LORA_LAB_REPO = "{repo}"', text)


def set_repo(repo: str, folder: Path = NOTEBOOKS, readme: Path | None = ROOT / "README.md") -> list[Path]:
    """Write `repo` to colab/REPO and into every notebook source and the README's badges.

    Returns the notebook sources changed.
    """
    check_repo(repo)
    REPO_FILE.write_text(repo + "\n")
    if readme is not None and readme.exists():
        text = readme.read_text()
        text = _BADGE_RE.sub(lambda m: badge_url(repo, m.group(2)), text)
        readme.write_text(text)
    changed = []
    for py in sorted(folder.glob("[0-9][0-9]_*.py")):
        old = py.read_text()
        new = rewrite_notebook_source(old, repo, py.with_suffix(".ipynb").name)
        if new != old:
            py.write_text(new)
            changed.append(py)
    return changed


def notebook_problems(path: Path, repo: str | None = None) -> list[str]:
    """What is wrong with a notebook's Colab setup (badge, install cell, stray installs)."""
    import jupytext

    repo = repo or course_repo()
    nb = jupytext.read(path)
    cells = nb.cells
    problems = []
    name = path.with_suffix(".ipynb").name
    if not cells or cells[0].cell_type != "markdown" or badge_url(repo, name) not in cells[0].source:
        problems.append(f"{path.name}: the first cell must be the title with the Open-in-Colab badge for {name}.")
    installs = [i for i, c in enumerate(cells) if INSTALL_TAG in c.metadata.get("tags", ())]
    if installs != [1]:
        problems.append(f"{path.name}: the second cell, and only it, must be the cell tagged '{INSTALL_TAG}'.")
    else:
        source = cells[1].source
        if f'LORA_LAB_REPO = "{repo}"' not in source or "google.colab" not in source:
            problems.append(f"{path.name}: the install cell must run only on Colab and install from {repo}.")
        code = re.sub(r"#.*", "", source)  # comments may explain why torch is left alone
        if re.search(r"\btorch\b|\bnumpy\b", code):
            problems.append(f"{path.name}: the install cell must not name torch or numpy.")
    for i, cell in enumerate(cells):
        if i != 1 and cell.cell_type == "code" and INSTALL_PATTERNS.search(cell.source):
            problems.append(f"{path.name}: cell {i} installs something; only the Colab install cell may.")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.tooling.colab")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("set-repo", help="point colab/REPO, badges and install cells at owner/name")
    p.add_argument("repo")
    sub.add_parser("check", help="check every notebook's badge and install cell")
    args = parser.parse_args(argv)
    if args.command == "set-repo":
        try:
            changed = set_repo(args.repo)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
        print(f"colab/REPO = {args.repo}; rewrote {len(changed)} notebook sources (run `make sync`).")
        return 0
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    if not sources:
        print(f"No notebook sources (NN_topic.py) in {NOTEBOOKS}: run this from a clone of the course "
              "(installed with `pip install -e .`).", file=sys.stderr)
        return 2
    problems = [p for py in sources for p in notebook_problems(py)]
    print("\n".join(problems) or f"all {len(sources)} notebooks have their badge and Colab install cell")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
