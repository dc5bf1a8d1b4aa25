"""`make lab`'s pre-save hook (nscl.apps.notebook.lab): an unedited committed notebook is saved as
committed, any other notebook without its progress bars. The browser round trip is
tests/test_lab_browser.py::test_a_lab_sitting_leaves_the_repository_clean."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nbformat

from nscl.apps.notebook import lab

BAR_REDRAWS = (
    "\radam_nscl on split_fmnist:   0%|          | 0/5 [00:00<?, ?task/s]"
    "\radam_nscl on split_fmnist:  40%|████      | 2/5 [00:01<00:02,  1.20task/s, acc=97.1]"
    "\radam_nscl on split_fmnist: 100%|██████████| 5/5 [00:03<00:00,  1.46task/s, acc=98.4]\n"
)


class Manager:  # what the hook uses of Jupyter's contents manager
    def __init__(self, root: Path):
        self.root = root

    def _get_os_path(self, path: str) -> str:
        return str(self.root / path)


def notebook(outputs: list) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("print('ACC 98.42')")]
    nb.cells[1].outputs = outputs
    return nb


def stream(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def test_strip_progress_removes_every_bar_redraw_and_keeps_the_printed_lines():
    text = "permuted_fmnist: 5 tasks\n" + BAR_REDRAWS + "ACC 98.42\n"
    assert lab.strip_progress(text) == "permuted_fmnist: 5 tasks\nACC 98.42\n"
    assert lab.strip_progress("a 40%|x| plain line, no bar\n") == "a 40%|x| plain line, no bar\n"
    assert lab.strip_progress(BAR_REDRAWS) == ""


def test_strip_notebook_drops_bar_only_streams_and_merges_what_is_left():
    nb = notebook([stream("before\n"), stream(BAR_REDRAWS), stream("after\n")])
    lab.strip_notebook(nb)
    assert [o["text"] for o in nb.cells[1].outputs] == ["before\nafter\n"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_pre_save_writes_an_unedited_committed_notebook_back_as_committed(tmp_path):
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    git(repo, "init", "-q")
    path = repo / "notebooks" / "00.ipynb"
    committed = notebook([stream("ACC 98.42\n")])
    nbformat.write(committed, path)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "nb")
    manager = Manager(repo)

    # a sitting: the same cells, other outputs (a bar, another machine's round-off, execution counts)
    sat = notebook([stream(BAR_REDRAWS + "ACC 98.40\n")])
    sat.cells[1].execution_count = 7
    model = {"type": "notebook", "content": sat}
    lab.pre_save(model, "notebooks/00.ipynb", manager)
    nbformat.write(nbformat.from_dict(model["content"]), path)
    assert git(repo, "status", "--porcelain") == ""

    # an edited cell: saved as the lab holds it, less the bar (and git shows the change)
    edited = notebook([stream(BAR_REDRAWS + "ACC 91.00\n")])
    edited.cells[1].source = "print('ACC 91.00')"
    model = {"type": "notebook", "content": edited}
    lab.pre_save(model, "notebooks/00.ipynb", manager)
    assert [o["text"] for o in model["content"].cells[1].outputs] == ["ACC 91.00\n"]
    assert model["content"].cells[1].source == "print('ACC 91.00')"

    # a notebook git does not track: only the bar goes
    model = {"type": "notebook", "content": notebook([stream(BAR_REDRAWS + "x\n")])}
    lab.pre_save(model, "notebooks/copy.ipynb", manager)
    assert [o["text"] for o in model["content"].cells[1].outputs] == ["x\n"]
    model = {"type": "file", "content": "text"}
    lab.pre_save(model, "notebooks/notes.txt", manager)  # not a notebook: untouched
    assert model == {"type": "file", "content": "text"}


def test_make_lab_starts_jupyterlab_with_the_hook():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "-m nscl.apps.notebook.lab " in makefile
    cmd = lab.command(["--no-browser"])
    assert cmd[1:3] == ["-m", "jupyterlab"] and f"--ContentsManager.pre_save_hook={lab.HOOK}" in cmd
    module, name = lab.HOOK.rsplit(".", 1)
    assert module == lab.__name__ and getattr(lab, name) is lab.pre_save
