"""Run folders, files and signals under attack (issue 19, "Trust, round 2"): each test is one case a
hostile but realistic user tried, and asserts what the project now guarantees (docs/guarantees_trust.md)."""

from __future__ import annotations

import errno
import json
import os
import signal
import tracemalloc
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from nscl import util
from nscl.analysis import tables
from nscl.apps import cli, sweep
from nscl.apps import notebook as nb
from nscl.apps.sweep import state
from nscl.experiment import config, records, trainer

ROOT = Path(__file__).resolve().parents[1]


def small(tiny_cfg, **overrides):
    return tiny_cfg(**{"n_tasks": 3, "hidden": [16, 16], "samples_per_task": 120, **overrides})


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- 1. lock files: never followed, never truncated, never someone else's ---------------------------
@pytest.mark.parametrize("name", [records.LOCK, state.SWEEP_LOCK])
@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_a_planted_lock_file_is_refused_and_its_target_stays_intact(tmp_path, name, plant):
    victim, run = tmp_path / "victim.txt", tmp_path / "run"
    victim.write_text("precious")
    run.mkdir()
    if plant == "symlink":
        (run / name).symlink_to(victim)
    elif plant == "hardlink":
        os.link(victim, run / name)
    else:
        os.mkfifo(run / name)  # opening it for writing would block forever
    with pytest.raises(records.RunDirError, match="not a lock file nscl wrote"):
        with records.lock(run, name):
            pass
    assert victim.read_text() == "precious" and (run / name).exists()


def test_the_cli_refuses_a_planted_lock_link_with_one_line(tmp_path, tiny_cfg, capsys):
    victim, run = tmp_path / "victim.txt", tmp_path / "run"
    victim.write_text("precious")
    run.mkdir()
    (run / records.LOCK).symlink_to(victim)
    args = ["run", "-p", "benchmark=split_digits", "-p", "n_tasks=2", "-p", "samples_per_task=60", "-q"]
    assert cli.main([*args, "-o", str(run)]) == 2
    assert "symbolic link" in one_line_error(capsys)
    assert victim.read_text() == "precious" and not (run / records.RESULTS).exists()


def test_a_stale_lock_file_is_replaced_by_ours_and_removed_after(tmp_path):
    (tmp_path / records.LOCK).write_text("left by a killed holder")
    with records.lock(tmp_path):
        info = json.loads((tmp_path / records.LOCK).read_text())
        assert info["pid"] == os.getpid()
    assert not (tmp_path / records.LOCK).exists()


# ---- 2. signals and time limits leave a run stopped, and resumable ------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = config.resolve(
        overrides=dict(
            benchmark="split_digits",
            n_tasks=3,
            hidden=[16, 16],
            samples_per_task=120,
            epochs=1,
            batch_size=32,
            device="cpu",
            quiet=True,
            nullspace_rule="a_min",
        )
    )
    return cfg, trainer.run(cfg, tmp_path_factory.mktemp("whole"))


def signal_after_first_task(monkeypatch, signum: int) -> None:
    """Deliver ``signum`` to this process right after task 1's checkpoint is written. ``raise_signal``
    runs the handler before it returns, in this thread: the stop comes at exactly this point."""
    write = trainer.Trainer._checkpoint

    def checkpoint_then_signal(self, t):
        write(self, t)
        if t == 0:
            signal.raise_signal(signum)

    monkeypatch.setattr(trainer.Trainer, "_checkpoint", checkpoint_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT])
def test_a_signal_leaves_the_run_stopped_and_the_rerun_gives_the_uninterrupted_numbers(
    tmp_path, monkeypatch, uninterrupted, signum, ctrl_c_raises
):
    cfg, whole = uninterrupted
    with monkeypatch.context() as m:
        signal_after_first_task(m, signum)
        with pytest.raises((KeyboardInterrupt, trainer.RunStopped)):
            trainer.run(cfg, tmp_path)
    res = records.load(tmp_path)
    assert res["status"] == "stopped" and res["metrics"]["tasks_done"] == 1
    assert not (tmp_path / records.ERROR).exists() and (tmp_path / records.CHECKPOINT).exists()
    assert not (tmp_path / records.LOCK).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    again = trainer.run(cfg, tmp_path)
    assert again["status"] == "complete" and again["acc"] == whole["acc"]


def test_the_cli_says_stopped_and_exits_with_the_signal(tmp_path, monkeypatch, capsys):
    args = ["run", "-p", "benchmark=split_digits", "-p", "n_tasks=2", "-p", "samples_per_task=60"]
    args += ["-p", "hidden=[16]", "-p", "device=cpu", "-q", "-o", str(tmp_path)]
    with monkeypatch.context() as m:
        signal_after_first_task(m, signal.SIGTERM)
        assert cli.main(args) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped (stopped by SIGTERM) after 1 of 2 task(s); the same command resumes it" in err
    assert cli.main(args) == 0 and records.load(tmp_path)["status"] == "complete"


def submitit_style_handler(signum, frame):
    """What submitit installs for SLURM's warning signal (USR2) before it calls the job's function."""
    from submitit.core.utils import UncompletedJobError

    raise UncompletedJobError("Job not requeued because: timed-out and not checkpointable.")


def test_a_slurm_time_limit_warning_stops_a_sweep_run_and_a_plain_resubmission_resumes_it(
    tmp_path, monkeypatch, uninterrupted
):
    cfg, whole = uninterrupted
    doc = {"name": "limit", "params": {k: cfg[k] for k in ("benchmark", "n_tasks", "hidden", "samples_per_task")}}
    doc["params"].update(epochs=1, batch_size=32, device="cpu", quiet=True, nullspace_rule="a_min")
    doc.update(out=str(tmp_path / "sweep"), grid={"method": ["adam_nscl"]}, executor={"kind": "debug"})
    (spec,) = sweep.expand(sweep.load(doc))
    previous = signal.signal(signal.SIGUSR2, submitit_style_handler)
    try:
        with monkeypatch.context() as m:
            signal_after_first_task(m, signal.SIGUSR2)
            out = sweep.run_one(spec)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert out["status"] == "stopped" and "SIGUSR2" in out["error"]
    d = Path(spec["out_dir"])
    assert not (d / records.ERROR).exists() and records.load(d)["status"] == "stopped"
    assert sweep.run_state(spec)[0] == "stopped"
    res = sweep.run(doc)  # the same sweep again, no --retry-failed
    assert res["submitted"] == [spec["name"]] and res["results"][0]["status"] == "complete"
    assert records.load(d)["acc"] == whole["acc"]


@pytest.mark.slow
def test_ctrl_c_on_a_local_sweep_cancels_the_queue_and_stops_its_runs(
    tmp_path, capsys, ctrl_c_raises, gate, monkeypatch
):
    """Ctrl-C while the first of three runs trains: the sweep stops it (SIGTERM), starts none of the others
    and says so. The run waits at the start of its task 2 (``gate``) until then: a stop at a known point."""
    g = gate(task=1)
    monkeypatch.setenv("PYTHONPATH", g.env["PYTHONPATH"])  # the sweep's runs start with the gate
    doc = {
        "name": "ctrlc",
        "params": {"benchmark": "split_digits", "n_tasks": 3, "epochs": 1, "hidden": [32], "device": "cpu"},
        "grid": {"seed": [0, 1, 2]},
        "out": str(tmp_path / "sweep"),
        "executor": {"kind": "local", "parallel": 1, "threads": 1},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(doc))
    jobs = lambda: list((tmp_path / "sweep" / "runs").rglob(state.JOB))  # noqa: E731
    started = []

    def ctrl_c_once_the_first_run_waits():  # what a terminal's Ctrl-C does to the sweep process
        try:
            started.append(g.wait())
        finally:  # also when the wait failed: the sweep must not wait for a run that never stops
            os.kill(os.getpid(), signal.SIGINT)

    import threading

    threading.Thread(target=ctrl_c_once_the_first_run_waits, daemon=True).start()
    assert cli.main(["sweep", "run", str(tmp_path / "sweep.yaml")]) == 130
    err = capsys.readouterr().err
    assert started, "no run reached the gate"
    assert "interrupted" in err and "STOPPED" in err and "not started: 2 run(s)" in err
    with pytest.raises(ProcessLookupError):
        os.kill(started[0], 0)  # the run in progress was stopped, not left behind
    assert len(jobs()) == 1 and json.loads(jobs()[0].read_text())["pid"] == started[0]  # none started after
    assert sorted(r["state"] for r in sweep.status(tmp_path / "sweep")) == ["pending", "pending", "stopped"]
    assert records.load(jobs()[0].parent)["metrics"]["tasks_done"] == 1  # stopped where it waited


# ---- 4. a results.json that is not a run record: one warning naming it, never a crash ------------------
@pytest.fixture
def odd_tree(tmp_path, write_run):
    write_run(tmp_path / "good", 80.0)
    bad = {"list": "[]", "null": "null", "truncated": '{"schema": "nscl.results/1", "sta', "other": '{"schema": "x"}'}
    for name, text in bad.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / records.RESULTS).write_text(text)
    records.write_json(tmp_path / records.RESULTS, {"schema": nb.NOTEBOOK_RESULTS_SCHEMA})
    return tmp_path, [tmp_path / name / records.RESULTS for name in bad]


def assert_warned_once_each(caught, files):
    messages = [str(w.message) for w in caught]
    for f in files:
        assert sum(str(f) in msg for msg in messages) == 1, (f, messages)


@pytest.mark.parametrize("seeds", [False, True])
def test_show_skips_odd_records_with_one_warning_each(odd_tree, capsys, seeds):
    root, bad = odd_tree
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["show", str(root), *(["--seeds"] if seeds else [])]) == 0
    assert_warned_once_each(caught, bad)
    assert len(caught) == len(bad)  # the notebook-level record (nscl's own) is passed over without a word
    out = capsys.readouterr().out
    assert "80.00" in out and ("all runs" in out if seeds else "good" in out)


def test_tables_and_notebook_loaders_skip_odd_records(odd_tree):
    root, bad = odd_tree
    for load in (records.find_runs, tables.runs_frame, tables.runs_table, nb.require_runs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = load([str(root)])
        assert len(got) == 1, load
        assert_warned_once_each(caught, bad)


def test_a_sweep_reports_a_truncated_record_as_such_not_as_stopped(tmp_path, capsys):
    doc = {"name": "odd", "params": {"benchmark": "split_digits"}, "grid": {"seed": [0]}, "out": str(tmp_path)}
    (spec,) = sweep.expand(sweep.load(doc))
    d = Path(spec["out_dir"])
    d.mkdir(parents=True)
    (d / records.RESULTS).write_text('{"schema": "nscl.results/1", "sta')
    (d / state.JOB).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0.0}))
    records.write_json(tmp_path / state.MANIFEST, {"sweep": doc, "specs": [spec]})
    st, detail = sweep.run_state(spec)
    assert st == "failed" and str(d / records.RESULTS) in detail and "resume" not in detail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = sweep.collect(tmp_path, write=False)
    assert list(df["state"]) == ["failed"]
    assert_warned_once_each(caught, [d / records.RESULTS])


def test_a_notebook_analysis_leaves_out_partial_runs_and_says_so(tmp_path, write_run, capsys):
    write_run(tmp_path / "done", 80.0)
    write_run(tmp_path / "killed", 100.0, status="running", done=1)
    write_run(tmp_path / "failed", 50.0, status="failed", done=2, error="boom")
    assert nb.require_runs([str(tmp_path)]) == [(tmp_path / "done").resolve()]
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "left out 2 run(s)" in out
    assert "killed (running, 1/5 tasks)" in out and "failed (failed, 2/5 tasks)" in out
    assert len(nb.require_runs([str(tmp_path)], complete=False)) == 3


# ---- 5. YAML: bounded values, lazy messages, duplicate keys ---------------------------------------
def alias_bomb(levels: int) -> str:
    """One value of 10**levels items written in a few hundred bytes (nested YAML aliases)."""
    items = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    items += [f"&l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]" for k in range(1, levels)]
    return "hidden: [" + ", ".join(items) + "]\n"


@pytest.mark.parametrize("kind", ["parameter file", "sweep file", "override"])
def test_an_alias_bomb_is_rejected_fast_in_bounded_memory(tmp_path, kind, capsys):
    bomb = alias_bomb(7)  # 10**7 items: an eager repr of it alone takes seconds and > 50 MB
    assert len(bomb) < 600
    path = tmp_path / "bomb.yaml"
    if kind == "sweep file":
        path.write_text(f"name: bomb\ngrid: {{seed: [0]}}\nparams:\n  {bomb}")
        args = ["sweep", "run", str(path), "--dry-run"]
    elif kind == "parameter file":
        path.write_text(bomb)
        args = ["run", "-f", str(path), "-o", str(tmp_path / "run")]
    else:
        args = ["run", "-p", bomb.strip().replace(": ", "=", 1), "-o", str(tmp_path / "run")]
    tracemalloc.start()
    try:
        rc = cli.main(args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 2
    assert "an alias bomb?" in one_line_error(capsys)
    assert peak < 20e6  # refused before any expansion (memory, not a clock, says so)


def test_a_wrong_type_message_shows_a_bounded_value():
    with pytest.raises(config.ConfigError) as e:
        config.resolve(overrides={"hidden": ["x"] * 50_000})
    assert len(str(e.value)) < 600 and "..." in str(e.value)


def test_a_key_given_twice_is_an_error_naming_it(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("epochs: 1\nlr: 0.1\nepochs: 5\n")
    assert cli.main(["run", "-f", str(tmp_path / "p.yaml"), "-o", str(tmp_path / "run")]) == 2
    assert "duplicate key 'epochs'" in one_line_error(capsys)


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    (tmp_path / "p.yaml").write_text("base: &b {epochs: 1}\nrun:\n  <<: *b\n  epochs: 2\n")
    assert config.read_mapping(tmp_path / "p.yaml")["run"] == {"epochs": 2}


# ---- 6. liveness by the run's lock where its pid cannot be checked --------------------------------
def stopped_elsewhere(tmp_path):
    doc = {"name": "live", "params": {"benchmark": "split_digits", "n_tasks": 2, "samples_per_task": 60,
                                      "hidden": [16], "device": "cpu", "quiet": True},
           "grid": {"seed": [0]}, "out": str(tmp_path / "sweep"), "executor": {"kind": "debug"}}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(doc))
    (spec,) = sweep.expand(sweep.load(doc))
    d = Path(spec["out_dir"])
    d.mkdir(parents=True)
    (d / state.JOB).write_text(json.dumps({"host": "another-node", "pid": 4242, "started": 0.0}))
    return doc, spec, d


def test_a_run_recorded_on_another_host_is_stopped_once_its_lock_is_free(tmp_path):
    doc, spec, d = stopped_elsewhere(tmp_path)
    with records.lock(d, state.SWEEP_LOCK):  # its holder still at work (on any host sharing the folder)
        assert sweep.run_state(spec)[0] == "running"
    assert sweep.run_state(spec)[0] == "stopped"
    res = sweep.run(doc)
    assert res["submitted"] == [spec["name"]] and res["results"][0]["status"] == "complete"


def test_sweep_run_exits_nonzero_while_a_run_is_in_use_elsewhere(tmp_path, capsys):
    doc, spec, d = stopped_elsewhere(tmp_path)
    with records.lock(d, state.SWEEP_LOCK):
        assert cli.main(["sweep", "run", str(tmp_path / "sweep.yaml")]) == 1
    captured = capsys.readouterr()
    assert "running" in captured.out and "did not complete" in captured.err


# ---- 7, 9, 12. the output folder, read-only reuse, disk full ---------------------------------------
RUN = ["run", "-p", "benchmark=split_digits", "-p", "n_tasks=2", "-p", "samples_per_task=60", "-q"]


@pytest.mark.parametrize(
    "out,needle",
    [
        ("", "-o is empty"),
        ("a_file", "is a file, not a directory"),
        ("/proc/nscl_run", "cannot create the run directory"),
    ],
)
def test_a_bad_output_folder_is_one_line(tmp_path, monkeypatch, capsys, out, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    assert cli.main([*RUN, "-o", out]) == 2
    assert needle in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written into the cwd


def test_a_complete_run_is_reused_without_writing_a_lock(tmp_path, monkeypatch, uninterrupted):
    cfg, whole = uninterrupted
    records.write_params(tmp_path, cfg)
    records.write_json(tmp_path / records.RESULTS, {k: v for k, v in whole.items() if k != "_dir"})

    def no_writes(*a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(records, "lock", no_writes)  # storage that takes no lock file
    tr = trainer.Trainer(cfg, tmp_path)
    assert tr.fit()["acc"] == whole["acc"] and tr.reused
    spec = {"name": "r", "out_dir": str(tmp_path), "cfg": cfg, "run": "cli"}
    assert sweep.run_one(spec)["status"] == "skipped"


def test_disk_full_names_the_file(tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(util.os, "fsync", full)
    assert cli.main([*RUN, "-o", str(tmp_path / "run")]) == 1
    err = one_line_error(capsys)
    assert "No space left on device" in err and str(tmp_path / "run") in err


# ---- 10. odd checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,needle",
    [(b"", "not a readable nscl checkpoint"), (os.urandom(4096), "not a readable nscl checkpoint"),
     ("truncated", "not a readable nscl checkpoint"), ("a list", "not an nscl checkpoint")],
)  # fmt: skip
def test_an_odd_checkpoint_is_one_line_never_code(tmp_path, capsys, content, needle):
    import io

    buf = io.BytesIO()
    torch.save([1, 2] if content == "a list" else {"model": torch.ones(1000)}, buf)
    if content == "truncated":
        content = buf.getvalue()[:400]
    elif content == "a list":
        content = buf.getvalue()
    (tmp_path / records.CHECKPOINT).write_bytes(content)
    assert cli.main([*RUN, "-o", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert needle in err and "would run code" not in err


def test_a_crafted_task_index_is_an_error_not_a_run_left_running(tmp_path, tiny_cfg, capsys):
    cfg = small(tiny_cfg, n_tasks=2, samples_per_task=60)
    trainer.Trainer(cfg, tmp_path).fit(until=1)
    state_ = torch.load(tmp_path / records.CHECKPOINT, weights_only=True)
    state_["task"] = 99
    torch.save(state_, tmp_path / records.CHECKPOINT)
    with pytest.raises(records.RunDirError, match="task 99 of a 2-task stream"):
        trainer.run(cfg, tmp_path)
    assert records.load(tmp_path)["status"] == "running"  # untouched: still the first task's record


# ---- 11. the umask is read once, never set --------------------------------------------------------
def test_atomic_writes_never_touch_the_process_umask(tmp_path, monkeypatch):
    def forbidden(mask):
        raise AssertionError("os.umask called: another thread would see this value")

    monkeypatch.setattr(util.os, "umask", forbidden)
    util.atomic_write(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~util.UMASK


def test_the_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert util._read_umask() == 0o027 and os.umask(0o027) == 0o027
    finally:
        os.umask(old)


# ---- 12. one-line errors where a traceback or silence was ------------------------------------------
@pytest.mark.parametrize(
    "param,needle",
    [
        ("device=tpu", "'device' must be auto, cpu, cuda, cuda:N or mps"),
        ("n_tasks=1000", "'n_tasks' must be in [1, 200]"),
    ],
)
def test_device_typos_and_huge_task_counts_are_one_line(tmp_path, capsys, param, needle):
    assert cli.main(["run", "-p", param, "-o", str(tmp_path / "run")]) == 2
    assert needle in one_line_error(capsys)


@pytest.mark.parametrize("kind", ["folder", "latin-1"])
def test_a_parameter_file_that_is_no_text_file_is_one_line(tmp_path, capsys, kind):
    path = tmp_path / "p.yaml"
    path.mkdir() if kind == "folder" else path.write_bytes("epochs: 1  # café\n".encode("latin-1"))
    assert cli.main(["run", "-f", str(path), "-o", str(tmp_path / "run")]) == 2
    assert ("is a directory" if kind == "folder" else "is not UTF-8 text") in one_line_error(capsys)


@pytest.mark.parametrize(
    "name,value,needle",
    [("methods", "finetune", "a list of method names"), ("output_dir", 5, "a folder path")],
)
def test_notebook_extras_are_type_checked(name, value, needle):
    with pytest.raises(config.ConfigError, match=f"notebook parameter '{name}' must be {needle}"):
        nb.parameters({name: value}, extras=["methods", "output_dir"])


def test_suite_only_with_no_match_names_it_and_the_valid_ones(tmp_path, capsys):
    assert cli.main(["suite", "--only", "99", "-o", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert "--only 99 matches no notebook" in err and "00_quickstart" in err


def test_corrupted_sweep_records_are_one_line(tmp_path, capsys):
    doc, spec, d = stopped_elsewhere(tmp_path)
    (d / state.JOB).write_text("[1, 2")  # a corrupted job.json: its process is gone
    assert sweep.run_state(spec)[0] == "stopped"
    (tmp_path / "sweep").mkdir(exist_ok=True)
    (tmp_path / "sweep" / state.MANIFEST).write_text("[]")
    assert cli.main(["sweep", "status", str(tmp_path / "sweep")]) == 2
    assert "sweep.json is corrupted" in one_line_error(capsys)
