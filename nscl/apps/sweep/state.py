"""One run of a sweep (idempotent, never raises for the run's own failure) and the state of a
sweep: complete / failed / running / stopped / pending, and its collected table."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import traceback
from pathlib import Path

from ...experiment import records
from ...util import atomic_write, read_text
from .spec import SweepError

#: files in a run directory written by the sweep machinery
SPEC, JOB, MANIFEST, SUBMITTED = "spec.json", "job.json", "sweep.json", "submitted.json"
SWEEP_LOCK = ".sweep.lock"  # held by run_one; the trainer (maybe in a notebook kernel) holds records.LOCK
ERROR = records.ERROR  # the traceback of a failed run (the trainer writes it too)
OUTCOME = "outcome.json"  # what run_one returned (local executor)
COLLECTED = "collected"


def is_complete(spec: dict) -> bool:
    """A complete run with the spec's parameters is in its folder (the one "same run?" rule,
    :func:`nscl.experiment.records.reusable`)."""
    return records.reusable(spec["out_dir"], spec["cfg"]) is not None


def run_one(spec: dict) -> dict:
    """Execute one run spec (CLI-style via :func:`nscl.experiment.trainer.run`, or a notebook via papermill).

    Idempotent: a complete run is skipped (without taking a lock, so complete runs on read-only
    storage are reused); a killed one resumes from its checkpoint. Never raises for a failure of
    the run itself: the traceback goes to ``error.txt`` in the run directory and the returned dict
    has ``status="failed"`` and the error's last line. Ctrl-C, SIGTERM and SLURM's time-limit warning
    (SIGUSR2) leave it ``stopped`` instead (no ``error.txt``; any resubmission resumes it). The run
    directory is locked (:func:`nscl.experiment.records.lock`, ``.sweep.lock``) for the whole run: a
    run already in progress elsewhere is reported as ``running`` here and its folder is left untouched.
    """
    from ...experiment import trainer

    out = Path(spec["out_dir"])
    t0 = time.time()
    result = {"name": spec["name"], "error": None, "out_dir": str(out)}
    try:
        if is_complete(spec):
            return {**result, "status": "skipped", "seconds": 0.0}
        with trainer.stop_on_signals(), records.lock(out, SWEEP_LOCK):
            status, error = _run_locked(spec, out)
    except records.RunDirError as e:  # held by another process, or not writable: not ours to touch
        status, error = ("running" if "in use" in str(e) else "failed"), str(e)
    except (KeyboardInterrupt, trainer.RunStopped) as e:
        status, error = "stopped", f"{e or 'stopped by Ctrl-C'}; resubmit to resume from the checkpoint"
    except Exception as e:  # noqa: BLE001 - submitit's own time-limit exception, raised before ours was set
        if type(e).__name__ != "UncompletedJobError":
            raise
        status, error = "stopped", f"{e}; resubmit to resume from the checkpoint"
    return {**result, "status": status, "error": error, "seconds": time.time() - t0}


def _run_locked(spec: dict, out: Path) -> tuple[str, str | None]:
    if is_complete(spec):
        return "skipped", None
    records.write_json(out / SPEC, spec)
    if (out / ERROR).exists():
        (out / ERROR).unlink()
    records.write_json(
        out / JOB,
        {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "slurm_job_id": _slurm_task_id()},
    )
    try:
        if spec["run"] == "cli":
            from ...experiment import trainer

            trainer.run(dict(spec["cfg"]), out)
        else:
            _run_notebook(spec, out)
        if not is_complete(spec):
            raise RuntimeError(f"the run finished but left no complete {records.RESULTS} in {out}")
        return "complete", None
    except Exception as e:  # noqa: BLE001 - any failure of this run is recorded, never propagated
        ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
        if ename in ("KeyboardInterrupt", "RunStopped"):  # the notebook's kernel was stopped, not failed
            return "stopped", f"{ename}: {evalue}; resubmit to resume from the checkpoint"
        text = traceback.format_exc()
        if ename:  # papermill: the notebook's own exception, not the wrapper's
            text += f"\n{ename}: {evalue}\n"
        atomic_write(out / ERROR, text)
        return "failed", _last_line(text)


def _slurm_task_id() -> str | None:
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID")


def _run_notebook(spec: dict, out: Path) -> None:
    import logging

    import papermill as pm

    from .. import kernel

    logging.getLogger("papermill").setLevel(logging.ERROR)  # 'unknown parameter' warnings: we pass them all
    nb = Path(spec["run"])
    params = {**spec["cfg"], "output_dir": str(out)}
    pm.execute_notebook(
        str(nb),
        str(out / nb.name),
        parameters=params,
        kernel_name=spec.get("kernel"),
        execution_timeout=spec.get("cell_timeout_s"),
        cwd=str(nb.parent),
        progress_bar=False,
        log_output=True,
        request_save_on_cell_execute=True,
        kernel_manager_class=kernel.MANAGER,
    )


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ---- state of a sweep -------------------------------------------------------------------------
def _alive(job: dict, run_dir: Path) -> bool | None:
    """Whether the process of a started run still exists (None: cannot tell).

    Whether a process holds the run's lock (``.sweep.lock``, or the trainer's ``.lock``): true on any
    host that shares the folder, false once the holder is gone however it ended (the kernel drops a
    ``flock`` when its holder exits; a SLURM job still listed while it completes holds none). Only
    where the filesystem has no locks: ``squeue`` for a SLURM job, else unknown."""
    held = [records.held(run_dir, name) for name in (SWEEP_LOCK, records.LOCK)]
    if True in held:
        return True
    if None not in held:
        return False
    if not job.get("slurm_job_id") or not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", str(job["slurm_job_id"]).split("_")[0]],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return job["slurm_job_id"] in out


def _job(run_dir: Path) -> dict | None:
    """``job.json`` of a started run; a corrupted one counts as written by a process now gone."""
    try:
        job = json.loads(read_text(run_dir / JOB))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return job if isinstance(job, dict) else {}


def run_state(spec: dict) -> tuple[str, str | None]:
    """``(state, detail)``: complete | failed (error's last line) | running | stopped | pending."""
    d = Path(spec["out_dir"])
    res = None
    if os.path.lexists(d / records.RESULTS):  # a dangling link or a link loop too: said, never skipped silently
        try:
            res = records.load(d)
        except (records.NotARunRecord, OSError) as e:  # truncated or foreign: said once, never resumed as is
            return "failed", str(e)
    if res is not None and records.reusable(d, spec["cfg"]) is not None:
        return "complete", None
    if os.path.lexists(d / ERROR):
        try:
            return "failed", _last_line(read_text(d / ERROR, errors="replace"))
        except OSError as e:
            return "failed", str(e)
    if res is not None and res.get("status") == "failed":
        return "failed", res.get("error")
    job = _job(d)
    done = sum(1 for row in (res or {}).get("acc") or [] if isinstance(row, list) and row and row[0] is not None)
    if job is not None:
        alive = _alive(job, d)
        where = (
            f"job {job['slurm_job_id']}" if job.get("slurm_job_id") else f"pid {job.get('pid')} on {job.get('host')}"
        )
        if alive is False:
            return "stopped", f"{where} ended after {done} task(s); resubmit to resume from the checkpoint"
        if alive is True or (res or {}).get("status") != "stopped":
            return "running", f"{where}, {done} task(s) done"
    if res is not None and res.get("status") == "stopped":
        return "stopped", f"stopped after {done} task(s); resubmit to resume from the checkpoint"
    return "pending", None


def run_dir(sweep_dir: str | os.PathLike, name: str) -> Path:
    """The folder of run ``name`` in a sweep: ``<sweep_dir>/runs/<name>``, whatever path the sweep
    was written under (a copied or moved sweep folder reads its own runs, never the original's)."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise SweepError(f"run name {name!r} in {Path(sweep_dir) / MANIFEST} is not a path inside the sweep folder")
    return Path(sweep_dir) / "runs" / name


def manifest(sweep_dir: str | os.PathLike) -> dict:
    """``sweep.json`` of a sweep folder, each spec's ``out_dir`` the run's folder inside ``sweep_dir``
    (:func:`run_dir`; the file stores it relative to the sweep folder, older ones an absolute path,
    which is not used)."""
    path = Path(sweep_dir) / MANIFEST
    if not os.path.lexists(path):
        raise SweepError(f"{path} not found: is {sweep_dir} a sweep directory (python -m nscl sweep run FILE)?")
    try:
        doc = json.loads(read_text(path))
    except (OSError, ValueError) as e:
        doc = e
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("specs"), list)
        or not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in doc["specs"])
    ):
        raise SweepError(
            f"{path} is corrupted ({doc if isinstance(doc, Exception) else 'no list of specs'}); "
            f"run 'python -m nscl sweep run FILE -o {sweep_dir}' again to rewrite it (finished runs are kept)"
        )
    doc["specs"] = [{**s, "out_dir": str(run_dir(sweep_dir, s["name"]))} for s in doc["specs"]]
    return doc


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

    from ...analysis import tables

    rows = []
    for spec in manifest(sweep_dir)["specs"]:
        state, detail = run_state(spec)
        d = Path(spec["out_dir"])
        frame = tables.runs_frame([d]) if os.path.lexists(d / records.RESULTS) else pd.DataFrame()
        if len(frame):
            row = frame.iloc[0].to_dict()
        else:
            row = {"run": str(d), "status": None}
            row.update({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in spec["cfg"].items()})
        row = {"name": spec["name"], "state": state, "error": detail if state == "failed" else None, **row}
        rows.append(row)
    df = pd.DataFrame(rows)
    if write:
        atomic_write(Path(sweep_dir) / f"{COLLECTED}.csv", df.to_csv(index=False))
        try:
            import pyarrow  # noqa: F401

            df.to_parquet(Path(sweep_dir) / f"{COLLECTED}.parquet", index=False)
        except ImportError:
            pass
    return df
