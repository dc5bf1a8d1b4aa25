"""The documentation stays true to the repository: README.md, docs/*.md and the notebooks' markdown cells
link only to tracked files and existing headings, every ``nscl.*`` name they mention imports, every
repository path they name is tracked, and the README fits on one screen."""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PAGES = DOCS + NOTEBOOKS
README_MAX_LINES = 150  # one screen, with some slack (issue 16 asks for about 120)

LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
# `nscl.core.nullspace.rule_at`, `python -m nscl.bench`: a dotted name that starts a word.
NAME = re.compile(r"(?<![\w./-])nscl(?:\.[A-Za-z_]\w*)+")
# `nscl/core/optim.py`, `params/sweeps/*.yaml`, `params/suite_<notebook>.yaml`, `notebooks/NN_*.ipynb`:
# a path from the repository root into one of its tracked top-level folders.
PATH = re.compile(r"(?<![\w./~$-])(?:nscl|params|tests|notebooks|docs|scripts|\.ci)/[\w./*<>-]*")


def markdown(page: Path) -> str:
    """A page's markdown: the file itself, or a notebook's markdown cells."""
    if page.suffix != ".ipynb":
        return page.read_text()
    cells = json.loads(page.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


@cache
def tracked() -> frozenset[str]:
    """Tracked files and the folders that hold them, relative to the root."""
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = set(out.splitlines())
    folders = {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}
    return frozenset(files | folders)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown(page).splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown(page), flags=re.S)  # code blocks hold commands, not links
    return [a or b for a, b in LINK.findall(text)]


def resolve(name: str) -> str | None:
    """None when ``name`` is an importable module or an attribute reachable from one (the longest
    importable prefix, then getattr for the rest); else what is missing."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                continue  # this prefix is no module: try a shorter one
            raise  # a module that exists fails to import: a real error, not a stale name
        for j, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                return f"{'.'.join(parts[:j])} has no {attr!r}"
            obj = getattr(obj, attr)
        return None
    return "no such module"


def path_exists(path: str) -> bool:
    """A tracked file or folder; ``*``, ``<placeholder>`` and ``NN`` make a pattern that must match one."""
    path = path.rstrip("./")
    if not re.search(r"[*<\[]|NN", path):
        return path in tracked()
    pattern = re.sub(r"<[^>]*>", "*", path).replace("NN", "[0-9][0-9]")
    return any(fnmatch.fnmatchcase(p, pattern) for p in tracked())


def test_readme_fits_on_one_screen():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; move detail into docs/ (at most {README_MAX_LINES})"
    )


def test_docs_index_lists_every_page():
    """docs/README.md links every other file of docs/, so no page is orphaned."""
    listed = set(links(ROOT / "docs" / "README.md"))
    pages = {p.name for p in (ROOT / "docs").iterdir() if p.name != "README.md" and p.is_file()}
    assert pages <= listed, f"docs/README.md does not list: {sorted(pages - listed)}"
    assert "docs/README.md" in links(README), "README.md does not link the docs index"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_to_tracked_files(page):
    for link in links(page):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        rel = target.relative_to(ROOT).as_posix() if target.is_relative_to(ROOT) else None
        assert rel is not None, f"{page.name}: link {link!r} leaves the repository"
        assert rel in tracked(), f"{page.name}: {link!r} is not tracked"
        if anchor:
            assert anchor in anchors(target), f"{page.name}: no heading for #{anchor} in {rel}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_nscl_names_resolve(page):
    names = sorted(set(NAME.findall(markdown(page))))
    stale = {name: why for name in names if (why := resolve(name))}
    assert not stale, f"{page.name} names what nscl does not have: {stale}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_repository_paths_are_tracked(page):
    paths = sorted(set(PATH.findall(markdown(page))))
    missing = [p for p in paths if not path_exists(p)]
    assert not missing, f"{page.name} names paths that are not tracked: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_path_points_outside_the_project(page):
    ups = re.findall(r"\.\./[\w./-]+", markdown(page))
    bad = [u for u in ups if not (page.parent / u).resolve().is_relative_to(ROOT)]
    assert not bad, f"{page.name} refers to files outside the project: {bad}"


def test_checks_catch_stale_names_and_paths():
    """The checkers themselves: names and paths that once existed fail, real ones pass."""
    assert resolve("nscl.experiment.trainer.Trainer.fit") is None
    assert resolve("nscl.bench") is None
    assert resolve("nscl.train.run") == "nscl has no 'train'"
    assert resolve("nscl.core.metrics.no_such_metric") == "nscl.core.metrics has no 'no_such_metric'"
    assert path_exists("nscl/core/pruning.py") and path_exists("params/sweeps/*.yaml")
    assert path_exists("notebooks/NN_*.ipynb") and path_exists("params/suite_<notebook>.yaml")
    assert not path_exists("nscl/pruning.py") and not path_exists("params/nothing_<x>.yaml")
    assert NAME.findall("see `nscl.runs`, python -m nscl.bench e2e, and nscl/pruning.py.") == [
        "nscl.runs",
        "nscl.bench",
    ]
