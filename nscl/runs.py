"""Run records: one self-describing ``results.json`` (+ ``spectra.npz``) per run, written atomically.

A run directory holds::

    params.yaml     fully resolved parameters
    results.json    status, params, stream info, accuracy matrix, metrics, null-space records,
                    method diagnostics, timings, environment (versions, git commit, device, seed)
    spectra.npz     eigenvalues of every tracked layer's covariance after every task
    checkpoint.pt   state after the last finished task (resume); removed when the run completes
                    unless ``keep_checkpoint``

:func:`load` reads a run back, :func:`frame` turns many runs into one pandas table.
"""
from __future__ import annotations

import io
import json
import os
import platform
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import yaml

SCHEMA = "nscl.results/1"
RESULTS, PARAMS, SPECTRA, CHECKPOINT = "results.json", "params.yaml", "spectra.npz", "checkpoint.pt"


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write via a temporary file in the same directory + ``os.replace``: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def write_json(path, obj) -> None:
    atomic_write(path, json.dumps(_jsonable(obj), indent=1, allow_nan=False) + "\n")


def write_params(run_dir, cfg: dict) -> None:
    atomic_write(Path(run_dir) / PARAMS, yaml.safe_dump(cfg, sort_keys=True))


def write_spectra(run_dir, spectra: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in spectra.items()})
    atomic_write(Path(run_dir) / SPECTRA, buf.getvalue())


def save_checkpoint(run_dir, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(run_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir) -> dict | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def git_info() -> dict:
    """Commit of the nscl source tree (and whether it had uncommitted changes), if it is a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty if commit else None}


def env_info(device: torch.device | str, seed: int) -> dict:
    import torchvision

    from . import __version__

    device = torch.device(device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "nscl": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": np.__version__, "platform": platform.platform(),
        "hostname": socket.gethostname(), "device": str(device), "device_name": dev_name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "seed": seed, "git": git_info(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def load(run_dir: str | os.PathLike) -> dict:
    """Read ``results.json`` of a run (a directory, or the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / RESULTS
    if not path.exists():
        raise FileNotFoundError(f"no {RESULTS} at {path}: is this a run directory (python -m nscl run -o DIR)?")
    with open(path) as f:
        res = json.load(f)
    res["_dir"] = str(path.parent)
    return res


def load_spectra(run_dir) -> dict[str, np.ndarray]:
    path = Path(run_dir) / SPECTRA
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def find_runs(paths: Iterable[str | os.PathLike] | str | os.PathLike | None) -> list[Path]:
    """Run directories (``results.json`` of schema ``nscl.results``) at or below ``paths``.

    ``paths`` are folders, ``results.json`` files or glob patterns. Every ``results.json`` below a
    folder is looked at (a notebook-level record does not hide its ``runs/``) and only run records
    are kept; each directory once, resolved, in sorted order per path.
    """
    import glob

    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    expanded: list[str] = []
    for p in map(str, paths):
        expanded.extend(sorted(glob.glob(os.path.expanduser(p), recursive=True)) if glob.has_magic(p) else [p])
    candidates = []
    for p in map(Path, expanded):
        if p.is_dir():
            candidates.extend(sorted(q.parent for q in p.rglob(RESULTS)))
        elif p.name == RESULTS and p.exists():
            candidates.append(p.parent)
    out: list[Path] = []
    for d in candidates:
        try:
            schema = load(d).get("schema")
        except (OSError, ValueError):
            continue
        if schema == SCHEMA and d.resolve() not in out:
            out.append(d.resolve())
    return out


def frame(paths: Iterable[str | os.PathLike], params: Iterable[str] | None = None):
    """One row per run: directory, status, selected parameters (default: all) and the metrics."""
    import pandas as pd

    rows = []
    for d in find_runs(paths):
        res = load(d)
        row = {"run": str(d), "status": res.get("status")}
        p = res.get("params", {})
        row.update({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in p.items()
                    if params is None or k in params})
        row.update({k: v for k, v in (res.get("metrics") or {}).items()})
        row["total_s"] = (res.get("timing") or {}).get("total_s")
        rows.append(row)
    return pd.DataFrame(rows)


def null_space_frame(paths: Iterable[str | os.PathLike]):
    """Long table: run, method, layer, task, d, null-space dim r, r/d, kept energy, rank."""
    import pandas as pd

    rows = []
    for d in find_runs(paths):
        res = load(d)
        method = res.get("params", {}).get("method")
        for layer, rec in (res.get("null_space") or {}).items():
            for t, r in enumerate(rec.get("dims", [])):
                rows.append({"run": str(d), "method": method, "seed": res["params"].get("seed"),
                             "layer": layer, "task": t + 1, "d": rec["d"], "null_dim": r,
                             "null_frac": r / rec["d"] if rec["d"] else None,
                             "kept_energy": rec["kept_energy"][t],
                             "rank": rec.get("rank", [None] * (t + 1))[t]})
    return pd.DataFrame(rows)


#: parameters that never change what a run computes (a run made with other values is the same run)
RUN_INVARIANT = ("quiet", "device", "threads", "checkpoint", "nan_check_every")
#: left out when grouping runs over seeds: the invariant ones, the seed, and where the data came from
NON_SEMANTIC = ("seed", *RUN_INVARIANT, "data_root", "download")


def aggregate(paths: Iterable[str | os.PathLike], metrics=("acc", "bwt", "plasticity", "forgetting"),
              ignore: Iterable[str] = ()):
    """Mean and std over seeds of runs that share every other parameter; one row per group.

    The ``label`` column names each group by the parameters that differ between groups.
    ``ignore``: further parameters to leave out of the grouping (e.g. ones a method does not use).
    """
    skip = set(NON_SEMANTIC) | set(ignore)
    import pandas as pd

    from .config import defaults

    base = defaults()  # runs written before a parameter existed had its default
    rows = []
    for d in find_runs(paths):
        res = load(d)
        if res.get("status") != "complete":
            continue
        key = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
               for k, v in {**base, **res["params"]}.items() if k not in skip}
        rows.append({**key, "_seed": res["params"]["seed"], "_s": (res.get("timing") or {}).get("total_s"),
                     **{f"_{m}": (res["metrics"] or {}).get(m) for m in metrics}})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    keys = [c for c in df.columns if not c.startswith("_")]
    varying = [k for k in keys if df[k].astype(str).nunique() > 1]
    out = []
    for vals, g in df.groupby(keys, dropna=False, sort=False):
        vals = dict(zip(keys, vals if isinstance(vals, tuple) else (vals,)))
        row = {"label": " ".join(f"{k}={vals[k]}" for k in varying) or "all", **{k: vals[k] for k in varying},
               "n": len(g), "seeds": ",".join(map(str, sorted(g["_seed"])))}
        for m in metrics:
            row[f"{m}_mean"] = g[f"_{m}"].mean()
            row[f"{m}_std"] = g[f"_{m}"].std(ddof=1) if len(g) > 1 else float("nan")
        row["time_s_mean"] = g["_s"].mean()
        out.append(row)
    return pd.DataFrame(out)
