"""README.md and docs/*.md link only to files of this repository (tracked by git), and every anchor
they use exists; nothing points outside the project."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in md.read_text().splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)  # code blocks hold commands, not links
    return [a or b for a, b in LINK.findall(text)]


def test_docs_exist():
    assert (ROOT / "docs" / "official_vs_paper.md") in DOCS
    assert any(link == "docs/official_vs_paper.md" for link in links(ROOT / "README.md"))


@pytest.mark.parametrize("md", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve_to_tracked_files(md):
    files = tracked()
    for link in links(md):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (md.parent / path).resolve() if path else md
        rel = target.relative_to(ROOT).as_posix() if target.is_relative_to(ROOT) else None
        assert rel is not None, f"{md.name}: link {link!r} leaves the repository"
        assert rel in files or any(f.startswith(rel + "/") for f in files), f"{md.name}: {link!r} is not tracked"
        if anchor:
            assert anchor in anchors(target), f"{md.name}: no heading for #{anchor} in {rel}"


@pytest.mark.parametrize("md", DOCS, ids=lambda p: p.name)
def test_no_path_points_outside_the_project(md):
    bad = re.findall(r"\.\./[\w./-]+", md.read_text())
    assert not bad, f"{md.name} refers to files outside the project: {bad}"
