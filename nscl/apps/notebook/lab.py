"""``make lab``: JupyterLab on the project folder, with a pre-save hook so that a sitting leaves the
repository clean.

    python -m nscl.apps.notebook.lab [jupyterlab flags]    # what `make lab` runs

JupyterLab saves an open notebook every two minutes and when it is closed, with whatever outputs it
holds: progress bars, this machine's round-off, a half-run notebook. :func:`pre_save` (installed as
``ContentsManager.pre_save_hook``) decides what a save writes:

* a notebook that git tracks and whose cells (type and source, in order) are those of its committed
  version (``git show HEAD:<path>``) is written back exactly as committed: its stored outputs are the
  ones ``make notebooks`` made and nbval checks, not the sitting's. Run All, save, close: ``git
  status`` stays clean;
* any other notebook (your copy, or a committed one whose cells you edited) is written as it is, less
  the progress-bar lines in its printed output: the edit is yours, and git shows it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

#: a tqdm text bar: ``<label>: 40%|████      | 2/5 [00:01<00:02, 1.2task/s]``
BAR = re.compile(r"\d+%\|[^|]*\|\s*\d+/\d+\s*\[")
HOOK = "nscl.apps.notebook.lab.pre_save"


def strip_progress(text: str) -> str:
    """``text`` without its progress-bar lines (every ``\\r``-separated redraw of a bar included)."""
    out = []
    for line in re.split(r"(?<=\n)", text):  # lines with their "\n" (a "\r" is a redraw, not a line)
        parts = line.rstrip("\n").split("\r")
        if not any(BAR.search(p) for p in parts):
            out.append(line)
            continue
        kept = [p for p in parts if p and not BAR.search(p)]
        if kept:  # text printed on the bar's line: keep it
            out.append(kept[-1] + ("\n" if line.endswith("\n") else ""))
    return "".join(out)


def strip_notebook(nb: dict) -> None:
    """Remove progress bars from every code cell's stream outputs, in place (empty streams dropped,
    adjacent streams of one name merged, as a run without bars prints them)."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        outputs = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                text = o["text"] if isinstance(o["text"], str) else "".join(o["text"])
                o["text"] = strip_progress(text)
                if not o["text"]:
                    continue
                if outputs and outputs[-1].get("output_type") == "stream" and outputs[-1]["name"] == o["name"]:
                    outputs[-1]["text"] += o["text"]
                    continue
            outputs.append(o)
        cell["outputs"] = outputs


def _cells(nb: dict) -> list[tuple[str, str]]:
    def src(s):
        return s if isinstance(s, str) else "".join(s)

    return [(c.get("cell_type"), src(c.get("source", ""))) for c in nb.get("cells", [])]


def committed(os_path: str | Path) -> str | None:
    """The committed text of ``os_path`` (``git show HEAD:<path>``), or None (not tracked, no git)."""
    path = Path(os_path).resolve()
    try:
        top = subprocess.run(
            ["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=20
        )
        if top.returncode:
            return None
        rel = path.relative_to(Path(top.stdout.strip()).resolve()).as_posix()
        shown = subprocess.run(
            ["git", "-C", top.stdout.strip(), "show", f"HEAD:{rel}"], capture_output=True, text=True, timeout=20
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return shown.stdout if shown.returncode == 0 else None


def pre_save(model: dict, path: str, contents_manager, **kwargs) -> None:
    """Jupyter's pre-save hook: an unedited committed notebook is saved as committed; any other
    notebook is saved without its progress bars (see the module docstring)."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    import nbformat

    os_path = contents_manager._get_os_path(path)
    text = committed(os_path)
    if text is not None:
        try:
            head = nbformat.reads(text, as_version=4)
        except Exception:  # a committed file nbformat cannot read: save what the lab holds
            head = None
        if head is not None and _cells(head) == _cells(model["content"]):
            model["content"] = head
            return
    strip_notebook(model["content"])


def command(args: list[str]) -> list[str]:
    """The JupyterLab command line of ``make lab``: this Python's jupyterlab with the hook."""
    return [sys.executable, "-m", "jupyterlab", f"--ContentsManager.pre_save_hook={HOOK}", *args]


def main(argv: list[str] | None = None) -> None:
    """Replace this process with JupyterLab (Ctrl-C and signals reach it directly)."""
    cmd = command(list(sys.argv[1:] if argv is None else argv))
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
