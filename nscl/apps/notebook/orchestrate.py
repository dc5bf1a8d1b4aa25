"""What a notebook trains or reads: runs of several methods on one stream, a grid or sweep run on the
available cores, runs found on disk, and a trainer stopped after a few tasks for step-by-step demos.

* :func:`run_methods` trains each method on the same stream (same seed, same data) with
  :func:`nscl.experiment.trainer.run`, each into ``<output_dir>/runs/<method>``. A complete run with
  identical parameters already there is read back, not retrained; one with other parameters is
  refused with the command line's error (it names the differing parameters); nothing is deleted.
* :func:`run_sweep` / :func:`run_grid` run a sweep (or a labelled set of configurations) through the
  sweep machinery, ``workers`` runs at once (default :func:`default_workers`: one per available core).
  Each parallel run is its own process with one torch thread and seeds itself from its config, so the
  numbers are the same as one after the other in one process with one thread.
* :func:`find_runs` / :func:`require_runs`: run directories at or below paths or glob patterns
  (notebook-level records skipped); finding nothing is a ConfigError naming the parameter.
* :func:`train_until` returns a :class:`nscl.experiment.trainer.Trainer` after its first tasks;
  :func:`layer_inputs` / :func:`task_gradient` look inside it (:mod:`nscl.analysis.probes`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ...analysis.probes import layer_inputs, task_gradient  # noqa: F401  (part of the notebook API)
from ...experiment import config as config_mod
from ...experiment import records
from .params import config_only, output_root

find_runs = records.find_runs  # part of the notebook API


def require_runs(paths: Iterable[str | os.PathLike] | str, key: str = "runs", complete: bool = True) -> list[Path]:
    """:func:`find_runs`, but a parameter that matches no run directory is a ConfigError naming it.

    An analysis that finds nothing to analyse is a mistake (a typo, a folder not written yet), not a
    reason to train something else instead. With ``complete`` (default) only complete runs are
    returned: killed, stopped and failed ones are left out with one printed line naming them and
    their status (their metrics would cover only the tasks they finished).
    """
    found, partial = [], []
    for res in records.load_runs(paths):
        ok = not complete or res.get("status") == "complete"
        (found if ok else partial).append(res)
    if partial:
        names = ", ".join(
            f"{r['_dir']} ({r.get('status')}, {(r.get('metrics') or {}).get('tasks_done', 0)}/{len(r.get('tasks') or [])} tasks)"
            for r in partial
        )
        print(f"left out {len(partial)} run(s) that are not complete: {names}")
    found = [Path(r["_dir"]) for r in found]
    if not found:
        shown = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
        raise config_mod.ConfigError(
            f"notebook parameter {key!r} matches no run directory (a folder with an nscl results.json): "
            f"{', '.join(shown) or '(empty)'}. Relative paths are resolved from {output_root()}. "
            f"Run the notebooks that write those runs first, or point {key!r} at existing run folders."
            + (f" ({len(partial)} run(s) there are not complete.)" if partial else "")
        )
    return found


def run_methods(
    cfg: Mapping, methods: Iterable[str], output_dir: str | os.PathLike | None = None, **overrides: Any
) -> dict[str, dict]:
    """Train each method on the same stream; ``{method: results dict}`` in the given order.

    With ``output_dir`` each run writes ``<output_dir>/runs/<method>``; ``overrides`` apply to all runs.
    The trainer applies the one "same run?" rule (:func:`nscl.experiment.records.check_same_run`), as
    for the command line and sweeps: a complete run with the same parameters is read back; a run
    with other parameters is never deleted: :class:`nscl.experiment.records.RunDirError` names the
    differing parameters (use another ``output_dir``, or delete that run folder).
    """
    from ...experiment import trainer

    base = config_only(cfg)
    out = {}
    for method in methods:
        run_cfg = config_mod.validate({**base, **overrides, "method": method})
        run_dir = Path(output_dir) / "runs" / method if output_dir is not None else None
        out[method] = trainer.run(run_cfg, run_dir)
    return out


def default_workers(n_runs: int) -> int:
    """Runs to train at once: one per core this process may use, at most ``n_runs`` (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, n_runs))


def run_sweep(spec: Mapping, workers: int | None = None) -> dict:
    """Run a sweep (a mapping as in a sweep file) on this machine, ``workers`` runs at once.

    ``workers`` > 1: the sweep's ``fork`` executor, each run a process forked from this one with one
    torch thread (``threads=1`` in its parameters: a run-invariant key, so complete runs are still
    reused); each shows its progress bar, labelled by method and stream, unless ``quiet``.
    ``workers`` = 1: the runs one after the other in this process
    (the ``debug`` executor). Default: :func:`default_workers`.
    Returns what :func:`nscl.apps.sweep.run` returns.
    """
    from .. import sweep

    n = len(sweep.expand(sweep.load(dict(spec))))
    workers = default_workers(n) if workers is None else max(1, int(workers))
    if workers == 1:
        return sweep.run({**spec, "executor": {"kind": "debug"}})
    params = {**(spec.get("params") or {}), "threads": 1}
    return sweep.run({**spec, "params": params, "executor": {"kind": "fork", "parallel": workers, "threads": 1}})


def run_grid(
    cfg: Mapping,
    runs: Mapping[str, Mapping],
    output_dir: str | os.PathLike,
    name: str = "grid",
    workers: int | None = None,
) -> dict[str, dict]:
    """Train a labelled set of configurations through :func:`run_sweep`, ``workers`` at once.

    ``runs``: ``{label: overrides of cfg}``. Runs live in ``<output_dir>/<name>/runs/<sweep name>``
    (a complete identical run is reused, as in any sweep); returns ``{label: results}`` in order.
    """
    from .. import sweep

    base = config_only(cfg)
    threads = base.pop("threads", None)  # a fixed parameter, so that run_sweep can set it per worker
    grid = [{k: [v] for k, v in {**base, **over}.items()} for over in runs.values()]
    spec = {
        "name": name,
        "run": "cli",
        "params": {"threads": threads},
        "grid": grid,
        "out": str(Path(output_dir) / name),
    }
    specs = sweep.expand(sweep.load(dict(spec)))
    if len(specs) != len(runs):
        raise ValueError(f"run_grid: {len(runs)} labels but {len(specs)} distinct configurations")
    run_sweep(spec, workers)
    out = {}
    for label, s in zip(runs, specs):
        state, detail = sweep.run_state(s)
        if state != "complete":
            raise RuntimeError(f"run {label!r} ({s['out_dir']}) is {state}: {detail}")
        out[label] = records.load(s["out_dir"])
    return out


def n_tasks(cfg: Mapping) -> int:
    """Number of tasks of the configured stream (``n_tasks`` or the benchmark's own)."""
    if cfg.get("n_tasks"):
        return cfg["n_tasks"]
    from ...data import make_stream

    return len(make_stream(cfg["benchmark"], data_root=cfg.get("data_root"), seed=cfg.get("seed", 0)))


def train_until(cfg: Mapping, tasks: int = 1, **overrides: Any):
    """A Trainer (no run directory) after its first ``tasks`` tasks (:meth:`Trainer.fit` with
    ``until``: the same seeding, loop and task boundary as a full run); for demos that look inside."""
    from ...experiment.trainer import Trainer

    tr = Trainer(config_mod.validate({**config_only(cfg), **overrides}))
    tr.fit(until=tasks)
    return tr
