"""The notebook suite runner behind ``make run``: every ``notebooks/NN_*.ipynb`` through papermill.

    python -m nscl suite -f params/base.yaml -f params/suite.yaml -o results/default [-p device=cpu]
                         [--only 00 01] [--no-progress] [-j 2]

For each notebook (sorted by name) the parameters are, later winning: the ``-f`` files, then
``params/suite_<stem>.yaml`` if it exists (per-notebook hook, may hold that notebook's extras; the
tests use ``ci_<stem>.yaml``), then
the ``-p`` overrides, then ``output_dir=<out>/<stem>``. A notebook that declares a ``runs`` parameter
(the analysis notebook) and gets none is pointed at ``<out>``, i.e. at every run the notebooks before
it wrote. The output is::

    <out>/<stem>/<stem>.ipynb     executed notebook (papermill's cell states and timings in metadata)
    <out>/<stem>/results.json     the notebook's record (nscl.apps.notebook.save_results), beside it
    <out>/<stem>/runs/<method>/   run directories (results.json, spectra.npz, params.yaml)
    <out>/<stem>/figures/*.png    figures
    <out>/summary.md              one table: notebook, status, minutes, and each method's ACC/BWT;
                                  the check that no null-space method is at chance on any task

With ``-j N`` (``make run``: one per core) N notebooks execute at once, each in its own process with one
torch thread (unless ``-p threads=...``), longest first; the analysis notebook waits for the notebooks
whose runs it reads (:func:`schedule`). ``-j`` changes nothing but that thread count, which moves a
permuted stream's numbers within the spread docs/guarantees.md reports (``-p threads=...`` pins it).

Unknown keys fail inside the notebook (``nscl.apps.notebook.parameters``), naming the key; a failed
notebook is recorded in the summary, the others still run, and the exit status is 1. The exit status
is 1 too when a null-space method's run ends at chance on some task (:func:`chance_failures`).

``python -m nscl suite --regenerate`` (``make notebooks``) instead executes the committed notebooks in
place with their own tiny defaults: the stored outputs that ``pytest --nbval`` checks.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Iterable, Mapping

from ..core.metrics import CHANCE_MARGIN
from ..experiment import config as config_mod
from ..experiment import records
from ..methods import null_space_methods
from ..util import atomic_write, read_text
from . import kernel as kernel_manager
from .notebook import NOTEBOOK_RESULTS_SCHEMA, project_root

NOTEBOOK_RE = re.compile(r"^\d\d_.+\.ipynb$")


def notebooks(folder: str | Path | None = None, only: Iterable[str] | None = None) -> list[Path]:
    """``NN_*.ipynb`` in ``folder`` (default ``<root>/notebooks``), sorted; ``only`` filters by prefix."""
    folder = Path(folder) if folder else project_root() / "notebooks"
    found = sorted(p for p in folder.glob("*.ipynb") if NOTEBOOK_RE.match(p.name))
    if only:
        only = list(only)
        unmatched = [o for o in only if not any(p.stem.startswith(o) for p in found)]  # a stem is its own prefix
        if unmatched:
            raise config_mod.ConfigError(
                f"--only {' '.join(unmatched)} matches no notebook in {folder}; valid: "
                f"{', '.join(p.stem for p in found) or '(none there)'} (a prefix such as 00 is enough)"
            )
        found = [p for p in found if any(p.stem.startswith(o) for o in only)]
    return found


DEFAULT_HOOK = "suite_{stem}.yaml"


def hook_path(hook: str, stem: str, params_dir: str | Path | None = None) -> Path:
    """The hook file of notebook ``stem``: ``hook`` (``{stem}`` filled in) inside the parameter folder;
    one that leaves it (``..``, an absolute path) is a :class:`ConfigError`."""
    root = Path(params_dir or project_root() / "params").resolve()
    path = (root / hook.format(stem=stem)).resolve()
    if not path.is_relative_to(root):
        raise config_mod.ConfigError(
            f"--hook {hook!r} names {path}, outside the parameter folder {root}; give a file name in it "
            f"(e.g. suite_{{stem}}.yaml), or pass other files with -f"
        )
    return path


def check_hook(hook: str | None, nbs: Iterable[Path], params_dir: str | Path | None = None) -> None:
    """A ``--hook`` other than the default must name a file that exists, for at least one of ``nbs`` when
    it holds ``{stem}`` (the default's files are optional: most notebooks have none)."""
    if not hook:
        return
    paths = [hook_path(hook, nb.stem, params_dir) for nb in nbs]
    if hook != DEFAULT_HOOK and paths and not any(p.exists() for p in paths):
        raise config_mod.ConfigError(
            f"--hook {hook!r}: no such file ({paths[0]}{' ...' if len(set(paths)) > 1 else ''}); "
            f"give an existing file of {paths[0].parent}, or --hook '' for none"
        )


def check_out(out: Path, folder: str | Path | None = None) -> None:
    """The suite's output folder must not be the project, a folder above it, or its notebook folder: the
    notebooks' output folders and summary.md would land among the sources (``-o results/..``)."""
    root = project_root().resolve()
    nb_folder = Path(folder or root / "notebooks").resolve()
    if root.is_relative_to(out) or out == nb_folder or out == root / "params":
        raise config_mod.ConfigError(
            f"-o {out} is the project folder, one above it, or its notebooks/params folder; the suite writes a "
            f"folder per notebook there: give a folder of its own, e.g. -o results/default"
        )


def notebook_parameters(
    nb: Path,
    files: Iterable[str | Path] = (),
    overrides: Mapping | None = None,
    output_dir: str | Path | None = None,
    suite_dir: str | Path | None = None,
    params_dir: str | Path | None = None,
    hook: str | None = DEFAULT_HOOK,
) -> dict:
    """The papermill parameters of one notebook in the suite (see the module docstring)."""
    import papermill as pm

    sources = [config_mod.read_mapping(f) for f in files]  # layered as the command line layers -f files
    if hook:
        hook_file = hook_path(hook, nb.stem, params_dir)
        if hook_file.exists():
            sources.append(config_mod.read_mapping(hook_file))
    params = config_mod.layer([*sources, dict(overrides or {})])
    if output_dir is not None:
        params["output_dir"] = str(output_dir)
    declared = pm.inspect_notebook(str(nb))
    if "runs" in declared and "runs" not in params and suite_dir is not None:
        params["runs"] = [str(suite_dir)]
    return params


class _UnknownParameterFilter:
    def filter(self, record) -> bool:
        return not str(record.getMessage()).startswith("Passed unknown parameter")


def execute(
    nb: Path,
    out_nb: Path,
    parameters: Mapping,
    progress: bool = True,
    log_output: bool = False,
    kernel: str = "python3",
    timeout: int | None = None,
):
    """Run one notebook with papermill (working directory: the notebook's folder, as in JupyterLab)."""
    import logging

    import papermill as pm

    # papermill warns "Passed unknown parameter" for every key not in the parameters cell (all of
    # base.yaml); nscl.apps.notebook.parameters validates them all and fails on a wrong one instead
    logger = logging.getLogger("papermill")
    if not any(isinstance(f, _UnknownParameterFilter) for f in logger.filters):
        logger.addFilter(_UnknownParameterFilter())
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(
        str(nb),
        str(out_nb),
        parameters=dict(parameters),
        kernel_name=kernel,
        progress_bar=progress,
        log_output=log_output,
        cwd=str(nb.parent),
        execution_timeout=timeout,
        kernel_manager_class=kernel_manager.MANAGER,
    )


def _execute_entry(nb: Path, out_nb: Path, params: dict, progress: bool, log_output: bool) -> dict:
    """Execute one suite notebook; its summary entry (also in a worker process: no exception escapes)."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    entry = {"notebook": nb.stem, "status": "complete", "error": None}
    try:
        execute(nb, out_nb, params, progress=progress, log_output=log_output)
    except Exception as e:  # PapermillExecutionError, ConfigError in the kernel, dead kernel, ...
        entry["status"] = "failed"
        entry["error"] = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
    entry["seconds"] = time.perf_counter() - t0
    entry["cpu_seconds"] = _cpu_seconds() - cpu0
    return entry


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children: the kernel and the
    kernel's own worker processes, once papermill has shut the kernel down. Unlike wall time it does
    not grow when other work shares the cores, so the summary can price a notebook on a busy machine."""
    import resource

    return sum(
        u.ru_utime + u.ru_stime
        for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def schedule(nbs: list[Path]) -> tuple[list[Path], dict[str, set[str]]]:
    """Start order and dependencies of a parallel suite. A notebook that declares ``runs`` (the analysis
    notebook) reads what every notebook before it wrote, so it waits for them. The others are independent;
    later notebooks compare more runs and take longest, so they start first (longest processing time
    first keeps every core busy to the end)."""
    import papermill as pm

    waits = {}
    for k, nb in enumerate(nbs):
        waits[nb.stem] = {p.stem for p in nbs[:k]} if "runs" in pm.inspect_notebook(str(nb)) else set()
    order = sorted(nbs, key=lambda p: (bool(waits[p.stem]), -nbs.index(p)))
    return order, waits


def run_suite(
    out: str | Path,
    files: Iterable[str | Path] = (),
    overrides: Mapping | None = None,
    only: Iterable[str] | None = None,
    progress: bool = True,
    log_output: bool = False,
    folder: str | Path | None = None,
    hook: str | None = DEFAULT_HOOK,
    jobs: int = 1,
) -> list[dict]:
    """Execute every suite notebook into ``out``; write ``out/summary.md``; return one entry per notebook
    (in notebook order). ``jobs > 1`` executes that many notebooks at once, each in its own process with
    one torch thread unless ``threads`` is given, and without progress bars (see :func:`schedule`)."""
    import concurrent.futures as cf
    import multiprocessing

    out = Path(out).resolve()
    check_out(out, folder)
    files = [Path(f) for f in files]
    nbs = notebooks(folder, only)
    if not nbs:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {folder or project_root() / 'notebooks'}")
    check_hook(hook, nbs)
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    jobs = max(1, min(jobs, len(nbs)))
    if jobs > 1:
        overrides.setdefault("threads", 1)
        progress = False
    params = {nb.stem: notebook_parameters(nb, files, overrides, out / nb.stem, out, hook=hook) for nb in nbs}
    order, waits = schedule(nbs) if jobs > 1 else (nbs, {nb.stem: set() for nb in nbs})
    done: dict[str, dict] = {}
    t_suite = time.perf_counter()

    def finish(entry: dict) -> None:
        done[entry["notebook"]] = entry
        if entry["error"]:
            print(f"      {entry['notebook']} FAILED: {entry['error']}", file=sys.stderr, flush=True)
        print(
            f"      {entry['notebook']} {entry['status']} in {entry['seconds']:.0f} s ({len(done)}/{len(nbs)})",
            file=sys.stderr,
            flush=True,
        )
        write_summary(out, [done[nb.stem] for nb in nbs if nb.stem in done], time.perf_counter() - t_suite)

    def start(nb: Path) -> tuple[Path, Path, dict, bool, bool]:
        print(f"[{nbs.index(nb) + 1}/{len(nbs)}] {nb.name} -> {out / nb.stem / nb.name}", file=sys.stderr, flush=True)
        return nb, out / nb.stem / nb.name, params[nb.stem], progress, log_output

    if jobs <= 1:
        for nb in order:
            finish(_execute_entry(*start(nb)))
    else:
        pending = list(order)
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            running = {}
            while pending or running:
                for nb in [p for p in pending if waits[p.stem] <= done.keys()][: jobs - len(running)]:
                    pending.remove(nb)
                    running[pool.submit(_execute_entry, *start(nb))] = nb
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for f in finished:
                    running.pop(f)
                    finish(f.result())
    return [done[nb.stem] for nb in nbs]


def _fmt(v, spec=".2f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def summary_markdown(out: Path, entries: list[dict], total_s: float | None = None) -> str:
    """The suite's ``summary.md``: notebooks with status and time, then each notebook's methods."""
    lines = ["# nscl suite summary", ""]
    if total_s is not None:
        cpu = sum(e.get("cpu_seconds") or 0.0 for e in entries)
        lines += [f"Total time: {total_s / 60:.1f} min ({total_s:.0f} s wall, {cpu:.0f} CPU-seconds).", ""]
    lines += ["| notebook | status | minutes | CPU s | figures |", "|---|---|---:|---:|---|"]
    by_notebook = {}
    for e in entries:
        rec_path = out / e["notebook"] / records.RESULTS
        rec = None
        if os.path.lexists(rec_path):
            try:
                rec = json.loads(read_text(rec_path))
            except (OSError, ValueError) as e:
                warnings.warn(f"skipped {rec_path}: {e}", stacklevel=2)
                rec = None
        if rec is not None and rec.get("schema") == NOTEBOOK_RESULTS_SCHEMA:
            by_notebook[e["notebook"]] = rec
        figs = ", ".join(f"[{Path(f).stem}]({e['notebook']}/{f})" for f in (rec or {}).get("figures", []))
        status = e["status"] if not e.get("error") else f"{e['status']}: {e['error'][:120]}"
        lines.append(
            f"| [{e['notebook']}]({e['notebook']}/{e['notebook']}.ipynb) | {status} | "
            f"{e['seconds'] / 60:.1f} | {_fmt(e.get('cpu_seconds'), '.0f')} | {figs or '-'} |"
        )
    # runs a notebook only read (run_dir outside its folder, e.g. the analysis notebook) are listed once,
    # under the notebook that trained them
    rows = [
        (nb, label, m)
        for nb, rec in by_notebook.items()
        for label, m in rec.get("methods", {}).items()
        if not str(m.get("run_dir") or "").startswith("..")
    ]
    if rows:
        lines += [
            "",
            "Task-aware test accuracy in percent; BWT and forgetting in points "
            f"(see nscl.core.metrics). *At chance*: tasks whose final accuracy is within {CHANCE_MARGIN:g} "
            "points of chance (1 / classes per task).",
            "",
            "| notebook | run | ACC | BWT | plasticity | forgetting | tasks | at chance |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for nb, label, m in rows:
            mm = m.get("metrics") or {}
            chance = m.get("at_chance")
            chance = "-" if chance is None else (", ".join(map(str, chance)) or "none")
            lines.append(
                f"| {nb} | {label} | {_fmt(mm.get('acc'))} | {_fmt(mm.get('bwt'), '+.2f')} | "
                f"{_fmt(mm.get('plasticity'))} | {_fmt(mm.get('forgetting'))} | "
                f"{mm.get('tasks_done', '-')} | {chance} |"
            )
        failures = chance_failures(by_notebook)
        checked = sum(m.get("method") in null_space_methods() and m.get("at_chance") is not None for _, _, m in rows)
        lines += [
            "",
            f"**Check, no null-space method at chance on any task: "
            f"{'FAILED' if failures else 'passed'}** ({checked} null-space runs checked)"
            + ("".join(f"\n- {f}" for f in failures) if failures else "."),
        ]
    return "\n".join(lines) + "\n"


def chance_failures(records: Mapping[str, dict]) -> list[str]:
    """``"<notebook>/<run>: tasks i, j"`` for every null-space method's run (``Method.null_space``)
    that a notebook record lists as at chance on some task of its final row (see
    :func:`nscl.apps.notebook.check_above_chance`)."""
    names = null_space_methods()
    return [
        f"{nb}/{label}: task(s) {', '.join(map(str, m['at_chance']))} at chance"
        for nb, rec in records.items()
        for label, m in rec.get("methods", {}).items()
        if m.get("method") in names and m.get("at_chance")
    ]


def suite_records(out: str | Path) -> dict[str, dict]:
    """The notebook records (``<out>/<notebook>/results.json``) of a suite folder, by notebook."""
    recs = {}
    for path in sorted(Path(out).glob(f"*/{records.RESULTS}")):
        try:
            rec = json.loads(read_text(path))
        except (OSError, ValueError) as e:
            warnings.warn(f"skipped {path}: {e}", stacklevel=2)
            continue
        if rec.get("schema") == NOTEBOOK_RESULTS_SCHEMA:
            recs[path.parent.name] = rec
    return recs


def write_summary(out: Path, entries: list[dict], total_s: float | None = None) -> Path:
    path = Path(out) / "summary.md"
    atomic_write(path, summary_markdown(Path(out), entries, total_s))
    return path


def regenerate(
    nb: Path,
    timeout: int = 1200,
    output_root: str | Path | None = None,
    write: bool = True,
    dest: str | Path | None = None,
) -> float:
    """Execute a notebook in place with its own defaults (the stored outputs nbval checks); seconds taken.
    With ``dest`` the executed notebook is written there instead (the committed one stays as it is).

    Runs like nbval under ``make test``: ``NSCL_OUTPUT_ROOT`` set to ``output_root`` (default a fresh
    temporary folder, so no cached runs are reused), ``NSCL_QUIET=1`` (no progress bars), the
    notebook's folder as working directory, no timing metadata; ``NSCL_STRICT_CLAIMS=1``, so a sentence
    the numbers no longer hold stops it (``nb.expect``) instead of being committed as "does not hold". ``write=False`` executes only (the
    runs it writes stay in ``output_root`` for a later notebook, see :func:`regenerate_all`).
    """
    import os
    import tempfile

    import nbformat
    from nbclient import NotebookClient

    nb_obj = nbformat.read(str(nb), as_version=4)
    old = {k: os.environ.get(k) for k in ("NSCL_OUTPUT_ROOT", "NSCL_QUIET", "NSCL_STRICT_CLAIMS")}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NSCL_OUTPUT_ROOT"] = str(output_root or tmp)
        os.environ["NSCL_QUIET"] = "1"
        os.environ["NSCL_STRICT_CLAIMS"] = "1"
        try:
            NotebookClient(
                nb_obj,
                timeout=timeout,
                kernel_name="python3",
                record_timing=False,
                resources={"metadata": {"path": str(nb.parent)}},
                kernel_manager_class=kernel_manager.MANAGER,
            ).execute()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    if not write:
        return time.perf_counter() - t0
    nb_obj.metadata.pop("papermill", None)
    nb_obj.metadata.pop("widgets", None)
    for cell in nb_obj.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb_obj, str(Path(dest) if dest else nb))
    return time.perf_counter() - t0


def regenerate_plan(folder: str | Path | None = None, only: Iterable[str] | None = None) -> list[tuple[Path, bool]]:
    """``(notebook, write back?)`` in execution order for :func:`regenerate_all`.

    A selected notebook that declares ``runs`` (the analysis notebook reads what the notebooks before it
    wrote) gets those notebooks executed first, without writing them back.
    """
    import papermill as pm

    every = notebooks(folder)
    chosen = {p.name for p in notebooks(folder, only)}
    needed = set(chosen)
    for k, nb in enumerate(every):
        if nb.name in chosen and "runs" in pm.inspect_notebook(str(nb)):
            needed.update(p.name for p in every[:k])
    return [(nb, nb.name in chosen) for nb in every if nb.name in needed]


def regenerate_all(
    folder: str | Path | None = None,
    only: Iterable[str] | None = None,
    into: str | Path | None = None,
    output_root: str | Path | None = None,
) -> None:
    """``make notebooks``: :func:`regenerate` every (selected) notebook in order, in one shared output root,
    as nbval runs them under ``make test`` (so the analysis notebook reads the runs of those before it).
    With ``into`` the executed notebooks go to that folder, the committed ones are left alone; with
    ``output_root`` their runs and records stay there (default: a temporary folder, removed after)."""
    import tempfile

    if into is not None:
        Path(into).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = output_root or tmp
        for nb, write in regenerate_plan(folder, only):
            print(
                f"{nb.name}: executing{' (its runs feed a later notebook)' if not write else '' if into else ' in place'} ...",
                file=sys.stderr,
                flush=True,
            )
            dest = Path(into) / nb.name if into is not None else None
            secs = regenerate(nb, output_root=root, write=write, dest=dest)
            print(f"{nb.name}: {secs:.0f} s", file=sys.stderr, flush=True)


# ---- CLI -----------------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser("suite", help="run every notebooks/NN_*.ipynb headless (papermill) into one folder")
    p.add_argument(
        "-f",
        "--file",
        action="append",
        default=[],
        metavar="YAML",
        help="parameter file, layered left to right (then params/suite_<notebook>.yaml)",
    )
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter of every notebook (YAML value)",
    )
    p.add_argument("-o", "--out", default="results/default", help="output folder (default results/default)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (prefix or stem)")
    p.add_argument("--notebooks", default=None, help="notebook folder (default <project>/notebooks)")
    p.add_argument("--no-progress", action="store_true", help="no papermill progress bars")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="notebooks executed at once, one process and one torch thread each (make run: one per core)",
    )
    p.add_argument("--log-output", action="store_true", help="stream cell output to the log")
    p.add_argument(
        "--hook",
        default=DEFAULT_HOOK,
        help="per-notebook parameter file in params/ (default suite_{stem}.yaml; '' for none)",
    )
    p.add_argument(
        "--regenerate",
        action="store_true",
        help="instead: execute the committed notebooks in place with their defaults (make notebooks)",
    )
    p.add_argument(
        "--into",
        metavar="DIR",
        help="with --regenerate: write the executed notebooks to DIR, leaving the committed ones alone",
    )
    p.set_defaults(func=cmd_suite)


def stored_path() -> None:
    """``make notebooks`` executes on the stored outputs' numeric path: ATen's AVX2 kernels on an x86
    CPU that has them (``ATEN_CPU_CAPABILITY=avx2``, unless set), whatever wider kernels it also has.
    notebooks/output_tolerance.yaml is measured around that path: an AVX-512 machine's own kernels and
    ATen's portable ones each lie within it, but not always within it of each other."""
    import os

    if os.environ.get("ATEN_CPU_CAPABILITY"):
        return
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return
    if re.search(r"^flags\s*:.*\bavx2\b", flags, re.M):
        os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
        print("executing on the stored outputs' numeric path: ATEN_CPU_CAPABILITY=avx2", file=sys.stderr)


def cmd_suite(args) -> int:
    overrides = config_mod.parse_overrides(args.param, check_keys=False)
    t0 = time.perf_counter()
    if args.regenerate:
        stored_path()
        regenerate_all(args.notebooks, args.only, into=args.into)
        return 0
    entries = run_suite(
        args.out,
        args.file,
        overrides,
        only=args.only,
        progress=not args.no_progress,
        log_output=args.log_output,
        folder=args.notebooks,
        hook=args.hook or None,
        jobs=args.jobs,
    )
    summary = Path(args.out) / "summary.md"
    print(summary.read_text())
    failures = chance_failures(suite_records(args.out))
    print(
        f"suite: {sum(e['status'] == 'complete' for e in entries)}/{len(entries)} notebooks complete in "
        f"{(time.perf_counter() - t0) / 60:.1f} min; written: {summary}"
    )
    if failures:
        print(f"FAILED: {len(failures)} null-space run(s) at chance on some task (see summary.md)", file=sys.stderr)
    return 0 if all(e["status"] == "complete" for e in entries) and not failures else 1
