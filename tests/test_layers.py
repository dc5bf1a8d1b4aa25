"""The import rule: util <- core <- methods <- data <- experiment <- analysis <- apps (bench).

Every import inside ``nscl`` (module level or inside a function) must point to the same layer or a
lower one, and module-level imports must not form a cycle. Parsed with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "nscl"
LAYERS = ["util", "core", "methods", "data", "experiment", "analysis", "apps"]
RANK = {name: i for i, name in enumerate(LAYERS)} | {"bench": len(LAYERS) - 1, "__main__": len(LAYERS) - 1}


def module_name(path: Path, pkg: Path = PKG) -> str:
    parts = ["nscl", *path.relative_to(pkg).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    """Rank of a module's layer; None for the package root ``nscl`` (its __init__ imports lazily)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return RANK[parts[1]]


def imports(path: Path, pkg: Path = PKG) -> list[tuple[str, int, bool]]:
    """``(imported nscl module, line, at module level)`` for every import in a file."""
    mod = module_name(path, pkg)
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
        if there is None and target == "nscl":  # `import nscl`, `from .. import __version__`
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


def cycle_through_root(pkg: Path = PKG) -> list[str] | None:
    """A cycle through the package root, counting imports inside functions too: the root imports
    the trainer lazily (``nscl.run``), so any module below that imports the root closes a cycle."""
    files = sorted(pkg.rglob("*.py"))
    names = {path: "nscl" + module_name(path, pkg)[len("nscl") :] for path in files}
    modules = set(names.values())
    graph: dict[str, set[str]] = {}
    for path in files:
        src = names[path]
        graph[src] = {t for t in (known(n, modules) for n, _, _ in imports(path, pkg)) if t != src}
    path_to: dict[str, list[str]] = {"nscl": ["nscl"]}
    todo = ["nscl"]
    while todo:
        m = todo.pop()
        for n in sorted(graph.get(m, ())):
            if n == "nscl":
                return path_to[m] + ["nscl"]
            if n not in path_to:
                path_to[n] = path_to[m] + [n]
                todo.append(n)
    return None


def test_no_import_cycle_through_the_package_root():
    cycle = cycle_through_root()
    assert cycle is None, "import cycle through the package root: " + " -> ".join(cycle)


def test_the_cycle_check_catches_the_version_import_of_the_records(tmp_path):
    """The checker itself, on a copy of the package whose run records take the version from the root
    (the old ``from .. import __version__``): nscl -> experiment.trainer -> experiment.records -> nscl."""
    copy = tmp_path / "nscl"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    records = copy / "experiment" / "records.py"
    text = records.read_text()
    assert "from ..util import __version__" in text
    records.write_text(text.replace("from ..util import __version__", "from .. import __version__"))
    cycle = cycle_through_root(copy)
    assert cycle and cycle[0] == cycle[-1] == "nscl" and "nscl.experiment.records" in cycle, cycle


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a core module importing the trainer is reported."""
    fake = PKG / "core" / "_layer_probe.py"
    fake.write_text("from ..experiment import trainer\n")
    try:
        with pytest.raises(AssertionError, match="imports nscl.experiment.trainer"):
            test_imports_point_down(fake)
    finally:
        fake.unlink()
