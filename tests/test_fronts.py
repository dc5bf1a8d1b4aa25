"""The fronts (issue 24): the table builder, where one front lies above another, pruned units' reuse,
the figure and the results-page section, on constructed run records whose numbers are known."""

from __future__ import annotations

import struct
import time

import pytest

from nscl.analysis import tables
from nscl.apps import results_page
from nscl.apps.sweep import spec as sweep
from nscl.apps.sweep import state as sweep_state
from nscl.core import metrics
from nscl.experiment import config
from nscl.experiment import records as runs

T = 12


def _record(params: dict, acc: float, bwt: float, plast: float, status="complete", cap_extra=None) -> dict:
    """A run record with final ACC ``acc``, BWT ``bwt`` and new-task accuracy ``plast`` at every task."""
    A = [[plast] * (i + 1) + [None] * (T - i - 1) for i in range(T)]
    cap = metrics.capacity(A, {"backbone.layers.1": {"d": 10, "dims": [5] * T}}, cap_extra)
    return {
        "schema": runs.SCHEMA,
        "status": status,
        "params": {**config.defaults(), **params},
        "stream": {"input_shape": [1, 28, 28], "tasks": [{"n_classes": 10}] * T},
        "acc": A,
        "metrics": {"acc": acc, "bwt": bwt, "plasticity": plast, "forgetting": -bwt, "tasks_done": T},
        "capacity": cap,
        "timing": {"total_s": 10.0},
    }


# (params, [(ACC, BWT, plasticity) per seed 0, 1])
POINTS = [
    ({"method": "adam_nscl", "energy": 0.9}, [(80.0, -4.0, 84.0), (82.0, -4.0, 86.0)]),
    ({"method": "adam_nscl", "energy": 0.99}, [(78.0, -2.0, 80.0), (78.0, -2.0, 80.0)]),
    ({"method": "adam_nscl", "energy": 0.8}, [(79.0, -6.0, 88.0), (79.0, -6.0, 88.0)]),
    ({"method": "nscl_sgp", "sgp_scale": 1.0}, [(83.0, -3.0, 87.0), (83.0, -3.0, 87.0)]),
    ({"method": "adam_nscl", "projector": "scaled", "sgp_scale": 100.0}, [(81.0, -2.5, 83.0), (81.0, -2.5, 83.0)]),
    # rank front: at BWT -3 the threshold front (interpolated between -4/85 and -2/80) is at 82.5: 84 is above
    ({"method": "nscl_lowrank", "rank_schedule": [0.5]}, [(82.0, -3.0, 84.0), (82.0, -3.0, 84.0)]),
    ({"method": "nscl_lowrank", "rank_schedule": [0.25, 0.5, 1.0]}, [(70.0, -8.0, 70.0), (70.0, -8.0, 70.0)]),
    ({"method": "nscl_prune", "prune_margin": 1.0}, [(85.0, -0.5, 86.0), (86.0, -0.5, 86.0)]),
    ({"method": "nscl_prune", "prune_margin": 2.0, "prune_reclaim": True}, [(88.0, -0.8, 89.0), (88.0, -0.8, 89.0)]),
    ({"method": "finetune"}, [(50.0, -30.0, 90.0), (50.0, -30.0, 90.0)]),
]


def _results(points=POINTS, seeds=(0, 1)):
    out = {}
    for i, (p, vals) in enumerate(points):
        for s, (a, b, q) in zip(seeds, vals):
            out[f"r{i}s{s}"] = _record({**p, "seed": s, "n_tasks": T}, a, b, q)
    out["failed"] = _record({"method": "adam_nscl", "energy": 0.9, "seed": 9}, 0.0, -99.0, 0.0, status="failed")
    return out


def test_front_table_groups_curves_and_knob_values_over_seeds():
    front = tables.front_table(_results())
    row = front.set_index(["curve", "value"])
    assert set(front["curve"]) == {
        "adam_nscl",
        "scaled",
        "nscl_lowrank",
        "nscl_prune",
        "nscl_prune reclaim",
        "finetune",
    }
    r = row.loc[("adam_nscl", "0.9")]
    assert r["n"] == 2 and r["seeds"] == "0,1"  # the failed seed-9 run is left out
    assert r["acc_mean"] == 81.0 and r["acc_std"] == pytest.approx(2**0.5)
    assert r["plasticity_last_mean"] == 85.0 and r["bwt_mean"] == -4.0
    assert list(front[front["curve"] == "adam_nscl"]["x"]) == [0.8, 0.9, 0.99]  # sorted by the knob
    assert list(front[front["curve"] == "scaled"]["value"]) == ["1.0", "100.0"]  # nscl_sgp and adam_nscl scaled
    # a schedule is placed at its mean active fraction over the 12 tasks: (0.25 + 0.5 + 10 * 1.0) / 12
    assert row.loc[("nscl_lowrank", "0.25-0.5-1.0"), "x"] == pytest.approx(10.75 / 12)
    assert row.loc[("finetune", ""), "knob"] != row.loc[("finetune", ""), "knob"]  # no knob (NaN)


def test_front_above_interpolates_the_reference_at_the_same_bwt():
    front = tables.front_table(_results())
    cmp = tables.front_above(front, "nscl_lowrank", "adam_nscl").set_index("value")
    # threshold front by BWT: (-6, 88), (-4, 85), (-2, 80); at -3: 82.5
    assert cmp.loc["0.5", "reference_plasticity"] == pytest.approx(82.5)
    assert cmp.loc["0.5", "gap"] == pytest.approx(1.5)
    assert not cmp.loc["0.5", "dominated"]
    assert (
        cmp.loc["0.25-0.5-1.0", "gap"] != cmp.loc["0.25-0.5-1.0", "gap"]
    )  # NaN: BWT -8 is outside the threshold front
    assert cmp.loc["0.25-0.5-1.0", "dominated"]  # (-6, 88) beats (-8, 70) in both
    verdict = results_page.rank_verdict(front)
    assert verdict.startswith("**Above somewhere**: at rank budget `0.5` the rank front's plasticity is +1.50")
    assert "supported" in verdict
    worse = [(p, [(a, b, q - 3.0) for a, b, q in v]) if p["method"] == "nscl_lowrank" else (p, v) for p, v in POINTS]
    v2 = results_page.rank_verdict(tables.front_table(_results(worse)))
    assert v2.startswith("**Not above**") and "refuted" in v2  # 81 < 82.5 at BWT -3
    assert "(1 of 2 rank points are beaten" in v2  # (-6, 88) beats (-8, 67); nothing beats (-3, 81) in both
    all_low = [
        (p, [(a, b - 5.0, 60.0) for a, b, _ in v]) if p["method"] == "nscl_lowrank" else (p, v) for p, v in POINTS
    ]
    assert results_page.rank_verdict(tables.front_table(_results(all_low))).startswith("**Nowhere above**")


def test_reuse_table_lifetimes_used_up_and_learning():
    cap = {
        "free_units": {"a": [4, 2, 0], "b": [3, 0, 0]},
        "units": {"a": 8, "b": 4},
        "free_lifetime": {"a": [1, 1, 2, 3], "b": [1, 2]},
        "reclaimed_units": {"a": [0, 1, 0], "b": [0, 0, 2]},
        "learning_in_free_units": {"a": [1.0, 0.5, None], "b": [0.5, 0.0, 0.0]},
    }
    res = {"x": _record({"method": "nscl_prune", "prune_reclaim": True, "seed": 0}, 80.0, -1.0, 85.0, cap_extra=cap)}
    r = tables.reuse_table(res).iloc[0]
    assert r["curve"] == "nscl_prune reclaim" and r["value"] == "1.0"
    assert r["free_last"] == 0.0 and r["freed_used_up"] == [3]  # b empty after task 2, a after task 3
    assert r["lifetime"] == pytest.approx(10 / 6) and r["reclaimed"] == 3
    assert r["learning_free_last"] == pytest.approx(2.0 / 5)


def _fake_sweep(root, name, points, seeds):
    grid = []
    for p, _ in points:
        grid.append({k: [v] for k, v in p.items()} | {"seed": list(seeds)})
    sw = sweep.load(
        {
            "name": f"fake_{name}",
            "description": "twelve permuted tasks",
            "run": "cli",
            "params": {"benchmark": "permuted_fmnist", "n_tasks": T},
            "grid": grid,
            "out": str(root / name),
            "executor": {"kind": "local", "parallel": 1, "threads": 1},
        }
    )
    specs = sweep.expand(sw)
    for spec in specs:
        p = spec["cfg"]
        vals = next(v for q, v in points if all(p.get(k) == x for k, x in q.items()))
        a, b, q = vals[list(seeds).index(p["seed"])]
        d = root / name / "runs" / spec["name"]
        runs.write_json(d / sweep_state.JOB, {"started": time.time() - 60, "pid": 1, "host": "x"})
        runs.write_json(d / runs.RESULTS, _record(p, a, b, q))
    runs.write_json(root / name / sweep_state.MANIFEST, {"sweep": sw, "specs": specs})
    return root / name


def _png_width(path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def test_fronts_section_verdict_goal_on_validation_choice_and_figure(tmp_path):
    test = _fake_sweep(tmp_path, "e3", POINTS, (0, 1))
    # on the validation seeds nscl_prune's margin 1.0 wins (the test seeds prefer the other: not used)
    val_points = [(p, v) for p, v in POINTS if p["method"] != "nscl_prune"] + [
        ({"method": "nscl_prune", "prune_margin": 1.0}, [(90.0, -0.5, 90.0)] * 2),
        ({"method": "nscl_prune", "prune_margin": 2.0, "prune_reclaim": True}, [(80.0, -0.5, 80.0)] * 2),
    ]
    val = _fake_sweep(tmp_path, "e3val", val_points, (100, 101))
    page = tmp_path / "docs" / "results.md"
    lines = results_page.fronts_lines({"E3": [test]}, page, {"E3": val})
    text = "\n".join(lines)
    assert lines[0].startswith("## ") and "front" in lines[0].lower()
    assert "| `adam_nscl` | energy | 0.9 | 2 | 81.00 ± 1.41 | -4.00 ± 0.00 | 85.00 ± 1.41 |" in text
    assert "**Above somewhere**: at rank budget `0.5`" in text
    assert "- `nscl_prune`: 1.0" in lines and "- `adam_nscl`: 0.9" in lines and "- `scaled`: 1.0" in lines
    # best rival at its chosen value: scaled sgp_scale 1.0, 83.00. nscl_prune at 1.0: 85.5 (+2.5), BWT -0.5: met.
    goal = {ln.split("`")[1]: ln for ln in lines if ln.startswith("- `") and "BWT" in ln}
    assert goal["nscl_prune"].endswith("**met**.") and "(+2.50)" in goal["nscl_prune"]
    # reclaim at 2.0: 88 (+5), BWT -0.8: met; lowrank at 0.5 (its validation best): 82 (-1.00), BWT -3: not met
    assert goal["nscl_lowrank"].endswith("not met (ACC -1.00 < +1; BWT -3.00 < -1).")
    assert "**Goal E3**: met by `nscl_prune`, `nscl_prune reclaim`." in text
    fig = tmp_path / "docs" / "results_fronts_E3.png"
    assert fig.read_bytes()[:4] == b"\x89PNG" and _png_width(fig) <= 960
    assert "Command: `python -m nscl sweep run" in text


def test_results_cli_writes_the_fronts_section_after_the_capacity_section(tmp_path, capsys):
    from nscl.apps import cli

    d = _fake_sweep(tmp_path, "e1", POINTS, (0, 1))
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nkept\n\n" + results_page.CAPACITY_HEADING + "\n\nstale\n")
    assert cli.main(["results", "-o", str(page), "--fronts", f"E1={d}", "--fronts-validation", f"E1={d}"]) == 0
    text = page.read_text()
    assert text.startswith("# Results\n\nkept\n\n" + results_page.CAPACITY_HEADING)
    assert "stale" not in text and text.count(results_page.FRONTS_HEADING) == 1
    assert "**Goal E1**:" in text
    assert cli.main(["results", "-o", str(page), "--fronts-validation", f"E3={d}", "--fronts", f"E1={d}"]) == 2
    assert "no --fronts E3=DIR" in capsys.readouterr().err
