"""The capacity study's pieces through the real loop: SGP's scaled projection (nscl_sgp) between its
limits, and the capacity record every run carries (plasticity, r/d, exhaustion, free units, rank)."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from nscl.core import metrics
from nscl.experiment import config
from nscl.experiment import trainer as train


def resolved(**overrides):
    return config.resolve(overrides={**TINY, "threads": 1, "checkpoint": False, **overrides})


# 54 training rows < 64 inputs and < 64 units: exact null spaces after task 1 (as tests/test_train.py)
INVARIANT = dict(
    samples_per_task=60,
    hidden=[64, 64],
    epochs=3,
    batch_size=16,
    lr=1e-2,
    n_tasks=2,
    nullspace_rule="a_min",
)


def task1_logit_change(cfg) -> float:
    """Relative change of task-1 logits on its training inputs from the end of task 1 to the end of task 2."""
    trainer = train.Trainer(cfg)
    x, _ = trainer.stream[0].train.get(torch.arange(len(trainer.stream[0].train)))
    out = []
    for t in range(2):
        trainer.seed_task(t)
        trainer.train_task(t)
        trainer.end_task(t)
        trainer.model.eval()
        with torch.no_grad():
            out.append(trainer.model(x, 0).clone())
    return ((out[1] - out[0]).norm() / out[0].norm()).item()


def test_nscl_sgp_between_hard_projection_and_plain_adam():
    """A huge importance scale makes every protected direction's s = 1: task-1 logits stay as under
    Adam-NSCL's hard projection. Scale 0 (s = sigma / sigma_max) lets task 2 move them, though less
    than unprojected fine-tuning does."""
    hard = task1_logit_change(resolved(method="adam_nscl", **INVARIANT))
    sgp_hard = task1_logit_change(resolved(method="nscl_sgp", sgp_scale=1e12, **INVARIANT))
    sgp_soft = task1_logit_change(resolved(method="nscl_sgp", sgp_scale=0.0, **INVARIANT))
    free = task1_logit_change(resolved(method="finetune", **INVARIANT))
    assert hard < 1e-5 and sgp_hard < 1e-5, (hard, sgp_hard)
    assert sgp_soft > 100 * max(sgp_hard, 1e-7)
    assert sgp_soft < free


def test_capacity_fractions_and_exhaustion_task():
    acc = [[90.0, None, None], [80.0, 70.0, None], [75.0, 60.0, 50.0]]
    null = {"a": {"d": 8, "dims": [6, 2, 1]}, "b": {"d": 4, "dims": [4, 4, 3]}}
    cap = metrics.capacity(acc, null, {"free_units": {"a": [3, 2, 0]}})
    assert cap["plasticity"] == [90.0, 70.0, 50.0]
    assert cap["layers"]["a"]["null_fraction"] == [0.75, 0.25, 0.125]
    assert cap["layers"]["a"]["exhausted_at"] == 3  # 0.25 is not below 0.25; 0.125 is, after task 3
    assert cap["layers"]["b"]["exhausted_at"] is None
    assert cap["free_units"] == {"a": [3, 2, 0]}
    # a partial run: only the finished tasks
    assert metrics.capacity(acc[:2] + [[None] * 3], null)["layers"]["a"]["null_dim"] == [6, 2]


@pytest.fixture(scope="module")
def records():
    torch.set_num_threads(1)
    out = {}
    for m in ("adam_nscl", "clnp", "nscl_prune", "nscl_lowrank", "finetune"):
        out[m] = train.run(resolved(method=m))
    return out


def test_every_run_records_its_capacity(records):
    for m, res in records.items():
        cap = res["capacity"]
        T = len(res["acc"])
        assert cap["plasticity"] == [res["acc"][t][t] for t in range(T)], m
        assert set(cap["layers"]) == set(res["null_space"]), m
        for name, layer in cap["layers"].items():
            h = res["null_space"][name]
            assert layer["null_fraction"] == [r / h["d"] for r in h["dims"]]
            assert layer["exhausted_at"] == metrics.exhausted_at(layer["null_fraction"])
    assert "free_units" not in records["adam_nscl"]["capacity"] and "active_rank" not in records["finetune"]["capacity"]
    for m in ("clnp", "nscl_prune"):
        units = records[m]["method_diagnostics"]["units"]
        assert records[m]["capacity"]["free_units"] == {n: u["free"] for n, u in units.items()}
    rank = records["nscl_lowrank"]["capacity"]["active_rank"]
    assert rank == {n: r["active_rank"] for n, r in records["nscl_lowrank"]["method_diagnostics"]["lowrank"].items()}
    assert all(len(v) == 3 for v in rank.values())


def test_learning_in_free_units(records):
    """clnp freezes kept units: all of a task's learning lands in the units free at its start (share 1).
    nscl_prune also trains kept units (projected), so part of it lands there (share < 1 after task 1)."""
    clnp = records["clnp"]["capacity"]["learning_in_free_units"]
    assert all(s == pytest.approx(1.0, abs=1e-12) for shares in clnp.values() for s in shares if s is not None)
    prune = records["nscl_prune"]["capacity"]["learning_in_free_units"]
    assert all(shares[0] == pytest.approx(1.0) for shares in prune.values())  # task 1: every unit is free
    assert any(s < 0.99 for shares in prune.values() for s in shares[1:] if s is not None)


# ---- the capacity table and curve from constructed records ---------------------------------------
def fake_run(method: str, seed: int, plast: list, fractions: dict, energy: float = 0.9, status: str = "complete"):
    T = len(plast)
    acc = [[plast[j] - (i - j) * 0.5 if j <= i else None for j in range(T)] for i in range(T)]
    null = {n: {"d": 100, "dims": [round(q * 100) for q in f]} for n, f in fractions.items()}
    params = {**config.defaults(), "method": method, "seed": seed, "energy": energy}
    return {
        "status": status,
        "params": params,
        "acc": acc,
        "metrics": metrics.summary(acc),
        "capacity": metrics.capacity(acc, null),
    }


def test_capacity_table_means_last_tasks_and_exhaustion_per_seed():
    T = 12
    runs = {
        "a0": fake_run("adam_nscl", 0, [80.0] * 2 + [70.0] * 10, {"backbone.layers.1": [0.9] * 5 + [0.2] * 7}),
        "a1": fake_run("adam_nscl", 1, [80.0] * 2 + [72.0] * 10, {"backbone.layers.1": [0.9] * 8 + [0.2] * 4}),
        "a2": fake_run("adam_nscl", 2, [80.0] * T, {"backbone.layers.1": [0.9] * T}),
        "b0": fake_run("adam_nscl", 0, [80.0] * T, {"backbone.layers.1": [0.9] * T}, energy=0.99),
        "x": fake_run("adam_nscl", 3, [10.0] * T, {"backbone.layers.1": [0.0] * T}, status="failed"),
    }
    from nscl.analysis import tables

    tab = tables.capacity_table(runs).set_index("method")
    assert list(tab.index) == ["adam_nscl", "adam_nscl energy=0.99"]  # failed run left out
    row = tab.loc["adam_nscl"]
    assert row["n"] == 3 and row["seeds"] == "0,1,2"
    assert row["plasticity last 10"] == "74.00 ± 5.29"  # means 70, 72, 80 over tasks 3..12
    assert row["exhausted backbone.layers.1"] == "6, 9, never"
    assert tab.loc["adam_nscl energy=0.99", "plasticity last 10"] == "80.00"  # one seed: no ± 0
    frame = tables.capacity_frame(runs)
    acc_rows = frame[
        (frame["quantity"] == "new-task accuracy") & (frame["seed"] == 0) & (frame["label"] == "adam_nscl")
    ]
    assert acc_rows["task"].tolist() == list(range(1, T + 1)) and acc_rows["value"].iloc[-1] == 70.0


def test_capacity_curve_panels_ticks_and_bands():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.ticker import MaxNLocator

    from nscl.analysis import plots, tables

    T = 7
    runs = {
        f"{m}{s}": fake_run(
            m,
            s,
            [80.0 - t * (s + 1) - 5 * k for t in range(T)],
            {"backbone.layers.0": [1 - t / 10 for t in range(T)], "backbone.layers.1": [0.8 - 0.1 * k] * T},
        )
        for k, m in enumerate(("adam_nscl", "finetune"))
        for s in (0, 1)
    }
    fig = plots.capacity_curve(tables.capacity_frame(runs))
    axes = fig.axes
    assert [a.get_ylabel() for a in axes] == [
        "new-task accuracy (%)",
        "null-space fraction r/d",
        "null-space fraction r/d",
    ]
    assert all(a.get_xlabel() == "task" and isinstance(a.xaxis.get_major_locator(), MaxNLocator) for a in axes)
    # one mean line per method, and a shaded ± std band where seeds differ (accuracy panel)
    assert len([ln for ln in axes[0].get_lines() if len(ln.get_xdata()) == T]) == 2
    assert len(axes[0].collections) == 2
    # layers.0: both methods have the same r/d, so one line, labelled with both in the panel's legend
    assert len([ln for ln in axes[1].get_lines() if len(ln.get_xdata()) == T]) == 1
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["adam_nscl, finetune"]
    # the panels without shared lines share the figure's legend
    assert axes[2].get_legend() is None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["adam_nscl", "finetune"]


def test_capacity_curve_tells_every_label_apart_by_colour_and_dashes():
    """Fourteen labels would reuse tab10's colours: a method keeps one colour and its variants get their
    own dash pattern, so no two labels look alike; the legend and the lines use those looks."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex

    from nscl.analysis import plots, tables

    T, frac = 4, {"backbone.layers.0": [0.9] * 4}
    methods = ("adam_nscl", "nscl_prune", "nscl_lowrank", "nscl_sgp", "finetune", "lowrank", "joint")
    runs = {
        f"{m}{e}": fake_run(m, 0, [80.0 - k - 20 * (e > 0.9)] * T, frac, energy=e)
        for k, m in enumerate(methods)
        for e in (0.9, 0.99)
    }
    frame = tables.capacity_frame(runs)
    labels = list(dict.fromkeys(frame["label"]))
    looks = {k: (to_hex(c), str(d)) for k, (c, d) in plots.label_styles(labels).items()}
    assert len(looks) == 14 and len(set(looks.values())) == 14
    assert len({c for c, _ in looks.values()}) == len(methods)  # one colour per method
    assert looks["adam_nscl"][0] == looks["adam_nscl energy=0.99"][0] and looks["adam_nscl"][1] == ""
    fig = plots.capacity_curve(frame)
    # the accuracy panel's fourteen lines differ: the shared legend names them (in the empty slot or below it)
    legend = fig.legends[0] if fig.legends else fig.axes[0].get_legend()
    shown = {t.get_text(): to_hex(ln.get_color()) for t, ln in zip(legend.get_texts(), legend.get_lines())}
    assert shown == {k: c for k, (c, _) in looks.items()}
    drawn = {ln.get_label(): to_hex(ln.get_color()) for ln in fig.axes[0].get_lines()}
    assert drawn == shown
    styles = {ln.get_linestyle() for ln in legend.get_lines()}
    assert styles == {"-", "--"}  # solid defaults, dashed variants
    # every label has the same r/d on layers.0: one line there, its legend naming all fourteen
    (line,) = [ln for ln in fig.axes[1].get_lines() if len(ln.get_xdata()) == T]
    assert sorted(line.get_label().replace("\n", " ").split(", ")) == sorted(looks)
