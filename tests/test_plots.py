"""Every public figure of nscl.analysis.plots, drawn on small constructed data, is readable: panels of
a readable size, titles that do not overlap, integer task ticks, labelled axes without raw column names."""

from __future__ import annotations

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from nscl.analysis import plots  # noqa: E402

MIN_PANEL_IN = (2.2, 1.8)  # width, height of every panel in inches (at the saved 110 dpi: 240 x 200 px)
MAX_WIDTH_IN = 16.5  # wider figures are shrunk to the notebook's width, and their text with them
RAW_NAMES = {"value", "null_frac", "null_dim", "sigma_rel", "sigma", "i", "index", "score", "used", "kept_energy", "x"}
METHODS = ["finetune", "ewc", "joint", "adam_nscl", "lowrank", "nscl_lowrank", "clnp", "nscl_prune"]


def acc_matrix(T: int, drop: float) -> list[list]:
    return [[90.0 - drop * (i - j) if j <= i else None for j in range(T)] for i in range(T)]


def results(n: int = 8, T: int = 5) -> dict:
    return {
        m: {"acc": acc_matrix(T, k), "metrics": {"acc": 90.0 - k, "bwt": -k, "plasticity": 90.0, "forgetting": k}}
        for k, m in enumerate(METHODS[:n])
    }


def ns_table(n_runs: int = 3, tasks: int = 5, benchmarks=("split_fmnist", "permuted_fmnist")) -> pd.DataFrame:
    """Like nscl.analysis.tables.null_space_frame: two layers, r shrinking by a few dims per task."""
    rows = []
    for bench in benchmarks:
        for k in range(n_runs):
            for layer, d, r0 in (("backbone.layers.0", 784, 768), ("backbone.layers.1", 128, 126)):
                for t in range(1, tasks + 1):
                    r = r0 - 3 * (t - 1) - k
                    rows.append(
                        dict(label=METHODS[k], method=METHODS[k], benchmark=bench, layer=layer, base_layer=layer,
                             space="input", task=t, d=d, rule="energy" if k % 2 else "energy 0.99", null_dim=r,
                             null_frac=r / d, kept_energy=0.0 if t == 1 else 0.05 + 0.01 * k)
                    )  # fmt: skip
    return pd.DataFrame(rows)


def spectrum(d: int, T: int = 3) -> dict:
    return {f"backbone.layers.{k}/task{t}": np.logspace(-12 + t, 0, d) for k in range(2) for t in range(T)}


def figures() -> dict:
    """One call per public figure function, on data shaped like the notebooks'."""
    ns = ns_table()
    act = pd.DataFrame(
        [
            dict(label=lab, layer=layer, task=t, score=s)
            for lab in ("clnp", "nscl_prune")
            for layer in ("backbone.layers.0", "backbone.layers.1")
            for t in (1, 2, 3)
            for s in np.logspace(-3, 0, 20)
        ]
    )
    th = act.groupby(["label", "layer", "task"], as_index=False).first().assign(threshold=0.01)
    units = pd.DataFrame(
        [
            dict(label=lab, layer=layer, task=t, size=128, frozen=30 * t, free=128 - 30 * t, new=0, used=30 * t / 128)
            for lab in ("clnp", "nscl_prune")
            for layer in ("backbone.layers.0", "backbone.layers.1")
            for t in (1, 2, 3)
        ]
    )
    grid = pd.DataFrame(
        [
            dict(run="adam_nscl", method="adam_nscl", schedule="-", **{"lambda": np.nan}, ACC=95.0, BWT=0.1,
                 plasticity=95.0),
            *[
                dict(run=f"nscl_lowrank {s} lam={lam:g}", method="nscl_lowrank", schedule=s, **{"lambda": lam},
                     ACC=94.0 + lam, BWT=-1.0, plasticity=95.2)
                for s in ("full", "grow")
                for lam in (0.0, 0.001)
            ],
        ]
    ).set_index("run")  # fmt: skip
    sv = pd.DataFrame(
        [
            dict(label=lab, layer="backbone.layers.1", task=t, i=i, sigma=1.0 / i, sigma_rel=1.0 / i**t)
            for lab in ("nscl_lowrank full lam=0", "nscl_lowrank grow lam=0")
            for t in (1, 2, 3)
            for i in range(1, 129)
        ]
    )
    summary = pd.DataFrame(
        dict(method=METHODS[:4], benchmark=["split_fmnist", "split_fmnist", "permuted_fmnist", "permuted_fmnist"],
             plasticity=[98.0, 97.5, 75.0, 74.0], BWT=[-3.0, 0.0, -12.0, 0.1], **{"mean null fraction": [0.9, 0.91, 0.85, 0.86]},
             run=[f"r{k}" for k in range(4)])
    ).set_index("run")  # fmt: skip
    sweep = pd.DataFrame(
        [
            dict(method=m, benchmark=b, seed=s, plasticity=90.0 + s, bwt=-k - s)
            for k, m in enumerate(METHODS)
            for b in ("split_fmnist", "permuted_fmnist")
            for s in (0, 1)
        ]
    )
    capacity = pd.DataFrame(
        [
            dict(label=m, method=m, seed=s, task=t, quantity="new-task accuracy", layer=None, value=80.0 - k * t / 10)
            for k, m in enumerate(("adam_nscl", "nscl_sgp", "nscl_prune"))
            for s in (0, 1)
            for t in range(1, 31)
        ]
        + [
            dict(label=m, method=m, seed=s, task=t, quantity="r/d", layer=layer, value=max(0.9 - t / (30 + k), 0.05))
            for k, m in enumerate(("adam_nscl", "nscl_sgp", "nscl_prune"))
            for s in (0, 1)
            for layer in ("backbone.layers.0", "backbone.layers.1")
            for t in range(1, 31)
        ]
    )
    return {
        "capacity_curve": lambda: plots.capacity_curve(capacity),
        "accuracy_heatmaps": lambda: plots.accuracy_heatmaps(results(8)),
        "metrics_bars": lambda: plots.metrics_bars(results(4), title="four methods"),
        "null_space_dims": lambda: plots.null_space_dims(ns, row="benchmark"),
        "spectra": lambda: plots.spectra({"finetune": spectrum(784), "adam_nscl": spectrum(784)}),
        "spectrum_cut": lambda: plots.spectrum_cut(np.logspace(-16, 0, 784), {"a=10": 1e-14, "energy 0.9": 1e-3}),
        "kept_energy": lambda: plots.kept_energy(ns, row="benchmark"),
        "null_space_vs_metrics": lambda: plots.null_space_vs_metrics(summary, style="benchmark"),
        "pruning_activity": lambda: plots.pruning_activity(act, th),
        "units_used": lambda: plots.units_used(units),
        "lowrank_tradeoff": lambda: plots.lowrank_tradeoff(grid),
        "singular_values": lambda: plots.singular_values(sv),
        "null_space_by_rule": lambda: plots.null_space_by_rule(ns[ns["benchmark"] == "split_fmnist"]),
        "stability_plasticity": lambda: plots.stability_plasticity(sweep, col="benchmark"),
        "fronts": lambda: plots.fronts(_front()),
    }


def _front():
    """The fronts table of tests/test_fronts.py's constructed records."""
    from nscl.analysis import tables
    from test_fronts import _results

    return tables.front_table(_results())


NOT_FIGURES = {"short", "savefig", "label_styles"}


def test_every_public_figure_function_is_checked():
    public = {
        n
        for n, f in inspect.getmembers(plots, inspect.isfunction)
        if not n.startswith("_") and f.__module__ == plots.__name__
    }
    assert public - NOT_FIGURES == set(figures()), "add the new figure function to figures() in tests/test_plots.py"


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def readability_problems(fig) -> list[str]:
    """What makes a figure hard to read, as sentences (empty: readable)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    w_in, h_in = fig.get_size_inches()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    problems = []
    if w_in > MAX_WIDTH_IN:
        problems.append(f"the figure is {w_in:.1f} in wide (at most {MAX_WIDTH_IN}): wrap its panels")
    for k, ax in enumerate(axes):
        pos = ax.get_position()
        name = f"panel {k} ({ax.get_title()!r})"
        if pos.width * w_in < MIN_PANEL_IN[0] or pos.height * h_in < MIN_PANEL_IN[1]:
            problems.append(f"{name} is {pos.width * w_in:.1f} x {pos.height * h_in:.1f} in, below {MIN_PANEL_IN}")
        if not ax.get_xlabel():
            problems.append(f"{name} has no x label")
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            if label in RAW_NAMES:
                problems.append(f"{name} is labelled with the raw column name {label!r}")
        if "task" in ax.get_xlabel():
            lo, hi = sorted(ax.get_xlim())
            ticks = [lab.get_text().replace("\u2212", "-") for t, lab in zip(ax.get_xticks(), ax.get_xticklabels())]
            ticks = [t for t, v in zip(ticks, ax.get_xticks()) if lo <= v <= hi]
            if any(not t.lstrip("-").isdigit() for t in ticks):
                problems.append(f"{name} has fractional task ticks {ticks}")
    rows = {}
    for ax in axes:
        rows.setdefault(round(ax.get_position().y0, 3), []).append(ax)
    for row in rows.values():
        if not any(ax.get_ylabel() for ax in row):
            problems.append(f"a row of panels has no y label ({[ax.get_title() for ax in row]})")
    texts = [ax.title for ax in axes if ax.get_title()]
    if fig._suptitle is not None and fig._suptitle.get_text():
        texts.append(fig._suptitle)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if _overlaps(boxes[i][1], boxes[j][1]):
                problems.append(f"titles {boxes[i][0]!r} and {boxes[j][0]!r} overlap")
    return problems


@pytest.mark.parametrize("name", sorted(figures()))
def test_figure_is_readable(name):
    fig = figures()[name]()
    try:
        assert readability_problems(fig) == []
    finally:
        plt.close(fig)


def test_the_readability_check_catches_what_it_should():
    """The checker itself: tiny panels, an overlapping suptitle, fractional task ticks, raw names."""
    fig, axes = plt.subplots(1, 8, figsize=(8, 2))
    axes[0].plot([1, 2], [1, 2])
    axes[0].set_xlabel("after task")
    axes[0].set_xticks([1, 1.5, 2])
    axes[1].set_xlabel("i")
    axes[4].set_title("a title under the suptitle")
    fig.suptitle("a suptitle over the panels", y=0.95, fontsize=16)
    problems = "\n".join(readability_problems(fig))
    plt.close(fig)
    for what in ("below", "fractional task ticks", "raw column name 'i'", "overlap", "no x label"):
        assert what in problems


def test_accuracy_heatmaps_wrap_many_methods():
    fig = plots.accuracy_heatmaps(results(8))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len({round(ax.get_position().x0, 3) for ax in visible}) == 4  # two lines of four, not one of eight
    assert "ACC 90.00  BWT +0.00" in visible[0].get_title()
    plt.close(fig)


def test_null_space_dims_shows_a_few_dims_out_of_hundreds():
    """A linear axis per layer: the 3-dim steps of ns_table span a visible part of the axis."""
    fig = plots.null_space_dims(ns_table(1, benchmarks=("split_fmnist",)))
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        assert ax.get_yscale() == "linear" and hi - lo < 50
    plt.close(fig)
