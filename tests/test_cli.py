"""``python -m nscl run`` end to end on split_digits: the run directory is complete and self-consistent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nscl.apps import cli
from nscl.experiment import config, records
from nscl.core.nullspace import null_dim

pytestmark = pytest.mark.slow  # end to end through subprocesses: `make test` runs them

ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "schema",
    "status",
    "error",
    "name",
    "params",
    "stream",
    "tasks",
    "acc",
    "metrics",
    "null_space",
    "method_diagnostics",
    "timing",
    "env",
}


def nscl(*args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "nscl", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    proc = nscl(
        "run",
        "-f",
        "params/base.yaml",
        "-f",
        "params/ci.yaml",
        "-p",
        "benchmark=split_digits",
        "-p",
        "threads=1",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"written: {out}/results.json" in proc.stdout
    return out


def test_results_schema_and_matrix(run_dir):
    res = records.load(run_dir)
    assert KEYS <= set(res)
    assert res["schema"] == records.SCHEMA and res["status"] == "complete" and res["error"] is None
    acc = res["acc"]
    T = len(res["tasks"])
    assert T >= 3 and T == res["stream"]["n_tasks"] == len(acc)
    for i, row in enumerate(acc):
        assert len(row) == T
        assert all(v is None for v in row[i + 1 :])
        assert all(isinstance(v, float) and 0 <= v <= 100 for v in row[: i + 1])
    # metrics recomputed by hand from the matrix
    last = acc[-1]
    m = res["metrics"]
    assert m["tasks_done"] == T
    assert m["acc"] == pytest.approx(sum(last) / T)
    assert m["plasticity"] == pytest.approx(sum(acc[j][j] for j in range(T)) / T)
    assert m["bwt"] == pytest.approx(sum(last[j] - acc[j][j] for j in range(T - 1)) / (T - 1))
    assert m["forgetting"] == pytest.approx(
        sum(max(acc[i][j] for i in range(j, T - 1)) - last[j] for j in range(T - 1)) / (T - 1)
    )
    per_task = res["timing"]["per_task"]
    assert len(per_task) == T and res["timing"]["total_s"] > 0
    assert {"train_s", "covariance_s", "eigen_s", "eval_s"} <= set(per_task[0])
    # adam_nscl (base.yaml) recorded that it projected
    assert res["method_diagnostics"]["optimizer_stats"]["projected_steps"] > 0


def test_spectra_match_null_space_records(run_dir):
    res = records.load(run_dir)
    p = res["params"]
    spectra = records.load_spectra(run_dir)
    T = len(res["acc"])
    layers = res["null_space"]
    assert set(layers) == {"backbone.layers.0", "backbone.layers.1"}
    assert set(spectra) == {f"{layer}/task{t}" for layer in layers for t in range(T)}
    for layer, rec in layers.items():
        assert len(rec["dims"]) == len(rec["kept_energy"]) == T
        for t in range(T):
            ev = torch.from_numpy(spectra[f"{layer}/task{t}"])
            assert ev.shape == (rec["d"],) and bool((ev[1:] >= ev[:-1]).all())  # ascending
            r = null_dim(
                ev, p["nullspace_rule"], a=p["a"], floor=p["a_min_floor"], energy=p["energy"], rel_tol=p["rel_tol"]
            )
            assert r == rec["dims"][t]
            kept = ev[:r].clamp_min(0).sum() / ev.clamp_min(0).sum()
            assert rec["kept_energy"][t] == pytest.approx(kept.item(), rel=1e-9, abs=1e-15)
            assert rec["lambda_max"][t] == pytest.approx(ev[-1].item())
    assert layers["backbone.layers.0"]["d"] == 64 and layers["backbone.layers.1"]["d"] == 64


def test_params_yaml_fully_resolved(run_dir):
    res = records.load(run_dir)
    with open(run_dir / records.PARAMS) as f:
        saved = yaml.safe_load(f)
    assert saved == res["params"]
    assert set(config.defaults()) <= set(saved)  # every key, not only the ones given
    assert config.validate(saved) == saved
    # layering: base.yaml, then ci.yaml, then -p
    assert saved["benchmark"] == "split_digits" and saved["method"] == "adam_nscl"
    assert saved["epochs"] == 2 and saved["hidden"] == [64, 64] and saved["threads"] == 1
    assert json.loads(json.dumps(saved)) == saved


def test_env_records_provenance(run_dir):
    env = records.load(run_dir)["env"]
    assert env["device"] == "cpu" and env["seed"] == 0 and env["threads"] == 1
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    if (ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", env["git"]["commit"]) and isinstance(env["git"]["dirty"], bool)


def test_show_prints_the_metrics(run_dir, capsys):
    assert cli.main(["show", str(run_dir), "--matrix"]) == 0
    out = capsys.readouterr().out
    m = records.load(run_dir)["metrics"]
    assert f"{m['acc']:7.2f}" in out and f"{m['bwt']:7.2f}" in out and "accuracy matrix" in out


def test_cli_bad_param_exits_2_before_training(tmp_path):
    out = tmp_path / "never"
    proc = nscl("run", "-f", "params/base.yaml", "-p", "epohcs=2", "-o", str(out))
    assert proc.returncode == 2
    assert "unknown parameter 'epohcs'" in proc.stderr and "Did you mean epochs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


# ---- run folders from the command line (see README "Guarantees") ----------------------------------
TINY = ["-f", "params/base.yaml", "-f", "params/ci.yaml", "-p", "benchmark=split_digits", "-p", "threads=1"]


def test_a_rerun_reuses_the_complete_run_and_says_so(run_dir):
    stamp = (run_dir / records.RESULTS).stat().st_mtime_ns
    proc = nscl("run", *TINY, "-o", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reused: {run_dir}/results.json" in proc.stdout and "written:" not in proc.stdout
    assert (run_dir / records.RESULTS).stat().st_mtime_ns == stamp


def test_parameters_the_method_does_not_read_warn_by_name(tmp_path, capsys):
    assert config.unread(config.resolve(["params/base.yaml"], {"method": "finetune"})) == []  # base's defaults
    assert (
        cli.main(
            [
                "run",
                *TINY,
                "-p",
                "method=finetune",
                "-p",
                "l1=0.1",
                "-p",
                "lr_projected=0.01",
                "-p",
                "lr=0.002",
                "-o",
                str(tmp_path / "ft"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "warning: method finetune does not read: l1, lr_projected\n" in err
    assert records.load(tmp_path / "ft")["params"]["l1"] == 0.1  # recorded as given


def test_nan_loss_is_one_error_line_and_the_traceback_stays_in_the_run(tmp_path):
    out = tmp_path / "nan"
    proc = nscl(
        "run",
        *TINY,
        "-p",
        "method=finetune",
        "-p",
        "lr=1e12",
        "-p",
        "epochs=3",
        "-p",
        "n_tasks=3",
        "-p",
        "hidden=[32, 32]",
        "-o",
        str(out),
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert re.search(
        r"^error: loss is (nan|inf) at task \d+, epoch \d+, step \d+ .*\(traceback in "
        + re.escape(f"{out}/error.txt")
        + r"\)$",
        proc.stderr,
        re.M,
    )
    assert (out / records.ERROR).read_text().startswith("Traceback")
    assert records.load(out)["status"] == "failed"


def test_a_checkpoint_that_would_run_code_is_refused_by_the_cli(tmp_path):
    marker, out = tmp_path / "marker", tmp_path / "run"
    out.mkdir()

    class RunsCode:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    torch.save({"task": 0, "params": RunsCode()}, out / records.CHECKPOINT)
    proc = nscl("run", *TINY, "-o", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {out}/checkpoint.pt is not a plain nscl checkpoint" in proc.stderr
    assert not marker.exists()


def test_two_runs_started_at_once_into_one_folder_never_both_succeed(tmp_path):
    """The issue's case: seeds 0 and 1 into one folder. One wins; the other fails with a clear
    error (in use, or holds a complete run with other parameters); the folder holds one run."""
    out = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = {
        seed: subprocess.Popen(
            [sys.executable, "-m", "nscl", "run", *TINY, "-p", f"seed={seed}", "-o", str(out)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    }
    done = {seed: (p.communicate(timeout=1800), p.returncode) for seed, p in procs.items()}  # a safety net only
    done = {seed: (rc, out, err) for seed, ((out, err), rc) in done.items()}
    winners = [seed for seed, (rc, _, _) in done.items() if rc == 0]
    assert len(winners) == 1, {s: (rc, err[-500:]) for s, (rc, _, err) in done.items()}
    rc, _, err = done[1 - winners[0]]
    assert rc == 2 and "Traceback" not in err
    assert re.search(
        r"error: .* (is in use by another run \(pid \d+ on host|holds a complete run with other "
        r"parameters \(seed: )",
        err,
    ), err
    res = records.load(out)
    with open(out / records.PARAMS) as f:
        assert res["status"] == "complete" and res["params"]["seed"] == yaml.safe_load(f)["seed"] == winners[0]
    assert not (out / records.LOCK).exists()


# ---- listings that never mislead (issue 10, item 3) ------------------------------------------------
def line_of(text: str, start: str) -> str:
    """The one output line that starts with ``start`` (after leading blanks), whitespace collapsed."""
    (line,) = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip().startswith(start)]
    return line


def test_show_seeds_counts_distinct_seeds_not_runs(tmp_path, write_run, capsys):
    for i, value in enumerate([70.0, 70.0, 70.0, 90.0]):  # four runs of seed 0 (one differs)
        write_run(tmp_path / f"r{i}", value, seed=0)
    assert cli.main(["show", str(tmp_path), "--seeds"]) == 0
    out = capsys.readouterr().out
    assert "n=4" not in out and "± 0.00" not in out and "nan" not in out
    assert line_of(out, "group") == "group n seeds ACC BWT plasticity incomplete duplicates"
    # n = 1 distinct seed; its value alone (no made-up spread); the 3 other runs of seed 0 counted apart
    assert line_of(out, "all runs") == "all runs 1 0 70.00 0.00 70.00 0 3"
    assert "duplicates: further complete runs of a seed already counted" in out


def test_show_lists_status_and_tasks_done_and_never_averages_partial_runs(tmp_path, write_run, capsys):
    write_run(tmp_path / "ok0", 60.0, seed=0)
    write_run(tmp_path / "ok1", 64.0, seed=1)
    write_run(
        tmp_path / "failed",
        92.0,
        status="failed",
        done=1,
        seed=2,
        error="NonFiniteLossError: loss is nan at task 2, epoch 1, step 3",
    )
    write_run(tmp_path / "killed", 99.0, status="running", done=3, seed=3)
    assert cli.main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert line_of(out, "run ").startswith("run method benchmark seed status tasks ACC")
    cells = {name: line_of(out, name + " ").split()[4:7] for name in ("ok0", "ok1", "failed", "killed")}
    assert cells == {
        "ok0": ["complete", "5/5", "60.00"],
        "ok1": ["complete", "5/5", "64.00"],
        "failed": ["failed", "1/5", "92.00"],
        "killed": ["running", "3/5", "99.00"],
    }
    assert "2 run(s) not complete: their metrics cover only the tasks done" in out
    assert line_of(out, "failed:") == "failed: NonFiniteLossError: loss is nan at task 2, epoch 1, step 3"

    assert cli.main(["show", str(tmp_path), "--seeds"]) == 0
    out = capsys.readouterr().out  # mean ± std of the complete 60 and 64 only; 2 runs left out
    assert line_of(out, "all runs") == "all runs 2 0,1 62.00 ± 2.83 0.00 ± 0.00 62.00 ± 2.83 2 0"


def test_show_seeds_keeps_every_differing_parameter_apart(tmp_path, write_run, capsys):
    for seed, (lo, hi) in enumerate([(50.0, 80.0), (52.0, 82.0)]):
        write_run(tmp_path / f"lo{seed}", lo, seed=seed, lr=1e-4)
        write_run(tmp_path / f"hi{seed}", hi, seed=seed, lr=1e-2)
    assert cli.main(["show", str(tmp_path), "--seeds"]) == 0
    out = capsys.readouterr().out
    assert line_of(out, "lr") == "lr n seeds ACC BWT plasticity incomplete duplicates"
    assert line_of(out, "0.01") == "0.0100 2 0,1 81.00 ± 1.41 0.00 ± 0.00 81.00 ± 1.41 0 0"
    assert line_of(out, "0.0001") == "0.0001 2 0,1 51.00 ± 1.41 0.00 ± 0.00 51.00 ± 1.41 0 0"
    assert cli.main(["show", str(tmp_path), "--seeds", "--ignore", "lr"]) == 0  # asked for: pooled, and it says so
    assert line_of(capsys.readouterr().out, "all runs").startswith("all runs 2 0,1 ")


def test_seed_table_never_prints_minus_zero(tmp_path, write_run, capsys):
    from nscl.analysis import tables

    summary = tables.seed_summary(tables.runs_frame([write_run(tmp_path / f"r{s}", 50.0, seed=s) for s in (0, 1)]))
    summary["bwt_mean"], summary["bwt_std"] = -0.004, 0.001
    assert tables.format_summary(summary, digits=1)["BWT"].tolist() == ["0.0 ± 0.0"]
    assert tables.format_summary(summary)["BWT"].tolist() == ["-0.00 ± 0.00".replace("-", "")]
    summary["bwt_mean"] = -0.06
    assert tables.format_summary(summary, digits=1)["BWT"].tolist() == ["-0.1 ± 0.0"]


# ---- bad values: one-line errors before any training (issue 10, items 6 and 7) ----------------------
@pytest.mark.parametrize(
    "param,needle",
    [
        ("lr=.nan", "'lr' must be a finite number, got nan"),
        ("lr=.inf", "'lr' must be a finite number, got inf"),
        ("a=.nan", "'a' must be a finite number, got nan"),
        ("betas=[.nan, 0.9]", "'betas' must hold finite numbers"),
        ("n_tasks=11", "'n_tasks': split_fmnist splits 10 classes into tasks, so at most 10 tasks; got 11"),
        ("n_tasks=0", "'n_tasks' must be in [1, 200], got 0"),
        ("seed=-1", "'seed' must be >= 0, got -1"),
        ("samples_per_task=0", "'samples_per_task' must be >= 1, got 0"),
        ("hidden=[0]", "'hidden' must hold values >= 1, got [0]"),
        ("hidden=[64, -1]", "'hidden' must hold values >= 1"),
    ],
)
def test_cli_bad_values_are_one_line_errors_before_training(param, needle, tmp_path, capsys, monkeypatch):
    from nscl.experiment import trainer

    monkeypatch.setattr(trainer, "run", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "run"
    assert cli.main(["run", "-f", "params/base.yaml", "-p", param, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: parameter ") and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_nan_rejected_as_a_process(tmp_path):
    """The real command line: exit status 2, one line on stderr, nothing written."""
    out = tmp_path / "never"
    proc = nscl("run", "-f", "params/base.yaml", "-p", "lr=.nan", "-o", str(out))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: parameter 'lr' must be a finite number, got nan: backbone learning rate (first task; later "
        "tasks too unless lr_projected)"
    ]
    assert not out.exists()


# ---- issue 27: the suite's --hook and -o never reach outside their folders ------------------------------
def test_suite_hook_that_is_missing_or_leaves_params_is_one_error_line(tmp_path, capsys):
    from pathlib import Path

    from nscl.apps import cli

    root = Path(__file__).resolve().parents[1]
    for hook, needle in (
        ("no_such_{stem}.yaml", "--hook 'no_such_{stem}.yaml': no such file"),
        ("no_such.yaml", "--hook 'no_such.yaml': no such file"),
        ("../pyproject.toml", "outside the parameter folder"),
        ("../../{stem}.yaml", "outside the parameter folder"),
    ):
        assert cli.main(["suite", "-o", str(tmp_path / "out"), "--only", "00", "--hook", hook]) == 2, hook
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert not (root / "00_quickstart").exists()


def test_suite_output_folder_above_the_project_is_refused(tmp_path, capsys):
    from pathlib import Path

    from nscl.apps import cli

    root = Path(__file__).resolve().parents[1]
    for out in (root / "no_results_here" / "..", root.parent, root / "notebooks"):
        assert cli.main(["suite", "-o", str(out), "--only", "00", "--hook", ""]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: -o ") and "give a folder of its own" in err and err.count("\n") == 1
    assert not (root / "summary.md").exists() and not (root / "00_quickstart").exists()
