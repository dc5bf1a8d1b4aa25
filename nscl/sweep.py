"""Sweeps: a grid of runs from one YAML file, dispatched to SLURM (one job array), a local process
pool or the current process; resumable and idempotent.

    python -m nscl sweep run params/sweeps/compare_fmnist.yaml [--executor local|slurm|debug]
    python -m nscl sweep status results/sweeps/compare_fmnist
    python -m nscl sweep collect results/sweeps/compare_fmnist     # -> collected.csv (+ .parquet)

A sweep file (see ``params/sweeps/*.yaml``)::

    name: compare_fmnist
    run: cli                        # or a notebook: notebooks/01_adam_nscl.ipynb (run by papermill)
    files: [params/base.yaml]       # base parameter files, layered left to right
    params: {epochs: 2}             # fixed overrides for every run
    grid:                           # cartesian product (a list of such mappings = union of grids)
      benchmark: [split_fmnist, permuted_fmnist]
      method: [finetune, adam_nscl]
      seed: [0, 1, 2]
    overrides:                      # conditional settings, applied after the grid
      - {when: {method: ewc}, set: {ewc_lambda: 1000.0}}
    out: results/sweeps/compare_fmnist
    cell_timeout_s: 3600            # papermill per-cell timeout
    executor:
      kind: local                   # default executor (the command line may override it)
      parallel: 2                   # local: runs at once
      slurm: {partition: gpu, account: null, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32,
              timeout_min: 120, array_parallelism: 16}

Expansion gives explicit run specs with stable names ``<benchmark>/<method>/[<hp>_]s<seed>-<hash>``
(the hash covers every explicitly set parameter, base-file contents included), so resubmitting the
same sweep maps every run to the same directory ``<out>/runs/<name>``. Every spec is validated with
:mod:`nscl.config` before anything is submitted (a bad key or type fails fast, naming the run and
the key). Values that are valid but fail at run time (e.g. an ``lr`` that makes the loss NaN) fail
*that* run only: its error goes to ``error.txt`` in its directory and is reported with its name.

Idempotence: :func:`run_one` skips a run whose complete ``results.json`` has the same parameters;
a run killed part-way resumes from its per-task checkpoint (the trainer does this in the same
directory). ``sweep run`` submits only runs that are neither complete nor failed (``--retry-failed``
re-runs failed ones), so resubmitting a finished sweep runs nothing.

Notebook runs: papermill injects the full resolved parameters plus ``output_dir`` (the run
directory); the notebook must leave the run's ``results.json`` in ``output_dir``. The output
notebook is written next to it.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import config, runs

ROOT = Path(__file__).resolve().parent.parent
SPEC, ERROR, JOB, MANIFEST, SUBMITTED = "spec.json", "error.txt", "job.json", "sweep.json", "submitted.json"
OUTCOME = "outcome.json"  # what run_one returned (local executor)
COLLECTED = "collected"
NAME_KEYS = ("benchmark", "method", "seed")
TOP_KEYS = {"name", "description", "run", "files", "params", "grid", "overrides", "out", "executor",
            "cell_timeout_s", "kernel"}
EXECUTOR_KEYS = {"kind", "parallel", "threads", "timeout_min", "slurm"}
# sweep-file slurm key -> submitit SlurmExecutor parameter
SLURM_KEYS = {"partition": "partition", "account": "account", "qos": "qos", "gpus_per_node": "gpus_per_node",
              "cpus_per_task": "cpus_per_task", "mem_gb": "mem", "timeout_min": "time",
              "array_parallelism": "array_parallelism", "constraint": "constraint", "exclude": "exclude",
              "setup": "setup", "additional": "additional_parameters", "job_name": "job_name",
              "python": None, "max_num_timeout": None}
EXECUTORS = ("slurm", "local", "debug")


class SweepError(ValueError):
    """The sweep file is invalid (the message names the key or the run)."""


# ---- sweep file -> run specs -----------------------------------------------------------------
def _path(p: str | os.PathLike) -> Path:
    """A path from a sweep file: absolute, else relative to the current directory, else to the repo root."""
    q = Path(p).expanduser()
    for cand in ([q] if q.is_absolute() else [q, ROOT / q]):
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
        try:
            sw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise SweepError(f"sweep file {str(path)!r} not found") from None
    if not isinstance(sw, dict):
        raise SweepError(f"{path}: a sweep file is a mapping (name, run, files, params, grid, executor, ...)")
    bad = set(sw) - TOP_KEYS
    if bad:
        raise SweepError(f"{path}: unknown sweep key(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(TOP_KEYS))}")
    ex = sw.get("executor") or {}
    bad = set(ex) - EXECUTOR_KEYS
    if bad:
        raise SweepError(f"{path}: unknown executor key(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(EXECUTOR_KEYS))}")
    bad = set(ex.get("slurm") or {}) - set(SLURM_KEYS)
    if bad:
        raise SweepError(f"{path}: unknown executor.slurm key(s) {', '.join(sorted(bad))}; "
                         f"valid: {', '.join(sorted(SLURM_KEYS))}")
    if ex.get("kind", "local") not in EXECUTORS:
        raise SweepError(f"{path}: executor.kind must be one of {', '.join(EXECUTORS)}, got {ex.get('kind')!r}")
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


def _points(grid: dict) -> Iterable[dict]:
    keys = list(grid)
    values = [v if isinstance(v, list) else [v] for v in (grid[k] for k in keys)]
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


def run_name(params: dict, varying: Iterable[str], run: str) -> str:
    """``<benchmark>/<method>/[<k><v>_...]s<seed>-<hash>``: stable for the same explicit parameters.

    The hash covers the parameters that differ from their registered defaults (so a parameter
    registered later, or one set explicitly to its default, does not move a run elsewhere)."""
    _defaults = config.defaults()
    key = {k: v for k, v in params.items()
           if k not in runs.RUN_INVARIANT and not (k in _defaults and v == _defaults[k])}
    key["_run"] = "cli" if run == "cli" else Path(run).stem
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    hp = "".join(f"{k}{_slug(params[k])}_" for k in varying if k not in NAME_KEYS and k in params)
    return f"{params.get('benchmark', 'default')}/{params.get('method', 'default')}/{hp}s{params.get('seed', 0)}-{digest}"


def expand(sw: dict) -> list[dict]:
    """Explicit, validated run specs (dicts: name, run, params, cfg, out_dir, timeouts), in grid order."""
    base: dict = {}
    for f in sw["files"]:
        base.update(config.load_file(f))
    base.update(sw.get("params") or {})
    points = []
    for grid in _grids(sw):
        for point in _points(grid):
            params = {**base, **point}
            for rule in sw.get("overrides") or []:
                if not isinstance(rule, dict) or set(rule) - {"when", "set"}:
                    raise SweepError(f"each overrides entry is {{when: {{key: value}}, set: {{key: value}}}}, got {rule!r}")
                if _matches(rule.get("when") or {}, params):
                    params.update(rule.get("set") or {})
            points.append((params, list(grid)))
    # grid keys whose value is not the same in every run go into the names
    all_keys = {k for _, keys in points for k in keys}
    varying = [k for k in dict.fromkeys(k for _, keys in points for k in keys)
               if len({json.dumps(p.get(k, "<unset>"), sort_keys=True, default=str) for p, _ in points}) > 1]
    specs, seen = [], set()
    for params, keys in points:
        name = run_name(params, [k for k in varying if k in all_keys], sw["run"])
        if name in seen:
            continue
        seen.add(name)
        try:
            cfg = config.resolve(overrides=params)
        except config.ConfigError as e:
            raise SweepError(f"run {name}: {e}") from None
        specs.append({
            "name": name, "sweep": sw["name"], "run": sw["run"], "params": params, "cfg": cfg,
            "out_dir": str(Path(sw["out"]) / "runs" / name),
            "cell_timeout_s": sw.get("cell_timeout_s"), "kernel": sw.get("kernel"),
            "timeout_min": (sw["executor"].get("timeout_min")
                            or (sw["executor"].get("slurm") or {}).get("timeout_min")),
        })
    if not specs:
        raise SweepError(f"sweep {sw['name']!r} expands to no runs (empty grid?)")
    return specs


# ---- one run ---------------------------------------------------------------------------------
def _same_params(res: dict, cfg: dict) -> bool:
    """Same parameters; a key registered after the run was made counts as equal at its default."""
    p = res.get("params") or {}
    return all((p[k] if k in p else config.PARAMS[k].default) == v
               for k, v in cfg.items() if k not in runs.RUN_INVARIANT and k in config.PARAMS)


def is_complete(spec: dict) -> bool:
    d = Path(spec["out_dir"])
    if not (d / runs.RESULTS).exists():
        return False
    try:
        res = runs.load(d)
    except (ValueError, OSError):
        return False
    return res.get("status") == "complete" and _same_params(res, spec["cfg"])


def run_one(spec: dict) -> dict:
    """Execute one run spec (CLI-style via :func:`nscl.train.run`, or a notebook via papermill).

    Idempotent: a complete run is skipped; a killed one resumes from its checkpoint. Never raises
    for a failure of the run itself: the traceback goes to ``error.txt`` in the run directory and
    the returned dict has ``status="failed"`` and the error's last line.
    """
    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if is_complete(spec):
        return {"name": spec["name"], "status": "skipped", "error": None, "out_dir": str(out), "seconds": 0.0}
    runs.write_json(out / SPEC, spec)
    if (out / ERROR).exists():
        (out / ERROR).unlink()
    runs.write_json(out / JOB, {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                                "slurm_job_id": _slurm_task_id()})
    try:
        if spec["run"] == "cli":
            from . import train

            train.run(dict(spec["cfg"]), out)
        else:
            _run_notebook(spec, out)
        if not is_complete(spec):
            raise RuntimeError(f"the run finished but left no complete {runs.RESULTS} in {out}")
        status, error = "complete", None
    except Exception as e:  # noqa: BLE001 - any failure of this run is recorded, never propagated
        text = traceback.format_exc()
        ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
        if ename:  # papermill: the notebook's own exception, not the wrapper's
            text += f"\n{ename}: {evalue}\n"
        runs.atomic_write(out / ERROR, text)
        status, error = "failed", _last_line(text)
    return {"name": spec["name"], "status": status, "error": error, "out_dir": str(out),
            "seconds": time.time() - t0}


def _slurm_task_id() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID")


def _run_notebook(spec: dict, out: Path) -> None:
    import logging

    import papermill as pm

    logging.getLogger("papermill").setLevel(logging.ERROR)  # 'unknown parameter' warnings: we pass them all
    nb = Path(spec["run"])
    params = {**spec["cfg"], "output_dir": str(out)}
    pm.execute_notebook(str(nb), str(out / nb.name), parameters=params, kernel_name=spec.get("kernel"),
                        execution_timeout=spec.get("cell_timeout_s"), cwd=str(nb.parent),
                        progress_bar=False, log_output=True, request_save_on_cell_execute=True)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ---- state of a sweep -------------------------------------------------------------------------
def _alive(job: dict) -> bool | None:
    """Whether the process of a started run still exists (None: cannot tell)."""
    if job.get("slurm_job_id"):
        if not shutil.which("squeue"):
            return None
        try:
            out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", str(job["slurm_job_id"]).split("_")[0]],
                                 capture_output=True, text=True, timeout=20).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return None
        return job["slurm_job_id"] in out
    if job.get("host") == socket.gethostname() and job.get("pid"):
        try:
            os.kill(int(job["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return None


def run_state(spec: dict) -> tuple[str, str | None]:
    """``(state, detail)``: complete | failed (error's last line) | running | stopped | pending."""
    d = Path(spec["out_dir"])
    res = None
    if (d / runs.RESULTS).exists():
        try:
            res = runs.load(d)
        except (ValueError, OSError):
            res = None
    if res is not None and res.get("status") == "complete" and _same_params(res, spec["cfg"]):
        return "complete", None
    if (d / ERROR).exists():
        return "failed", _last_line((d / ERROR).read_text())
    if res is not None and res.get("status") == "failed":
        return "failed", res.get("error")
    if (d / JOB).exists():
        job = json.loads((d / JOB).read_text())
        alive = _alive(job)
        done = sum(1 for row in (res or {}).get("acc") or [] if row and row[0] is not None)
        where = f"job {job['slurm_job_id']}" if job.get("slurm_job_id") else f"pid {job.get('pid')}"
        if alive is False:
            return "stopped", f"{where} ended after {done} task(s); resubmit to resume from the checkpoint"
        return "running", f"{where}, {done} task(s) done"
    return "pending", None


def manifest(sweep_dir: str | os.PathLike) -> dict:
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        raise SweepError(f"{path} not found: is {sweep_dir} a sweep directory (python -m nscl sweep run FILE)?")
    return json.loads(path.read_text())


def status(sweep_dir: str | os.PathLike) -> list[dict]:
    """One dict per run of the sweep: name, state, detail, out_dir."""
    rows = []
    for spec in manifest(sweep_dir)["specs"]:
        state, detail = run_state(spec)
        rows.append({"name": spec["name"], "state": state, "detail": detail, "out_dir": spec["out_dir"]})
    return rows


def format_status(rows: list[dict], sweep_dir, all_runs: bool = False) -> str:
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "failed", "running", "stopped", "pending")}
    lines = [f"sweep {sweep_dir}: {len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    for r in rows:
        if all_runs or r["state"] != "complete":
            lines.append(f"  {r['state']:<8} {r['name']}" + (f"  {r['detail']}" if r["detail"] else ""))
    return "\n".join(lines)


def collect(sweep_dir: str | os.PathLike, write: bool = True):
    """One tidy row per run (its parameters, metrics, state, error), in sweep order.

    Runs without results (failed before the first task, pending) are rows too, with their
    parameters and state. Written to ``<sweep_dir>/collected.csv`` (and ``.parquet`` when pyarrow
    is installed).
    """
    import pandas as pd

    rows = []
    for spec in manifest(sweep_dir)["specs"]:
        state, detail = run_state(spec)
        d = Path(spec["out_dir"])
        frame = runs.frame([d]) if (d / runs.RESULTS).exists() else pd.DataFrame()
        if len(frame):
            row = frame.iloc[0].to_dict()
        else:
            row = {"run": str(d), "status": None}
            row.update({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in spec["cfg"].items()})
        row = {"name": spec["name"], "state": state, "error": detail if state == "failed" else None, **row}
        rows.append(row)
    df = pd.DataFrame(rows)
    if write:
        runs.atomic_write(Path(sweep_dir) / f"{COLLECTED}.csv", df.to_csv(index=False))
        try:
            import pyarrow  # noqa: F401

            df.to_parquet(Path(sweep_dir) / f"{COLLECTED}.parquet", index=False)
        except ImportError:
            pass
    return df


METRICS = ("acc", "bwt", "plasticity", "forgetting")


def summarize(df, by=("benchmark", "method"), metrics=METRICS):
    """Mean and std over seeds of the complete runs of a :func:`collect` table, one row per ``by`` group
    (groups in order of first appearance), with ``n`` the number of complete runs."""
    import pandas as pd

    ok = df[df["state"] == "complete"] if "state" in df else df
    rows = []
    for key, g in ok.groupby(list(by), sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["n"] = len(g)
        for m in metrics:
            if m in g:
                row[f"{m}_mean"] = g[m].mean()
                row[f"{m}_std"] = g[m].std(ddof=1) if len(g) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(summary, digits: int = 2, metrics=("acc", "bwt", "plasticity")):
    """``mean ± std`` strings (ACC / BWT / plasticity, percent points) of :func:`summarize`'s table,
    with the decimals of every metric table (``nscl.notebook.METRIC_DIGITS``)."""
    out = summary[[c for c in summary.columns if not c.endswith(("_mean", "_std"))]].copy()
    for m in metrics:
        if f"{m}_mean" in summary:
            out[m.upper() if m in ("acc", "bwt") else m] = [
                f"{mu:.{digits}f} ± {sd:.{digits}f}" if sd == sd else f"{mu:.{digits}f}"
                for mu, sd in zip(summary[f"{m}_mean"], summary[f"{m}_std"])]
    return out


# ---- executors ------------------------------------------------------------------------------
def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return sys.executable or str(venv)


def _submit_slurm(sw: dict, specs: list[dict], logs: Path, wait: bool, timeout_s: float | None) -> list[dict]:
    import submitit

    opts = dict(sw["executor"].get("slurm") or {})
    python = opts.pop("python", None) or _python()
    max_num_timeout = opts.pop("max_num_timeout", 0)
    cpus = opts.get("cpus_per_task") or 1
    params: dict[str, Any] = {"job_name": f"nscl-{sw['name']}", "time": 60, "cpus_per_task": cpus}
    for key, value in opts.items():
        if value is None or (key == "gpus_per_node" and not value):
            continue
        if key == "mem_gb":
            value = f"{int(value * 1024)}MB"
        params[SLURM_KEYS[key]] = value
    params["setup"] = [f"export OMP_NUM_THREADS={cpus} MKL_NUM_THREADS={cpus} PYTHONUNBUFFERED=1",
                       f"cd {shlex_quote(str(ROOT))}"] + list(params.get("setup") or [])
    ex = submitit.SlurmExecutor(folder=str(logs / "%j"), python=python, max_num_timeout=max_num_timeout)
    ex.update_parameters(**params)
    jobs = ex.map_array(run_one, specs)
    runs.write_json(Path(sw["out"]) / SUBMITTED, {
        "executor": "slurm", "time": time.time(), "array_job_id": jobs[0].job_id.split("_")[0] if jobs else None,
        "jobs": {s["name"]: j.job_id for s, j in zip(specs, jobs)}})
    print(f"submitted {len(jobs)} runs as SLURM job array {jobs[0].job_id.split('_')[0]} "
          f"(logs: {logs}/<job>_<task>_log.out)", flush=True)
    if not wait:
        return [{"name": s["name"], "status": "submitted", "job_id": j.job_id} for s, j in zip(specs, jobs)]
    return _wait_slurm(specs, jobs, timeout_s)


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _squeue(array_ids: set[str]) -> set[str] | None:
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(sorted(array_ids))],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # squeue exits 1 when every listed job has left the queue
        return set() if "Invalid job id" in out.stderr else None
    return set(out.stdout.split())


def _wait_slurm(specs: list[dict], jobs: list, timeout_s: float | None) -> list[dict]:
    """Wait by watching result files and ``squeue`` (no ``sacct``: works without accounting)."""
    t0 = time.time()
    pending = dict(enumerate(jobs))
    results: dict[int, dict] = {}
    gone_since: dict[int, float] = {}
    while pending:
        queued = _squeue({j.job_id.split("_")[0] for j in pending.values()})
        for i, job in list(pending.items()):
            if job.paths.result_pickle.exists():
                try:
                    results[i] = job.result()
                except Exception as e:  # noqa: BLE001 - the job wrapper itself failed
                    results[i] = _lost(specs[i], f"SLURM job {job.job_id} failed: {_last_line(str(e))}")
                del pending[i]
            elif queued is not None and job.job_id not in queued:
                gone_since.setdefault(i, time.time())
                if time.time() - gone_since[i] > 15:  # left the queue without a result: killed
                    log = job.paths.stderr
                    results[i] = _lost(specs[i], f"SLURM job {job.job_id} ended without a result "
                                                 f"(killed, time limit or out of memory?); log: {log}")
                    del pending[i]
        if pending and timeout_s is not None and time.time() - t0 > timeout_s:
            raise TimeoutError(f"{len(pending)} SLURM runs not finished after {timeout_s:.0f} s: "
                               + ", ".join(specs[i]["name"] for i in pending))
        if pending:
            time.sleep(1.0)
    return [results[i] for i in range(len(jobs))]


def _lost(spec: dict, message: str) -> dict:
    """A run whose process ended without a result (killed, time limit, out of memory): state
    ``stopped``, which a resubmission resumes from the checkpoint (no ``error.txt`` is written)."""
    return {"name": spec["name"], "status": "stopped", "error": message, "out_dir": spec["out_dir"]}


def _run_local(sw: dict, specs: list[dict], logs: Path, timeout_s: float | None) -> list[dict]:
    """Bounded process pool: each run is ``python -m nscl.sweep SPEC.json`` with its log in ``logs``."""
    ex = sw["executor"]
    n = max(1, int(ex.get("parallel") or 1))
    threads = ex.get("threads") or max(1, (os.cpu_count() or 1) // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    per_run = (specs[0].get("timeout_min") or 0) * 60 or None
    logs.mkdir(parents=True, exist_ok=True)

    def one(spec: dict) -> dict:
        out = Path(spec["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        spec_file, outcome = out / SPEC, out / OUTCOME
        runs.write_json(spec_file, spec)
        if outcome.exists():
            outcome.unlink()
        log = logs / (spec["name"].replace("/", "__") + ".log")
        with open(log, "ab") as f:
            try:
                proc = subprocess.run([_python(), "-m", "nscl.sweep", str(spec_file)], stdout=f,
                                      stderr=subprocess.STDOUT, env=env, timeout=per_run, cwd=str(ROOT))
            except subprocess.TimeoutExpired:
                return _lost(spec, f"time limit of {per_run:.0f} s reached; log: {log}")
        try:
            return json.loads(outcome.read_text())
        except (OSError, ValueError):
            return _lost(spec, f"process exited with code {proc.returncode} without a result; log: {log}")

    with cf.ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(one, s) for s in specs]
        t0 = time.time()
        out = []
        for fut in futures:
            left = None if timeout_s is None else max(0.0, timeout_s - (time.time() - t0))
            out.append(fut.result(timeout=left))
    return out


def run(path: str | os.PathLike | dict, executor: str | None = None, out: str | None = None, wait: bool = True,
        retry_failed: bool = False, dry_run: bool = False, timeout_s: float | None = None,
        parallel: int | None = None) -> dict:
    """Expand, validate and execute a sweep; returns ``{"sweep_dir", "submitted", "skipped", "results"}``.

    Only runs that are neither complete nor failed (unless ``retry_failed``) are executed; a
    resubmission of a finished sweep therefore executes nothing.
    """
    sw = load(path)
    if out is not None:
        sw["out"] = str(Path(out).expanduser().resolve())
    if parallel is not None:
        sw["executor"]["parallel"] = parallel
    kind = executor or sw["executor"].get("kind", "local")
    if kind not in EXECUTORS:
        raise SweepError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    specs = expand(sw)  # validates every run before anything runs
    sweep_dir = Path(sw["out"])
    todo, skipped = [], []
    for spec in specs:
        state, _ = run_state(spec)
        if state == "complete" or (state == "failed" and not retry_failed) or state == "running":
            skipped.append((spec["name"], state))
        else:
            todo.append(spec)
    if dry_run:
        return {"sweep_dir": str(sweep_dir), "submitted": [s["name"] for s in todo], "skipped": skipped,
                "results": [], "specs": specs}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(sweep_dir / MANIFEST, {"sweep": {k: v for k, v in sw.items()}, "specs": specs})
    logs = sweep_dir / "logs"
    results: list[dict] = []
    if todo:
        if kind == "slurm":
            if not shutil.which("sbatch"):
                raise SweepError("executor 'slurm' needs SLURM (sbatch not found); "
                                 "start a local one with 'sudo .ci/slurm.sh start' or use --executor local")
            results = _submit_slurm(sw, todo, logs, wait, timeout_s)
        elif kind == "local":
            results = _run_local(sw, todo, logs, timeout_s)
        else:
            results = [run_one(s) for s in todo]
    return {"sweep_dir": str(sweep_dir), "submitted": [s["name"] for s in todo], "skipped": skipped,
            "results": results}


# ---- command line ---------------------------------------------------------------------------
def add_cli(sub) -> None:
    """``python -m nscl sweep run|status|collect`` (registered in :data:`nscl.cli.COMMANDS`)."""
    p = sub.add_parser("sweep", help="run a grid of runs (SLURM job array, local pool, in-process), "
                                     "show its state, collect its results")
    ss = p.add_subparsers(dest="sweep_command", required=True)
    r = ss.add_parser("run", help="expand, validate and execute a sweep file (only runs not yet done)")
    r.add_argument("file", help="sweep YAML, e.g. params/sweeps/compare_fmnist.yaml")
    r.add_argument("--executor", "-e", choices=EXECUTORS, default=None, help="default: the file's executor.kind")
    r.add_argument("--out", "-o", default=None, help="sweep directory (default: the file's out)")
    r.add_argument("--parallel", "-j", type=int, default=None, help="local executor: runs at once")
    r.add_argument("--no-wait", action="store_true", help="slurm: return after submitting")
    r.add_argument("--retry-failed", action="store_true", help="also re-run runs that failed")
    r.add_argument("--dry-run", action="store_true", help="validate and list the runs; run nothing")
    r.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    r.set_defaults(func=_cmd_run)
    s = ss.add_parser("status", help="complete / running / failed (with the error's last line) / pending")
    s.add_argument("dir")
    s.add_argument("--all", action="store_true", help="list complete runs too")
    s.set_defaults(func=_cmd_status)
    c = ss.add_parser("collect", help="one row per run -> DIR/collected.csv (+ .parquet with pyarrow)")
    c.add_argument("dir")
    c.set_defaults(func=_cmd_collect)


def _reports_sweep_errors(cmd):
    """A bad sweep file or directory is a one-line error (exit 2), not a traceback."""
    def wrapped(args) -> int:
        try:
            return cmd(args)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapped


@_reports_sweep_errors
def _cmd_run(args) -> int:
    res = run(args.file, executor=args.executor, out=args.out, wait=not args.no_wait,
              retry_failed=args.retry_failed, dry_run=args.dry_run, timeout_s=args.timeout,
              parallel=args.parallel)
    if args.dry_run:
        for s in res["specs"]:
            print(f"  {'run' if s['name'] in res['submitted'] else 'skip'}  {s['name']}")
        print(f"{len(res['submitted'])} to run, {len(res['skipped'])} skipped (complete/failed/running)")
        return 0
    print(f"{len(res['submitted'])} run(s) executed, {len(res['skipped'])} skipped (already complete, failed or running)")
    for r in res["results"]:
        if r.get("status") in ("failed", "stopped"):
            print(f"  {r['status'].upper()} {r['name']}: {r['error']}")
    print(format_status(status(res["sweep_dir"]), res["sweep_dir"]))
    return 1 if any(r.get("status") in ("failed", "stopped") for r in res["results"]) else 0


@_reports_sweep_errors
def _cmd_status(args) -> int:
    rows = status(args.dir)
    print(format_status(rows, args.dir, args.all))
    return 0


@_reports_sweep_errors
def _cmd_collect(args) -> int:
    df = collect(args.dir)
    cols = [c for c in ("name", "state", "acc", "bwt", "plasticity", "total_s") if c in df]
    with __import__("pandas").option_context("display.width", 200, "display.max_rows", 500):
        print(df[cols].to_string(index=False))
        if {"benchmark", "method", "acc"} <= set(df.columns) and (df["state"] == "complete").any():
            print("\nmean ± std over seeds (complete runs):")
            print(format_summary(summarize(df)).to_string(index=False))
    print(f"\nwritten: {Path(args.dir) / (COLLECTED + '.csv')} ({len(df)} rows)")
    return 0


def _main(argv: list[str]) -> int:
    """``python -m nscl.sweep SPEC.json``: run one spec (the local executor's worker)."""
    spec_file = Path(argv[0])
    spec = json.loads(spec_file.read_text())
    res = run_one(spec)
    runs.write_json(spec_file.parent / OUTCOME, res)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
