"""Sweep files -> explicit, validated run specs with stable names (see :mod:`nscl.apps.sweep`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable


from ...experiment import config, records

ROOT = Path(__file__).resolve().parents[3]
NAME_KEYS = ("benchmark", "method", "seed")
# sweep-file slurm key -> submitit SlurmExecutor parameter
SLURM_KEYS = {
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem",
    "timeout_min": "time",
    "array_parallelism": "array_parallelism",
    "constraint": "constraint",
    "exclude": "exclude",
    "setup": "setup",
    "additional": "additional_parameters",
    "job_name": "job_name",
    "signal_delay_s": "signal_delay_s",
    "python": None,
    "max_num_timeout": None,
}
EXECUTORS = ("slurm", "local", "fork", "debug")


class SweepError(ValueError):
    """The sweep file is invalid (the message names the key or the run)."""


# ---- the shape of a sweep file: what each key must hold -------------------------------------------
def _is_int(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and 0 < v < float("inf")


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _grid(v) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and all(isinstance(g, dict) for g in v))


_OPT_STR = (lambda v: v is None or isinstance(v, str), "a string")
#: key -> (check, what it must be) for the top level, ``executor`` and ``executor.slurm``
TOP_SHAPE = {
    "name": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "description": _OPT_STR,
    "kernel": _OPT_STR,
    "run": (lambda v: isinstance(v, str), "'cli' or the path of a notebook"),
    "files": (_str_list, "a list of parameter files, e.g. [params/base.yaml]"),
    "params": (lambda v: v is None or isinstance(v, dict), "a mapping key: value"),
    "grid": (_grid, "a mapping key: [values] (or a list of such mappings)"),
    "overrides": (lambda v: v is None or isinstance(v, list), "a list of {when: {...}, set: {...}}"),
    "out": (lambda v: isinstance(v, str), "a directory path"),
    "cell_timeout_s": (lambda v: v is None or _is_number(v), "a number of seconds > 0"),
    "executor": (lambda v: v is None or isinstance(v, dict), "a mapping (kind, parallel, threads, timeout_min, slurm)"),
}
EXECUTOR_SHAPE = {
    "kind": (lambda v: v in EXECUTORS, f"one of {', '.join(EXECUTORS)}"),
    "parallel": (lambda v: v is None or _is_int(v, 1), "an integer >= 1"),
    "threads": (lambda v: v is None or _is_int(v, 1), "an integer >= 1"),
    "timeout_min": (lambda v: v is None or _is_number(v), "a number of minutes > 0"),
    "slurm": (lambda v: v is None or isinstance(v, dict), "a mapping of SLURM settings"),
}
SLURM_SHAPE = {
    **{k: _OPT_STR for k in ("partition", "account", "qos", "constraint", "exclude", "job_name", "python")},
    "gpus_per_node": (lambda v: v is None or _is_int(v, 0), "an integer >= 0"),
    "cpus_per_task": (lambda v: v is None or _is_int(v, 1), "an integer >= 1"),
    "mem_gb": (lambda v: v is None or _is_number(v), "a number of GB > 0"),
    "timeout_min": (lambda v: v is None or _is_number(v), "a number of minutes > 0"),
    "array_parallelism": (lambda v: v is None or _is_int(v, 1), "an integer >= 1"),
    "max_num_timeout": (lambda v: v is None or _is_int(v, 0), "an integer >= 0"),
    "signal_delay_s": (lambda v: v is None or _is_int(v, 1), "an integer number of seconds >= 1"),
    "setup": (lambda v: v is None or _str_list(v), "a list of shell lines"),
    "additional": (lambda v: v is None or isinstance(v, dict), "a mapping of extra sbatch options"),
}


def _check_shape(path, mapping: dict, shape: dict, prefix: str = "") -> None:
    """Unknown keys and values of the wrong kind fail here, naming the key (one-line errors)."""
    bad = set(map(str, mapping)) - set(shape)
    if bad:
        raise SweepError(
            f"{path}: unknown {prefix.rstrip('.') or 'sweep'} key(s) {', '.join(sorted(bad))}; "
            f"valid: {', '.join(sorted(shape))}"
        )
    for key, value in mapping.items():
        ok, what = shape[key]
        if not ok(value):
            raise SweepError(f"{path}: {prefix}{key} must be {what}, got {value!r}")


# ---- sweep file -> run specs -----------------------------------------------------------------
def _path(p: str | os.PathLike) -> Path:
    """A path from a sweep file: absolute, else relative to the current directory, else to the repo root."""
    q = Path(p).expanduser()
    for cand in [q] if q.is_absolute() else [q, ROOT / q]:
        if cand.exists():
            return cand.resolve()
    raise SweepError(f"file {str(p)!r} not found (looked in {os.getcwd()} and {ROOT})")


def load(source: str | os.PathLike | dict) -> dict:
    """Read and check a sweep file -- or a sweep mapping built in code (a notebook) -- for its
    top-level and executor keys; paths made absolute."""
    if isinstance(source, dict):
        path, sw = Path(f"<{source.get('name', 'sweep')}>"), dict(source)
    else:
        path = Path(source)
        try:  # bounded, duplicate keys refused, one-line errors (the parameter files' reader)
            sw = config.read_yaml(path, "sweep file") or {}
        except config.ConfigError as e:
            raise SweepError(str(e)) from None
    if not isinstance(sw, dict):
        raise SweepError(f"{path}: a sweep file is a mapping (name, run, files, params, grid, executor, ...)")
    _check_shape(path, sw, TOP_SHAPE)
    ex = sw.get("executor") or {}
    _check_shape(path, ex, EXECUTOR_SHAPE, "executor.")
    _check_shape(path, ex.get("slurm") or {}, SLURM_SHAPE, "executor.slurm.")
    sw = dict(sw)
    sw.setdefault("name", path.stem)
    sw["run"] = sw.get("run", "cli")
    if sw["run"] != "cli":
        sw["run"] = str(_path(sw["run"]))
    sw["files"] = [str(_path(f)) for f in sw.get("files") or []]
    sw["out"] = str(Path(sw.get("out") or f"results/sweeps/{sw['name']}").expanduser().resolve())
    sw["executor"] = ex
    sw["_file"] = None if isinstance(source, dict) else str(path.resolve())
    return sw


def _grids(sw: dict) -> list[dict]:
    grid = sw.get("grid") or {}
    grids = grid if isinstance(grid, list) else [grid]
    for g in grids:
        if not isinstance(g, dict):
            raise SweepError("grid must be a mapping key: [values] (or a list of such mappings)")
    return grids


#: a sweep expands to at most this many runs (a typo in a grid can multiply it by orders of magnitude)
MAX_RUNS = 10_000


def _points(grid: dict) -> Iterable[dict]:
    keys = list(grid)
    values = [v if isinstance(v, list) else [v] for v in (grid[k] for k in keys)]
    n = 1
    for v in values:
        n *= len(v)
    if n > MAX_RUNS:
        raise SweepError(f"the grid over {', '.join(map(str, keys))} has {n:.3g} points; at most {MAX_RUNS}")
    for combo in itertools.product(*values):
        yield dict(zip(keys, combo))


def _matches(when: dict, params: dict) -> bool:
    for k, v in when.items():
        allowed = v if isinstance(v, list) else [v]
        if params.get(k) not in allowed:
            return False
    return True


def _slug(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return re.sub(r"[^A-Za-z0-9.+-]+", "", s.replace(",", "-"))[:24]


def _key(params: dict, run: str) -> str:
    """What a run's hash covers: the parameters that differ from their registered defaults (so a parameter
    registered later, or one set explicitly to its default, does not move a run elsewhere), and the runner."""
    _defaults = config.defaults()
    key = {
        k: v for k, v in params.items() if k not in records.RUN_INVARIANT and not (k in _defaults and v == _defaults[k])
    }
    key["_run"] = "cli" if run == "cli" else Path(run).stem
    return json.dumps(key, sort_keys=True, default=str)


def run_name(cfg: dict, varying: Iterable[str], run: str, explicit: Iterable[str] | None = None) -> str:
    """``<benchmark>/<method>/[<k><v>_...]s<seed>-<hash>``: stable for the same configuration.

    ``cfg`` is the resolved configuration (:func:`nscl.experiment.config.resolve`) and the hash is of it
    (:func:`_key`), so ``lr: 1e-3`` and ``lr: 0.001`` give one hash. ``<k><v>`` names each of ``varying``
    that the run's grid point sets (``explicit``; default: all)."""
    explicit = set(cfg if explicit is None else explicit)
    hp = "".join(f"{k}{_slug(cfg[k])}_" for k in varying if k not in NAME_KEYS and k in cfg and k in explicit)
    digest = hashlib.sha1(_key(cfg, run).encode()).hexdigest()[:8]
    return f"{cfg.get('benchmark', 'default')}/{cfg.get('method', 'default')}/{hp}s{cfg.get('seed', 0)}-{digest}"


def expand(sw: dict) -> list[dict]:
    """Explicit, validated run specs (dicts: name, run, params, cfg, out_dir, timeouts), in grid order."""
    # layered like the command line's -f files (a preset in a file lies under that file's keys but
    # over the files before it), then the fixed params, then each grid point
    base = config.layer([config.load_file(f) for f in sw["files"]] + [sw.get("params") or {}])
    points = []
    for grid in _grids(sw):
        for point in _points(grid):
            params = config.layer([base, point])
            for rule in sw.get("overrides") or []:
                if (
                    not isinstance(rule, dict)
                    or set(rule) - {"when", "set"}
                    or not all(isinstance(rule.get(k) or {}, dict) for k in ("when", "set"))
                ):
                    raise SweepError(
                        f"each overrides entry is {{when: {{key: value}}, set: {{key: value}}}}, got {rule!r}"
                    )
                if _matches(rule.get("when") or {}, params):
                    params = config.layer([params, rule.get("set") or {}])
            points.append((params, list(grid)))
    resolved = []
    for params, keys in points:
        try:
            resolved.append(config.resolve(overrides=params))
        except config.ConfigError as e:
            raise SweepError(f"run {run_name(params, keys, sw['run'])}: {e}") from None
    # grid keys whose resolved value is not the same in every run go into the names
    grid_keys = list(dict.fromkeys(k for _, keys in points for k in keys))
    varying = [k for k in grid_keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in resolved}) > 1]
    runs_dir = Path(sw["out"]) / "runs"
    specs, seen = [], set()
    for (params, keys), cfg in zip(points, resolved):
        key = _key(cfg, sw["run"])
        if key in seen:  # one configuration written twice (1e-3 / 0.001, a default given or left out): one run
            continue
        seen.add(key)
        name = run_name(cfg, varying, sw["run"], explicit=params)
        # a run made when the hash was of the parameters as written (a '1e-3' string, not 0.001) keeps its folder
        legacy = run_name(params, varying, sw["run"])
        if legacy != name and not (runs_dir / name).exists() and (runs_dir / legacy).exists():
            name = legacy
        specs.append(
            {
                "name": name,
                "sweep": sw["name"],
                "run": sw["run"],
                "params": params,
                "cfg": cfg,
                "out_dir": str(runs_dir / name),
                "cell_timeout_s": sw.get("cell_timeout_s"),
                "kernel": sw.get("kernel"),
                "timeout_min": (
                    sw["executor"].get("timeout_min") or (sw["executor"].get("slurm") or {}).get("timeout_min")
                ),
            }
        )
    if not specs:
        raise SweepError(f"sweep {sw['name']!r} expands to no runs (empty grid?)")
    return specs
