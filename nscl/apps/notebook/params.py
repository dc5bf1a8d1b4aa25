"""A notebook's ``parameters`` cell turned into a validated config (:func:`parameters`).

A notebook's first code cell (tagged ``parameters``) holds plain assignments; papermill injects its
overrides after it. :func:`parameters` collects the user-visible globals (skips ``_names``, modules,
functions/classes, IPython's ``In/Out/get_ipython/exit/quit``), checks each name against
:data:`nscl.experiment.config.PARAMS` plus the notebook's ``extras`` (a dict name -> default, or a list
of names) and raises :class:`nscl.experiment.config.ConfigError` naming an unknown key and the closest
valid ones (papermill only *warns* on a misspelled ``-p``; in a notebook the error shows as one
``error:`` line). It returns a :class:`Params` dict: the fully resolved config
(:func:`nscl.experiment.config.resolve`) plus the extras; ``.config`` is the config alone.

Relative paths in the path extras (``output_dir``, ``runs``, ``sweep_dir``) are made absolute against
``$NSCL_OUTPUT_ROOT`` if set (``make test`` points nbval at a fresh temporary folder), else the project
root (the folder holding ``params/base.yaml``, found upwards from the working directory), so
JupyterLab / nbval (working directory ``notebooks/``) and papermill from the repo root read and write
the same places. When papermill runs with ``--inject-paths``, ``output_dir`` becomes the output
notebook's folder.

*Which names are checked* (:func:`_declared_names`): the names assigned by the parameters cell that ran
last before the call (and by papermill's injected cell after it), found in IPython's input history
``In``; so in a live kernel a misspelled name is caught on the next run, and variables of later cells
or stale names of an earlier version of the cell are not. Without a history (a plain dict, a script)
every user-visible name is checked.
"""

from __future__ import annotations

import ast
import difflib
import os
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

from ...experiment import config as config_mod

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


class Params(dict):
    """Resolved config keys plus a notebook's extras; ``.config`` / ``.extras`` split them again."""

    extra_names: tuple = ()

    @property
    def config(self) -> dict:
        return {k: v for k, v in self.items() if k in config_mod.PARAMS}

    @property
    def extras(self) -> dict:
        return {k: self[k] for k in self.extra_names if k in self}


def config_only(cfg: Mapping) -> dict:
    """The nscl parameters of a notebook's config (its extras dropped)."""
    return {k: v for k, v in cfg.items() if k in config_mod.PARAMS}


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
            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            extra_list = f"; this notebook's extras: {', '.join(sorted(extras))}" if extras else ""
            raise config_mod.ConfigError(
                f"unknown notebook parameter {name!r}.{hint} Fix the name in the parameters cell "
                f"(`python -m nscl params` lists the nscl parameters{extra_list})."
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
