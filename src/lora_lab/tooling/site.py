"""The course as a static website: `make site` writes build/site/ (Sphinx with myst-nb, and the browser calculator).

    python -m lora_lab.tooling.site build   # build/notebooks/ (executed by `make nbtest` or `make run`) -> build/site/

Why Sphinx with myst-nb: it renders executed notebooks (outputs and figures included) and Markdown pages
offline, with a theme installed from PyPI. mystmd and Jupyter Book 2 download their web theme at build
time, which fails without a network.

What goes in:
- every lesson from `build/notebooks/`, the notebooks CI executed on the cpu profile (never run again here),
  each opened by a note on what its Colab T4 run differs in. Widget outputs (the calculator, the quizzes)
  need a live kernel: the page says so instead of loading the widget library from a CDN;
- the README's table of Colab badges, the learners' page, the pre-workshop message and the instructor guide;
- the answer key, reachable from the instructor guide only (`orphan`: outside every navigation menu);
- the calculator (`calculator/`): the course's own `lora_lab.estimation.vram`, zipped with the modules it
  imports (found by importing it, not listed by hand), running in Pyodide from the npm package pinned in
  `site/calculator/package-lock.json`, served from the site. Nothing is fetched from a CDN at build, test or
  view time; the one request the page may make is a Hub config a learner asks for.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SITE_SOURCES = ROOT / "site"
EXECUTED = ROOT / "build" / "notebooks"
SOURCE = ROOT / "build" / "site-src"
OUT = ROOT / "build" / "site"
NPM = ROOT / "build" / "site-npm"
#: Pyodide's runtime files the page loads (the rest of the npm package is for Node.js).
PYODIDE_FILES = ("pyodide.js", "pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip",
                 "pyodide-lock.json")
DOCS = ("learners.md", "pre-workshop.md", "instructor-guide.md")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: A widget's text stand-in that is a progress bar (tqdm's "  0%|   | 0/480"), not a lesson's widget.
PROGRESS_BAR = re.compile(r"\d+%\|")
WIDGET_NOTE = ("*An interactive widget is here in the notebook. It needs a running kernel: open the lesson in "
               "Colab or Jupyter to use it (the VRAM calculator also runs on this site's calculator page).*")


class SiteError(Exception):
    """A build that cannot go on, with one line saying what to do."""


def lesson_notebooks() -> list[Path]:
    """The executed lessons, one per notebooks/NN_topic.ipynb; raises SiteError if one is missing."""
    from lora_lab.tooling.course import course_notebooks

    lessons = course_notebooks()
    missing = [p.name for p in lessons if not (EXECUTED / p.name).exists()]
    if missing:
        raise SiteError(f"build/notebooks/ lacks {', '.join(missing)}: run `make nbtest` (or `make run`) first; "
                        "the site shows those executed notebooks and never runs them itself.")
    return [EXECUTED / p.name for p in lessons]


def t4_note(quick: bool = False) -> str:
    """What a lesson's Colab T4 run differs in, from the profiles themselves. `quick`: the lesson trains the
    quick lessons' model on a CPU (`profiles.quick_profile`), not the cpu profile's."""
    from lora_lab.runtime.profiles import PROFILES

    cpu = PROFILES["tiny" if quick else "cpu"]
    t4 = PROFILES["t4"]
    return (f"This page is the lesson as CI ran it on a CPU, without a GPU: {cpu.description}. On a Colab T4 "
            f"the same notebook takes the `t4` profile ({t4.description}): the model, the data, the step counts "
            "and every printed number and timing differ; the lesson and its code do not.")


def lesson_page(executed: Path):
    """An executed lesson ready for the site: the T4 note first, Colab badges as plain links, widget outputs
    replaced by a sentence."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = plain_badges(cell.source)
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME not in data:
                outputs.append(out)
            elif not PROGRESS_BAR.search(data.get("text/plain", "")):  # a progress bar, frozen at 0%, is dropped
                outputs.append(nbformat.v4.new_output("display_data", data={"text/markdown": WIDGET_NOTE}))
        cell.outputs = outputs
    quick = any("quick_profile(" in cell.source for cell in nb.cells if cell.cell_type == "code")
    note = t4_note(quick)
    nb.metadata.pop("widgets", None)  # saved widget state would make the page load the widget library from a CDN
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(f":::{{note}}\n{note}\n:::"))
    return nb


#: A README badge: Colab's image, which the site shows as a plain link (no image from another host).
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)")


def badge_table(readme: str) -> str:
    """The README's table of Colab badges (the one with learner and with-solutions columns), as text links."""
    lines = readme.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| notebook | learner |")), None)
    if start is None:
        raise SiteError("README.md has no table starting `| notebook | learner |`: the site's badge table comes "
                        "from it.")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return plain_badges("\n".join(lines[start:end]))


def plain_badges(markdown: str) -> str:
    """Every Colab badge in `markdown` as a plain "Open in Colab" link to the same notebook."""
    return BADGE.sub(r"[Open in Colab](\1)", markdown)


def assemble() -> Path:
    """build/site-src/: Sphinx's sources (conf.py, index, lessons, docs)."""
    import nbformat

    lessons = lesson_notebooks()
    shutil.rmtree(SOURCE, ignore_errors=True)
    (SOURCE / "lessons").mkdir(parents=True)
    shutil.copy(SITE_SOURCES / "conf.py", SOURCE / "conf.py")
    for path in lessons:
        nbformat.write(lesson_page(path), SOURCE / "lessons" / path.name)
    index = (SITE_SOURCES / "index.md").read_text()
    index = index.replace("LESSONS", "\n".join(f"lessons/{p.stem}" for p in lessons))
    index = index.replace("BADGES", badge_table((ROOT / "README.md").read_text()))
    (SOURCE / "index.md").write_text(index)
    for name in DOCS:
        (SOURCE / name).write_text(plain_badges((ROOT / "docs" / name).read_text()))
    key = (ROOT / "docs" / "answer-key.md").read_text()
    (SOURCE / "answer-key.md").write_text("---\norphan: true\n---\n\n" + key)
    return SOURCE


def estimator_files() -> list[str]:
    """The package files the calculator needs: every lora_lab module that importing the page's entry point
    loads (in a fresh interpreter where torch cannot be imported), plus the model presets."""
    probe = ("import builtins, json, sys\n"
             "real = builtins.__import__\n"
             "def no_torch(name, *args, **kwargs):\n"
             "    if name.split('.')[0] in ('torch', 'numpy', 'transformers'):\n"
             "        raise ImportError(f'the browser has no {name}')\n"
             "    return real(name, *args, **kwargs)\n"
             "builtins.__import__ = no_torch\n"
             "from lora_lab.figures import widgets\n"
             "widgets.calculator_answer(widgets.DEFAULT_STATE)\n"
             "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('lora_lab'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if done.returncode:
        raise SiteError("the estimator no longer imports without torch, so it cannot run in the browser: "
                        + (done.stderr.strip().splitlines() or ["(no message)"])[-1])
    package = ROOT / "src"
    files = [str(Path(f).resolve().relative_to(package)) for f in json.loads(done.stdout)]
    files += [str(p.relative_to(package)) for p in sorted((package / "lora_lab" / "configs").glob("*.json"))]
    return files


def calculator(out: Path) -> Path:
    """out/calculator/: the page, its script, the zipped estimator and Pyodide from the pinned npm package."""
    page = out / "calculator"
    page.mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "calculator.js"):
        shutil.copy(SITE_SOURCES / "calculator" / name, page / name)
    with zipfile.ZipFile(page / "lora_lab.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name in estimator_files():
            zf.write(ROOT / "src" / name, name)
    installed = NPM / "node_modules" / "pyodide"
    lock = SITE_SOURCES / "calculator" / "package-lock.json"
    if not (installed / "package.json").exists() or (NPM / "package-lock.json").read_bytes() != lock.read_bytes():
        if shutil.which("npm") is None:
            raise SiteError("npm is not installed: the calculator's Python (Pyodide) comes from the npm registry; "
                            "install Node.js 20+ with npm.")
        shutil.rmtree(NPM, ignore_errors=True)
        NPM.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(SITE_SOURCES / "calculator" / name, NPM / name)
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NPM,
                       check=True)
    (page / "pyodide").mkdir(exist_ok=True)
    for name in PYODIDE_FILES:
        shutil.copy(installed / name, page / "pyodide" / name)
    return page


def build(out: Path = OUT) -> Path:
    """The whole site into `out`."""
    source = assemble()
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "auto", str(source), str(out)],
                   check=True)
    calculator(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.tooling.site", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        out = build(args.out)
    except SiteError as err:
        print(err, file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"site: `{' '.join(map(str, err.cmd))}` exited {err.returncode} (its output is above).", file=sys.stderr)
        return 1
    pages = len(list(out.rglob("*.html")))
    print(f"site: {pages} pages in {out} (open {out / 'index.html'}; the calculator at {out / 'calculator'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
