"""Run records: one self-describing ``results.json`` (+ ``spectra.npz``) per run, written atomically.

A run directory holds::

    params.yaml     fully resolved parameters
    results.json    status, params, stream info, accuracy matrix, metrics, null-space records,
                    method diagnostics, timings, environment (versions, git commit, device, seed)
    spectra.npz     eigenvalues of every tracked layer's covariance after every task
    checkpoint.pt   state after the last finished task (resume); removed when the run completes

:func:`load` reads a run back, :func:`find_runs` finds run directories, :func:`differing` is the
one "same run?" rule; :mod:`nscl.analysis.tables` turns many runs into pandas tables.
"""
from __future__ import annotations

import io
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import yaml

from ..util import atomic_write, jsonable

SCHEMA = "nscl.results/1"
RESULTS, PARAMS, SPECTRA, CHECKPOINT = "results.json", "params.yaml", "spectra.npz", "checkpoint.pt"


def write_json(path, obj) -> None:
    atomic_write(path, json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")


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
    root = Path(__file__).resolve().parents[2]
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

    from .. import __version__

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


#: parameters that never change what a run computes (a run made with other values is the same run)
RUN_INVARIANT = ("quiet", "device", "threads", "checkpoint")
#: left out when grouping runs over seeds: the invariant ones, the seed, and where the data came from
NON_SEMANTIC = ("seed", *RUN_INVARIANT, "data_root", "download")


def differing(saved: dict, cfg: dict) -> set[str]:
    """The one "same run?" rule: the parameters in which a saved run differs from ``cfg``.

    Keys the saved run predates count at their defaults; :data:`RUN_INVARIANT` parameters never
    make two runs different. The CLI, notebooks, sweeps and resume all ask this function.
    """
    from .config import defaults

    saved = {**defaults(), **saved}
    return {k for k in cfg if k not in RUN_INVARIANT and saved.get(k) != cfg[k]}
