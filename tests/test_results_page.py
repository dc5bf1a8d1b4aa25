"""The chance-level check (notebooks, suite summary) and the results page built from fake sweeps.

The fake sweeps are real sweep directories (manifest from :func:`nscl.apps.sweep.expand`, one run
directory per spec) whose ``results.json`` carry constructed metrics, so every number on the page
is known in advance. Nothing is trained.
"""

from __future__ import annotations

import json
import time

import pytest

from nscl.apps import notebook as nb
from nscl.apps import results_page, sweep
from nscl.apps import suite as report
from nscl.apps.sweep import state as sweep_state
from nscl.core import metrics
from nscl.experiment import records as runs

METHODS = ["finetune", "joint", "adam_nscl", "nscl_prune"]


# ---- the chance check -------------------------------------------------------------------------
def test_at_chance_uses_each_task_s_classes_and_the_final_row():
    acc = [
        [98.0, None, None],
        [97.0, 54.0, None],  # task 2 learned badly, but only the final row counts
        [96.0, 56.0, 14.0],
    ]
    assert metrics.at_chance(acc, [2, 2, 10]) == [3]  # 56 > 50+5; 14 <= 10+5
    assert metrics.at_chance(acc, [2, 2, 10], margin=6.5) == [2, 3]
    assert metrics.at_chance(acc, [2, 2, 2]) == [3]
    assert metrics.at_chance([[55.0, None], [None, None]], [2, 2]) == [1]  # partial run: last filled row
    assert metrics.at_chance([[None]], [2]) == []
    with pytest.raises(ValueError, match="n_classes"):
        metrics.at_chance(acc, [2, 2])


def _run(method: str, last_row: list[float], n_classes: int = 2, label_dir=None) -> dict:
    T = len(last_row)
    acc = [[None] * T for _ in range(T)]
    for i in range(T):
        for j in range(i + 1):
            acc[i][j] = last_row[j]
    return {
        "params": {"method": method},
        "acc": acc,
        "metrics": metrics.summary(acc),
        "stream": {"tasks": [{"n_classes": n_classes} for _ in range(T)]},
    }


def test_check_above_chance_fails_only_for_null_space_methods(capsys):
    good = {
        "finetune": _run("finetune", [50.0, 99.0]),  # forgetting to chance is finetune's right
        "clnp": _run("clnp", [99.0, 51.0]),  # so is running out of free units
        "adam_nscl": _run("adam_nscl", [98.0, 97.0]),
        "split/nscl_lowrank": _run("nscl_lowrank", [60.0, 97.0]),
    }
    assert "adam_nscl, split/nscl_lowrank" in nb.check_above_chance(good)
    bad = {**good, "permuted/nscl_prune": _run("nscl_prune", [70.0, 12.0, 80.0], n_classes=10)}
    with pytest.raises(nb.ChanceLevelError, match=r"permuted/nscl_prune on task\(s\) 2 \(12.0% vs chance 10%\)"):
        nb.check_above_chance(bad)
    bad2 = {"adam_nscl": _run("adam_nscl", [98.0, 50.0, 97.0, 97.0, 54.9])}
    with pytest.raises(nb.ChanceLevelError, match=r"task\(s\) 2 \(50.0%.*5 \(54.9%"):
        nb.check_above_chance(bad2)


def test_suite_summary_flags_a_null_space_run_at_chance(tmp_path):
    entries = []
    for stem, res in (
        ("00_a", {"finetune": _run("finetune", [50.0, 99.0]), "adam_nscl": _run("adam_nscl", [98.0, 97.0])}),
        ("01_b", {"adam_nscl": _run("adam_nscl", [98.0, 50.0, 97.0])}),
    ):
        nb.save_results(tmp_path / stem, res)
        entries.append({"notebook": stem, "status": "complete", "error": None, "seconds": 1.0})
    text = report.summary_markdown(tmp_path, entries)
    assert "| 00_a | finetune | 74.50 | +0.00 | 74.50 | 0.00 | 2 | 1 |" in text  # listed, not a failure
    assert "| 00_a | adam_nscl | 97.50 | +0.00 | 97.50 | 0.00 | 2 | none |" in text
    assert "| 01_b | adam_nscl | 81.67 | +0.00 | 81.67 | 0.00 | 3 | 2 |" in text
    assert "no null-space method at chance on any task: FAILED** (2 null-space runs checked)" in text
    assert "- 01_b/adam_nscl: task(s) 2 at chance" in text
    assert report.chance_failures(report.suite_records(tmp_path)) == ["01_b/adam_nscl: task(s) 2 at chance"]
    nb.save_results(tmp_path / "01_b", {"adam_nscl": _run("adam_nscl", [98.0, 90.0, 97.0])})
    text = report.summary_markdown(tmp_path, entries)
    assert "no null-space method at chance on any task: passed** (2 null-space runs checked)." in text
    assert report.chance_failures(report.suite_records(tmp_path)) == []


# ---- the results page -------------------------------------------------------------------------
# (benchmark, method) -> ACC of seeds 0, 1, 2 at each size; BWT = -(seed + 1) * bwt_step
ACC = {
    "suite": {
        ("split_fmnist", "finetune"): [94.0, 95.0, 96.0],
        ("split_fmnist", "joint"): [98.0, 99.0, 100.0],
        ("split_fmnist", "adam_nscl"): [98.0, 98.5, 99.0],
        ("split_fmnist", "nscl_prune"): [97.0, 97.0, 97.0],
        ("permuted_fmnist", "finetune"): [60.0, 62.0, 64.0],
        ("permuted_fmnist", "joint"): [80.0, 80.0, 80.0],
        ("permuted_fmnist", "adam_nscl"): [76.0, 77.0, 78.0],
        ("permuted_fmnist", "nscl_prune"): [78.0, 78.0, 78.0],
    },
    "full": {
        ("split_fmnist", "finetune"): [96.0, 96.0, 96.0],
        ("split_fmnist", "joint"): [99.0, 99.0, 99.0],
        ("split_fmnist", "adam_nscl"): [98.9, 98.9, 98.9],
        ("split_fmnist", "nscl_prune"): [98.0, 98.0, 98.0],
        ("permuted_fmnist", "finetune"): [74.0, 75.0, 76.0],
        ("permuted_fmnist", "joint"): [82.5, 82.5, 82.5],
        ("permuted_fmnist", "adam_nscl"): [81.0, 82.0, 83.0],
        ("permuted_fmnist", "nscl_prune"): [81.0, 81.0, 81.0],
    },
}
BWT_STEP = {"finetune": 3.0, "joint": 0.0, "adam_nscl": 0.1, "nscl_prune": 0.5}


def _fake_sweep(root, size: str, fail=None, pending=None) -> "Path":  # noqa: F821
    sw = sweep.load(
        {
            "name": f"fake_{size}",
            "description": f"{size} size",
            "run": "cli",
            "params": {"samples_per_task": 100 if size == "suite" else 200, "epochs": 1},
            "grid": {"benchmark": ["split_fmnist", "permuted_fmnist"], "method": METHODS, "seed": [0, 1, 2]},
            "out": str(root / size),
            "executor": {"kind": "local", "parallel": 2, "threads": 1},
        }
    )
    specs = sweep.expand(sw)
    for spec in specs:
        p = spec["cfg"]
        T = 5 if p["benchmark"] == "split_fmnist" else 10
        a = ACC[size][(p["benchmark"], p["method"])][p["seed"]]
        bwt = -(p["seed"] + 1) * BWT_STEP[p["method"]]
        res = {
            "schema": runs.SCHEMA,
            "status": "complete",
            "params": p,
            "stream": {"tasks": [{"n_classes": 2 if T == 5 else 10} for _ in range(T)]},
            "acc": [[a] * (i + 1) + [None] * (T - i - 1) for i in range(T)],
            "metrics": {"acc": a, "bwt": bwt, "plasticity": a - bwt, "forgetting": -bwt, "tasks_done": T},
            "timing": {"total_s": 10.0},
            "env": {
                "nscl": "0.1",
                "python": "3.11",
                "torch": "2.x",
                "git": {"commit": "abcdef1234567", "dirty": False},
                "threads": 1,
                "device": "cpu",
            },
        }
        if fail and spec["name"].startswith(fail):
            res["status"] = "failed"
        d = root / size / "runs" / spec["name"]
        if pending and spec["name"].startswith(pending):
            continue  # not run yet: no results.json
        runs.write_json(d / sweep_state.JOB, {"started": time.time() - 60, "pid": 1, "host": "x"})
        runs.write_json(d / runs.RESULTS, res)
    runs.write_json(root / size / sweep_state.MANIFEST, {"sweep": sw, "specs": specs})
    return root / size


def test_results_page_tables_goals_and_figure(tmp_path):
    dirs = {
        "suite": _fake_sweep(tmp_path, "suite"),
        "full": _fake_sweep(tmp_path, "full", fail="permuted_fmnist/joint/s2", pending="permuted_fmnist/adam_nscl"),
    }
    summary = results_page.table(results_page.collect(dirs).query("state == 'complete'"))
    row = summary[
        (summary["benchmark"] == "split_fmnist") & (summary["size"] == "suite") & (summary["method"] == "joint")
    ]
    assert row["acc_mean"].item() == pytest.approx(99.0) and row["acc_std"].item() == pytest.approx(1.0)
    assert row["n"].item() == 3
    gl = results_page.goals(summary).set_index(["benchmark", "size"])
    # split suite: best null-space = adam_nscl 98.5, joint 99.0 -> gap 0.5, BWT -0.2 -> met;
    # adam_nscl - finetune = 3.5 >= 2, joint - adam_nscl = 0.5 <= 1 -> met
    s = gl.loc[("split_fmnist", "suite")]
    assert s["best"] == "adam_nscl" and s["best_gap"] == pytest.approx(0.5) and s["best_goal"] and s["default_goal"]
    # permuted suite: best = nscl_prune 78 (gap 2) -> not met; adam_nscl 77 is 3 below joint -> not met
    p = gl.loc[("permuted_fmnist", "suite")]
    assert p["best"] == "nscl_prune" and p["best_gap"] == pytest.approx(2.0) and not p["best_goal"]
    assert p["default_gap"] == pytest.approx(3.0) and not p["default_goal"]
    # split full: adam_nscl within 0.1 of joint, but only 2.9 above finetune -> goal 2 met; prune BWT -1 irrelevant
    f = gl.loc[("split_fmnist", "full")]
    assert f["best"] == "adam_nscl" and f["best_gap"] == pytest.approx(0.1) and f["default_gain"] == pytest.approx(2.9)
    # permuted full: joint's seed 2 failed -> its mean is over seeds 0, 1 only; adam_nscl has not run yet
    pf = gl.loc[("permuted_fmnist", "full")]
    assert pf["joint"] == pytest.approx(82.5) and pf["best"] == "nscl_prune" and pf["best_gap"] == pytest.approx(1.5)
    assert pf["adam_nscl"] != pf["adam_nscl"] and pf["default_goal"] is None  # NaN: not measured

    page = results_page.write(dirs, tmp_path / "docs" / "results.md", command="make-believe command")
    text = page.read_text()
    assert "| `joint` | 99.00 ± 1.00 | +0.00 ± 0.00 | 99.00 ± 1.00 | 99.00 ± 0.00 |" in text  # split: suite, full
    assert "| `adam_nscl` | 98.50 ± 0.50 | -0.20 ± 0.10 | 98.70 ± 0.60 | 98.90 ± 0.00 | -0.20 ± 0.10 |" in text
    assert "| `joint` | 80.00 ± 0.00 | +0.00 ± 0.00 | 80.00 ± 0.00 | 82.50 ± 0.00 (n=2) |" in text  # permuted
    assert (
        "| permuted_fmnist | suite | 80.00 | `nscl_prune` | 78.00 | -1.00 | 2.00 | ✗ | 77.00 | 3.00 | +15.00 | ✗ |"
        in text
    )
    assert "| split_fmnist | suite | 99.00 | `adam_nscl` | 98.50 | -0.20 | 0.50 | ✓ |" in text
    assert "**Incomplete:** 48 runs, 44 complete, 3 pending, 1 failed" in text
    assert "python -m nscl sweep run" not in text  # built in code: no sweep file to name
    assert "make-believe command" in text and "abcdef1234" in text
    assert "| split_fmnist | suite | 100 | None | 1 |" in text  # the stream settings the runs used
    png = tmp_path / "docs" / "results_stability_plasticity.png"
    assert "](results_stability_plasticity.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "docs").glob(".*tmp*"))  # nothing half-written left behind
    assert "at chance on some task (final accuracy within the check's margin of chance): none." in text


def test_results_page_lists_null_space_runs_at_chance_and_labels(tmp_path):
    d = _fake_sweep(tmp_path, "suite")
    name = next(
        s["name"]
        for s in json.loads((d / sweep_state.MANIFEST).read_text())["specs"]
        if s["name"].startswith("split_fmnist/adam_nscl/s0")
    )
    res = runs.load(d / "runs" / name)
    res["acc"][-1][1] = 51.0
    runs.write_json(d / "runs" / name / runs.RESULTS, {k: v for k, v in res.items() if k != "_dir"})
    assert results_page.parse_sweeps([str(d)]) == {"fake_suite": d}
    with pytest.raises(sweep.SweepError, match="labelled"):
        results_page.parse_sweeps([f"a={d}", f"a={d}"])
    text = results_page.render({"suite": d})
    assert f"on some task (final accuracy within the check's margin of chance): {name} (tasks 2)." in text


def test_results_cli_reports_a_missing_sweep(tmp_path, capsys):
    from nscl.apps import cli

    assert cli.main(["results", str(tmp_path / "nope"), "-o", str(tmp_path / "r.md")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_results_page_pruning_section_reports_freed_units_and_the_next_layer_s_null_space(tmp_path):
    """Constructed records: nscl_prune frees 32 of 128 units of layer 0 (25%); the null space of layer 1's
    input is 100 under adam_nscl and 130 under nscl_prune on the spaces that constrained training."""
    d = _fake_sweep(tmp_path, "suite")
    for spec in json.loads((d / sweep_state.MANIFEST).read_text())["specs"]:
        method, bench = spec["cfg"]["method"], spec["cfg"]["benchmark"]
        if bench != "split_fmnist" or method not in ("adam_nscl", "nscl_prune"):
            continue
        res = runs.load(d / "runs" / spec["name"])
        r1 = 100 if method == "adam_nscl" else 130
        res["null_space"] = {
            "layers.0": {"d": 784, "dims": [700] * 5, "kept_energy": [0.1] * 5},
            "layers.1": {"d": 128 + 32, "dims": [r1] * 4 + [0], "kept_energy": [0.1] * 5},
        }
        if method == "nscl_prune":
            res["method_diagnostics"] = {
                "prune": [],
                "units": {
                    "layers.0": {"size": 128, "frozen": [96] * 5, "free": [10, 20, 30, 40, 32], "new": [0] * 5},
                    "layers.1": {"size": 64, "frozen": [64] * 5, "free": [0] * 5, "new": [0] * 5},
                },
            }
        runs.write_json(d / "runs" / spec["name"] / runs.RESULTS, {k: v for k, v in res.items() if k != "_dir"})
    text = results_page.render({"suite": d})
    assert "## Pruning: freed units and the null space they open" in text
    assert "### split_fmnist, suite" in text and "### permuted_fmnist, suite" not in text  # no pruning runs there
    assert "| `layers.0` | 784 | 128 | - | 25.0% | 700.0 | 700.0 |" in text  # free after the last task only
    assert "| `layers.1` | 160 | 64 | - | 0.0% | 100.0 | 130.0 |" in text  # the last task's space is not used


# ---- the capacity section -----------------------------------------------------------------------------
# method label -> (ACC of seeds 0, 1, 2, BWT, r/d of the second layer per task)
CAPACITY = {
    ("adam_nscl", 0.9): ([70.0, 71.0, 72.0], -0.5, [0.9, 0.6, 0.4, 0.3]),
    ("adam_nscl", 0.99): ([68.0, 68.0, 68.0], -0.2, [0.8, 0.4, 0.2, 0.1]),
    ("nscl_sgp", 0.99): ([73.0, 73.0, 73.0], -2.0, [0.8, 0.4, 0.2, 0.1]),
    ("nscl_prune", 0.9): ([75.0, 75.5, 76.0], -0.8, [0.9, 0.8, 0.7, 0.6]),
    ("nscl_lowrank", 0.9): ([71.0, 72.0, 73.0], -3.0, [0.9, 0.6, 0.4, 0.3]),
}


def _fake_capacity_sweep(root, table=CAPACITY, seeds=(0, 1, 2), name="cap") -> "Path":  # noqa: F821
    """A finished capacity sweep of constructed records: ``table`` maps ``(method, energy)`` or
    ``(method, energy, hidden)`` to (ACC per seed of ``seeds``, BWT, r/d of the second layer per task)."""
    from nscl.core import metrics

    keys = {k if len(k) == 3 else (*k, (64, 64)): v for k, v in table.items()}
    sw = sweep.load(
        {
            "name": f"fake_{name}",
            "description": "four permuted tasks",
            "run": "cli",
            "params": {"benchmark": "permuted_fmnist", "n_tasks": 4},
            "grid": [{"method": [m], "energy": [e], "hidden": [list(h)], "seed": list(seeds)} for m, e, h in keys],
            "out": str(root / name),
            "executor": {"kind": "local", "parallel": 1, "threads": 1},
        }
    )
    specs = sweep.expand(sw)
    for spec in specs:
        p = spec["cfg"]
        accs, bwt, frac = next(
            v for (m, e, h), v in keys.items() if (m, e, list(h)) == (p["method"], p["energy"], p["hidden"])
        )
        a, T = accs[list(seeds).index(p["seed"])], 4
        acc = [[a] * (i + 1) + [None] * (T - i - 1) for i in range(T)]
        null = {"backbone.layers.1": {"d": 10, "dims": [round(q * 10) for q in frac]}}
        res = {
            "schema": runs.SCHEMA,
            "status": "complete",
            "params": p,
            "stream": {"input_shape": [1, 28, 28], "tasks": [{"n_classes": 10}] * T},
            "acc": acc,
            "metrics": {"acc": a, "bwt": bwt, "plasticity": a - bwt, "forgetting": -bwt, "tasks_done": T},
            "capacity": metrics.capacity(acc, null),
            "timing": {"total_s": 10.0},
        }
        d = root / name / "runs" / spec["name"]
        runs.write_json(d / sweep_state.JOB, {"started": time.time() - 60, "pid": 1, "host": "x"})
        runs.write_json(d / runs.RESULTS, res)
    runs.write_json(root / name / sweep_state.MANIFEST, {"sweep": sw, "specs": specs})
    return root / name


def test_results_page_capacity_section_tables_goal_and_curve(tmp_path):
    d = _fake_capacity_sweep(tmp_path)
    page = tmp_path / "docs" / "results.md"
    lines = results_page.capacity_lines({"E1": d}, page)
    text = "\n".join(lines)
    assert "| nscl_prune | 3 | 0,1,2 | 75.50 ± 0.50 | -0.80 ± 0.00 |" in text
    assert "| adam_nscl energy=0.99 |" in text and "| nscl_sgp energy=0.99 |" in text
    # exhaustion: r/d < 0.25 after task 3 at energy 0.99, never for nscl_prune
    row = next(ln for ln in lines if ln.startswith("| adam_nscl energy=0.99 |"))
    assert row.endswith("| 3, 3, 3 |")
    # nscl_prune: +4.5 over adam_nscl (71 ± 1, apart from 75.5 ± 0.5), +7.5 over 0.99, +2.5 over sgp: met.
    # nscl_lowrank: +1 only, BWT -3: not met.
    goal = {ln.split("`")[1]: ln for ln in lines if ln.startswith("- `")}
    assert goal["nscl_prune"].endswith("Goal **met**.") and "+4.50 vs `adam_nscl`" in goal["nscl_prune"]
    assert "(mean ± std overlap)" in goal["nscl_lowrank"] and goal["nscl_lowrank"].endswith(
        "Goal not met (less than 2 above `adam_nscl`; BWT below -1; below `nscl_sgp energy=0.99`)."
    )
    assert (tmp_path / "docs" / "results_capacity_E1.png").read_bytes()[:4] == b"\x89PNG"
    assert "![capacity curve, E1](results_capacity_E1.png)" in text
    assert "**Goal**: met in E1 (`nscl_prune`)." in text


def test_results_cli_capacity_section_reads_several_sweeps_under_one_label(tmp_path, capsys):
    from nscl.apps import cli

    suite = _fake_sweep(tmp_path, "suite")
    first, second = _fake_capacity_sweep(tmp_path / "a"), _fake_capacity_sweep(tmp_path / "b", seeds=(3, 4, 5))
    page = tmp_path / "r.md"
    argv = ["results", str(suite), "-o", str(page), "--capacity", f"E1={first}", "--capacity", f"E1={second}"]
    assert cli.main(argv) == 0
    text = page.read_text()
    assert text.count("### E1:") == 1 and text.count("Command: `python -m nscl sweep run") == 2
    assert "| nscl_prune | 6 |" in text  # the runs of both sweeps in one table
    assert (tmp_path / "r_capacity_E1.png").exists()


def test_capacity_settings_are_chosen_on_the_validation_seeds_and_judged_on_the_test_seeds(tmp_path):
    """The validation sweep (seeds 100, 101) picks nscl_prune at 0.99; the goal is then judged for that label
    and for the defaults, on the test seeds, and the page says which is which."""
    test = {**CAPACITY, ("nscl_prune", 0.99): ([80.0, 80.5, 81.0], -0.5, [0.9, 0.8, 0.7, 0.6])}
    test[("nscl_prune", 0.9)] = ([70.0, 70.0, 70.0], -0.8, [0.9, 0.8, 0.7, 0.6])  # the defaults: not met
    val = {
        ("adam_nscl", 0.9): ([71.0, 71.0], -0.5, [0.9, 0.6, 0.4, 0.3]),
        ("nscl_prune", 0.9): ([74.0, 74.0], -0.8, [0.9, 0.8, 0.7, 0.6]),
        ("nscl_prune", 0.99): ([75.0, 77.0], -0.5, [0.9, 0.8, 0.7, 0.6]),
    }
    d = _fake_capacity_sweep(tmp_path, test)
    v = _fake_capacity_sweep(tmp_path, val, seeds=(100, 101), name="val")
    lines = results_page.capacity_lines({"E1": d}, tmp_path / "results.md", validation={"E1": v})
    text = "\n".join(lines)
    assert (
        "- `nscl_prune`: **`nscl_prune energy=0.99`**, of `nscl_prune` 74.00 (seeds 100,101), "
        "`nscl_prune energy=0.99` 76.00 (seeds 100,101)." in lines
    )
    assert "- `adam_nscl`: **`adam_nscl`**, of `adam_nscl` 71.00 (seeds 100,101)." in lines
    goal = {ln.split("`")[1]: ln for ln in lines if ln.startswith("- `") and "Goal" in ln}
    assert goal["nscl_prune energy=0.99"].startswith("- `nscl_prune energy=0.99` (chosen on validation seeds): ")
    assert goal["nscl_prune energy=0.99"].endswith("Goal **met**.")
    assert goal["nscl_prune"].startswith("- `nscl_prune` (defaults): ")
    assert goal["nscl_prune"].endswith("not met (less than 2 above `adam_nscl`; below `nscl_sgp energy=0.99`).")
    assert "**Goal**: met in E1 (`nscl_prune energy=0.99`)." in text


def test_results_cli_rewrites_only_the_capacity_section_of_an_existing_page(tmp_path, capsys):
    from nscl.apps import cli

    d = _fake_capacity_sweep(tmp_path)
    page = tmp_path / "results.md"
    assert cli.main(["results", "-o", str(page), "--capacity", f"E1={d}"]) == 2  # no page to keep yet
    assert "does not exist" in capsys.readouterr().err
    page.write_text("# Results\n\nkept as it is\n\n" + results_page.CAPACITY_HEADING + "\n\nstale table\n")
    v = _fake_capacity_sweep(tmp_path, seeds=(100, 101, 102), name="val")
    assert cli.main(["results", "-o", str(page), "--capacity", f"E1={d}", "--validation", f"E1={v}"]) == 0
    text = page.read_text()
    assert text.startswith("# Results\n\nkept as it is\n\n" + results_page.CAPACITY_HEADING)
    assert "stale table" not in text and "| nscl_prune | 3 | 0,1,2 | 75.50 ± 0.50 |" in text
    assert text.count(results_page.CAPACITY_HEADING) == 1
    assert cli.main(["results", "-o", str(page), "--validation", f"E3={d}", "--capacity", f"E1={d}"]) == 2
    assert "--validation E3=...: no --capacity E3=DIR" in capsys.readouterr().err


def test_worth_in_parameters_from_the_width_curve(tmp_path):
    """adam_nscl at 16-16 (60) and 64-64 (70); nscl_prune at 16-16 reaches 65, halfway in ACC: adam_nscl
    needs the geometric mean of the two sizes (linear in log parameters), i.e. nscl_prune is worth
    sqrt(p64 / p16) times its parameters. Above the widest adam_nscl: said, not extrapolated."""
    from nscl.analysis import tables

    frac = [0.9, 0.8, 0.7, 0.6]
    table = {
        ("adam_nscl", 0.9, (16, 16)): ([60.0, 60.0, 60.0], -1.0, frac),
        ("adam_nscl", 0.9, (64, 64)): ([70.0, 70.0, 70.0], -1.0, frac),
        ("nscl_prune", 0.9, (16, 16)): ([65.0, 65.0, 65.0], -1.0, frac),
        ("nscl_lowrank", 0.9, (64, 64)): ([75.0, 75.0, 75.0], -1.0, frac),
    }
    d = _fake_capacity_sweep(tmp_path, table)
    results = {str(p): runs.load(p) for p in runs.find_runs([str(d)])}
    curve = tables.width_curve(results, "adam_nscl")
    assert curve["hidden"].tolist() == ["16-16", "64-64"] and curve["acc_mean"].tolist() == [60.0, 70.0]
    p16, p64 = curve["params"].tolist()
    assert p16 == 784 * 16 + 16 * 16 + 4 * (16 * 10 + 10) and p64 == 784 * 64 + 64 * 64 + 4 * (64 * 10 + 10)
    lines = results_page.worth_lines(results, results.values())
    prune = next(ln for ln in lines if ln.startswith("- `nscl_prune hidden=16-16`"))
    assert f"worth ×{(p64 / p16) ** 0.5:.2f} parameters" in prune
    assert any(
        ln.startswith("- `nscl_lowrank hidden=64-64` (75.00): above the measured `adam_nscl` widths") for ln in lines
    )


def test_a_capacity_label_with_a_slash_names_a_figure_beside_the_page(tmp_path):
    """Issue 27, minor: ``--capacity E1/a=DIR`` made a figure name with a folder in it (ValueError)."""
    d = _fake_capacity_sweep(tmp_path)
    text = "\n".join(results_page.capacity_lines({"E1/a b": d}, tmp_path / "results.md"))
    assert "### E1/a b:" in text and "![capacity curve, E1/a b](results_capacity_E1_a_b.png)" in text
    assert (tmp_path / "results_capacity_E1_a_b.png").read_bytes()[:4] == b"\x89PNG"


def test_the_test_sweep_is_refused_as_its_own_validation_sweep(tmp_path, capsys):
    """Issue 27, minor: settings chosen on the seeds they are judged on would be chosen on the test set."""
    from nscl.apps import cli

    d = _fake_capacity_sweep(tmp_path)
    same_seeds = _fake_capacity_sweep(tmp_path, name="copy")
    page = tmp_path / "results.md"
    page.write_text("# Results\n")
    for v in (d, same_seeds):
        assert cli.main(["results", "-o", str(page), "--capacity", f"E1={d}", "--validation", f"E1={v}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --validation E1") and "seeds 0, 1, 2" in err and err.count("\n") == 1
    assert page.read_text() == "# Results\n"
