"""Sweeps without SLURM: expansion (stable names, validation), the local executor end to end
(a failing run next to complete ones, collect, idempotent resubmission), notebook runs through
papermill, and a killed run resuming from its checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import conftest
import pytest
import yaml

from nscl.apps import sweep

TINY = {**conftest.TINY, "samples_per_task": 200, "test_samples_per_task": 100, "threads": 1}
BAD_LR = 1.0e30  # valid for the config (a float > 0), NaN loss at run time: this run must fail alone


def write_sweep(tmp_path: Path, name="tiny", run="cli", grid=None, **extra) -> Path:
    doc = {
        "name": name,
        "run": run,
        "params": dict(TINY),
        "out": str(tmp_path / "out"),
        "grid": grid or {"method": ["finetune", "adam_nscl"], "seed": [0, 1]},
        "executor": {"kind": "local", "parallel": 2, "timeout_min": 30},  # a safety net only
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_expand_names_are_stable_and_unique(tmp_path):
    path = write_sweep(tmp_path, grid={"method": ["finetune", "ewc"], "seed": [0, 1, 2], "lr": [0.01, 0.001]})
    specs = sweep.expand(sweep.load(path))
    names = [s["name"] for s in specs]
    assert len(names) == 12 and len(set(names)) == 12
    assert names == [s["name"] for s in sweep.expand(sweep.load(path))]  # same file -> same directories
    assert names[0].startswith("split_digits/finetune/lr0.01_s0-")
    assert all(s["out_dir"] == str(tmp_path / "out" / "runs" / s["name"]) for s in specs)
    assert {s["cfg"]["method"] for s in specs} == {"finetune", "ewc"}
    # a changed fixed parameter gives other directories (never a silent mix of two configurations)
    doc = yaml.safe_load(path.read_text())
    doc["params"]["epochs"] = 2
    path.write_text(yaml.safe_dump(doc))
    assert not set(names) & {s["name"] for s in sweep.expand(sweep.load(path))}
    # ... but quiet/device do not change what a run computes
    doc["params"]["epochs"], doc["params"]["quiet"] = 1, False
    path.write_text(yaml.safe_dump(doc))
    assert names == [s["name"] for s in sweep.expand(sweep.load(path))]


def test_overrides_and_union_of_grids(tmp_path):
    path = write_sweep(
        tmp_path,
        grid=[{"method": ["finetune"], "seed": [0, 1]}, {"method": ["ewc"], "seed": [0], "ewc_lambda": [10.0, 1000.0]}],
        overrides=[{"when": {"method": "ewc", "ewc_lambda": 1000.0}, "set": {"lr": 0.01}}],
    )
    specs = sweep.expand(sweep.load(path))
    got = [(s["cfg"]["method"], s["cfg"]["seed"], s["cfg"]["ewc_lambda"], s["cfg"]["lr"]) for s in specs]
    assert got == [
        ("finetune", 0, 100.0, 0.001),
        ("finetune", 1, 100.0, 0.001),
        ("ewc", 0, 10.0, 0.001),
        ("ewc", 0, 1000.0, 0.01),
    ]


def test_bad_key_fails_before_anything_runs(tmp_path):
    path = write_sweep(tmp_path, grid={"method": ["finetune"], "seed": [0], "learning_rate": [0.1]})
    with pytest.raises(sweep.SweepError, match=r"run split_digits/finetune/.*learning_rate"):
        sweep.run(path, executor="debug")
    assert not (tmp_path / "out").exists()  # validated before any directory was made
    with pytest.raises(sweep.SweepError, match="method.*nonexistent"):
        sweep.run(write_sweep(tmp_path, grid={"method": ["nonexistent"]}), executor="debug")
    path.write_text(path.read_text() + "executer: {kind: local}\n")
    with pytest.raises(sweep.SweepError, match="executer"):
        sweep.load(path)


@pytest.mark.slow
def test_local_executor_failure_collect_and_idempotent_resubmit(tmp_path):
    grid = [
        {"method": ["finetune", "adam_nscl"], "seed": [0]},
        {"method": ["finetune"], "seed": [0], "lr": [BAD_LR]},
    ]
    path = write_sweep(tmp_path, grid=grid)
    res = sweep.run(path, executor="local")
    assert len(res["submitted"]) == 3 and res["skipped"] == []
    by_name = {r["name"]: r for r in res["results"]}
    bad = [n for n in by_name if "lr1e+30" in n]
    assert len(bad) == 1 and by_name[bad[0]]["status"] == "failed"
    assert "NonFiniteLossError" in by_name[bad[0]]["error"]
    assert all(r["status"] == "complete" for n, r in by_name.items() if n != bad[0])

    rows = {r["name"]: r for r in sweep.status(res["sweep_dir"])}
    assert rows[bad[0]]["state"] == "failed" and "loss is nan" in rows[bad[0]]["detail"]
    assert sum(r["state"] == "complete" for r in rows.values()) == 2
    text = sweep.format_status(list(rows.values()), res["sweep_dir"])
    assert "2 complete, 1 failed" in text and bad[0] in text and "NonFiniteLossError" in text
    assert len(list((Path(res["sweep_dir"]) / "logs").glob("*.log"))) == 3  # job logs in the sweep dir

    df = sweep.collect(res["sweep_dir"])
    assert len(df) == 3 and set(df["name"]) == set(by_name)
    assert (Path(res["sweep_dir"]) / "collected.csv").exists()
    ok = df[df["state"] == "complete"]
    assert sorted(zip(ok["method"], ok["seed"])) == [("adam_nscl", 0), ("finetune", 0)]
    assert ok["acc"].between(0, 100).all() and ok["acc"].gt(30).all()  # learned something (3 x ~3 classes)
    for _, row in ok.iterrows():  # each row is that run's own results.json
        r = json.loads((Path(row["run"]) / "results.json").read_text())
        assert r["metrics"]["acc"] == pytest.approx(row["acc"]) and r["params"]["seed"] == row["seed"]
    failed = df[df["state"] == "failed"].iloc[0]
    assert failed["lr"] == BAD_LR and "NonFiniteLossError" in failed["error"]

    stamps = {p: p.stat().st_mtime_ns for p in Path(res["sweep_dir"]).rglob("results.json")}
    again = sweep.run(path, executor="local")
    assert again["submitted"] == [] and again["results"] == []
    assert sorted(s for _, s in again["skipped"]) == ["complete"] * 2 + ["failed"]
    assert stamps == {p: p.stat().st_mtime_ns for p in Path(res["sweep_dir"]).rglob("results.json")}


def write_run_notebook(path: Path) -> Path:
    """A minimal sweep notebook: parameters cell, then one run into output_dir."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("output_dir = 'unused'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "from nscl.apps import notebook as nb\nfrom nscl.experiment import trainer\n"
            "cfg = nb.parameters(globals(), extras={'output_dir': None})\n"
            "res = trainer.run(cfg.config, cfg['output_dir'])\nprint(res['metrics'])"
        ),
    ]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_notebook_run_through_papermill_is_idempotent(tmp_path):
    nb = write_run_notebook(tmp_path / "one_run.ipynb")
    path = write_sweep(tmp_path, run=str(nb), grid={"method": ["finetune"], "seed": [3]}, cell_timeout_s=1800)
    spec = sweep.expand(sweep.load(path))[0]
    out = sweep.run_one(spec)
    assert out["status"] == "complete", out
    d = Path(spec["out_dir"])
    executed = nbformat.read(d / "one_run.ipynb", as_version=4)  # output notebook in the run directory
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and f'output_dir = "{d}"' in injected[0].source and "seed = 3" in injected[0].source
    res = json.loads((d / "results.json").read_text())
    assert res["status"] == "complete" and res["params"]["seed"] == 3
    assert sweep.run_one(spec)["status"] == "skipped"


def test_killed_run_is_stopped_then_resumes_from_checkpoint(tmp_path, monkeypatch):
    from nscl.experiment import trainer

    path = write_sweep(tmp_path, grid={"method": ["adam_nscl"], "seed": [0]})
    spec = sweep.expand(sweep.load(path))[0]
    calls = []
    original = trainer.Trainer.train_task

    def dies_at_task_2(self, t, epochs=None):
        calls.append(t)
        if t == 1 and len(calls) == 2:
            raise KeyboardInterrupt("killed")  # like SIGINT/SIGKILL: not an error of the run
        return original(self, t, epochs)

    monkeypatch.setattr(trainer.Trainer, "train_task", dies_at_task_2)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(path, executor="debug")
    d = Path(spec["out_dir"])
    assert (d / "checkpoint.pt").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job = json.loads((d / "job.json").read_text())
    (d / "job.json").write_text(json.dumps({**job, "pid": dead.pid}))
    state, detail = sweep.run_state(spec)
    assert state == "stopped" and "1 task(s)" in detail

    res = sweep.run(path, executor="debug")
    assert res["submitted"] == [spec["name"]] and res["results"][0]["status"] == "complete"
    assert calls == [0, 1, 1, 2]  # resumed at task 2, task 1 not retrained
    resumed = json.loads((d / "results.json").read_text())
    fresh = trainer.run(dict(spec["cfg"]))  # the same run uninterrupted, in memory
    flat = lambda acc: [v for row in acc for v in row if v is not None]  # noqa: E731
    assert flat(resumed["acc"]) == pytest.approx(flat(fresh["acc"]))
    assert [row.count(None) for row in resumed["acc"]] == [2, 1, 0]


@pytest.mark.slow
def test_cli_status_and_collect(tmp_path):
    path = write_sweep(tmp_path, grid={"method": ["finetune"], "seed": [0]})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    py = [sys.executable, "-m", "nscl", "sweep"]
    r = subprocess.run(py + ["run", str(path), "--executor", "debug"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "1 complete, 0 failed" in r.stdout
    r = subprocess.run(py + ["status", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "1 runs: 1 complete" in r.stdout
    r = subprocess.run(py + ["collect", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "split_digits/finetune/s0-" in r.stdout and "(1 rows)" in r.stdout


# ---- tables that never mislead, errors that are one line, exit codes that tell (issue 10) ----------
def fake_sweep(tmp_path, monkeypatch, write_run, grid, outcome):
    """Run a sweep whose runs write made-up records instead of training: ``outcome(cfg)`` gives
    ``(ACC value, status, tasks done)`` per run (real expansion, manifest, states and collect)."""
    from nscl.apps.sweep import executors

    def fake_run_one(spec):
        value, status, done = outcome(spec["cfg"])
        write_run(spec["out_dir"], value, status=status, done=done, T=3, **spec["cfg"])
        if status == "failed":
            (Path(spec["out_dir"]) / "error.txt").write_text("Traceback ...\nNonFiniteLossError: loss is nan\n")
        return {"name": spec["name"], "status": status, "error": None, "out_dir": spec["out_dir"]}

    monkeypatch.setattr(executors, "run_one", fake_run_one)
    return sweep.run(write_sweep(tmp_path, grid=grid), executor="debug")["sweep_dir"]


def line_of(text: str, *parts: str) -> str:
    """The one line holding every one of ``parts``, whitespace collapsed."""
    (line,) = [" ".join(ln.split()) for ln in text.splitlines() if all(p in ln for p in parts)]
    return line


def test_collect_never_pools_differing_parameters_as_seeds(tmp_path, monkeypatch, write_run, capsys):
    from nscl.apps import cli

    def outcome(cfg):  # lr_projected 1e-3: 80 / 82, 1e-4: 60 / 62; seed 2 failed after one task
        if cfg["seed"] == 2:
            return 99.0, "failed", 1
        return (80.0 if cfg["lr_projected"] == 1e-3 else 60.0) + 2 * cfg["seed"], "complete", None

    d = fake_sweep(
        tmp_path,
        monkeypatch,
        write_run,
        {"method": ["adam_nscl"], "lr_projected": [1e-3, 1e-4], "seed": [0, 1, 2]},
        outcome,
    )
    assert cli.main(["sweep", "collect", d]) == 0
    out = capsys.readouterr().out
    head = line_of(out, "benchmark", "lr_projected", "seeds")
    assert head == "benchmark method lr_projected n seeds ACC BWT plasticity incomplete duplicates"
    # pooled, the four complete runs would read 71.00 ± 11.89 with n=4
    assert (
        line_of(out, "split_digits adam_nscl", "0.0010")
        == "split_digits adam_nscl 0.0010 2 0,1 81.00 ± 1.41 0.00 ± 0.00 81.00 ± 1.41 1 0"
    )
    assert (
        line_of(out, "split_digits adam_nscl", "0.0001")
        == "split_digits adam_nscl 0.0001 2 0,1 61.00 ± 1.41 0.00 ± 0.00 61.00 ± 1.41 1 0"
    )
    failed = [ln.split() for ln in out.splitlines() if "_s2-" in ln and "failed" in ln.split()]
    assert len(failed) == 2 and all(row[1:3] == ["failed", "1/3"] for row in failed)  # state, tasks done
    assert "NonFiniteLossError: loss is nan" in out


def test_resubmitted_sweep_with_failed_runs_exits_nonzero_and_lists_them(tmp_path, capsys):
    from nscl.apps import cli

    path = write_sweep(
        tmp_path, grid=[{"method": ["finetune"], "seed": [0]}, {"method": ["finetune"], "seed": [0], "lr": [BAD_LR]}]
    )
    assert cli.main(["sweep", "run", str(path), "--executor", "debug"]) == 1
    first = capsys.readouterr()
    assert "0 skipped" in first.out
    assert cli.main(["sweep", "run", str(path), "--executor", "debug"]) == 1  # nothing ran, one still failed
    again = capsys.readouterr()
    assert "0 run(s) executed, 2 skipped" in again.out and "1 complete, 1 failed" in again.out
    assert again.err.startswith("error: 1 run(s) of the sweep did not complete:")
    bad = line_of(again.err, "failed ", "lr1e+30")
    assert bad.startswith("failed split_digits/finetune/lr1e+30_s0-") and "NonFiniteLossError" in bad
    assert "--retry-failed" in again.err


@pytest.mark.parametrize(
    "text,needle",
    [
        ("name: [unclosed\n", "is not valid YAML"),
        ("grid: {seed: [0, 1]\nexecutor: {kind: local}\n", "is not valid YAML"),
        ("- a\n- b\n", "a sweep file is a mapping"),
        ("files: params/base.yaml\n", "files must be a list of parameter files"),
        ("params: [epochs, 2]\n", "params must be a mapping"),
        ("grid: 5\n", "grid must be a mapping key: [values]"),
        ("grid: [{seed: [0]}, 3]\n", "grid must be a mapping key: [values]"),
        ("executor: local\n", "executor must be a mapping"),
        ("executor: {kind: cluster}\n", "executor.kind must be one of slurm, local, fork, debug"),
        ("executor: {parallel: two}\n", "executor.parallel must be an integer >= 1, got 'two'"),
        ("executor: {parallel: 0}\n", "executor.parallel must be an integer >= 1, got 0"),
        ("executor: {slurm: {mem_gb: lots}}\n", "executor.slurm.mem_gb must be a number of GB > 0"),
        ("executor: {slurm: {partiton: gpu}}\n", "unknown executor.slurm key(s) partiton; valid: account,"),
        ("cell_timeout_s: soon\n", "cell_timeout_s must be a number of seconds > 0"),
        ("grid: {seed: [0]}\noverrides: [{when: ewc, set: {lr: 0.1}}]\n", "each overrides entry is"),
        ("name: 3\n", "name must be a non-empty string"),
    ],
)
def test_malformed_sweep_file_is_a_one_line_error(text, needle, tmp_path, capsys):
    from nscl.apps import cli

    path = tmp_path / "bad.yaml"
    path.write_text(f"out: {tmp_path / 'out'}\n" + text if not text.startswith("-") else text)
    assert cli.main(["sweep", "run", str(path), "--executor", "debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_slurm_settings_checked_are_the_ones_passed_on():
    from nscl.apps.sweep import spec

    assert set(spec.SLURM_SHAPE) == set(spec.SLURM_KEYS)


def test_sweep_and_suite_layer_files_like_the_command_line(tmp_path):
    """A preset in a later file lies over the earlier files (the CLI's rule). Sweeps once merged the
    files first, so base.yaml's epochs 3 silently replaced the paper recipe's 80."""
    from nscl.apps import suite
    from nscl.experiment import config

    files = ["params/base.yaml", "params/split_cifar100_10.yaml"]
    path = write_sweep(tmp_path, grid={"method": ["finetune", "adam_nscl"], "seed": [1]})
    doc = yaml.safe_load(path.read_text())
    doc.update(files=files, params={"device": "cpu", "seed": 0})
    path.write_text(yaml.safe_dump(doc))
    for spec in sweep.expand(sweep.load(path)):
        cli_cfg = config.resolve(files, {"device": "cpu", "method": spec["cfg"]["method"], "seed": 1})
        assert spec["cfg"] == cli_cfg
        assert (spec["cfg"]["epochs"], spec["cfg"]["batch_size"], spec["cfg"]["covariance"]) == (80, 32, "batch_mean")
    nb_params = suite.notebook_parameters(Path("notebooks/00_quickstart.ipynb"), files, {"seed": 1}, hook=None)
    assert config.resolve(overrides={k: v for k, v in nb_params.items() if k in config.PARAMS}) == config.resolve(
        files, {"seed": 1}
    )


# ---- a sweep folder is read where it is, whatever path wrote it (issue 27, defect 1) ----------------
def two_complete_runs(tmp_path, monkeypatch, write_run) -> Path:
    """A fake sweep of two complete finetune runs (seeds 0, 1) at ACC 70."""
    grid = {"method": ["finetune"], "seed": [0, 1]}
    return Path(fake_sweep(tmp_path, monkeypatch, write_run, grid, lambda c: (70.0, "complete", None)))


def test_a_copied_sweep_reads_its_own_runs_never_the_originals(tmp_path, monkeypatch, write_run):
    import shutil

    from nscl.apps import results_page

    d = two_complete_runs(tmp_path, monkeypatch, write_run)
    copy = tmp_path / "laptop" / "sweep"
    shutil.copytree(d, copy)
    names = [r["name"] for r in sweep.status(copy)]
    # the copy's own folders, not the paths sweep.json was written with
    assert all(Path(r["out_dir"]).is_relative_to(copy) for r in sweep.status(copy))
    # while the original exists, a run removed from the copy is not reported from the original
    shutil.rmtree(copy / "runs" / names[1])
    assert [r["state"] for r in sweep.status(copy)] == ["complete", "pending"]
    df = sweep.collect(copy, write=False)
    assert list(df["state"]) == ["complete", "pending"] and str(copy) in df["run"][0]
    # the original moved away: the copy still reads its complete run
    d.rename(tmp_path / "moved")
    assert [r["state"] for r in sweep.status(copy)] == ["complete", "pending"]
    page = results_page.collect({"copy": copy})
    assert list(page["state"]) == ["complete", "pending"] and page["acc"][0] == 70.0


def test_a_fifo_sweep_json_or_results_never_hangs_status(tmp_path, monkeypatch, write_run):
    from test_run_folders import within

    d = two_complete_runs(tmp_path, monkeypatch, write_run)
    name = sweep.status(d)[0]["name"]
    res = d / "runs" / name / "results.json"
    res.unlink()
    os.mkfifo(res)
    with within(10):
        rows = sweep.status(d)
        with pytest.warns(UserWarning, match="a FIFO"):
            df = sweep.collect(d, write=False)
    assert rows[0]["state"] == "failed" and "is a FIFO" in rows[0]["detail"] and rows[1]["state"] == "complete"
    assert list(df["state"]) == ["failed", "complete"]
    (d / "sweep.json").unlink()
    os.mkfifo(d / "sweep.json")
    with within(10), pytest.raises(sweep.SweepError, match="sweep.json is corrupted .*a FIFO"):
        sweep.status(d)


def test_sweep_timeout_must_be_positive_and_its_expiry_is_one_error_line(tmp_path, capsys, gate, monkeypatch):
    """Issue 27, minor: ``--timeout 0`` / ``-5`` were accepted and an expired one ended in a raw TimeoutError.
    The run waits at the start of its task 2 (``gate``): the timeout expires first on any machine."""
    from nscl.apps import cli

    monkeypatch.setenv("PYTHONPATH", gate(task=1).env["PYTHONPATH"])  # the sweep's run starts with the gate

    path = write_sweep(tmp_path, grid={"method": ["finetune"], "seed": [0]})
    for bad in ("0", "-5", "nan"):
        assert cli.main(["sweep", "run", str(path), "--timeout", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --timeout must be a number of seconds > 0") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # refused before anything ran
    assert cli.main(["sweep", "run", str(path), "--executor", "local", "--timeout", "0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --timeout of 0.2 s reached") and "resubmit" in err and err.count("\n") == 1
    assert sweep.status(tmp_path / "out")[0]["state"] in ("stopped", "pending")


# ---- one configuration, one run (issue 27, minor) -------------------------------------------------------
GRID_ONE_CONFIG = [
    {"method": ["finetune"], "seed": [0], "lr": [0.001, "1e-3"]},  # YAML 1.1 reads 1e-3 as a string
    {"method": ["finetune"], "seed": [0], "bias": [False]},  # the default, given
    {"method": ["finetune"], "seed": [0]},  # the same run, the default left out
]


def test_one_configuration_written_several_ways_is_one_run(tmp_path):
    sw = sweep.load({"name": "one", "params": dict(TINY), "out": str(tmp_path / "out"), "grid": GRID_ONE_CONFIG})
    specs = sweep.expand(sw)
    assert len(specs) == 1 and specs[0]["cfg"]["lr"] == 0.001
    assert specs[0]["name"] == sweep.run_name(specs[0]["cfg"], [], "cli")  # the hash of the resolved parameters


def test_a_run_named_from_the_parameters_as_written_is_still_found(tmp_path, write_run):
    """Runs made when the hash was of the parameters as written (``lr: '1e-3'``) keep their folder: the sweep
    reuses the complete run there (the "same run?" rule compares resolved parameters) instead of retraining."""
    doc = {
        "name": "old",
        "params": dict(TINY),
        "out": str(tmp_path / "out"),
        "grid": {"method": ["finetune"], "lr": ["1e-3"]},
    }
    (spec,) = sweep.expand(sweep.load(doc))
    legacy = sweep.run_name({**TINY, "method": "finetune", "lr": "1e-3"}, [], "cli")  # how it was named then
    assert legacy != spec["name"]
    write_run(tmp_path / "out" / "runs" / legacy, 75.0, **spec["cfg"])
    (spec,) = sweep.expand(sweep.load(doc))
    assert spec["name"] == legacy and sweep.run_state(spec)[0] == "complete"
    res = sweep.run(doc, executor="debug", dry_run=True)
    assert res["submitted"] == [] and res["skipped"] == [(legacy, "complete")]
