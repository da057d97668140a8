"""Cells run out of order: which earlier cell makes each name, and a one-line answer instead of a NameError.

A learner who joins late, reconnects, or reruns one cell finds that a later cell needs a variable an
earlier cell makes (`tuned`, `merged`, `result`...). Python answers `NameError: name 'tuned' is not
defined`, twenty lines down a traceback. `explain_out_of_order("03_qlora_sft_t4")`, called in each
notebook's setup cell, tells IPython to answer such a NameError with the cell to run first instead:

    `tuned` comes from an earlier cell that has not run in this session: run section "6. Training"
    from its cell starting `if hw.device_type == "cuda":` down to this one (or Run > Run All Above).

The map from names to cells (`run_order.json`, beside this file) is written by `make sync` from the
notebooks' .py sources (`write_map`) and checked by `make check-sync`, so it cannot go stale; a name it
does not know (a typo) keeps Python's own message.
"""

from __future__ import annotations

import ast
import builtins
import json
import sys
from pathlib import Path

MAP_FILE = Path(__file__).with_name("run_order.json")
#: The tag of a notebook's setup cells: imports, the profile and the settings every later cell may use.
SETUP_TAG = "setup"


def _code(source: str) -> str:
    """A cell's Python with IPython's magics and shell lines (`%env`, `!pip`) blanked out."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _bound_names(target: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(target) if isinstance(node, ast.Name)}


def defined_names(source: str) -> set[str]:
    """The names a cell binds at notebook level: assignments, loops, `with ... as`, imports, functions, classes,
    also inside top-level `if`/`try`/`for` blocks (not inside functions or comprehensions, which have their own)."""
    names: set[str] = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    names.update(_bound_names(target))
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                names.update(_bound_names(node.target))
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                names.update(n for item in node.items if item.optional_vars for n in _bound_names(item.optional_vars))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                continue
            elif isinstance(node, ast.Try):
                names.update(h.name for h in node.handlers if h.name)
            names.update(n.target.id for n in ast.walk(node) if isinstance(n, ast.NamedExpr))
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []) or [])

    visit(ast.parse(_code(source)).body)
    return names


def used_names(source: str) -> set[str]:
    """The names a cell reads that neither it nor Python's builtins provide (an over-approximation: a name bound
    anywhere in the cell, even as a function's argument, counts as provided)."""
    tree = ast.parse(_code(source))
    loaded, bound = set(), set(dir(builtins)) | {"display", "get_ipython"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def first_line(source: str) -> str:
    for line in _code(source).splitlines():
        code = line.split("  #")[0].strip()
        if code and not code.startswith("#"):
            return code if len(code) <= 70 else code[:67] + "..."
    return ""


def _heading(markdown: str) -> str | None:
    headings = [line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("#")]
    return headings[-1] if headings else None


def notebook_map(cells) -> dict[str, dict[str, str]]:
    """{name: {"section", "cell"}} for every name a non-setup code cell of `cells` (nbformat cells, in order)
    binds: the section heading above the first cell that binds it and that cell's first line of code."""
    found: dict[str, dict[str, str]] = {}
    section = "the top of the notebook"
    for cell in cells:
        if cell.cell_type == "markdown":
            section = _heading(cell.source) or section
            continue
        if cell.cell_type != "code" or SETUP_TAG in cell.metadata.get("tags", ()):
            continue
        for name in sorted(defined_names(cell.source)):
            found.setdefault(name, {"section": section, "cell": first_line(cell.source)})
    return found


def course_map(sources: list[Path]) -> dict[str, dict[str, dict[str, str]]]:
    """The map of every notebook, from its jupytext .py source, keyed by the notebook's stem."""
    import jupytext

    return {path.stem: notebook_map(jupytext.read(path).cells) for path in sorted(sources)}


def write_map(sources: list[Path], path: Path = MAP_FILE) -> Path:
    path.write_text(json.dumps(course_map(sources), indent=1, sort_keys=True) + "\n")
    return path


def stale_map(sources: list[Path], path: Path = MAP_FILE) -> bool:
    """True when `path` is missing or differs from what the notebooks say now."""
    try:
        return json.loads(path.read_text()) != course_map(sources)
    except (OSError, ValueError):
        return True


def message(name: str, where: dict[str, str]) -> str:
    return (f"`{name}` comes from an earlier cell that has not run in this session: run section "
            f"\"{where['section']}\" from its cell starting `{where['cell']}` down to this one "
            "(or Run > Run All Above; in Colab, Runtime > Run before).")


def explain_out_of_order(notebook: str, shell=None) -> bool:
    """Answer a NameError for a name an earlier cell of `notebook` makes with the cell to run first (one line
    on stderr, no traceback); other NameErrors keep Python's message. Returns False outside IPython."""
    if shell is None:
        try:
            shell = get_ipython()  # noqa: F821 (IPython's builtin)
        except NameError:
            return False
    names = json.loads(MAP_FILE.read_text()).get(notebook, {})

    def handler(self, etype, value, tb, tb_offset=None):
        name = getattr(value, "name", None)
        if name in names:
            print(message(name, names[name]), file=sys.stderr)
            return None  # nothing more: no traceback
        self.showtraceback((etype, value, tb), tb_offset=tb_offset)  # Python's own message and traceback
        return None

    shell.set_custom_exc((NameError,), handler)
    return True
