"""Every public figure of nscl.analysis.plots, drawn on data shaped like the notebooks' (many methods,
10x10 and 30x30 accuracy matrices, 30 tasks, identical runs), is readable where JupyterLab shows it: the
PNG the notebook shows (IPython's own renderer: the figure's dpi, tight box) is at most 960 px wide, so
it is not scaled down; every text has capitals at least 9 px high there; panels have a readable size,
titles and legends do not overlap, task ticks are integers, axes are labelled without raw column names,
and no line in a panel hides another (same look or same values)."""

from __future__ import annotations

import inspect
import struct

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from IPython.core.pylabtools import print_figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.textpath import TextPath  # noqa: E402

from nscl.analysis import plots  # noqa: E402

MAX_WIDTH_PX = 960  # JupyterLab's output area beside an open file browser: 968 px (issue 27)
MIN_TEXT_PX = 9  # height of a capital letter where the figure is shown
MIN_PANEL_PX = (220, 170)  # width, height of every panel where the figure is shown
RAW_NAMES = {"value", "null_frac", "null_dim", "sigma_rel", "sigma", "i", "index", "score", "used", "kept_energy", "x"}
METHODS = ["finetune", "ewc", "joint", "adam_nscl", "lowrank", "nscl_lowrank", "clnp", "nscl_prune", "nscl_sgp"]
LAYERS = ("backbone.layers.0", "backbone.layers.1")


def acc_matrix(T: int, drop: float) -> list[list]:
    return [[90.0 - drop * (i - j) if j <= i else None for j in range(T)] for i in range(T)]


def results(n: int = 9, T: int = 5) -> dict:
    return {
        m: {"acc": acc_matrix(T, k), "metrics": {"acc": 90.0 - k, "bwt": -k, "plasticity": 90.0, "forgetting": k}}
        for k, m in enumerate(METHODS[:n])
    }


def ns_table(methods=METHODS, tasks: int = 5, benchmarks=("split_fmnist",), layers=LAYERS) -> pd.DataFrame:
    """Like nscl.analysis.tables.null_space_frame after notebook 05: on the first layer every method keeps
    the same null space but two (one dim less at task 4), on the others three groups of identical runs."""
    rows = []
    for bench in benchmarks:
        for k, m in enumerate(methods):
            for n_layer, layer in enumerate(layers):
                d, r0 = (784, 768) if n_layer == 0 else (128, 126)
                for t in range(1, tasks + 1):
                    off = (k in (5, 6) and t >= 4) if n_layer == 0 else (k % 3) * (t >= 3)
                    r = r0 - 3 * (t - 1) - int(off)
                    rows.append(
                        dict(label=m, method=m, benchmark=bench, layer=layer, base_layer=layer, space="input", task=t,
                             d=d, rule="energy" if k % 2 else "energy 0.99", null_dim=r, null_frac=r / d,
                             kept_energy=0.0 if t == 1 else 0.05 + 0.01 * (k % 3), rank=d - r)
                    )  # fmt: skip
    return pd.DataFrame(rows)


def spectrum(d: int, T: int = 5, layers: int = 2) -> dict:
    return {f"backbone.layers.{k}/task{t}": np.logspace(-12 + t, 0, d) for k in range(layers) for t in range(T)}


def capacity_frame(labels, tasks: int = 30, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Like nscl.analysis.tables.capacity_frame on 30 permuted tasks: the first layer's r/d depends only on
    the energy (every method at one energy on one line), the second differs per method."""
    rows = []
    for k, lab in enumerate(labels):
        hi = "0.99" in lab
        for s in seeds:
            for t in range(1, tasks + 1):
                rows.append(dict(label=lab, method=lab.split()[0], seed=s, task=t, quantity="new-task accuracy",
                                 layer=None, value=80.0 - (k + 1) * t / 10 + s * 0.1))  # fmt: skip
                for n, layer in enumerate(LAYERS):
                    base = (0.5 if hi else 0.95) * np.exp(-t / 12)
                    value = base if n == 0 else base * (1 - 0.02 * k) + 0.001 * s
                    rows.append(dict(label=lab, method=lab.split()[0], seed=s, task=t, quantity="r/d", layer=layer,
                                     value=value))  # fmt: skip
    return pd.DataFrame(rows)


CAPACITY_LABELS = [
    "adam_nscl energy=0.99", "adam_nscl", "finetune", "lowrank", "nscl_lowrank energy=0.99", "nscl_lowrank",
    "nscl_prune energy=0.99", "nscl_prune", "nscl_sgp energy=0.99", "nscl_sgp", "joint",
]  # fmt: skip


def figures() -> dict:
    """Calls of every public figure function, on data shaped like the notebooks' and the results page's
    (``name[case]``)."""
    ns = ns_table()
    ns04 = ns_table(METHODS[3:6], benchmarks=("split_fmnist", "permuted_fmnist"),
                    layers=("backbone.conv.0", "backbone.conv.1", "backbone.head"))  # fmt: skip
    act = pd.DataFrame(
        [
            dict(label=lab, layer=layer, task=t, score=s * t)
            for lab in ("clnp", "nscl_prune")
            for layer in LAYERS
            for t in range(1, 6)
            for s in np.logspace(-3, 0, 20)
        ]
    )
    th = act.groupby(["label", "layer", "task"], as_index=False).first().assign(threshold=0.01)
    units = pd.DataFrame(
        [
            dict(label=lab, layer=layer, task=t, size=128, frozen=f, free=128 - f, new=0, used=f / 128)
            for lab in ("clnp", "nscl_prune", "clnp margin=0.5", "nscl_prune margin=0.5")
            for layer in (*LAYERS, "backbone.layers.2")
            for t in (1, 2, 3, 4, 5)
            for f in [min(128, 30 * t if layer != "backbone.layers.2" else 128)]
        ]
    )
    grid = pd.DataFrame(
        [
            dict(run="adam_nscl", method="adam_nscl", schedule="-", **{"lambda": np.nan}, ACC=95.0, BWT=0.1,
                 plasticity=95.0),
            *[
                dict(run=f"{m} {s} lam={lam:g}", method=m, schedule=s, **{"lambda": lam},
                     ACC=94.0 + lam * (m == "lowrank"), BWT=-1.0, plasticity=95.2 - lam * (s == "grow"))
                for m in ("lowrank", "nscl_lowrank")
                for s in ("full", "grow")
                for lam in (0.0, 0.001, 0.01)
            ],
        ]
    ).set_index("run")  # fmt: skip
    sv = pd.DataFrame(
        [
            dict(label=lab, layer="backbone.layers.1", task=t, i=i, sigma=1.0 / i, sigma_rel=1.0 / i**t)
            for lab in ("nscl_lowrank full lam=0", "nscl_lowrank grow lam=0", "nscl_lowrank full lam=0.01")
            for t in range(1, 6)
            for i in range(1, 129)
        ]
    )
    summary = pd.DataFrame(
        [
            dict(run=f"{b}/{m}", method=m, benchmark=b, plasticity=90.0 - k, BWT=-k / 2.0,
                 **{"mean null fraction": 0.8 + k / 100})
            for k, m in enumerate(METHODS)
            for b in ("split_fmnist", "permuted_fmnist")
        ]
    ).set_index("run")  # fmt: skip
    sweep = pd.DataFrame(
        [
            dict(method=m, benchmark=b, size=z, seed=s, plasticity=90.0 + s, bwt=-k - s)
            for k, m in enumerate(CAPACITY_LABELS)
            for b in ("split_fmnist", "permuted_fmnist", "split_cifar")
            for z in ("suite", "full")
            for s in (0, 1, 2)
        ]
    )
    cuts = {"a=10, raw λ_min (official)": 1e-15, "a=10, rank floor": 1.7e-9, "a=1e+12, rank floor": 170.0,
            "run's rule (energy)": 4.0}  # fmt: skip
    many = {f"permuted_fmnist/{m} energy=0.99": r for m, r in results(9, 10).items()}
    return {
        "capacity_curve[11 labels, 30 tasks]": lambda: plots.capacity_curve(
            capacity_frame(CAPACITY_LABELS), title="permuted_fmnist"
        ),
        "capacity_curve[6 labels, 5 tasks]": lambda: plots.capacity_curve(
            capacity_frame(CAPACITY_LABELS[:6], tasks=5, seeds=(0,))
        ),
        "accuracy_heatmaps[9 x 5 tasks]": lambda: plots.accuracy_heatmaps(results(9, 5)),
        "accuracy_heatmaps[9 x 10 tasks]": lambda: plots.accuracy_heatmaps(many),
        "accuracy_heatmaps[3 x 30 tasks]": lambda: plots.accuracy_heatmaps(results(3, 30)),
        "accuracy_heatmaps[1 x 2 tasks]": lambda: plots.accuracy_heatmaps(results(1, 2)),
        "metrics_bars": lambda: plots.metrics_bars(
            {lab: r for lab, r in zip(CAPACITY_LABELS, results(9).values())}, title="permuted_fmnist"
        ),
        "null_space_dims[05: 9 methods]": lambda: plots.null_space_dims(ns, label="method"),
        "null_space_dims[04: rows, 3 layers]": lambda: plots.null_space_dims(ns04, label="method", row="benchmark"),
        "spectra": lambda: plots.spectra(
            {f"{b}/adam_nscl": spectrum(784, layers=3) for b in ("split_fmnist", "permuted_fmnist")}
        ),
        "spectrum_cut": lambda: plots.spectrum_cut(np.logspace(-16, 2, 784), cuts, title="layers.0 after task 1"),
        "kept_energy": lambda: plots.kept_energy(ns04, label="method", row="benchmark"),
        "null_space_vs_metrics": lambda: plots.null_space_vs_metrics(summary, style="benchmark"),
        "pruning_activity": lambda: plots.pruning_activity(act, th),
        "units_used[4 runs, 3 layers]": lambda: plots.units_used(units),
        "units_used[02: 2 runs]": lambda: plots.units_used(units[units["label"].isin(["clnp", "nscl_prune"])]),
        "lowrank_tradeoff": lambda: plots.lowrank_tradeoff(grid),
        "singular_values[3 runs]": lambda: plots.singular_values(sv),
        "singular_values[1 run]": lambda: plots.singular_values(sv[sv["label"] == "nscl_lowrank full lam=0"]),
        "null_space_by_rule": lambda: plots.null_space_by_rule(ns[ns["method"].isin(METHODS[3:6])]),
        "stability_plasticity[results page]": lambda: plots.stability_plasticity(sweep, col="benchmark", row="size"),
        "stability_plasticity[05: one benchmark]": lambda: plots.stability_plasticity(
            sweep[(sweep["benchmark"] == "split_fmnist") & (sweep["size"] == "suite")], col="benchmark"
        ),
    }


NOT_FIGURES = {"short", "savefig", "label_styles"}


def test_every_public_figure_function_is_checked():
    public = {
        n
        for n, f in inspect.getmembers(plots, inspect.isfunction)
        if not n.startswith("_") and f.__module__ == plots.__name__
    }
    assert public - NOT_FIGURES == {k.split("[")[0] for k in figures()}, "add the figure function to figures()"


def shown_png(fig) -> bytes:
    """The PNG JupyterLab shows: IPython's inline renderer (the figure's dpi, ``bbox_inches="tight"``)."""
    return print_figure(fig, "png")


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _shown(t: Text) -> bool:
    return t.get_visible() and bool(t.get_text().strip()) and (t.axes is None or t.axes.get_visible())


def cap_height_px(t: Text, dpi: float, scale: float) -> float:
    """Height of a capital H in ``t``'s font, in pixels of the shown figure."""
    return (
        TextPath((0, 0), "H", size=t.get_fontsize(), prop=t.get_fontproperties()).get_extents().height
        * dpi
        / 72
        * scale
    )


def display_problems(fig) -> list[str]:
    """What makes the figure hard to read where the notebook shows it (empty: readable)."""
    problems = []
    if fig.dpi != plots.DISPLAY_DPI:
        problems.append(f"the figure's dpi is {fig.dpi}, not {plots.DISPLAY_DPI}")
    png = shown_png(fig)
    width, _ = png_size(png)
    scale = min(1.0, MAX_WIDTH_PX / width)
    if width > MAX_WIDTH_PX:
        problems.append(f"the shown PNG is {width} px wide (> {MAX_WIDTH_PX}): JupyterLab scales it to {scale:.0%}")
    small = {}
    for t in fig.findobj(Text):
        if _shown(t) and (h := cap_height_px(t, fig.dpi, scale)) < MIN_TEXT_PX:
            small.setdefault(round(h, 1), []).append(t.get_text()[:30])
    for h, texts in sorted(small.items()):
        problems.append(f"{len(texts)} texts {h} px high (< {MIN_TEXT_PX}), e.g. {texts[:3]}")
    for k, ax in enumerate(ax for ax in fig.axes if ax.get_visible() and not hasattr(ax, "_colorbar")):
        box = ax.get_window_extent()
        if box.width * scale < MIN_PANEL_PX[0] or box.height * scale < MIN_PANEL_PX[1]:
            size = f"{box.width * scale:.0f} x {box.height * scale:.0f} px"
            problems.append(f"panel {k} ({ax.get_title()!r}) is {size}, below the minimum {MIN_PANEL_PX}")
    return problems


def line_clashes(fig) -> list[str]:
    """Pairs of data lines in one panel that look the same (colour, dashes, marker) or lie on each other."""
    problems = []
    for ax in fig.axes:
        lines = [  # data lines: not reference lines (axhline) nor error bars (one x)
            ln for ln in ax.get_lines() if ln.get_transform() == ax.transData and len(set(ln.get_xdata())) > 1
        ]
        for i, a in enumerate(lines):
            for b in lines[i + 1 :]:
                look = [(matplotlib.colors.to_hex(x.get_color()), x.get_linestyle(), x.get_marker()) for x in (a, b)]
                same_data = np.array_equal(np.asarray(a.get_xydata(), float), np.asarray(b.get_xydata(), float))
                if look[0] == look[1] or same_data:
                    what = "the same look" if look[0] == look[1] else "the same values"
                    problems.append(f"{ax.get_title()!r}: lines {a.get_label()!r} and {b.get_label()!r} have {what}")
    return problems


def readability_problems(fig) -> list[str]:
    """What makes a figure hard to read, as sentences (empty: readable)."""
    problems = display_problems(fig) + line_clashes(fig)
    fig.canvas.draw()  # the layout as drawn on screen (the tight-box PNG leaves some extents stale)
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible() and not hasattr(ax, "_colorbar")]
    for k, ax in enumerate(axes):
        name = f"panel {k} ({ax.get_title()!r})"
        if not ax.get_xlabel():
            problems.append(f"{name} has no x label")
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            if label in RAW_NAMES:
                problems.append(f"{name} is labelled with the raw column name {label!r}")
        if "task" in ax.get_xlabel():
            lo, hi = sorted(ax.get_xlim())
            ticks = [lab.get_text().replace("\u2212", "-") for t, lab in zip(ax.get_xticks(), ax.get_xticklabels())]
            ticks = [t for t, v in zip(ticks, ax.get_xticks()) if lo <= v <= hi and t]
            if any(not t.lstrip("-").isdigit() for t in ticks):
                problems.append(f"{name} has fractional task ticks {ticks}")
    rows = {}
    for ax in axes:
        rows.setdefault(round(ax.get_position().y0, 3), []).append(ax)
    for row in rows.values():
        if not any(ax.get_ylabel() for ax in row):
            problems.append(f"a row of panels has no y label ({[ax.get_title() for ax in row]})")
    texts = [ax.title for ax in axes if ax.get_title()]
    texts += [ax.xaxis.label for ax in axes if ax.get_xlabel()]
    if fig._suptitle is not None and fig._suptitle.get_text():
        texts.append(fig._suptitle)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    legends = [leg for leg in [*(ax.get_legend() for ax in axes), *fig.legends] if leg is not None]
    boxes_legends = [(f"legend {[t.get_text()[:20] for t in leg.get_texts()][:2]}", leg.get_window_extent(renderer))
                     for leg in legends]  # fmt: skip
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if _overlaps(boxes[i][1], boxes[j][1]):
                problems.append(f"titles {boxes[i][0]!r} and {boxes[j][0]!r} overlap")
    for name, box in boxes_legends:
        for other, obox in boxes + [(ax.get_title(), ax.get_window_extent()) for ax in axes]:
            if _overlaps(box, obox):
                problems.append(f"{name} overlaps {other!r}")
    return problems


@pytest.mark.parametrize("name", sorted(figures()))
def test_figure_is_readable_where_it_is_shown(name):
    fig = figures()[name]()
    try:
        assert readability_problems(fig) == []
    finally:
        plt.close(fig)


def test_the_readability_check_catches_what_it_should():
    """The checker itself: a figure too wide for the notebook, small text, tiny panels, an overlapping
    suptitle, fractional task ticks, raw names, two lines on each other, two lines that look alike."""
    fig, axes = plt.subplots(1, 8, figsize=(12, 2), dpi=plots.DISPLAY_DPI)
    axes[0].plot([1, 2], [1, 2], color="C0")
    axes[0].plot([1, 2], [1, 2], color="C1")
    axes[0].plot([1, 2], [2, 3], color="C0")
    axes[0].set_xlabel("after task")
    axes[0].set_xticks([1, 1.5, 2])
    axes[1].set_xlabel("i")
    axes[2].text(0.5, 0.5, "a cell number", fontsize=7)
    axes[4].set_title("a title under the suptitle")
    fig.suptitle("a suptitle over the panels", y=0.95, fontsize=16)
    problems = "\n".join(readability_problems(fig))
    plt.close(fig)
    for what in ("px wide", "px high", "below the minimum", "fractional task ticks", "raw column name 'i'", "overlap",
                 "no x label", "the same values", "the same look"):  # fmt: skip
        assert what in problems


def test_the_size_check_is_the_notebooks():
    """The checked PNG is the one IPython shows: a 10-inch figure at 100 dpi is ~1000 px wide after the
    tight box, and a legend outside the figure widens it."""
    fig, ax = plt.subplots(figsize=(10, 3), dpi=100)
    ax.plot([1, 2], [1, 2], label="a long legend label outside the panel")
    w0, _ = png_size(shown_png(fig))
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left")
    w1, _ = png_size(shown_png(fig))
    plt.close(fig)
    assert w0 <= 1000 and w1 >= w0 + 150


def test_saved_png_is_the_shown_png(tmp_path):
    fig = plots.metrics_bars(results(3))
    path = plots.savefig(fig, tmp_path / "m.png")
    assert png_size(path.read_bytes()) == png_size(shown_png(fig))
    plt.close(fig)


def test_figures_ignore_the_users_font_settings():
    """A notebook that set small fonts (seaborn's paper context) still gets readable figures."""
    with plt.rc_context({"font.size": 6, "xtick.labelsize": 5, "legend.fontsize": 5, "figure.dpi": 72}):
        fig = plots.null_space_dims(ns_table(), label="method")
    assert display_problems(fig) == []
    plt.close(fig)


def test_identical_runs_share_one_line_and_one_legend_entry():
    """05's null-space plot: 9 methods, on layers.0 seven share one line and two another."""
    fig = plots.null_space_dims(ns_table(), label="method")
    first = fig.axes[0]
    assert len(first.get_lines()) == 2
    entries = [t.get_text().replace("\n", " ") for t in first.get_legend().get_texts()]
    assert entries == ["finetune, ewc, joint, adam_nscl, lowrank, nscl_prune, nscl_sgp", "nscl_lowrank, clnp"]
    assert len(fig.axes[1].get_lines()) == 3  # layers.1: three groups (k % 3)
    plt.close(fig)


def test_figure_size_depends_on_the_labels_not_on_the_values():
    """nbval compares the stored ``<Figure size WxH with N Axes>`` of a cell: runs that share a line on one
    numeric path and not on another must give the same figure size."""
    same, apart = ns_table(), ns_table()
    same["null_dim"] = 700
    apart["null_dim"] = np.arange(len(apart))
    sizes = set()
    for frame in (same, apart):
        fig = plots.null_space_dims(frame, label="method")
        sizes.add((tuple(fig.get_size_inches()), len(fig.axes)))
        plt.close(fig)
    cap = capacity_frame(CAPACITY_LABELS[:4], tasks=6, seeds=(0,))
    for frame in (cap, cap.assign(value=cap["value"] + np.arange(len(cap)) * 1e-3)):
        fig = plots.capacity_curve(frame)
        sizes.add((tuple(fig.get_size_inches()), len(fig.axes)))
        plt.close(fig)
    for r in (7, 34567):
        fig = plots.spectrum_cut(np.logspace(-16, 2, 784), {f"a=10: r = {r}": 1e-9})
        sizes.add((tuple(fig.get_size_inches()), len(fig.axes)))
        plt.close(fig)
    assert len(sizes) == 3, sizes


def test_capacity_curve_draws_one_line_per_energy_on_the_first_layer():
    """06: on layers.0 every label at one energy has the same r/d: two lines (0.9 and 0.99), all labelled."""
    fig = plots.capacity_curve(capacity_frame(CAPACITY_LABELS, tasks=8, seeds=(0,)))
    panel = next(ax for ax in fig.axes if ax.get_title() == "input of layers.0")
    assert len(panel.get_lines()) - 1 == 2  # and the dotted quarter line
    named = " ".join(t.get_text().replace("\n", " ") for t in panel.get_legend().get_texts())
    assert all(lab in named for lab in CAPACITY_LABELS)
    acc = next(ax for ax in fig.axes if "plasticity" in ax.get_title())
    assert len(acc.get_lines()) == len(CAPACITY_LABELS)
    plt.close(fig)


def test_accuracy_heatmaps_numbers_only_where_they_fit():
    """Numbers in 10x10 cells; a 30x30 matrix has a colour bar instead; 9 panels wrap to fit 960 px."""
    fig = plots.accuracy_heatmaps(results(9, 10))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 9 and all(len(ax.texts) == 55 for ax in visible)  # the lower triangle, 10 * 11 / 2
    assert "ACC 90.00  BWT +0.00" in visible[0].get_title()
    plt.close(fig)
    fig = plots.accuracy_heatmaps(results(3, 30))
    assert not any(ax.texts for ax in fig.axes) and any(hasattr(ax, "_colorbar") for ax in fig.axes)
    plt.close(fig)


def test_null_space_dims_shows_a_few_dims_out_of_hundreds():
    """A linear axis per layer: the 3-dim steps of ns_table span a visible part of the axis."""
    fig = plots.null_space_dims(ns_table(METHODS[:1]))
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        assert ax.get_yscale() == "linear" and hi - lo < 50
    plt.close(fig)


def test_spectrum_cut_lines_look_different():
    """01: four thresholds and the rank tolerance, each its own colour and dash pattern."""
    cuts = {"a=10, raw": 1e-15, "a=10, floor": 1.7e-9, "a=1e12": 170.0, "energy": 4.0}
    fig = plots.spectrum_cut(np.logspace(-16, 2, 784), cuts)
    ref = [ln for ln in fig.axes[0].get_lines() if ln.get_transform() != fig.axes[0].transData]
    rgb = np.array([matplotlib.colors.to_rgb(ln.get_color()) for ln in ref])
    gaps = [np.linalg.norm(rgb[i] - rgb[j]) for i in range(len(rgb)) for j in range(i)]
    assert len(ref) == 5 and min(gaps) > 0.3  # no two near-identical purples
    plt.close(fig)
