"""The package's shape: every module documented once, no import cycles, no overlong functions."""

import ast
import re
from collections import Counter
from pathlib import Path

import lora_lab

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lora_lab"


def modules() -> dict[str, Path]:
    """Dotted module name (without the `lora_lab.` prefix) -> file, package __init__ files left out."""
    return {".".join(f.relative_to(PACKAGE).with_suffix("").parts): f
            for f in PACKAGE.rglob("*.py") if f.name != "__init__.py"}


def test_package_docstring_and_readme_list_every_module():
    documented = set(re.findall(r"^ {4}([a-z0-9_.]+) {2,}", lora_lab.__doc__, flags=re.M))
    assert documented == set(modules())
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Commands")]
    for path in modules().values():
        assert path.name in layout, f"README's layout does not mention {path.name}"


def imports_of(name: str, path: Path) -> set[str]:
    """The package modules `name` imports, at module level or inside functions."""
    known = set(modules())
    package = name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("lora_lab"):
                target = node.module.removeprefix("lora_lab").lstrip(".")
            else:
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in known else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("lora_lab.") for a in node.names if a.name.startswith("lora_lab.")}
    return (found & known) - {name}


def test_no_import_cycles_counting_imports_inside_functions():
    graph = {name: imports_of(name, path) for name, path in modules().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert "training.sft_data" in graph["training.evaluate"]  # the graph is really read


def test_no_function_longer_than_100_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 100:
                long.append(f"{name}.{node.name}")
    assert not long, f"functions over 100 lines: {sorted(long)}"


# ---- the lesson layer ---------------------------------------------------------------------------

LESSON_LIMIT = 350  # lines: a module a learner reads in one sitting
LESSON_LIBRARIES = {"torch", "__future__"}  # besides the standard library and other lesson modules


def third_party_or_package_imports(path: Path) -> set[str]:
    """Top-level names of what a module imports that is neither the standard library nor torch."""
    import sys

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in LESSON_LIBRARIES:
                continue
            if name.startswith("lora_lab.lessons"):
                continue
            found.add(name)
    return found


def test_lesson_modules_are_short_and_import_only_torch_the_standard_library_and_each_other():
    lessons = {name: path for name, path in modules().items() if name.startswith("lessons.")}
    assert len(lessons) >= 8
    for name, path in lessons.items():
        lines = len(path.read_text().splitlines())
        assert lines <= LESSON_LIMIT, f"{name} has {lines} lines (the lesson layer's limit is {LESSON_LIMIT})"
        assert not third_party_or_package_imports(path), f"{name} imports {third_party_or_package_imports(path)}"


def test_the_lesson_import_check_catches_machinery(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import torch\nfrom lora_lab.runtime import units\nfrom lora_lab.lessons import nf4\nimport os\n")
    assert third_party_or_package_imports(planted) == {"lora_lab.runtime"}


# ---- boundaries and dead code --------------------------------------------------------------------


def private_names_taken_from_other_modules(name: str, path: Path) -> list[str]:
    """`from lora_lab.x import _y` and `x._y` where x is another package module this one imports."""
    tree = ast.parse(path.read_text())
    aliases = {}  # local name -> package module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_lab"):
            for alias in node.names:
                target = f"{node.module.removeprefix('lora_lab').lstrip('.')}.{alias.name}".lstrip(".")
                if target in modules():
                    aliases[alias.asname or alias.name] = target
                elif alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name.removeprefix("lora_lab.") in modules():
                    aliases[alias.asname] = alias.name.removeprefix("lora_lab.")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and aliases.get(node.value.id, name) != name):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    taken = {name: private_names_taken_from_other_modules(name, path) for name, path in modules().items()}
    assert not {k: v for k, v in taken.items() if v}


def test_the_private_name_check_catches_one(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from lora_lab.estimation import vram\nfrom lora_lab.training.evaluate import _as_x\n"
                       "def f():\n    return vram._quiet(1)\n")
    assert sorted(private_names_taken_from_other_modules("lessons.sft", planted)) == [
        "estimation.vram._quiet", "lora_lab.training.evaluate._as_x"]


def unused_public_names() -> list[str]:
    """Public top-level functions and classes of the package that nothing but the tests mentions."""
    users = [*PACKAGE.rglob("*.py"), *(ROOT / "notebooks").glob("[0-9][0-9]_*.py"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "colab").glob("*.py"), *(ROOT / "site").rglob("*.js"), ROOT / "Makefile"]
    words = Counter(word for path in users for word in re.findall(r"\w+", path.read_text()))
    unused = []
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if words[node.name] <= 1:  # its own definition only
                    unused.append(f"{name}.{node.name}")
    return unused


def test_every_public_function_is_used_outside_the_tests():
    assert not unused_public_names()


def test_the_estimator_and_the_calculators_answer_import_without_torch():
    """The browser calculator runs these files under Pyodide, which has no torch, numpy or transformers."""
    from lora_lab.tooling import site

    files = site.estimator_files()
    assert {"lora_lab/estimation/vram.py", "lora_lab/figures/widgets.py", "lora_lab/lessons/counting.py"} <= set(files)
    assert not {"lora_lab/lessons/nf4.py", "lora_lab/lessons/lora_by_hand.py"} & set(files)
    assert sum(f.startswith("lora_lab/configs/") for f in files) == len(list((PACKAGE / "configs").glob("*.json")))
