"""The import rule: util <- core <- methods <- data <- experiment <- analysis <- apps (bench).

Every import inside ``nscl`` (module level or inside a function) must point to the same layer or a
lower one, and module-level imports must not form a cycle. Parsed with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "nscl"
LAYERS = ["util", "core", "methods", "data", "experiment", "analysis", "apps"]
RANK = {name: i for i, name in enumerate(LAYERS)} | {"bench": len(LAYERS) - 1, "__main__": len(LAYERS) - 1}


def module_name(path: Path) -> str:
    parts = ["nscl", *path.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    """Rank of a module's layer; None for the package root ``nscl`` (its __init__ imports lazily)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return RANK[parts[1]]


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported nscl module, line, at module level)`` for every import in a file."""
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]  # trimmed to a module by known()
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "nscl" or name.startswith("nscl."):
                out.append((name, node.lineno, id(node) in top))
    return out


def known(name: str, modules: set[str]) -> str:
    """The longest prefix of ``name`` that is a module of the package (``from . import x`` names)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


FILES = sorted(PKG.rglob("*.py"))
MODULES = {module_name(p) for p in FILES}


def test_every_module_is_in_a_layer():
    for m in MODULES:
        if m != "nscl":
            assert m.split(".")[1] in RANK, f"{m} lies outside the layers {LAYERS}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(path):
    here = layer(module_name(path))
    upward = []
    for name, line, _ in imports(path):
        target = known(name, MODULES)
        there = layer(target)
        if here is None:  # the package root may only import lazily (inside functions)
            continue
        if there is not None and there > here:
            upward.append(
                f"{path.relative_to(PKG)}:{line} imports {target} ({LAYERS[there] if there < len(LAYERS) else 'apps'})"
            )
        if there is None and target == "nscl" and name == "nscl":
            upward.append(f"{path.relative_to(PKG)}:{line} imports the package root")
    assert not upward, "imports against the layer rule:\n" + "\n".join(upward)


def test_package_root_imports_nothing_at_module_level():
    top = [n for n, _, at_top in imports(PKG / "__init__.py") if at_top]
    assert not top, f"nscl/__init__.py imports {top} at module level (keep `import nscl` cheap and acyclic)"


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for path in FILES:
        src = module_name(path)
        for name, _, at_top in imports(path):
            if at_top:
                target = known(name, MODULES)
                if target != src and not src.startswith(target + "."):  # a package's own __init__ is loaded first
                    graph[src].add(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a core module importing the trainer is reported."""
    fake = PKG / "core" / "_layer_probe.py"
    fake.write_text("from ..experiment import trainer\n")
    try:
        with pytest.raises(AssertionError, match="imports nscl.experiment.trainer"):
            test_imports_point_down(fake)
    finally:
        fake.unlink()
