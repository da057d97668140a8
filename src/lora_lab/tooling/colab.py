"""The Colab side of the course: the repository address, badges and the install cell.

Every notebook starts with an Open-in-Colab badge and one install cell that runs only on Colab.
Both name the course repository and a branch or tag of it, which live in one place each,
`colab/REPO` (owner/name) and `colab/REF` (default `main`). `set-repo` writes them and rewrites, to
match, every badge and install cell: in the notebook sources (`notebooks/NN_topic.py`), their
`.ipynb` twins, the learner copies (`notebooks/learners/NN_topic.ipynb`) and the README.

Standard library only, so that a fork can be pointed at itself without installing the course:

    python3 src/lora_lab/tooling/colab.py set-repo owner/name [--ref v1]   # make colab-links REPO=... REF=...
    python3 src/lora_lab/tooling/colab.py check [--online]                  # make colab-check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
REPO_FILE = ROOT / "colab" / "REPO"
REF_FILE = ROOT / "colab" / "REF"
NOTEBOOKS = ROOT / "notebooks"
README = ROOT / "README.md"
#: The learners' page (docs/learners.md): one badge per learner notebook, rewritten and checked like the README.
LEARNER_PAGE = Path("docs") / "learners.md"
#: The folder, inside notebooks/, of the learner copies (solutions removed); each has its own badge.
LEARNERS = "learners"
DEFAULT_REF = "main"
INSTALL_TAG = "colab-install"
#: GitHub's rules: an owner is 1-39 letters, digits or single hyphens (not first or last); a repository
#: name is letters, digits, '.', '_' and '-' (and never '.' or '..'). Matched with fullmatch: `$` would
#: also accept a trailing newline.
_REPO_RE = re.compile(r"(?!-)(?!.*--)[A-Za-z0-9-]{1,39}(?<!-)/[A-Za-z0-9_.-]{1,100}")
#: A branch or tag name, or a commit hash: git's ref rules (no '..', no leading '.' or '-', no '.lock'
#: ending), further limited to one path segment, so that the Colab and raw URLs stay unambiguous.
_REF_RE = re.compile(r"(?![.-])(?!.*\.\.)[A-Za-z0-9._-]{1,100}(?<!\.)(?<!\.lock)")
_BADGE_RE = re.compile(r"https://colab\.research\.google\.com/github/(?P<repo>[^/\s)\"']+/[^/\s)\"']+)"
                       r"/blob/(?P<ref>[^/\s)\"']+)/notebooks/(?P<path>[^)\s\"']+)")
_REPO_LINE_RE = re.compile(r'^LORA_LAB_REPO = "([^"]*)"', re.MULTILINE)
_REF_LINE_RE = re.compile(r'^LORA_LAB_REF = "([^"]*)"', re.MULTILINE)
#: Words that mean a cell installs something.
INSTALL_PATTERNS = re.compile(r"pip\s+install|\"pip\"|'pip'|apt-get|conda\s+install|uv\s+pip")


def course_repo() -> str:
    """The course repository, owner/name, as set in colab/REPO."""
    return REPO_FILE.read_text().strip()


def course_ref() -> str:
    """The branch or tag the badges open and the install cell installs, as set in colab/REF (default main)."""
    return REF_FILE.read_text().strip() if REF_FILE.exists() else DEFAULT_REF


def badge_url(repo: str, notebook: str, ref: str = DEFAULT_REF) -> str:
    """Colab's address of notebooks/`notebook` (e.g. "03_x.ipynb" or "learners/03_x.ipynb") at `ref`."""
    return f"https://colab.research.google.com/github/{repo}/blob/{ref}/notebooks/{notebook}"


def raw_url(repo: str, path: str, ref: str = DEFAULT_REF) -> str:
    """The address GitHub serves the file `path` of `repo` at `ref` from (what the install cell reads)."""
    return f"https://raw.githubusercontent.com/{repo}/{ref}/{path}"


def check_repo(repo: str) -> str:
    """`repo` if it looks like owner/name, else a ValueError saying what to pass."""
    if isinstance(repo, str) and repo.endswith(".git"):
        raise ValueError(f"REPO is owner/name without the .git ending (badges address the repository, not its git "
                         f"remote): use {repo.removesuffix('.git')!r}.")
    if not isinstance(repo, str) or not _REPO_RE.fullmatch(repo) or repo.split("/")[1] in (".", ".."):
        raise ValueError(f"REPO must be a GitHub repository as owner/name (letters, digits, '-' in the owner; also "
                         f"'.' and '_' in the name; no spaces or newlines), got {repo!r}.")
    return repo


def check_ref(ref: str) -> str:
    """`ref` if it is a usable branch name, tag or commit hash, else a ValueError saying what to pass."""
    if not isinstance(ref, str) or not _REF_RE.fullmatch(ref):
        raise ValueError(f"REF must be a branch, tag or commit of the repository: letters, digits, '.', '_' and '-', "
                         f"not starting with '.' or '-', no '..', no '/' (a branch like 'feature/x': push a tag "
                         f"instead), no spaces; got {ref!r}.")
    return ref


def rewrite_text(text: str, repo: str, ref: str = DEFAULT_REF) -> str:
    """`text` with every Colab badge and install-cell assignment pointing at `repo` and `ref`.

    A badge keeps the notebook path it points at (a learner copy's badge stays on the learner copy).
    """
    text = _BADGE_RE.sub(lambda m: badge_url(repo, m.group("path"), ref), text)
    text = _REPO_LINE_RE.sub(f'LORA_LAB_REPO = "{repo}"', text)
    return _REF_LINE_RE.sub(f'LORA_LAB_REF = "{ref}"', text)


def dump_notebook(nb: dict) -> str:
    """A notebook as JSON, byte for byte as nbformat writes it (so `make check-sync` sees no change)."""
    return json.dumps(nb, sort_keys=True, indent=1, separators=(",", ": "), ensure_ascii=False) + "\n"


def rewrite_ipynb(text: str, repo: str, ref: str = DEFAULT_REF) -> str:
    """A .ipynb file's text with every cell's badge and install cell pointing at `repo` and `ref`.

    Edits each source line in place (badges and assignments are one line each), with the standard
    library only; the rest of the file is written back unchanged.
    """
    nb = json.loads(text)
    changed = False
    for cell in nb.get("cells", []):
        source = cell.get("source", "")
        new = [rewrite_text(line, repo, ref) for line in source] if isinstance(source, list) else (
            rewrite_text(source, repo, ref))
        changed |= new != source
        cell["source"] = new
    return dump_notebook(nb) if changed else text


def course_files(root: Path = ROOT) -> list[Path]:
    """Every file that carries a badge or an install cell: the README, the learners' page, notebook sources, twins,
    learner copies."""
    notebooks = root / "notebooks"
    files = [page for page in (root / "README.md", root / LEARNER_PAGE) if page.exists()]
    files += sorted(notebooks.glob("[0-9][0-9]_*.py")) + sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    return files + sorted((notebooks / LEARNERS).glob("[0-9][0-9]_*.ipynb"))


def set_repo(repo: str, folder: Path = NOTEBOOKS, readme: Path | None = README, ref: str = DEFAULT_REF) -> list[Path]:
    """Write `repo` to colab/REPO and `ref` to colab/REF, and point every badge and install cell at them.

    Rewrites the notebook sources in `folder`, their .ipynb twins, the learner copies in
    `folder`/learners and `readme`. Running it twice changes nothing the second time.

    Returns:
        The files changed.

    Raises:
        ValueError: `repo` is not owner/name or `ref` not a branch or tag name (nothing is written).
    """
    check_repo(repo)
    check_ref(ref)
    REPO_FILE.write_text(repo + "\n")
    REF_FILE.write_text(ref + "\n")
    files = sorted(folder.glob("[0-9][0-9]_*.py")) + sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    files += sorted((folder / LEARNERS).glob("[0-9][0-9]_*.ipynb"))
    if readme is not None and (readme.parent / LEARNER_PAGE).exists():
        files.insert(0, readme.parent / LEARNER_PAGE)
    if readme is not None and readme.exists():
        files.insert(0, readme)
    changed = []
    for path in files:
        old = path.read_text(encoding="utf-8")
        new = rewrite_ipynb(old, repo, ref) if path.suffix == ".ipynb" else rewrite_text(old, repo, ref)
        if new != old:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def _cells(path: Path) -> list[dict]:
    """[{cell_type, source, tags}] of a .ipynb (standard library) or a jupytext .py source (needs jupytext)."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        return [{"cell_type": c["cell_type"], "tags": c.get("metadata", {}).get("tags", []),
                 "source": "".join(c["source"]) if isinstance(c["source"], list) else c["source"]}
                for c in nb.get("cells", [])]
    import jupytext

    return [{"cell_type": c.cell_type, "source": c.source, "tags": c.metadata.get("tags", [])}
            for c in jupytext.read(path).cells]


def badge_path(path: Path) -> str:
    """The path, under notebooks/, that `path`'s own badge must open: a learner copy opens itself."""
    name = path.with_suffix(".ipynb").name
    return f"{LEARNERS}/{name}" if path.parent.name == LEARNERS else name


def notebook_problems(path: Path, repo: str | None = None, ref: str | None = None) -> list[str]:
    """What is wrong with a notebook's Colab setup (badge, install cell, stray installs)."""
    repo = repo or course_repo()
    ref = ref or course_ref()
    cells = _cells(path)
    problems = []
    target = badge_path(path)
    label = f"{LEARNERS}/{path.name}" if path.parent.name == LEARNERS else path.name
    if not cells or cells[0]["cell_type"] != "markdown" or badge_url(repo, target, ref) not in cells[0]["source"]:
        problems.append(f"{label}: the first cell must be the title with the Open-in-Colab badge "
                        f"{badge_url(repo, target, ref)}.")
    installs = [i for i, c in enumerate(cells) if INSTALL_TAG in c["tags"]]
    if installs != [1]:
        problems.append(f"{label}: the second cell, and only it, must be the cell tagged '{INSTALL_TAG}'.")
    else:
        source = cells[1]["source"]
        wanted = [f'LORA_LAB_REPO = "{repo}"', f'LORA_LAB_REF = "{ref}"', "google.colab",
                  "https://raw.githubusercontent.com/{LORA_LAB_REPO}/{LORA_LAB_REF}",
                  "git+https://github.com/{LORA_LAB_REPO}@{LORA_LAB_REF}"]
        if not all(w in source for w in wanted):
            problems.append(f"{label}: the install cell must run only on Colab and install from {repo} at {ref} "
                            "(run `make colab-links REPO=... REF=...`).")
        code = re.sub(r"#.*", "", source)  # comments may explain why torch is left alone
        if re.search(r"\btorch\b|\bnumpy\b", code):
            problems.append(f"{label}: the install cell must not name torch or numpy.")
    for i, cell in enumerate(cells):
        if i != 1 and cell["cell_type"] == "code" and INSTALL_PATTERNS.search(cell["source"]):
            problems.append(f"{label}: cell {i} installs something; only the Colab install cell may.")
    return problems


def readme_problems(readme: Path, repo: str, ref: str, root: Path | None = None) -> list[str]:
    """Badges of a page (the README, the learners' page) that point at another repository or ref, or at a
    notebook that does not exist under `root` (default: the page's folder)."""
    root = root or readme.parent
    problems = []
    for m in _BADGE_RE.finditer(readme.read_text(encoding="utf-8")):
        if (m.group("repo"), m.group("ref")) != (repo, ref):
            problems.append(f"{readme.name}: a badge opens {m.group('repo')}@{m.group('ref')}, not {repo}@{ref} "
                            "(run `make colab-links`).")
        # Learner badges are written before the learner copies exist only in a checkout where `make exercises`
        # has not yet created notebooks/learners/; everywhere else a badge must open a file.
        learners_pending = m.group("path").startswith(f"{LEARNERS}/") and not (root / "notebooks" / LEARNERS).is_dir()
        if not learners_pending and not (root / "notebooks" / m.group("path")).exists():
            problems.append(f"{readme.name}: a badge opens notebooks/{m.group('path')}, which does not exist.")
    return problems


def _fetch(url: str, timeout: float = 20.0) -> bytes:
    """The body at `url` (urllib.error.URLError/HTTPError on failure)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # https URLs built by raw_url
        return response.read()


def _ls_remote(repo: str, ref: str) -> str:
    """`git ls-remote` of the fork for `ref` (its branches and tags of that name), as git prints it."""
    import subprocess

    done = subprocess.run(["git", "ls-remote", f"https://github.com/{repo}", ref], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if done.returncode:
        raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return done.stdout


def ref_problem(repo: str, ref: str, ls_remote=None) -> str | None:
    """Why `ref` cannot be opened on github.com/`repo` (not a branch or tag there), or None. A commit hash is
    left to the file check (git ls-remote lists only branch and tag names)."""
    if re.fullmatch(r"[0-9a-f]{7,40}", ref):
        return None
    try:
        listed = (ls_remote or _ls_remote)(repo, ref)
    except (OSError, ValueError) as err:
        return f"git ls-remote https://github.com/{repo} failed ({err}): is {repo} public and spelled right?"
    names = {line.split("\t", 1)[1].strip() for line in listed.splitlines() if "\t" in line}
    if {f"refs/heads/{ref}", f"refs/tags/{ref}"} & names:
        return None
    return (f"REF {ref} is neither a branch nor a tag of github.com/{repo}, so every badge would 404: create and "
            f"push it (git tag {ref} && git push origin {ref}), or pass REF=main.")


def online_problems(notebooks: list[Path], repo: str, ref: str, fetch=None, ls_remote=None) -> list[str]:
    """What GitHub serves for `repo`@`ref`, compared with this checkout: public, pushed, same install cells.

    Reads, over the network, `colab/requirements.txt` and every notebook as Colab will (anonymously,
    from raw.githubusercontent.com). A failure there means the fork is private, the branch or tag is
    not pushed, or the rewrite was not committed and pushed.
    """
    fetch = fetch or _fetch
    problem = ref_problem(repo, ref, ls_remote)
    if problem:
        return [problem]
    problems = []
    try:
        fetch(raw_url(repo, "colab/requirements.txt", ref))
    except (urllib.error.URLError, OSError) as err:
        return [f"GitHub does not serve {raw_url(repo, 'colab/requirements.txt', ref)} ({err}): is {repo} public, "
                f"and is {ref} pushed? Colab opens only public repositories."]
    for path in notebooks:
        rel = f"notebooks/{badge_path(path)}"
        try:
            served = json.loads(fetch(raw_url(repo, rel, ref)).decode("utf-8"))
        except (urllib.error.URLError, OSError, ValueError) as err:
            problems.append(f"{rel}: not served at {ref} ({err}): commit and push it.")
            continue
        install = [c for c in served.get("cells", []) if INSTALL_TAG in c.get("metadata", {}).get("tags", [])]
        source = "".join(install[0]["source"]) if install else ""
        if f'LORA_LAB_REPO = "{repo}"' not in source or f'LORA_LAB_REF = "{ref}"' not in source:
            problems.append(f"{rel}: the pushed copy installs from another repository or ref: commit and push "
                            "the rewrite of `make colab-links`.")
    return problems


def check(root: Path = ROOT, online: bool = False, fetch=None, ls_remote=None) -> tuple[list[str], int]:
    """(problems, notebooks checked) for the checkout at `root` against colab/REPO and colab/REF."""
    repo, ref = course_repo(), course_ref()
    problems = []
    for label, value, checker in (("colab/REPO", repo, check_repo), ("colab/REF", ref, check_ref)):
        try:
            checker(value)
        except ValueError as err:
            problems.append(f"{label}: {err}")
    if problems:
        return problems, 0
    notebooks = [p for p in course_files(root) if p.suffix == ".ipynb"]
    for path in notebooks:
        problems += notebook_problems(path, repo, ref)
    for page in (root / "README.md", root / LEARNER_PAGE):
        if page.exists():
            problems += readme_problems(page, repo, ref, root)
    if online and not problems:
        problems += online_problems(notebooks, repo, ref, fetch, ls_remote)
    return problems, len(notebooks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 src/lora_lab/tooling/colab.py",
                                     description="Point the course's Colab badges and install cells at a "
                                     "repository, or check them. Standard library only.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("set-repo", help="point colab/REPO, colab/REF, badges and install cells at owner/name@ref")
    p.add_argument("repo", nargs="?", help="the GitHub repository, owner/name")
    p.add_argument("--ref", default=DEFAULT_REF, help="branch, tag or commit to open and install (default: main)")
    p.add_argument("--from-environment", action="store_true",
                   help="read the repository and ref from LORA_LAB_SET_REPO and LORA_LAB_SET_REF (make colab-links)")
    c = sub.add_parser("check", help="every notebook's badge and install cell, and the README's badges, against "
                                     "colab/REPO and colab/REF")
    c.add_argument("--online", action="store_true",
                   help="also read the files from GitHub as Colab will: the fork is public and the rewrite pushed")
    args = parser.parse_args(argv)
    if args.command == "set-repo":
        if args.from_environment:
            args.repo = os.environ.get("LORA_LAB_SET_REPO") or None
            args.ref = os.environ.get("LORA_LAB_SET_REF") or DEFAULT_REF
        if not args.repo:
            print("usage: make colab-links REPO=owner/name [REF=branch-or-tag]", file=sys.stderr)
            return 2
        try:
            changed = set_repo(args.repo, ref=args.ref)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
        tag = "" if args.ref == DEFAULT_REF else f" Create and push the ref too: git tag {args.ref} && git push origin {args.ref}."
        print(f"colab/REPO = {args.repo}, colab/REF = {args.ref}; rewrote {len(changed)} files. Now commit and push."
              f"{tag} Then run `make colab-check ONLINE=1`.")
        return 0
    if not sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        print(f"No notebooks (NN_topic.ipynb) in {NOTEBOOKS}: run this from a clone of the course.", file=sys.stderr)
        return 2
    problems, n = check(NOTEBOOKS.parent, online=args.online)
    where = f"{course_repo()}@{course_ref()}"
    print("\n".join(problems) or f"all {n} notebooks and the README open and install {where}"
          + (" (and GitHub serves them so)" if args.online else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
