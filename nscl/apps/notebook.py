"""Helpers every notebook uses: validated parameters, several methods on one stream, a results record.

A notebook's first code cell (tagged ``parameters``) holds plain assignments; papermill injects its
overrides after it. The next cell turns the namespace into a validated config::

    from nscl.apps import notebook as nb
    cfg = nb.parameters(globals(), extras={"methods": ["finetune", "adam_nscl"],
                                           "output_dir": "results/notebooks/00_quickstart"})
    results = nb.run_methods(cfg, cfg["methods"], cfg["output_dir"])   # {method: results dict}
    nb.save_results(cfg["output_dir"], results, cfg=cfg, figures=[...])

API (kept stable; other notebooks use it):

* :func:`parameters(namespace, extras=None) -> Params` — collects the user-visible globals (skips
  ``_names``, modules, functions/classes, IPython's ``In/Out/get_ipython/exit/quit``), checks each
  name against :data:`nscl.experiment.config.PARAMS` plus the notebook's ``extras`` (a dict name -> default, or
  a list of names) and raises :class:`nscl.experiment.config.ConfigError` naming an unknown key and the valid
  ones — papermill only *warns* on a misspelled ``-p``. Returns a :class:`Params` dict: the fully
  resolved config (:func:`nscl.experiment.config.resolve`) plus the extras; ``.config`` is the config alone.
  Relative paths in the path extras (``output_dir``, ``runs``, ``sweep_dir``) are made absolute
  against ``$NSCL_OUTPUT_ROOT`` if set (``make test`` points nbval at a fresh temporary folder), else
  the project root (the folder holding ``params/base.yaml``, found upwards from the working
  directory), so JupyterLab / nbval (working directory ``notebooks/``) and papermill from the repo
  root read and write the same places. When papermill runs with ``--inject-paths``, ``output_dir``
  becomes the output notebook's folder.
  *Which names are checked* (see :func:`_declared_names`): the names assigned by the parameters
  cell that ran last before this call (and by papermill's injected cell after it), found in
  IPython's input history ``In``; so in a live kernel a misspelled name is caught on the next run,
  and variables of later cells or stale names of an earlier version of the cell are not.
  Without a history (a plain dict, a script) every user-visible name is checked.
* :func:`run_methods(cfg, methods, output_dir, **overrides) -> {method: results}` — trains each method
  on the same stream (same seed, same data) with :func:`nscl.experiment.trainer.run`, each into its own run
  directory ``<output_dir>/runs/<method>`` (``results.json``, ``spectra.npz``). A complete run with
  identical parameters already there is read back, not retrained; one with other parameters is
  refused with the command line's error (it names the differing parameters); nothing is deleted.
* :func:`save_results(output_dir, results, cfg=None, figures=(), extra=None) -> Path` — writes the
  notebook-level ``<output_dir>/results.json``: per method its metrics, accuracy matrix, null-space
  summary and the run directory (relative to ``output_dir``), plus the notebook parameters, figure
  files and any ``extra`` values. ``nscl suite`` puts each output notebook in its ``output_dir``, so this
  file lies beside it.
* :func:`check_above_chance(results) -> str` — raises :class:`ChanceLevelError` when a null-space
  method (adam_nscl, nscl_prune, nscl_lowrank) ends within ``CHANCE_MARGIN`` points of chance on
  any task (a starved configuration); the last cell of every training notebook calls it.
  :func:`at_chance(results)` lists such tasks of one run (recorded per method by :func:`save_results`).
* :func:`find_runs(paths) -> [Path]` — :func:`nscl.experiment.records.find_runs`: run directories at
  or below the given paths or glob patterns; notebook-level records are skipped.
  :func:`require_runs(paths)` is the same, but finding nothing is a ConfigError naming the parameter
  (an analysis never falls back to training something else).
* :func:`train_until(cfg, tasks) -> Trainer` — a :class:`nscl.experiment.trainer.Trainer` (no run
  directory) after its first ``tasks`` tasks (``fit(until=tasks)``), for step-by-step demos;
  :func:`layer_inputs(trainer, layer, task)` gives that layer's input rows on a task and
  :func:`task_gradient(trainer, layer, task)` the gradient of the task's loss w.r.t. its weight.
* :func:`figure_path(cfg, name)` — ``<output_dir>/figures/<name>.png`` (created on demand).
* :func:`describe(results)` prints a run's stream and schedule without paths;
  :func:`load_results(path)` reads a notebook-level record back.

Tables come from :mod:`nscl.analysis.tables` and figures from :mod:`nscl.analysis.plots`.

Outputs of committed notebooks are checked by nbval, so print rounded numbers, end figure cells with
``plt.show()`` and bind the value of a last-line call you don't want displayed (``_ = nb.save_results(...)``:
under nbval a trailing ``;`` does not suppress the output).
"""

from __future__ import annotations

import ast
import json
import os
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..analysis.probes import layer_inputs, task_gradient  # noqa: F401  (part of the notebook API)
from ..core.metrics import CHANCE_MARGIN
from ..experiment import config as config_mod
from ..experiment import records

NOTEBOOK_RESULTS_SCHEMA = "nscl.notebook/1"
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit"}
_PAPERMILL_PATHS = ("PAPERMILL_INPUT_PATH", "PAPERMILL_OUTPUT_PATH")
_SEEN_KEY = "_nscl_parameter_names"  # the names checked by the last successful call, in the namespace
_AT_KEY = "_nscl_parameters_at"  # len(In) at the last call: later cells executed since then
PATH_EXTRAS = ("output_dir", "runs", "sweep_dir")  # notebook extras holding paths (resolved like output_dir)
# nodes a parameter value may not contain: a cell with any of them is code, not a parameters cell
_NOT_A_VALUE = (
    ast.Call,
    ast.Attribute,
    ast.Subscript,
    ast.Lambda,
    ast.comprehension,
    ast.NamedExpr,
    ast.Await,
    ast.Yield,
    ast.YieldFrom,
    ast.JoinedStr,
)
find_runs = records.find_runs  # part of the notebook API


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


def output_root() -> Path:
    """Where relative notebook paths point: ``$NSCL_OUTPUT_ROOT`` if set, else :func:`project_root`."""
    return Path(os.environ["NSCL_OUTPUT_ROOT"]) if os.environ.get("NSCL_OUTPUT_ROOT") else project_root()


def resolve_path(path: str | os.PathLike) -> str:
    """``path`` made absolute against :func:`output_root` (``~`` expanded; glob patterns kept)."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else output_root() / p)


def assigned_names(source: str) -> set[str] | None:
    """The names a cell of plain assignments binds (``name = value`` lines), else None.

    A parameters cell (and papermill's injected one) only assigns values built from literals, other
    names and operators; a cell with anything else (an import, a call, an attribute, an expression
    statement) is code, whose names are not parameters. Empty cells give None too.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            return None
        for target in targets:
            elts = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            if not all(isinstance(e, ast.Name) for e in elts):
                return None
            names.update(e.id for e in elts)
        if any(isinstance(node, _NOT_A_VALUE) for node in ast.walk(value)):
            return None
    return names or None


def _declared_names(history: list, since: int) -> set[str] | None:
    """Names assigned by the parameters cell that ran last among ``history[since:-1]``.

    ``history`` is IPython's ``In`` (``In[-1]`` is the cell calling :func:`parameters`); ``since`` is its
    length at the previous call, so only cells executed since then count: in a live kernel that is
    the edited parameters cell of a "Run All" (after the previous run's later cells), on a fresh
    kernel (nbval, papermill, "Restart and run all") the whole history. The last cell of plain
    assignments wins; when it is papermill's injected cell (``# Parameters``), the notebook's own
    parameters cell right before it is added. None when no such cell ran since the last call.
    """
    cells = [c if isinstance(c, str) else "" for c in history[since:-1]]
    for k in range(len(cells) - 1, -1, -1):
        names = assigned_names(cells[k])
        if names is None:
            continue
        if cells[k].lstrip().startswith("# Parameters") and k > 0:
            names |= assigned_names(cells[k - 1]) or set()
        return names
    return None


def parameters(namespace: dict, extras: Mapping[str, Any] | Iterable[str] | None = None) -> Params:
    """Validate a notebook's parameters (its globals) and return the resolved config plus extras."""
    if extras is None:
        extras = {}
    elif not isinstance(extras, Mapping):
        extras = {name: None for name in extras}
    clash = set(extras) & set(config_mod.PARAMS)
    if clash:
        raise ValueError(f"notebook extras shadow nscl parameters: {', '.join(sorted(clash))}")
    names = _user_names(namespace)
    history = namespace.get("In")
    declared = None
    if isinstance(history, list) and history:  # an IPython kernel: find the parameters cell that just ran
        declared = _declared_names(history, int(namespace.get(_AT_KEY, 0)))
        namespace[_AT_KEY] = len(history)
    if declared is None:  # no parameters cell ran since the last call: the names checked then
        declared = namespace.get(_SEEN_KEY)
    if declared is None:  # no history at all (a dict, a script): every user-visible name
        declared = set(names)
    # the declared names are checked; other nscl parameters / extras still present keep their values
    names = {k: v for k, v in names.items() if k in declared or k in config_mod.PARAMS or k in extras}
    paths = {k: names.pop(k) for k in _PAPERMILL_PATHS if k in names}
    valid = set(config_mod.PARAMS) | set(extras)
    for name in sorted(names):
        if name not in valid:
            import difflib

            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            extra_list = f" (notebook extras: {', '.join(sorted(extras))})" if extras else ""
            raise config_mod.ConfigError(
                f"unknown notebook parameter {name!r}.{hint} Valid keys{extra_list}: {', '.join(sorted(valid))}"
            )
    cfg = config_mod.resolve(overrides={k: v for k, v in names.items() if k in config_mod.PARAMS})
    namespace[_SEEN_KEY] = frozenset(k for k in declared if k in names or k in paths)
    out = Params(cfg)
    out.extra_names = tuple(extras)
    for name, default in extras.items():
        out[name] = names.get(name, default)
    _check_extras(out)
    for name in PATH_EXTRAS:
        if name not in extras or out[name] is None:
            continue
        if name == "output_dir" and paths.get("PAPERMILL_OUTPUT_PATH"):
            out[name] = str(Path(paths["PAPERMILL_OUTPUT_PATH"]).resolve().parent)
        elif isinstance(out[name], (str, os.PathLike)):
            out[name] = resolve_path(out[name])
        elif isinstance(out[name], (list, tuple)):
            out[name] = [resolve_path(p) for p in out[name]]
    return out


def _check_extras(values: Mapping) -> None:
    """The notebook extras of the suite's notebooks have a kind, checked like the nscl parameters'
    types: a list given as one string (papermill's ``-p methods finetune``) or a number where a path
    belongs is a one-line error naming the extra. Extras not listed here are not checked."""
    path = (str, os.PathLike)

    def listed(v, kind) -> bool:
        return isinstance(v, (list, tuple)) and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)

    kinds = {
        "output_dir": ("a folder path", lambda v: isinstance(v, path)),
        "sweep_dir": ("a folder path or None", lambda v: v is None or isinstance(v, path)),
        "runs": ("a list of run folders / globs", lambda v: isinstance(v, path) or listed(v, path)),
        "methods": ("a list of method names", lambda v: v is None or listed(v, str)),
        "benchmarks": ("a list of benchmark names", lambda v: listed(v, str)),
        "seeds": ("a list of integers", lambda v: listed(v, int)),
        "a_values": ("a list of numbers", lambda v: listed(v, (int, float))),
        "energies": ("a list of numbers", lambda v: listed(v, (int, float))),
        "lambdas": ("a list of numbers", lambda v: listed(v, (int, float))),
        "demo_layer": ("a layer name", lambda v: isinstance(v, str)),
        "spectrum_layer": ("a layer name", lambda v: isinstance(v, str)),
        "schedules": ("a mapping label: rank_schedule", lambda v: isinstance(v, Mapping)),
    }
    for name, value in values.items():
        if name in kinds and name not in config_mod.PARAMS and not kinds[name][1](value):
            shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
            raise config_mod.ConfigError(
                f"notebook parameter {name!r} must be {kinds[name][0]}, got {shown} ({type(value).__name__}); "
                f"with papermill give a list as YAML: -y '{name}: [a, b]'"
            )


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
        names = ", ".join(f"{r['_dir']} ({r.get('status')}, {_tasks_done(r)} tasks)" for r in partial)
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


def _tasks_done(res: Mapping) -> str:
    done = sum(1 for row in res.get("acc") or [] if isinstance(row, list) and row and row[0] is not None)
    return f"{done}/{len(res.get('tasks') or res.get('acc') or [])}"


def _config_only(cfg: Mapping) -> dict:
    return {k: v for k, v in cfg.items() if k in config_mod.PARAMS}


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
    from ..experiment import trainer

    base = _config_only(cfg)
    out = {}
    for method in methods:
        run_cfg = config_mod.validate({**base, **overrides, "method": method})
        run_dir = Path(output_dir) / "runs" / method if output_dir is not None else None
        out[method] = trainer.run(run_cfg, run_dir)
    return out


def _rel(path, root) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:  # other drive (Windows)
        return str(path)


def at_chance(res: Mapping, margin: float = CHANCE_MARGIN) -> list[int] | None:
    """Tasks (1-based) on which a run's final accuracy is within ``margin`` points of chance
    (:func:`nscl.metrics.at_chance`); ``None`` when the run does not record its tasks' class counts."""
    from ..core.metrics import at_chance as _at_chance

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
    from ..methods import null_space_methods

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
            bad.append(
                f"{label} on task(s) "
                + ", ".join(f"{j} ({last[j - 1]:.1f}% vs chance {100 / n[j - 1]:.0f}%)" for j in tasks)
            )
    if bad:
        raise ChanceLevelError(
            f"null-space method(s) at chance (within {margin:g} points) on the final row: {'; '.join(bad)}. "
            "The configuration starves them: give them more optimizer steps (epochs, samples_per_task, "
            "batch_size) or a wider network (hidden), or a null-space rule that leaves room to learn."
        )
    line = (
        f"above chance (+{margin:g} points) on every task: {', '.join(checked)}"
        if checked
        else "no null-space method to check"
    )
    print(line)
    return line


def _summary(res: dict, output_dir: Path | None) -> dict:
    ns = {
        layer: {"d": rec["d"], "dims": rec["dims"], "kept_energy": rec["kept_energy"]}
        for layer, rec in (res.get("null_space") or {}).items()
    }
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


def save_results(
    output_dir: str | os.PathLike,
    results: Mapping[str, dict],
    cfg: Mapping | None = None,
    figures: Iterable[str | os.PathLike] = (),
    extra: Mapping | None = None,
) -> Path:
    """Write the notebook-level ``<output_dir>/results.json`` aggregating the notebook's runs.

    ``results`` maps a label (usually the method) to a run's results dict (as returned by
    :func:`run_methods` / :func:`nscl.experiment.records.load`); run directories are found under
    ``<output_dir>/runs/<label>`` when the dict does not say where it was loaded from.
    """
    output_dir = Path(output_dir)
    methods = {}
    for label, res in results.items():
        res = dict(res)
        if not res.get("_dir") and (output_dir / "runs" / label / records.RESULTS).exists():
            res["_dir"] = str(output_dir / "runs" / label)
        methods[label] = _summary(res, output_dir)
    record = {
        "schema": NOTEBOOK_RESULTS_SCHEMA,
        "methods": methods,
        "params": {k: v for k, v in (cfg or {}).items() if k != "output_dir"},
        "figures": [_rel(f, output_dir) for f in figures],
        "extra": dict(extra or {}),
    }
    path = output_dir / records.RESULTS
    records.write_json(path, record)
    return path


def load_results(path: str | os.PathLike) -> dict:
    """Read a notebook-level ``results.json`` (a file or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / records.RESULTS
    with open(p) as f:
        return json.load(f)


def metrics_record(results: Mapping[str, dict], digits: int = 4) -> dict:
    """``{label: metrics}`` rounded, for a notebook record's ``extra``."""
    return {
        label: {k: round(v, digits) if isinstance(v, float) else v for k, v in res["metrics"].items()}
        for label, res in results.items()
    }


def n_tasks(cfg: Mapping) -> int:
    """Number of tasks of the configured stream (``n_tasks`` or the benchmark's own)."""
    if cfg.get("n_tasks"):
        return cfg["n_tasks"]
    from ..data import make_stream

    return len(make_stream(cfg["benchmark"], data_root=cfg.get("data_root"), seed=cfg.get("seed", 0)))


def run_grid(
    cfg: Mapping, runs: Mapping[str, Mapping], output_dir: str | os.PathLike, name: str = "grid"
) -> dict[str, dict]:
    """Train a labelled set of configurations through the sweep machinery, in this process.

    ``runs``: ``{label: overrides of cfg}``. Runs live in ``<output_dir>/<name>/runs/<sweep name>``
    (a complete identical run is reused, as in any sweep); returns ``{label: results}`` in order.
    """
    from . import sweep

    base = _config_only(cfg)
    grid = [{k: [v] for k, v in {**base, **over}.items()} for over in runs.values()]
    spec = {
        "name": name,
        "run": "cli",
        "grid": grid,
        "out": str(Path(output_dir) / name),
        "executor": {"kind": "debug"},
    }
    specs = sweep.expand(sweep.load(spec))
    if len(specs) != len(runs):
        raise ValueError(f"run_grid: {len(runs)} labels but {len(specs)} distinct configurations")
    sweep.run(spec)
    out = {}
    for label, s in zip(runs, specs):
        state, detail = sweep.run_state(s)
        if state != "complete":
            raise RuntimeError(f"run {label!r} ({s['out_dir']}) is {state}: {detail}")
        out[label] = records.load(s["out_dir"])
    return out


def figure_path(cfg: Mapping, name: str) -> Path:
    """``<output_dir>/figures/<name>.png`` (folder created)."""
    d = Path(cfg["output_dir"]) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.png"


def train_until(cfg: Mapping, tasks: int = 1, **overrides: Any):
    """A Trainer (no run directory) after its first ``tasks`` tasks (:meth:`Trainer.fit` with
    ``until``: the same seeding, loop and task boundary as a full run); for demos that look inside."""
    from ..experiment.trainer import Trainer

    tr = Trainer(config_mod.validate({**_config_only(cfg), **overrides}))
    tr.fit(until=tasks)
    return tr


def describe(res: Mapping) -> str:
    """One paragraph on a run's stream, model and schedule (no paths, stable across machines)."""
    s, p = res.get("stream") or {}, res.get("params") or {}
    names = s.get("class_names") or []
    tasks = []
    for t in s.get("tasks", []):
        cls = " vs ".join(names[c] if c < len(names) else str(c) for c in t.get("classes", []))
        tasks.append(f"  task {t['index'] + 1}: {cls} ({t['n_train']} train, {t['n_val']} val, {t['n_test']} test)")
    model = {
        "mlp": f"MLP hidden {p.get('hidden')}",
        "cnn": f"small CNN channels {p.get('cnn_channels')}",
        "resnet18": f"ResNet-18 width {p.get('width')}",
    }.get(p.get("model"), p.get("model"))
    head = (
        f"{s.get('benchmark', p.get('benchmark'))}: {len(tasks)} tasks, one head per task; {model}; "
        f"{p.get('epochs')} epoch(s) per task, batch {p.get('batch_size')}, lr {p.get('lr')}, seed {p.get('seed')}"
    )
    return "\n".join([head, *tasks])
