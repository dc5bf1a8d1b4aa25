"""Helpers every notebook uses: validated parameters, several methods on one stream, a results record.

A notebook's first code cell (tagged ``parameters``) holds plain assignments; papermill injects its
overrides after it. The next cell turns the namespace into a validated config::

    import nscl.notebook as nb
    cfg = nb.parameters(globals(), extras={"methods": ["finetune", "adam_nscl"],
                                           "output_dir": "results/notebooks/00_quickstart"})
    results = nb.run_methods(cfg, cfg["methods"], cfg["output_dir"])   # {method: results dict}
    nb.save_results(cfg["output_dir"], results, cfg=cfg, figures=[...])

API (kept stable; other notebooks use it):

* :func:`parameters(namespace, extras=None) -> Params` — collects the user-visible globals (skips
  ``_names``, modules, functions/classes, IPython's ``In/Out/get_ipython/exit/quit``), checks each
  name against :data:`nscl.config.PARAMS` plus the notebook's ``extras`` (a dict name -> default, or
  a list of names) and raises :class:`nscl.config.ConfigError` naming an unknown key and the valid
  ones — papermill only *warns* on a misspelled ``-p``. Returns a :class:`Params` dict: the fully
  resolved config (:func:`nscl.config.resolve`) plus the extras; ``.config`` is the config alone.
  A relative ``output_dir`` extra is made absolute against ``$NSCL_OUTPUT_ROOT`` if set (``make test``
  points nbval at a fresh temporary folder), else the project root (the folder holding
  ``params/base.yaml``, found upwards from the working directory), so JupyterLab / nbval (working
  directory ``notebooks/``) and papermill from the repo root write to the same place. When papermill
  runs with ``--inject-paths``, ``output_dir`` becomes the output notebook's folder.
  On a re-run of the cell in a live kernel, names created by later cells are ignored (the check is
  strict on a fresh kernel: papermill, nbval, "Restart and run all").
* :func:`run_methods(cfg, methods, output_dir, **overrides) -> {method: results}` — trains each method
  on the same stream (same seed, same data) with :func:`nscl.train.run`, each into its own run
  directory ``<output_dir>/runs/<method>`` (``results.json``, ``spectra.npz``). A complete run with
  identical parameters already there is read back, not retrained; one with other parameters is
  replaced (``replace=False`` raises instead).
* :func:`save_results(output_dir, results, cfg=None, figures=(), extra=None) -> Path` — writes the
  notebook-level ``<output_dir>/results.json``: per method its metrics, accuracy matrix, null-space
  summary and the run directory (relative to ``output_dir``), plus the notebook parameters, figure
  files and any ``extra`` values. ``nscl suite`` puts each output notebook in its ``output_dir``, so this
  file lies beside it.
* :func:`check_above_chance(results) -> str` — raises :class:`ChanceLevelError` when a null-space
  method (adam_nscl, nscl_prune, nscl_lowrank) ends within ``CHANCE_MARGIN`` points of chance on
  any task (a starved configuration); the last cell of every committed notebook calls it.
  :func:`at_chance(results)` lists such tasks of one run (recorded per method by :func:`save_results`).
* :func:`find_runs(paths) -> [Path]` — :func:`nscl.runs.find_runs`: run directories at or below the
  given paths or glob patterns; notebook-level records are skipped.
  :func:`run_labels(dirs)` names them by their path relative to the common folder (no absolute
  paths in notebook outputs).
* :func:`train_until(cfg, tasks) -> Trainer` — a :class:`nscl.train.Trainer` (no run directory) after
  its first ``tasks`` tasks, including the task-boundary covariance pass, for step-by-step demos;
  :func:`layer_inputs(trainer, layer, task)` gives that layer's input rows on a task and
  :func:`task_gradient(trainer, layer, task)` the gradient of the task's loss w.r.t. its weight.
* :func:`figure_path(cfg, name)` — ``<output_dir>/figures/<name>.png`` (created on demand).
* :func:`metrics_table(results)` — pandas table (one row per method) of ACC / BWT / plasticity /
  forgetting, rounded for stable notebook output. :func:`runs_table`, :func:`null_space_table` and
  :func:`null_space_summary` take ``{label: results}`` or a list of run directories (analysis notebook);
  :func:`describe(results)` prints a run's stream and schedule without paths;
  :func:`load_results(path)` reads a notebook-level record back.

Outputs of committed notebooks are checked by nbval, so print rounded numbers, end figure cells with
``plt.show()`` and bind the value of a last-line call you don't want displayed (``_ = nb.save_results(...)``:
under nbval a trailing ``;`` does not suppress the output).
"""
from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import config as config_mod
from . import runs
from .metrics import CHANCE_MARGIN

NOTEBOOK_RESULTS_SCHEMA = "nscl.notebook/1"
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit"}
_PAPERMILL_PATHS = ("PAPERMILL_INPUT_PATH", "PAPERMILL_OUTPUT_PATH")
_SEEN_KEY = "_nscl_parameter_names"
find_runs = runs.find_runs  # part of the notebook API


class Params(dict):
    """Resolved config keys plus a notebook's extras; ``.config`` / ``.extras`` split them again."""

    extra_names: tuple = ()

    @property
    def config(self) -> dict:
        return {k: v for k, v in self.items() if k in config_mod.PARAMS}

    @property
    def extras(self) -> dict:
        return {k: self[k] for k in self.extra_names if k in self}


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``params/base.yaml``; else cwd."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params" / "base.yaml").exists():
            return d
    return here


def _user_names(namespace: Mapping[str, Any]) -> dict:
    out = {}
    for name, value in namespace.items():
        if name.startswith("_") or name in _IPYTHON_NAMES:
            continue
        if isinstance(value, types.ModuleType) or callable(value):  # imports, functions, classes, models
            continue
        out[name] = value
    return out


def parameters(namespace: dict, extras: Mapping[str, Any] | Iterable[str] | None = None) -> Params:
    """Validate a notebook's parameters (its globals) and return the resolved config plus extras."""
    config_mod._ensure_registered()
    if extras is None:
        extras = {}
    elif not isinstance(extras, Mapping):
        extras = {name: None for name in extras}
    clash = set(extras) & set(config_mod.PARAMS)
    if clash:
        raise ValueError(f"notebook extras shadow nscl parameters: {', '.join(sorted(clash))}")
    names = _user_names(namespace)
    seen = namespace.get(_SEEN_KEY)
    if seen is None:  # first call in this kernel: everything user-visible is a parameter
        namespace[_SEEN_KEY] = frozenset(names)
    else:  # a re-run in a live kernel: later cells' variables are not parameters
        names = {k: v for k, v in names.items() if k in seen or k in config_mod.PARAMS or k in extras}
    paths = {k: names.pop(k) for k in _PAPERMILL_PATHS if k in names}
    valid = set(config_mod.PARAMS) | set(extras)
    for name in sorted(names):
        if name not in valid:
            import difflib

            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            extra_list = f" (notebook extras: {', '.join(sorted(extras))})" if extras else ""
            raise config_mod.ConfigError(
                f"unknown notebook parameter {name!r}.{hint} Valid keys{extra_list}: {', '.join(sorted(valid))}")
    cfg = config_mod.resolve(overrides={k: v for k, v in names.items() if k in config_mod.PARAMS})
    out = Params(cfg)
    out.extra_names = tuple(extras)
    for name, default in extras.items():
        out[name] = names.get(name, default)
    if "output_dir" in extras:
        if paths.get("PAPERMILL_OUTPUT_PATH"):
            out["output_dir"] = str(Path(paths["PAPERMILL_OUTPUT_PATH"]).resolve().parent)
        elif out["output_dir"] is not None:
            p = Path(out["output_dir"]).expanduser()
            root = Path(os.environ["NSCL_OUTPUT_ROOT"]) if os.environ.get("NSCL_OUTPUT_ROOT") else project_root()
            out["output_dir"] = str(p if p.is_absolute() else root / p)
    return out


def _config_only(cfg: Mapping) -> dict:
    return {k: v for k, v in cfg.items() if k in config_mod.PARAMS}


def run_methods(cfg: Mapping, methods: Iterable[str], output_dir: str | os.PathLike | None = None,
                replace: bool = True, **overrides: Any) -> dict[str, dict]:
    """Train each method on the same stream; ``{method: results dict}`` in the given order.

    With ``output_dir`` each run writes ``<output_dir>/runs/<method>``; ``overrides`` apply to all runs.
    A complete run with the same parameters there is read back. A run written with *other* parameters
    is the notebook's stale output: with ``replace`` (default) it is deleted and retrained (as
    re-executing a notebook replaces its outputs); without, the trainer's ConfigError is raised.
    """
    import shutil

    import yaml

    from . import train

    base = _config_only(cfg)
    out = {}
    for method in methods:
        run_cfg = config_mod.validate({**base, **overrides, "method": method})
        run_dir = Path(output_dir) / "runs" / method if output_dir is not None else None
        if replace and run_dir is not None and (run_dir / runs.PARAMS).exists():
            saved = yaml.safe_load((run_dir / runs.PARAMS).read_text()) or {}
            if train._differing(saved, run_cfg):
                shutil.rmtree(run_dir)
        out[method] = train.run(run_cfg, run_dir)
    return out


def _rel(path, root) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:  # other drive (Windows)
        return str(path)


def at_chance(res: Mapping, margin: float = CHANCE_MARGIN) -> list[int] | None:
    """Tasks (1-based) on which a run's final accuracy is within ``margin`` points of chance
    (:func:`nscl.metrics.at_chance`); ``None`` when the run does not record its tasks' class counts."""
    from .metrics import at_chance as _at_chance

    tasks = (res.get("stream") or {}).get("tasks")
    if not res.get("acc") or not tasks:
        return None
    return _at_chance(res["acc"], [t["n_classes"] for t in tasks], margin)


class ChanceLevelError(RuntimeError):
    """A null-space method ended at chance on some task: its configuration starves it."""


def check_above_chance(results: Mapping[str, Mapping], margin: float = CHANCE_MARGIN) -> str:
    """Raise :class:`ChanceLevelError` if a null-space method's run (``Method.null_space``: adam_nscl,
    nscl_prune, nscl_lowrank) ends within ``margin`` points of chance on any task; else return (and
    print) one line naming the runs checked.

    A null-space method at chance means its null spaces left no room to learn (too few steps, too
    small a network, too strict a rule), not that the method was measured: such a configuration must
    not be shown. Every committed notebook ends with this check, so nbval and ``make run`` fail on it.
    """
    from .methods import null_space_methods

    names = null_space_methods()
    checked, bad = [], []
    for label, res in results.items():
        if (res.get("params") or {}).get("method") not in names:
            continue
        tasks = at_chance(res, margin)
        if tasks is None:
            continue
        checked.append(label)
        if tasks:
            last = [row for row in res["acc"] if row and row[0] is not None][-1]
            n = [t["n_classes"] for t in res["stream"]["tasks"]]
            bad.append(f"{label} on task(s) " + ", ".join(
                f"{j} ({last[j - 1]:.1f}% vs chance {100 / n[j - 1]:.0f}%)" for j in tasks))
    if bad:
        raise ChanceLevelError(
            f"null-space method(s) at chance (within {margin:g} points) on the final row: {'; '.join(bad)}. "
            "The configuration starves them: give them more optimizer steps (epochs, samples_per_task, "
            "batch_size) or a wider network (hidden), or a null-space rule that leaves room to learn.")
    line = (f"above chance (+{margin:g} points) on every task: {', '.join(checked)}" if checked
            else "no null-space method to check")
    print(line)
    return line


def _summary(res: dict, output_dir: Path | None) -> dict:
    ns = {layer: {"d": rec["d"], "dims": rec["dims"], "kept_energy": rec["kept_energy"]}
          for layer, rec in (res.get("null_space") or {}).items()}
    run_dir = res.get("_dir") or None
    return {
        "status": res.get("status"),
        "method": (res.get("params") or {}).get("method"),
        "metrics": res.get("metrics"),
        "acc": res.get("acc"),
        "at_chance": at_chance(res),
        "null_space": ns,
        "run_dir": _rel(run_dir, output_dir) if run_dir and output_dir else run_dir,
        "total_s": (res.get("timing") or {}).get("total_s"),
    }


def save_results(output_dir: str | os.PathLike, results: Mapping[str, dict], cfg: Mapping | None = None,
                 figures: Iterable[str | os.PathLike] = (), extra: Mapping | None = None) -> Path:
    """Write the notebook-level ``<output_dir>/results.json`` aggregating the notebook's runs.

    ``results`` maps a label (usually the method) to a run's results dict (as returned by
    :func:`run_methods` / :func:`nscl.runs.load`); run directories are found under
    ``<output_dir>/runs/<label>`` when the dict does not say where it was loaded from.
    """
    output_dir = Path(output_dir)
    methods = {}
    for label, res in results.items():
        res = dict(res)
        if not res.get("_dir") and (output_dir / "runs" / label / runs.RESULTS).exists():
            res["_dir"] = str(output_dir / "runs" / label)
        methods[label] = _summary(res, output_dir)
    record = {
        "schema": NOTEBOOK_RESULTS_SCHEMA,
        "methods": methods,
        "params": {k: v for k, v in (cfg or {}).items() if k != "output_dir"},
        "figures": [_rel(f, output_dir) for f in figures],
        "extra": dict(extra or {}),
    }
    path = output_dir / runs.RESULTS
    runs.write_json(path, record)
    return path


def load_results(path: str | os.PathLike) -> dict:
    """Read a notebook-level ``results.json`` (a file or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / runs.RESULTS
    with open(p) as f:
        return json.load(f)


def figure_path(cfg: Mapping, name: str) -> Path:
    """``<output_dir>/figures/<name>.png`` (folder created)."""
    d = Path(cfg["output_dir"]) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.png"


def metrics_table(results: Mapping[str, dict], digits: int = 2):
    """One row per method: ACC, BWT, plasticity, forgetting (percent points), rounded."""
    import pandas as pd

    rows = []
    for label, res in results.items():
        m = res.get("metrics") or {}
        rows.append({"method": label, "ACC": m.get("acc"), "BWT": m.get("bwt"),
                     "plasticity": m.get("plasticity"), "forgetting": m.get("forgetting")})
    return pd.DataFrame(rows).set_index("method").astype(float).round(digits)


def run_labels(dirs: Iterable[str | os.PathLike]) -> list[str]:
    """Short, path-free names: each directory relative to the common parent, ``/runs/`` dropped."""
    dirs = [Path(d).resolve() for d in dirs]
    if not dirs:
        return []
    common = Path(os.path.commonpath([str(d.parent) for d in dirs])) if len(dirs) > 1 else dirs[0].parent
    labels = []
    for d in dirs:
        parts = [p for p in Path(os.path.relpath(d, common)).parts if p not in ("runs", ".")]
        labels.append("/".join(parts) or d.name)
    return labels


def train_until(cfg: Mapping, tasks: int = 1, **overrides: Any):
    """A Trainer (no run directory) after its first ``tasks`` tasks, seeded exactly as :meth:`Trainer.run`.

    Uses the one training loop (``Trainer._train_task``) and task boundary (``_task_boundary``: the
    method's ``after_task``, the covariance pass, null spaces, evaluation); for demos that look inside.
    """
    import torch

    from . import train

    tr = train.Trainer(config_mod.validate({**_config_only(cfg), **overrides}))
    for t in range(tasks):
        torch.manual_seed(tr.cfg["seed"] * 1000 + t)
        tr.generator.manual_seed(tr.cfg["seed"] * 1000 + t)
        tr.timing.append({"train_s": tr._train_task(t, None), **tr._task_boundary(t)})
    return tr


def layer_inputs(trainer, layer: str, task: int, split: str = "train"):
    """Input rows ``(n, d)`` (float64) of one tracked layer on a task's data, in eval mode.

    Rows as the covariance sees them (:func:`nscl.covariance.layer_input_rows`, per sample).
    """
    import torch

    from .covariance import layer_input_rows

    module = trainer.tracker.layers[layer]
    rows = []
    handle = module.register_forward_pre_hook(
        lambda m, inp: rows.append(layer_input_rows(m, inp[0].detach(), "per_sample").double().cpu()))
    was = trainer.model.training
    trainer.model.eval()
    try:
        with torch.no_grad():
            data = getattr(trainer.stream[task], split)
            for x, _, _ in trainer.batches([(data, task)], trainer.cfg["eval_batch_size"], shuffle=False):
                trainer.model.features(x)
    finally:
        handle.remove()
        trainer.model.train(was)
    return torch.cat(rows)


def task_gradient(trainer, layer: str, task: int, n: int = 256):
    """Gradient (float64, ``(out, d)``) of the cross-entropy on ``n`` samples of ``task`` w.r.t. a layer's weight."""
    import torch
    import torch.nn.functional as F

    module = trainer.tracker.layers[layer]
    gen = torch.Generator().manual_seed(trainer.cfg["seed"] * 31 + task)
    x, y, t = next(iter(trainer.batches([(trainer.stream[task].train, task)], n, shuffle=True, generator=gen)))
    trainer.model.eval()
    trainer.model.zero_grad(set_to_none=True)
    F.cross_entropy(trainer.model(x, t), y).backward()
    grad = module.weight.grad.detach().reshape(module.weight.shape[0], -1)
    if module.bias is not None:  # the [W b] view of nscl.covariance
        grad = torch.cat([grad, module.bias.grad.detach()[:, None]], dim=1)
    grad = grad.double().cpu()
    trainer.model.zero_grad(set_to_none=True)
    return grad


def describe(res: Mapping) -> str:
    """One paragraph on a run's stream, model and schedule (no paths, stable across machines)."""
    s, p = res.get("stream") or {}, res.get("params") or {}
    names = s.get("class_names") or []
    tasks = []
    for t in s.get("tasks", []):
        cls = " vs ".join(names[c] if c < len(names) else str(c) for c in t.get("classes", []))
        tasks.append(f"  task {t['index'] + 1}: {cls} ({t['n_train']} train, {t['n_val']} val, {t['n_test']} test)")
    model = {"mlp": f"MLP hidden {p.get('hidden')}", "cnn": f"small CNN channels {p.get('cnn_channels')}",
             "resnet18": f"ResNet-18 width {p.get('width')}"}.get(p.get("model"), p.get("model"))
    head = (f"{s.get('benchmark', p.get('benchmark'))}: {len(tasks)} tasks, one head per task; {model}; "
            f"{p.get('epochs')} epoch(s) per task, batch {p.get('batch_size')}, lr {p.get('lr')}, seed {p.get('seed')}")
    return "\n".join([head, *tasks])


def _ns_rows(label: str, res: Mapping) -> list[dict]:
    p = res.get("params") or {}
    rows = []
    for layer, rec in (res.get("null_space") or {}).items():
        for t, r in enumerate(rec.get("dims", [])):
            rows.append({"label": label, "method": p.get("method"), "seed": p.get("seed"), "layer": layer,
                         "task": t + 1, "d": rec["d"], "null_dim": r, "null_frac": r / rec["d"] if rec["d"] else None,
                         "kept_energy": rec["kept_energy"][t]})
    return rows


def _as_results(runs_or_results) -> dict[str, Mapping]:
    """``{label: results}`` from such a dict or from a list of run directories (labelled by run_labels)."""
    if isinstance(runs_or_results, Mapping):
        return dict(runs_or_results)
    dirs = list(runs_or_results)
    return {lab: runs.load(d) for lab, d in zip(run_labels(dirs), dirs)}


def null_space_table(runs_or_results):
    """Long table (label, method, seed, layer, task, d, null_dim, null_frac, kept_energy).

    From ``{label: results}`` (e.g. :func:`run_methods`) or a list of run directories.
    """
    import pandas as pd

    rows = [row for lab, res in _as_results(runs_or_results).items() for row in _ns_rows(lab, res)]
    return pd.DataFrame(rows, columns=["label", "method", "seed", "layer", "task", "d", "null_dim", "null_frac",
                                       "kept_energy"])


def runs_table(runs_or_results, digits: int = 2):
    """One row per run (index: label): method, benchmark, model, seed, tasks, ACC, BWT, plasticity, forgetting."""
    import pandas as pd

    rows = []
    for lab, res in _as_results(runs_or_results).items():
        p, m = res.get("params") or {}, res.get("metrics") or {}
        rows.append({"run": lab, "method": p.get("method"), "benchmark": p.get("benchmark"),
                     "model": p.get("model"), "seed": p.get("seed"), "tasks": m.get("tasks_done"),
                     "ACC": m.get("acc"), "BWT": m.get("bwt"), "plasticity": m.get("plasticity"),
                     "forgetting": m.get("forgetting")})
    df = pd.DataFrame(rows).set_index("run")
    cols = ["ACC", "BWT", "plasticity", "forgetting"]
    df[cols] = df[cols].astype(float).round(digits)
    return df


def null_space_summary(runs_or_results, digits: int = 3):
    """Per run: mean r/d and mean kept energy over layers and the null spaces that constrained training
    (after tasks 1..T-1), with plasticity and BWT."""
    import pandas as pd

    res_by = _as_results(runs_or_results)
    ns = null_space_table(res_by)
    rows = []
    for lab, res in res_by.items():
        sub = ns[ns["label"] == lab]
        if sub.empty:
            continue
        used = sub[sub["task"] < sub["task"].max()] if sub["task"].max() > 1 else sub
        m = res.get("metrics") or {}
        rows.append({"run": lab, "method": (res.get("params") or {}).get("method"),
                     "mean null fraction": round(float(used["null_frac"].mean()), digits),
                     "mean kept energy": f"{used['kept_energy'].mean():.1e}",
                     "plasticity": round(m["plasticity"], 2) if m.get("plasticity") is not None else None,
                     "BWT": round(m["bwt"], 2) if m.get("bwt") is not None else None})
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame(
        columns=["method", "mean null fraction", "mean kept energy", "plasticity", "BWT"])
