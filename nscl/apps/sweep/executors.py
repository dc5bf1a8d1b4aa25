"""Executors of a sweep: SLURM (one submitit job array), a local process pool (``local``: a fresh
interpreter per run; ``fork``: processes forked from this one, for notebooks), or in-process
(``debug``); :func:`run` expands, validates and dispatches only the runs not yet done."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ...experiment import records
from ...experiment.trainer import RunStopped, stop_on_signals
from ...util import read_text
from .spec import EXECUTORS, ROOT, SLURM_KEYS, SweepError, expand, load
from .state import MANIFEST, OUTCOME, SPEC, SUBMITTED, _last_line, run_one, run_state


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
    params["setup"] = [
        f"export OMP_NUM_THREADS={cpus} MKL_NUM_THREADS={cpus} PYTHONUNBUFFERED=1",
        f"cd {shlex_quote(str(ROOT))}",
    ] + list(params.get("setup") or [])
    ex = submitit.SlurmExecutor(folder=str(logs / "%j"), python=python, max_num_timeout=max_num_timeout)
    ex.update_parameters(**params)
    jobs = ex.map_array(run_one, specs)
    records.write_json(
        Path(sw["out"]) / SUBMITTED,
        {
            "executor": "slurm",
            "time": time.time(),
            "array_job_id": jobs[0].job_id.split("_")[0] if jobs else None,
            "jobs": {s["name"]: j.job_id for s, j in zip(specs, jobs)},
        },
    )
    print(
        f"submitted {len(jobs)} runs as SLURM job array {jobs[0].job_id.split('_')[0]} "
        f"(logs: {logs}/<job>_<task>_log.out)",
        flush=True,
    )
    if not wait:
        return [{"name": s["name"], "status": "submitted", "job_id": j.job_id} for s, j in zip(specs, jobs)]
    return _wait_slurm(specs, jobs, timeout_s)


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _squeue(array_ids: set[str]) -> set[str] | None:
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(sorted(array_ids))],
            capture_output=True,
            text=True,
            timeout=30,
        )
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
                    results[i] = _lost(
                        specs[i],
                        f"SLURM job {job.job_id} ended without a result "
                        f"(killed, time limit or out of memory?); log: {log}",
                    )
                    del pending[i]
        if pending and timeout_s is not None and time.time() - t0 > timeout_s:
            raise SweepError(
                f"--timeout of {timeout_s:g} s reached with {len(pending)} SLURM run(s) not finished; they keep "
                f"running (python -m nscl sweep status DIR): " + ", ".join(specs[i]["name"] for i in pending)
            )
        if pending:
            time.sleep(1.0)
    return [results[i] for i in range(len(jobs))]


def _lost(spec: dict, message: str) -> dict:
    """A run whose process ended without a result (killed, time limit, out of memory): state
    ``stopped``, which a resubmission resumes from the checkpoint (no ``error.txt`` is written)."""
    return {"name": spec["name"], "status": "stopped", "error": message, "out_dir": spec["out_dir"]}


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a local sweep: its queue was cancelled and its runs stopped.
    ``results`` holds what each run that had started returned; the others never started."""

    def __init__(self, results: list[dict], not_started: list[str]):
        super().__init__(f"{len(results)} run(s) stopped or finished, {len(not_started)} not started")
        self.results, self.not_started = results, not_started


def _run_local(sw: dict, specs: list[dict], logs: Path, timeout_s: float | None) -> list[dict]:
    """Bounded process pool: each run is ``python -m nscl.apps.sweep SPEC.json`` with its log in ``logs``.

    Ctrl-C or SIGTERM here cancels the queue, passes SIGTERM to the runs in progress (each leaves
    its run ``stopped``, resumable) and raises :class:`SweepInterrupted` once they have exited."""
    ex = sw["executor"]
    n = max(1, int(ex.get("parallel") or 1))
    threads = ex.get("threads") or max(1, (os.cpu_count() or 1) // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    per_run = (specs[0].get("timeout_min") or 0) * 60 or None
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[str, subprocess.Popen] = {}
    stopping = threading.Event()

    def one(spec: dict) -> dict | None:
        if stopping.is_set():
            return None
        out = Path(spec["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        spec_file, outcome = out / SPEC, out / OUTCOME
        records.write_json(spec_file, spec)
        if outcome.exists():
            outcome.unlink()
        log = logs / (spec["name"].replace("/", "__") + ".log")
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                [_python(), "-m", "nscl.apps.sweep", str(spec_file)],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(ROOT),
                start_new_session=True,  # a terminal's Ctrl-C reaches the sweep, which stops its runs itself
            )
            running[spec["name"]] = proc
            if stopping.is_set():  # interrupted while this one was starting
                proc.terminate()
            try:
                proc.wait(timeout=per_run)
            except subprocess.TimeoutExpired:
                proc.terminate()  # SIGTERM: the run records itself as stopped
                proc.wait()
                return _lost(spec, f"time limit of {per_run:.0f} s reached; log: {log}")
            finally:
                running.pop(spec["name"], None)
        try:
            return json.loads(read_text(outcome))
        except (OSError, ValueError):
            return _lost(spec, f"process exited with code {proc.returncode} without a result; log: {log}")

    pool = cf.ThreadPoolExecutor(max_workers=n)
    futures = [pool.submit(one, s) for s in specs]
    out: list[dict] = []
    try:
        with stop_on_signals():
            t0 = time.time()
            for fut in futures:
                left = None if timeout_s is None else max(0.0, timeout_s - (time.time() - t0))
                out.append(fut.result(timeout=left))
    except BaseException as e:
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(running.values()):
            proc.terminate()
        done = []
        for f in futures:  # what the started runs returned once they have exited
            if not f.cancelled() and f.exception() is None and f.result() is not None:
                done.append(f.result())
        if isinstance(e, (KeyboardInterrupt, RunStopped)):
            started = {r["name"] for r in done}
            raise SweepInterrupted(done, [s["name"] for s in specs if s["name"] not in started]) from None
        if isinstance(e, TimeoutError):
            raise SweepError(
                f"--timeout of {timeout_s:g} s reached: {len(done)} of {len(specs)} run(s) ended, the runs in "
                f"progress were stopped (resumable); resubmit the same command to finish the sweep"
            ) from None
        raise
    pool.shutdown()
    return out


def _one_thread_per_process(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _run_forked(sw: dict, specs: list[dict]) -> list[dict]:
    """``parallel`` runs at once in processes forked from this one (``threads`` torch threads each,
    default 1). In a notebook kernel torch and the data are already loaded, so a run costs no
    interpreter start-up, unlike ``local``; each run seeds itself from its config, so the numbers are
    those of the same runs one after the other with the same number of threads."""
    import multiprocessing as mp

    ex = sw["executor"]
    n = max(1, int(ex.get("parallel") or 1))
    ctx = mp.get_context("fork")
    with cf.ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_one_thread_per_process, initargs=(ex.get("threads") or 1,)
    ) as pool:
        return list(pool.map(run_one, specs))


def run(
    path: str | os.PathLike | dict,
    executor: str | None = None,
    out: str | None = None,
    wait: bool = True,
    retry_failed: bool = False,
    dry_run: bool = False,
    timeout_s: float | None = None,
    parallel: int | None = None,
) -> dict:
    """Expand, validate and execute a sweep; returns ``{"sweep_dir", "submitted", "skipped", "results"}``.

    Only runs that are neither complete nor failed (unless ``retry_failed``) are executed; a
    resubmission of a finished sweep therefore executes nothing.
    """
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
        raise SweepError(f"--timeout must be a number of seconds > 0, got {timeout_s!r}")
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
        return {
            "sweep_dir": str(sweep_dir),
            "submitted": [s["name"] for s in todo],
            "skipped": skipped,
            "results": [],
            "specs": specs,
        }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # run folders relative to the sweep folder: a copy of it reads its own runs (state.manifest)
    stored = [{**s, "out_dir": os.path.relpath(s["out_dir"], sweep_dir)} for s in specs]
    records.write_json(sweep_dir / MANIFEST, {"sweep": {k: v for k, v in sw.items()}, "specs": stored})
    logs = sweep_dir / "logs"
    results: list[dict] = []
    if todo:
        if kind == "slurm":
            if not shutil.which("sbatch"):
                raise SweepError(
                    "executor 'slurm' needs SLURM (sbatch not found); "
                    "start a local one with 'sudo .ci/slurm.sh start' or use --executor local"
                )
            results = _submit_slurm(sw, todo, logs, wait, timeout_s)
        elif kind == "local":
            results = _run_local(sw, todo, logs, timeout_s)
        elif kind == "fork":
            results = _run_forked(sw, todo)
        else:
            for i, spec in enumerate(todo):
                results.append(run_one(spec))
                if results[-1]["status"] == "stopped":  # Ctrl-C / SIGTERM: the rest of the queue is cancelled
                    raise SweepInterrupted(results, [s["name"] for s in todo[i + 1 :]])
    return {"sweep_dir": str(sweep_dir), "submitted": [s["name"] for s in todo], "skipped": skipped, "results": results}
