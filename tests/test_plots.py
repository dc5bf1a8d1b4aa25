"""Shared figures: nothing cut off, scales that say what they share, grids that stay readable."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from nscl.analysis import plots  # noqa: E402


def ns_table(n_runs: int, tasks: int = 5) -> pd.DataFrame:
    """A null-space table like nscl.analysis.tables.null_space_frame: two layers, r shrinking per task."""
    rows = []
    for k in range(n_runs):
        for layer, d, r0 in (("backbone.layers.0", 785, 514), ("backbone.layers.1", 65, 13)):
            for t in range(1, tasks + 1):
                r = max(r0 // (2 ** (t - 1)), 1)
                rows.append(
                    {
                        "label": f"0{k % 4}_notebook/method_{k}",
                        "method": "adam_nscl",
                        "seed": 0,
                        "layer": layer,
                        "task": t,
                        "d": d,
                        "null_dim": r,
                        "null_frac": r / d,
                        "kept_energy": 10.0 ** -(4 + 3 * k) if t > 1 else 0.0,
                    }
                )
    return pd.DataFrame(rows)


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_null_space_dims_keeps_the_top_point_inside_the_axes():
    ns = ns_table(1)
    fig = plots.null_space_dims(ns)
    r_axes = [ax for ax in visible_axes(fig) if ax.get_yscale() == "symlog"]
    assert r_axes
    for ax in r_axes:
        bottom, top = ax.get_ylim()
        assert bottom == 0 and top >= 1.5 * ns["null_dim"].max()  # r = 514 is not on the frame
        assert np.log10(top) == int(np.log10(top))  # a power of ten: a labelled top tick
    plt.close(fig)


@pytest.mark.parametrize("n_runs", [1, 6, 14])
def test_run_grids_cap_their_columns_and_width(n_runs):
    ns = ns_table(n_runs)
    for fig in (plots.null_space_dims(ns), plots.kept_energy(ns)):
        lefts = {round(ax.get_position().x0, 3) for ax in visible_axes(fig)}
        assert len(lefts) <= 3, "at most three runs per line"
        assert fig.get_size_inches()[0] <= 10.5  # about 1,150 px at the saved 110 dpi: no shrinking to tiny fonts
        titles = [ax.get_title() for ax in visible_axes(fig) if ax.get_title()]
        assert all(max(len(line) for line in t.split("\n")) <= 30 for t in titles)
        plt.close(fig)


def test_kept_energy_panels_share_one_labelled_log_axis():
    ns = ns_table(2)  # run 0 spans 1e-4, run 1 spans 1e-7: one scale for both
    fig = plots.kept_energy(ns)
    axes = visible_axes(fig)
    assert len(axes) == 2
    assert len({ax.get_ylim() for ax in axes}) == 1 and all(ax.get_yscale() == "log" for ax in axes)
    bottom, top = axes[0].get_ylim()
    assert bottom <= plots.KEPT_ENERGY_FLOOR and top >= 1e-4  # zeros drawn at the floor, the largest value inside
    assert "one log y-axis for all panels" in fig._suptitle.get_text()
    plt.close(fig)


def test_accuracy_heatmap_titles_use_the_table_decimals():
    res = {"ft": {"acc": [[90.0, None], [80.0, 70.0]], "metrics": {"acc": 75.0, "bwt": -10.0}}}
    fig = plots.accuracy_heatmaps(res)
    assert "ACC 75.00  BWT -10.00" in fig.axes[0].get_title()
    plt.close(fig)
