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
from ...util import atomic_write
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

    Idempotent: a complete run is skipped; a killed one resumes from its checkpoint. Never raises
    for a failure of the run itself: the traceback goes to ``error.txt`` in the run directory and
    the returned dict has ``status="failed"`` and the error's last line. The run directory is locked
    (:func:`nscl.experiment.records.lock`, ``.sweep.lock``) for the whole run: a run already in
    progress elsewhere is reported as failed here and its folder is left untouched.
    """
    out = Path(spec["out_dir"])
    t0 = time.time()
    try:
        with records.lock(out, SWEEP_LOCK):
            return _run_locked(spec, out, t0)
    except records.RunDirError as e:  # held by another process: not ours to touch
        return {
            "name": spec["name"],
            "status": "failed",
            "error": str(e),
            "out_dir": str(out),
            "seconds": time.time() - t0,
        }


def _run_locked(spec: dict, out: Path, t0: float) -> dict:
    if is_complete(spec):
        return {"name": spec["name"], "status": "skipped", "error": None, "out_dir": str(out), "seconds": 0.0}
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
        status, error = "complete", None
    except Exception as e:  # noqa: BLE001 - any failure of this run is recorded, never propagated
        text = traceback.format_exc()
        ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
        if ename:  # papermill: the notebook's own exception, not the wrapper's
            text += f"\n{ename}: {evalue}\n"
        atomic_write(out / ERROR, text)
        status, error = "failed", _last_line(text)
    return {"name": spec["name"], "status": status, "error": error, "out_dir": str(out), "seconds": time.time() - t0}


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
def _alive(job: dict) -> bool | None:
    """Whether the process of a started run still exists (None: cannot tell)."""
    if job.get("slurm_job_id"):
        if not shutil.which("squeue"):
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
    if (d / records.RESULTS).exists():
        try:
            res = records.load(d)
        except (ValueError, OSError):
            res = None
    if res is not None and records.reusable(d, spec["cfg"]) is not None:
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

    from ...analysis import tables

    rows = []
    for spec in manifest(sweep_dir)["specs"]:
        state, detail = run_state(spec)
        d = Path(spec["out_dir"])
        frame = tables.runs_frame([d]) if (d / records.RESULTS).exists() else pd.DataFrame()
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
