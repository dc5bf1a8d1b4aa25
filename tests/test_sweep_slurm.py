"""Sweeps on a real single-node SLURM (started by .ci/slurm.sh when the tests run as root):
3 tiny notebook runs submitted as ONE job array through submitit; one of them has a learning rate
that makes the loss NaN and must fail alone, reported with its name; resubmitting runs nothing.
SLURM's time-limit warning (SIGUSR2) stops a run, and resubmitting completes it: delivered by the test
to a run waiting at a known point (``make test``), and by SLURM's own clock (``make slurm-timelimit-check``).

Not skipped when SLURM is missing: the test fails and says how to start it."""

import contextlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import conftest
import pytest
import yaml

from nscl.apps import sweep
from test_sweep import write_run_notebook  # the same one-run sweep notebook as the local tests

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "slurm.sh"
NAME = "pytest_slurm"  # the job array test's sweep; the stop tests' are STOP_NAME and LIMIT_NAME
JOB_NAME = f"nscl-{NAME}"
STOP_NAME = "pytest_slurm_stop"
LIMIT_NAME = "pytest_slurm_limit"
TINY = {**conftest.TINY, "samples_per_task": 200, "test_samples_per_task": 100, "threads": 1}


@pytest.fixture(scope="module")
def slurm():
    """A SLURM that answers, started here when root (make test starts it in the background as soon as
    the packages are in; this waits for that start). make test may run the tests here on several workers
    at once, so each test cancels only its own jobs (:func:`own_jobs`), never another's."""
    if os.geteuid() == 0:  # idempotent, one at a time: reuses a running SLURM, resumes a drained node
        r = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            pytest.fail(f"{SCRIPT} start failed:\n{r.stdout}\n{r.stderr}")
    r = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not shutil.which("sbatch"):
        pytest.fail(
            "this test needs a real SLURM and none is running; not root, so it cannot be "
            f"installed/started here: run 'sudo {SCRIPT} start' (CI runs as root and starts it)"
        )


@contextlib.contextmanager
def own_jobs(sweep_name: str):
    """Cancel the jobs of this sweep left by an earlier interrupted run of the test, and this run's at the end."""
    cancel = ["scancel", "--name", f"nscl-{sweep_name}"]
    subprocess.run(cancel, capture_output=True, timeout=60)
    try:
        yield
    finally:
        subprocess.run(cancel, capture_output=True, timeout=60)


def _queued() -> list[str]:
    r = subprocess.run(["squeue", "-h", "-r", "-n", JOB_NAME, "-o", "%i"], capture_output=True, text=True, timeout=60)
    return r.stdout.split()


def test_slurm_job_array_sweep(slurm, tmp_path):
    with own_jobs(NAME):
        nb = write_run_notebook(tmp_path / "one_run.ipynb")
        doc = {
            "name": NAME,
            "run": str(nb),
            "params": TINY,
            "out": str(tmp_path / "sweep"),
            "cell_timeout_s": 1800,  # the limits here are safety nets only
            "grid": [
                {"method": ["finetune", "adam_nscl"], "seed": [0]},
                {"method": ["finetune"], "seed": [0], "lr": [1.0e30]},
            ],  # valid value, NaN at run time
            "executor": {
                "kind": "slurm",
                "slurm": {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 30, "array_parallelism": 2},
            },
        }
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(doc))
        sweep_dir = tmp_path / "sweep"

        res = sweep.run(path, timeout_s=1800)  # executor from the file: slurm
        assert len(res["submitted"]) == 3
        sub = json.loads((sweep_dir / "submitted.json").read_text())
        array = sub["array_job_id"]
        assert sub["executor"] == "slurm" and sorted(sub["jobs"].values()) == [f"{array}_{i}" for i in range(3)]
        text = (sweep_dir / "logs" / array / f"{array}_submission.sh").read_text()  # one sbatch script
        assert "#SBATCH --array=0-2%2" in text and f"#SBATCH --job-name={JOB_NAME}" in text

        rows = {r["name"]: r for r in sweep.status(sweep_dir)}
        bad = [n for n in rows if "lr1e+30" in n]
        assert len(bad) == 1
        assert rows[bad[0]]["state"] == "failed" and "NonFiniteLossError" in rows[bad[0]]["detail"]
        failed_results = [r for r in res["results"] if r["status"] == "failed"]
        assert [r["name"] for r in failed_results] == bad and "loss is nan" in failed_results[0]["error"]
        good = [n for n in rows if n not in bad]
        assert all(rows[n]["state"] == "complete" for n in good)
        for n in good:
            d = sweep_dir / "runs" / n
            r = json.loads((d / "results.json").read_text())
            job = json.loads((d / "job.json").read_text())
            assert r["status"] == "complete" and job["slurm_job_id"] == sub["jobs"][n]  # ran as its array task
            assert r["env"]["slurm_job_id"] is not None  # inside a SLURM job (the notebook's kernel too)
            assert (d / "one_run.ipynb").exists()  # papermill's output notebook in the run directory
            assert list((sweep_dir / "logs" / sub["jobs"][n]).glob("*_log.out"))  # job logs in the sweep dir

        df = sweep.collect(sweep_dir)
        assert len(df) == 3 and set(df["name"]) == set(rows)
        ok = df[df["state"] == "complete"]
        assert sorted(zip(ok["method"], ok["seed"])) == [("adam_nscl", 0), ("finetune", 0)]
        assert ok["acc"].gt(30).all() and ok["acc"].le(100).all()
        assert df.set_index("name").loc[bad[0], "state"] == "failed"

        stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("results.json")}
        again = sweep.run(path, timeout_s=60)
        assert again["submitted"] == [] and len(again["skipped"]) == 3
        assert json.loads((sweep_dir / "submitted.json").read_text()) == sub  # no new job array
        assert {j.split("_")[0] for j in _queued()} <= {array}  # (a task may still be COMPLETING)
        assert stamps == {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("results.json")}


def limit_sweep(tmp_path, gate, name: str, slurm_opts: dict) -> tuple[Path, dict, dict, conftest.Gate]:
    """A one-run sweep on SLURM whose run (3 tasks, null-space Adam, so the projection state is checkpointed)
    waits at the start of task 2 (:func:`conftest.gate`) until a signal stops it: (sweep file, doc, spec, gate)."""
    g = gate(task=1)
    doc = {
        "name": name,
        "run": "cli",
        "params": {**TINY, "method": "adam_nscl"},
        "out": str(tmp_path / "sweep"),
        "grid": {"seed": [0]},
        "executor": {"kind": "slurm", "slurm": {"cpus_per_task": 1, "mem_gb": 1, "setup": g.setup, **slurm_opts}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    (spec,) = sweep.expand(sweep.load(path))
    return path, doc, spec, g


def check_stopped_then_resumed(path: Path, doc: dict, spec: dict, first: dict) -> None:
    """The first submission left the run ``stopped`` by SIGUSR2 after exactly task 1 (no error.txt); the
    same runs resubmitted (with a time limit of 30 min: the rest fits in it on any machine) resume from
    the checkpoint to the numbers of an uninterrupted run, the finished task's accuracy row and measured
    timing carried over (a retrained task would never repeat a wall-clock time)."""
    from nscl.experiment import records, trainer

    d = Path(spec["out_dir"])
    assert first["results"][0]["status"] == "stopped" and "SIGUSR2" in first["results"][0]["error"], first
    assert sweep.run_state(spec)[0] == "stopped" and not (d / records.ERROR).exists()
    stopped = records.load(d)
    assert stopped["status"] == "stopped" and stopped["metrics"]["tasks_done"] == 1
    assert (d / records.CHECKPOINT).exists()
    doc["executor"]["slurm"]["timeout_min"] = 30
    path.write_text(yaml.safe_dump(doc))
    second = sweep.run(path, timeout_s=900)  # the gate was reached once: this run passes through it
    assert second["submitted"] == [spec["name"]] and second["results"][0]["status"] == "complete", second
    done = records.load(d)
    assert done["status"] == "complete" and done["metrics"]["tasks_done"] == 3
    assert done["acc"][0] == stopped["acc"][0] and done["timing"]["per_task"][:1] == stopped["timing"]["per_task"]
    whole = trainer.run(dict(spec["cfg"]))  # the same run uninterrupted, in memory, one thread
    assert done["acc"] == whole["acc"]


def test_slurms_warning_signal_stops_the_run_and_a_resubmission_completes_it(slurm, tmp_path, gate):
    """What SLURM sends before a time limit (SIGUSR2 to the job's processes: ``--signal=USR2@delay``,
    which submitit asks for) delivered by the test itself (``scancel --signal=USR2``) while the job
    waits at a known point, the start of task 2: deterministic, whatever the load. SLURM's own clock
    sending it is the slower check ``make slurm-timelimit-check`` (the test below)."""
    path, doc, spec, g = limit_sweep(tmp_path, gate, STOP_NAME, {"timeout_min": 30})
    with own_jobs(STOP_NAME), ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(sweep.run, path, timeout_s=900)  # submits, then waits for the result
        g.wait()
        job = json.loads((Path(doc["out"]) / "submitted.json").read_text())["jobs"][spec["name"]]
        subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True, timeout=60)
        first = waiting.result()
        check_stopped_then_resumed(path, doc, spec, first)


@pytest.mark.slurm_timelimit
def test_a_one_minute_time_limit_stops_the_run_and_a_resubmission_completes_it(slurm, tmp_path, gate):
    """SLURM's real time-limit warning: slurmctld's time-limit check (every 30 s) sends SIGUSR2 once less
    than signal_delay_s + 30 s are left, so with a 1-minute limit and signal_delay_s=10 about 20-50 s after
    the start. The run waits at the start of task 2 until a signal stops it, so the warning always finds it
    running: it must leave it ``stopped``, and a resubmission completes it. Not in ``make test`` (about a
    minute of waiting for SLURM's clock): ``make slurm-timelimit-check``."""
    path, doc, spec, g = limit_sweep(tmp_path, gate, LIMIT_NAME, {"timeout_min": 1, "signal_delay_s": 10})
    with own_jobs(LIMIT_NAME):
        first = sweep.run(path, timeout_s=900)
        assert g.reached.exists()  # it was stopped at the gate, by SLURM's warning
        check_stopped_then_resumed(path, doc, spec, first)
