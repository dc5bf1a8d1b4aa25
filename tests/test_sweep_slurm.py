"""A sweep on a real single-node SLURM (started by .ci/slurm.sh, which `make test` runs as root):
3 tiny notebook runs submitted as ONE job array through submitit; one of them has a learning rate
that makes the loss NaN and must fail alone, reported with its name; resubmitting runs nothing.

Not skipped when SLURM is missing: the test fails and says how to start it."""

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import conftest
import pytest
import yaml

from nscl.apps import sweep
from test_sweep import write_run_notebook  # the same one-run sweep notebook as the local tests

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "slurm.sh"
NAME = "pytest_slurm"  # the job array test's sweep; the time-limit test's is LIMIT_NAME
JOB_NAME = f"nscl-{NAME}"
LIMIT_NAME = "pytest_slurm_limit"
TINY = {**conftest.TINY, "samples_per_task": 200, "test_samples_per_task": 100, "threads": 1}


@pytest.fixture(scope="module")
def slurm():
    """A SLURM that answers. make test may run the two tests here on two workers at once, so each test
    cancels only its own jobs (:func:`own_jobs`), never the other's."""
    if os.geteuid() == 0:  # idempotent: reuses a running SLURM, resumes a drained node
        import fcntl

        with open(Path(tempfile.gettempdir()) / "nscl-slurm-start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one start at a time: two workers may get here at once
            r = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
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
            "cell_timeout_s": 300,
            "grid": [
                {"method": ["finetune", "adam_nscl"], "seed": [0]},
                {"method": ["finetune"], "seed": [0], "lr": [1.0e30]},
            ],  # valid value, NaN at run time
            "executor": {
                "kind": "slurm",
                "slurm": {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 10, "array_parallelism": 2},
            },
        }
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(doc))
        sweep_dir = tmp_path / "sweep"

        res = sweep.run(path, timeout_s=600)  # executor from the file: slurm
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


def epochs_for(params: dict, seconds: float) -> int:
    """Epochs per task that make a run of ``params`` train for about ``seconds`` on this machine now, so
    that the test neither ends before SLURM's warning on a fast machine nor lasts longer than it must on
    a slow one. Timed on the second task (10 epochs): from there on, a projected update costs more than
    the first task's plain one."""
    import time

    from nscl.experiment import config, trainer

    tr = trainer.Trainer(config.resolve(overrides={**params, "epochs": 10}))
    tr.train_task(0)
    tr.end_task(0)
    t0 = time.perf_counter()
    tr.train_task(1)
    return max(10, int(10 * seconds / params["n_tasks"] / (time.perf_counter() - t0)))


def test_a_one_minute_time_limit_stops_the_run_and_a_resubmission_completes_it(slurm, tmp_path):
    """SLURM's warning before the limit (SIGUSR2, sent by slurmctld's 30-s time-limit check once less than
    signal_delay_s + 30 s are left: with a 1-minute limit and signal_delay_s=10, 20-50 s after the start)
    must leave the run ``stopped`` (no error.txt), and resubmitting the same sweep must resume it from its
    checkpoint to completion. The run is sized to train for about 90 s (10 tasks of about 9 s; epochs timed
    on this machine now): its first task ends before the warning can come, and it still trains when the
    window closes even if the job gets twice the CPU the timing got (make test runs this beside nbval).
    Resumed, not retrained: the tasks finished before the stop keep their accuracy rows and their measured
    timings (wall-clock times a retrained task would never repeat). That a resumed run ends on the numbers
    of an uninterrupted one is held for every method by tests/test_train.py and tests/test_run_folders.py
    (the same trainer code, run here by a SLURM job)."""
    from nscl.experiment import records

    params = {
        **TINY,
        "benchmark": "permuted_fmnist",
        "n_tasks": 10,
        "samples_per_task": 300,
        "hidden": [256, 256],
        "method": "adam_nscl",
    }
    params["epochs"] = epochs_for(params, 90.0)
    doc = {
        "name": LIMIT_NAME,
        "run": "cli",
        "params": params,
        "out": str(tmp_path / "sweep"),
        "grid": {"seed": [0]},
        "executor": {
            "kind": "slurm",
            "slurm": {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 1, "signal_delay_s": 10},
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    with own_jobs(LIMIT_NAME):
        first = sweep.run(path, timeout_s=240)
        (spec,) = sweep.expand(sweep.load(path))
        d = Path(spec["out_dir"])
        assert first["results"][0]["status"] == "stopped" and "SIGUSR2" in first["results"][0]["error"]
        assert sweep.run_state(spec)[0] == "stopped" and not (d / records.ERROR).exists()
        stopped = records.load(d)
        k = stopped["metrics"]["tasks_done"]
        assert stopped["status"] == "stopped" and 0 < k < 10, k
        doc["executor"]["slurm"]["timeout_min"] = 5  # the same runs; a limit the rest fits in
        path.write_text(yaml.safe_dump(doc))
        second = sweep.run(path, timeout_s=240)
        assert second["submitted"] == [spec["name"]] and second["results"][0]["status"] == "complete"
        done = records.load(d)
        assert done["status"] == "complete" and done["metrics"]["tasks_done"] == 10
        assert done["acc"][:k] == stopped["acc"][:k]
        assert done["timing"]["per_task"][:k] == stopped["timing"]["per_task"][:k]
