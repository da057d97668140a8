"""The package's shape: every module documented once, no import cycles, no overlong functions."""

import ast
import re
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
    assert "train" in graph["evaluate"] or "sft_data" in graph["evaluate"]  # the graph is really read


def test_no_function_longer_than_100_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 100:
                long.append(f"{name}.{node.name}")
    assert not long, f"functions over 100 lines: {sorted(long)}"
