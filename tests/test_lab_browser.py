"""JupyterLab as a user meets it: a real headless Chromium drives a real JupyterLab.

The test starts JupyterLab from the project's environment (``sys.executable``) on a free localhost
port with a token, on a temporary copy of ``notebooks/00_quickstart.ipynb`` (runs go to
``$NSCL_OUTPUT_ROOT`` in the same temporary folder, so the repository is never touched, not even by
JupyterLab's autosave). In the browser it:

1. opens the notebook and checks that the project's kernel "Python (nscl)" started and that opening
   did not mark the notebook as modified;
2. types small parameters into the parameters cell, runs all cells from the Run menu and waits until
   every cell has run; asserts no error output, as many figures as the committed notebook stores,
   the metrics table, and a text progress bar per training run (no widget: its state is not saved);
3. types ``epoch`` for ``epochs``, runs all again in the same kernel, and asserts the error naming
   the misspelled parameter.

A second test, :func:`test_a_lab_sitting_leaves_the_repository_clean`, clones the repository, starts
JupyterLab on the clone as ``make lab`` does (with its pre-save hook), opens the committed
``00_quickstart`` at its own defaults, runs all, saves and closes it: ``git status`` must stay clean,
and nbval must pass on the saved file.

Both start JupyterLab as ``make lab`` does (:func:`nscl.apps.notebook.lab.command`).
Chromium is Debian's package (``make test`` installs it when root), driven through the ``playwright``
package with ``executable_path``: nothing downloads a browser. Without Chromium the test fails and
says how to install it. Runtime about a minute on 2 loaded cores.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_quickstart.ipynb"
KERNEL_DISPLAY_NAME = "Python (nscl)"
# small enough for seconds of training, the same notebook code paths as the defaults
SMALL = {"samples_per_task": 100, "test_samples_per_task": 100, "hidden": [32], "quiet": False}
#: failure-safety nets only, far above any plausible time (a run takes seconds, the server starts in ~10 s):
#: the test waits on conditions (a prompt, a status, a selector), never passes or fails by a clock
RUN_TIMEOUT_S = 900
START_TIMEOUT_S = 600


def chromium() -> str:
    """Debian's Chromium (or $NSCL_CHROMIUM); a clear failure, never a skip, when it is missing."""
    path = os.environ.get("NSCL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "Chromium not found: tests/test_lab_browser.py needs Debian's chromium. `make test` installs "
            "it when run as root; otherwise run `sudo apt-get install chromium`, or set NSCL_CHROMIUM to a "
            "Chromium binary. (Never `playwright install`: nothing may download a browser.)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_parameters_cell(source: str, **values) -> str:
    """The parameters cell with some assignments replaced (comments and the other lines kept)."""
    lines = source.splitlines()
    for name, value in values.items():
        pattern = re.compile(rf"^{name}\s*=")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert hits, f"{name} is not assigned in the parameters cell of {NOTEBOOK.name}"
        lines[hits[0]] = f"{name} = {value!r}"
    return "\n".join(lines)


def committed_figures() -> int:
    """Figures the committed notebook shows (its stored outputs, which nbval checks)."""
    nb = json.loads(NOTEBOOK.read_text())
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def parameters_source() -> str:
    nb = json.loads(NOTEBOOK.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    return "".join(cell["source"])


def notebook_list(name: str) -> list[str]:
    """A list literal assigned in the committed parameters cell (``benchmarks``, ``methods``)."""
    (value,) = [
        ast.literal_eval(node.value)
        for node in ast.parse(parameters_source()).body
        if isinstance(node, ast.Assign) and node.targets[0].id == name
    ]
    return value


@contextlib.contextmanager
def serve_lab(tmp_path: Path, work: Path | None = None):
    """A JupyterLab server on ``work`` (default: a temporary copy of the notebook), started as
    ``make lab`` starts it (:func:`nscl.apps.notebook.lab.command`: with its pre-save hook):
    (base url, token, log path)."""
    from nscl.apps.notebook import lab

    if work is None:
        work = tmp_path / "project"
        (work / "notebooks").mkdir(parents=True)
        shutil.copy(NOTEBOOK, work / "notebooks" / NOTEBOOK.name)
    settings = tmp_path / "lab-settings"
    for plugin, values in {
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }.items():
        f = settings / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    env = dict(
        os.environ,
        NSCL_OUTPUT_ROOT=str(tmp_path / "out"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_PREFER_ENV_PATH="1",
        OMP_NUM_THREADS="1",
    )
    env.pop("NSCL_QUIET", None)  # the lab shows progress bars
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    cmd = lab.command(
        [
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
        ]
    )
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        kernels = json.loads(urllib.request.urlopen(f"{url}/api/kernelspecs?token={token}", timeout=120).read())
        assert "nscl" in kernels["kernelspecs"], (
            f"the project's kernel 'nscl' is not installed in {sys.prefix} (make venv installs it): "
            f"{sorted(kernels['kernelspecs'])}"
        )
        yield url, token, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.browser
def test_quickstart_runs_in_jupyterlab_and_a_misspelling_fails(tmp_path):
    from playwright.sync_api import sync_playwright

    browser_path = chromium()  # a clear failure before anything starts
    with serve_lab(tmp_path) as (url, token, log), sync_playwright() as pw:
        t0 = time.time()
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.set_default_timeout(RUN_TIMEOUT_S * 1000)
            page.goto(f"{url}/lab/tree/notebooks/{NOTEBOOK.name}?token={token}")
            panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            panel.locator(".jp-Notebook .jp-Cell").first.wait_for()

            # 1. the project's kernel starts by itself, and opening does not modify the notebook
            kernel_name = panel.locator(".jp-Toolbar-kernelName")
            page.wait_for_function(
                "() => document.querySelector('.jp-NotebookPanel .jp-Toolbar-kernelName')"
                f"?.textContent.trim() === {json.dumps(KERNEL_DISPLAY_NAME)}"
            )
            wait_idle(page)
            assert kernel_name.inner_text().strip() == KERNEL_DISPLAY_NAME
            page.wait_for_timeout(2000)  # the kernel's metadata, if it differed, would have been written by now
            tab = page.locator(f".lm-TabBar-tab:has-text('{NOTEBOOK.name}')")
            assert "jp-mod-dirty" not in (tab.get_attribute("class") or ""), "opening marked the notebook modified"

            # 2. small parameters typed into the parameters cell, then Run > Run All Cells
            params = parameters_source()
            edit_cell(page, panel, 1, small_parameters_cell(params, **SMALL))
            run_all(page, panel)
            wait_for_run(page, panel)
            errors = panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            assert errors.count() == 0, f"error output: {errors.first.inner_text()[:2000]}"
            images = panel.locator(".jp-OutputArea-output img")
            assert images.count() == committed_figures() >= 1
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output img')]"
                ".every(i => i.complete && i.naturalWidth > 100)"
            )
            table = panel.locator(".jp-OutputArea-output table.dataframe").filter(has_text="BWT")
            assert table.count() == 1
            header = table.locator("thead").inner_text()
            assert all(col in header for col in ("ACC", "BWT", "plasticity", "forgetting"))
            streams, methods = notebook_list("benchmarks"), notebook_list("methods")
            runs = len(streams) * len(methods)
            rows = table.locator("tbody th").all_inner_texts()
            assert rows == [f"{b}/{m}" for b in streams for m in methods]
            cells = table.locator("tbody td").all_inner_texts()
            assert len(cells) == 4 * runs and all(re.fullmatch(r"-?\d+\.\d\d", c) for c in cells), cells
            assert panel.locator(".jp-OutputArea-output .widget-hprogress").count() == 0  # text, not a widget
            text = panel.inner_text()
            labels = text.replace("\u2007", " ")  # tqdm pads with figure spaces
            for b in streams:
                tasks = int(re.search(rf"{b}: (\d+) tasks, one head per task", text).group(1))  # nb.describe
                for m in methods:  # one text bar per run, one tick per task, all done
                    assert re.search(rf"{m} on {b}: 100%\S*\s*{tasks}/{tasks} ", labels), labels
            assert "IProgress not found" not in panel.inner_text()

            # 3. a misspelled parameter in the same, live kernel: the error, and nothing trained
            edit_cell(page, panel, 1, small_parameters_cell(params, **SMALL).replace("epochs =", "epoch ="))
            run_all(page, panel)
            wait_for_run(page, panel, allow_unrun=True)
            errors = panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            assert errors.count() == 1, "the misspelled parameter ran through without an error in the live kernel"
            text = errors.first.inner_text()
            assert text.startswith("error: unknown notebook parameter 'epoch'") and "epochs" in text
            assert "Traceback" not in text and "nullspace_rule" not in text  # one line: no traceback, no key list
            assert panel.locator(".jp-OutputArea-output img").count() == 0  # Run All stopped at the error
        except Exception:
            try:
                page.screenshot(path=str(log.parent / "lab.png"))
            finally:
                print(f"JupyterLab log:\n{log.read_text()[-4000:]}\nscreenshot: {log.parent / 'lab.png'}")
            raise
        finally:
            browser.close()
        print(f"browser test: {time.time() - t0:.0f} s in the browser")


HYGIENE_TIMEOUT_S = 400  # notebook 00 at its committed defaults, on 2 loaded cores


@pytest.mark.browser
def test_a_lab_sitting_leaves_the_repository_clean(tmp_path):
    """Open a committed notebook in a clone, Run All with its defaults, save, close: `git status` is
    clean (make lab's pre-save hook writes an unedited committed notebook back as committed, not
    with the sitting's progress bars and round-off), and nbval passes on the saved file."""
    from playwright.sync_api import sync_playwright

    browser_path = chromium()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    status = ["git", "-C", str(clone), "status", "--porcelain", "--untracked-files=all"]
    assert subprocess.run(status, capture_output=True, text=True, check=True).stdout == ""
    name = NOTEBOOK.name
    with serve_lab(tmp_path, work=clone) as (url, token, log), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.set_default_timeout(60_000)
            page.goto(f"{url}/lab/tree/notebooks/{name}?token={token}")
            panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            panel.locator(".jp-Notebook .jp-Cell").first.wait_for()
            start_kernel(page)
            run_all(page, panel)
            page.wait_for_function(  # Run All has started (training takes seconds: a cell shows [*])
                "() => [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputArea-prompt')]"
                ".some(p => p.textContent.includes('*'))"
            )
            wait_for_run(page, panel, timeout_s=HYGIENE_TIMEOUT_S)
            text = panel.inner_text().replace("\u2007", " ")
            assert re.search(r"adam_nscl on split_fmnist: 100%", text), "the sitting showed no progress bar"
            menu(page, "File", "docmanager:save")
            tab = page.locator(f".lm-TabBar-tab:has-text('{name}')")
            page.wait_for_function(
                "() => ![...document.querySelectorAll('.lm-TabBar-tab')].some("
                f"t => t.textContent.includes({json.dumps(name)}) && t.classList.contains('jp-mod-dirty'))"
            )
            tab.locator(".lm-TabBar-tabCloseIcon").click()
            page.wait_for_function(
                f"() => ![...document.querySelectorAll('.lm-TabBar-tab')].some(t => t.textContent.includes({json.dumps(name)}))"
            )
        except Exception:
            try:
                page.screenshot(path=str(log.parent / "lab.png"))
            finally:
                print(f"JupyterLab log:\n{log.read_text()[-4000:]}\nscreenshot: {log.parent / 'lab.png'}")
            raise
        finally:
            browser.close()
    assert subprocess.run(status, capture_output=True, text=True, check=True).stdout == "", (
        "the sitting dirtied the clone"
    )
    env = dict(os.environ, NSCL_QUIET="1", NSCL_OUTPUT_ROOT=str(tmp_path / "nbval"), OMP_NUM_THREADS="1")
    nbval = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval",
            "--nbval-current-env",
            f"notebooks/{name}",
        ],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert nbval.returncode == 0, nbval.stdout[-4000:]


# ---- driving the UI -------------------------------------------------------------------------------
def start_kernel(page) -> None:
    """The project's kernel running and idle; on a slow machine JupyterLab may ask which kernel to
    start (a dialog offering "Python (nscl)"): accept its choice, as a user would."""
    deadline = time.time() + RUN_TIMEOUT_S
    dialog = page.locator(".jp-Dialog .jp-mod-accept")
    idle = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle']")
    while idle.count() == 0:
        if dialog.count():
            dialog.first.click()
        if time.time() > deadline:
            pytest.fail(f"the kernel did not start in {RUN_TIMEOUT_S} s")
        time.sleep(0.5)
    page.wait_for_function(
        "() => document.querySelector('.jp-NotebookPanel .jp-Toolbar-kernelName')"
        f"?.textContent.trim() === {json.dumps(KERNEL_DISPLAY_NAME)}"
    )


# ------------------------------------------------------------------------
def wait_idle(page, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """The kernel status indicator in the notebook toolbar says idle."""
    page.wait_for_selector(
        ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle']",
        timeout=timeout_s * 1000,
    )


def menu(page, top: str, command: str) -> None:
    page.locator(".lm-MenuBar-item", has_text=top).first.click()
    page.locator(f".lm-Menu-item[data-command='{command}']").click()


def run_all(page, panel, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Edit > Clear Outputs of All Cells, wait until the clear has landed (no prompt keeps an execution
    count, no output is left: else :func:`wait_for_run` could read the previous run's finished prompts
    and outputs as this run's), then Run > Run All Cells."""
    menu(page, "Edit", "editmenu:clear-all")
    deadline = time.time() + timeout_s  # a safety net, never a pass criterion
    while any(re.search(r"\d", s) for s in prompts(panel)) or panel.locator(".jp-OutputArea-output").count():
        if time.time() > deadline:
            pytest.fail(f"Clear Outputs of All Cells did not clear the notebook; prompts: {prompts(panel)}")
        time.sleep(0.2)
    menu(page, "Run", "runmenu:run-all")


def edit_cell(page, panel, index: int, source: str) -> None:
    """Replace the source of the ``index``-th cell as a user would: click, select all, type (paste)."""
    editor = panel.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(source)
    page.keyboard.press("Escape")  # command mode
    assert editor.inner_text().replace("\u00a0", " ").strip() == source.strip()


def prompts(panel) -> list[str]:
    return [p.strip() for p in panel.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]


def wait_for_run(page, panel, allow_unrun: bool = False, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Run All is over: none is queued or running ([*]), and every code cell ran (a number in its
    prompt) or an error stopped the run (``allow_unrun``: expected; else a failure showing the error)."""
    deadline = time.time() + timeout_s
    errors = panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    while True:
        p = prompts(panel)
        done = [bool(re.fullmatch(r"\[\d+\]:", s)) for s in p]
        if p and not any("*" in s for s in p):
            if all(done):
                break
            if any(done) and errors.count():
                if allow_unrun:
                    break
                pytest.fail(f"Run All stopped at an error: {errors.first.inner_text()[:3000]}")
        if time.time() > deadline:
            pytest.fail(f"Run All did not finish in {timeout_s:.0f} s; prompts: {p}")
        time.sleep(0.5)
    wait_idle(page)
