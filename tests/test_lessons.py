"""Static checks of the lesson notebooks' shape and wording (no execution).

Every lesson opens with `## Objectives` and closes with `## Takeaways`, shows at least one figure,
and never points a learner at something they do not have: a "syllabus" they were never given,
or notes outside the repository.
"""

import ast
import re
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PACKAGE = ROOT / "src" / "lora_lab"

#: The notebooks (`notebooks/<name>.py`) held to these checks. Every lesson notebook belongs here.
CHECKED = tuple(p.stem for p in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.py")))
#: Package files (relative to src/lora_lab) still being reworded; empty once every branch is merged.
PENDING_PACKAGE_FILES: tuple[str, ...] = ()

#: Words that point a learner at material the repository does not contain.
FORBIDDEN = {
    "syllabus": re.compile(r"syllabus", re.IGNORECASE),
    "shared/": re.compile(r"(?<![\w.])shared/"),
    "cpu-profile-notes": re.compile(r"cpu-profile-notes", re.IGNORECASE),
    "the course's notes": re.compile(r"course['\u2019]s notes", re.IGNORECASE),
}
#: A code cell that draws: pyplot, a plotting module of the package, or its diagrams.
FIGURE_CALL = re.compile(r"\bplt\.\w+\(|\b\w*plots\.\w+\(|\bdiagrams\.\w+\(")


def sections(source: Path) -> list[str]:
    """The `## ` headings of a notebook's markdown cells, in order (deeper headings left out)."""
    nb = jupytext.read(source)
    return [line.strip() for cell in nb.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if line.startswith("## ")]


def forbidden_words(text: str) -> list[str]:
    """Which FORBIDDEN words `text` contains, with the line of the first occurrence."""
    found = []
    for word, pattern in FORBIDDEN.items():
        match = pattern.search(text)
        if match:
            found.append(f"{word!r} (line {text.count(chr(10), 0, match.start()) + 1})")
    return found


def test_every_lesson_is_checked_or_known():
    """CHECKED names real notebooks (a renamed notebook must not silently drop out)."""
    lessons = {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py")}
    assert set(CHECKED) <= lessons, f"not notebooks: {set(CHECKED) - lessons}"


@pytest.mark.parametrize("name", CHECKED)
def test_lesson_opens_with_objectives_and_closes_with_takeaways(name):
    heads = sections(NOTEBOOKS / f"{name}.py")
    assert heads, f"{name} has no '## ' sections"
    assert heads[0] == "## Objectives", f"{name}: first section is {heads[0]!r}, not '## Objectives'"
    assert heads[-1] == "## Takeaways", f"{name}: last section is {heads[-1]!r}, not '## Takeaways'"


@pytest.mark.parametrize("name", CHECKED)
def test_lesson_points_only_at_what_learners_have(name):
    text = (NOTEBOOKS / f"{name}.py").read_text()
    assert forbidden_words(text) == [], f"{name} mentions {forbidden_words(text)}"


@pytest.mark.parametrize("name", CHECKED)
def test_lesson_shows_a_figure(name):
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert FIGURE_CALL.search(code), f"{name} draws no figure (no plt., *plots. or diagrams. call)"


def module_level_names(code: str, ctx: type) -> set[str]:
    """Names a cell's code stores (ctx=ast.Store) or reads (ast.Load) at module level.

    Names bound inside comprehensions, lambdas and functions are their own scope and are left out;
    IPython's `%magic` and `!shell` lines are dropped before parsing.
    """
    tree = ast.parse("\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))))
    inner = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Lambda, ast.FunctionDef, ast.ClassDef)
    found: set[str] = set()

    def visit(node):
        if isinstance(node, inner):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ctx):
            found.add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def solution_clashes(source: Path) -> set[str]:
    """Names a solution cell rebinds that a later non-solution cell reads.

    In the full notebook the solution runs; in the learner copy it does not. A later lesson cell
    (the Takeaways) reading such a name would read the lesson's value in one copy and the exercise's
    in the other, or crash: solutions must use names of their own. The `answer_NN_M` a check cell
    reads are exempt: the learner copy's placeholder assigns them.
    """
    nb = jupytext.read(source)
    stored: set[str] = set()
    clashes: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if "solution" in cell.metadata.get("tags", []):
            stored |= module_level_names(cell.source, ast.Store)
        else:
            clashes |= stored & module_level_names(cell.source, ast.Load)
    return {name for name in clashes if not name.startswith("answer_")}  # the placeholders define those


@pytest.mark.parametrize("name", CHECKED)
def test_solutions_do_not_rebind_what_later_cells_read(name):
    assert solution_clashes(NOTEBOOKS / f"{name}.py") == set()


def test_the_clash_check_catches_a_rebound_name(tmp_path):
    bad = tmp_path / "99_bad.py"
    bad.write_text("# %%\nsize = 3\n\n# %% tags=[\"solution\"]\nsize = 4\nanswer_99_1 = size\n\n"
                   "# %%\nprint([size for size in range(2)], answer_99_1)\n\n# %%\nprint(size)\n")
    assert solution_clashes(bad) == {"size"}


def test_package_text_points_only_at_what_learners_have():
    files = [p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".json", ".txt", ".md") and p.is_file()]
    assert len(files) > 20
    problems = {str(p.relative_to(PACKAGE)): forbidden_words(p.read_text(errors="replace")) for p in files
                if str(p.relative_to(PACKAGE)) not in PENDING_PACKAGE_FILES}
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_checks_catch_what_they_are_for(tmp_path):
    """Each check fails on a notebook that breaks its rule."""
    bad = tmp_path / "99_bad.py"
    bad.write_text("# %% [markdown]\n# ## Intro\n# As the Syllabus says (see shared/notes.md)...\n"
                   "# ### Objectives\n\n# %%\nprint(1)\n\n# %% [markdown]\n# ## Exercises\n")
    assert sections(bad) == ["## Intro", "## Exercises"]
    assert [w.split()[0] for w in forbidden_words(bad.read_text())] == ["'syllabus'", "'shared/'"]
    assert not FIGURE_CALL.search("print(1)")
    assert FIGURE_CALL.search("fig = rank_plots.sweep(results)") and FIGURE_CALL.search("plt.show()")
    assert forbidden_words("torch.multiprocessing uses /dev/shm; lora_lab.shared_x/") == []
