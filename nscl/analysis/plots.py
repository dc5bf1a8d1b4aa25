"""Seaborn figures shared by the notebooks; each function returns a matplotlib ``Figure``.

Inputs are results dicts (``acc``, ``metrics``, ``null_space``), the tables of
:mod:`nscl.analysis.tables` and :func:`nscl.experiment.records.load_spectra` dicts
(``"<layer>/task<t>"`` -> ascending eigenvalues). Every figure of the notebooks is drawn here.

One message per figure, readable at its stored size (``tests/test_plots.py`` holds the rules: panels
of at least 2.2 x 1.8 inches, no overlapping titles, integer task ticks, labelled axes, no raw
column names). Null-space figures take a panel per layer with a linear axis fitted to it, so a
change of a few dimensions out of hundreds shows, and one line per run.

* :func:`accuracy_heatmaps` — annotated accuracy matrix ``A[i][j]`` per method (row: after task i), wrapped.
* :func:`metrics_bars` — ACC / BWT / plasticity / forgetting per method.
* :func:`null_space_dims` — null-space dimension per layer vs task, a line per run (rows: e.g. streams).
* :func:`spectra` — covariance eigenvalues per layer (log scale), a line per task, a row per run.
* :func:`spectrum_cut` — one layer's spectrum with the thresholds of null-space rules.
* :func:`kept_energy` — kept-energy ratio (paper Eq. 7) per layer vs task, a line per run.
* :func:`null_space_vs_metrics` — mean null-space fraction of a run against its plasticity and BWT.
* :func:`pruning_activity`, :func:`units_used` — pruning: candidates' activity and thresholds, kept units.
* :func:`lowrank_tradeoff`, :func:`singular_values`, :func:`null_space_by_rule` — rank limitation.
* :func:`stability_plasticity` — BWT against plasticity per method, mean ± std over seeds; a panel per benchmark (and per ``row`` value).
* :func:`capacity_curve` — new-task accuracy and r/d per layer vs task, a line per method (mean ± std over seeds).
* :func:`fronts` — each method's front: plasticity over the last tasks against BWT, and ACC against its knob.
* :func:`savefig` — write a PNG (fixed dpi, tight box) and return its path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

STYLE = "whitegrid"


def short(layer: str) -> str:
    """``backbone.layers.0`` -> ``layers.0`` (axis labels)."""
    return layer[len("backbone.") :] if layer.startswith("backbone.") else layer


def _acc_array(acc) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in acc], dtype=float)


def accuracy_heatmaps(results: Mapping[str, dict], fmt: str = ".1f", cmap: str = "viridis", max_cols: int = 4):
    """One annotated heatmap per entry of ``{label: results}`` (test accuracy in %, task-aware),
    ``max_cols`` a line so that many methods wrap instead of shrinking."""
    n = len(results)
    T_max = max(len(res["acc"]) for res in results.values())
    side = max(3.4, 0.42 * T_max + 0.6)  # 5 tasks: the default 3.6 x 3.4; 10 tasks: room for the numbers
    ncols = max(1, min(n, max_cols))
    nrows = -(-n // ncols)
    with sns.axes_style("white"):
        fig, axes = plt.subplots(
            nrows, ncols, figsize=((side + 0.2) * ncols + 0.6, (side + 0.3) * nrows), squeeze=False
        )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (label, res) in zip(axes.flat, results.items()):
        a = _acc_array(res["acc"])
        T = a.shape[0]
        ticks = list(range(1, T + 1))
        sns.heatmap(
            a,
            annot=True,
            fmt=fmt if T <= 6 else ".0f",
            vmin=0,
            vmax=100,
            cmap=cmap,
            cbar=False,
            square=True,
            xticklabels=ticks,
            yticklabels=ticks,
            annot_kws={"fontsize": 8},
            ax=ax,
        )
        m = res.get("metrics") or {}
        sub = f"ACC {m['acc']:.2f}  BWT {m['bwt']:+.2f}" if m.get("bwt") is not None else ""
        ax.set_title(f"{label}\n{sub}", fontsize=10)
        ax.set_xlabel("evaluated on task j")
        ax.set_ylabel("after training task i")
    fig.tight_layout()
    return fig


def _metrics_long(data) -> pd.DataFrame:
    """Long table (label, metric, value) from ``{label: results}`` or a :func:`nscl.analysis.tables.runs_frame`."""
    cols = {"acc": "ACC", "bwt": "BWT", "plasticity": "plasticity", "forgetting": "forgetting"}
    if isinstance(data, pd.DataFrame):
        df = data.copy()
        if "label" not in df:
            df["label"] = df["method"] if "method" in df else df.index.astype(str)
    else:
        df = pd.DataFrame([{"label": k, **(v.get("metrics") or {})} for k, v in data.items()])
    df = df[["label", *[c for c in cols if c in df]]].rename(columns=cols)
    return df.melt(id_vars="label", var_name="metric", value_name="value").dropna()


def metrics_bars(data, title: str | None = None):
    """Bars per method: ACC and plasticity (left, %), BWT and forgetting (right, points, own scale).

    ``data``: ``{label: results}`` or a :func:`nscl.analysis.tables.runs_frame` table (several seeds give error bars).
    """
    long = _metrics_long(data)
    hue_order = list(dict.fromkeys(long["label"]))
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), gridspec_kw={"width_ratios": [1, 1]})
    for ax, names, ylab in zip(axes, (["ACC", "plasticity"], ["BWT", "forgetting"]), ("accuracy (%)", "points")):
        sub = long[long["metric"].isin(names)]
        sns.barplot(
            data=sub,
            x="metric",
            y="value",
            hue="label",
            hue_order=hue_order,
            order=names,
            errorbar="sd",
            ax=ax,
            legend=(ylab == "points"),
        )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("metric")
        ax.set_ylabel(ylab)
    axes[0].set_ylim(0, 100)
    leg = axes[1].get_legend()
    if leg is not None:
        leg.set_bbox_to_anchor((1.02, 1))
        leg.set_loc("upper left")
        leg.set_title("")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _title(label: str, n: int = 30) -> str:
    """A panel title of at most ``n`` characters a line: ``notebook/run`` labels wrap at the last ``/``."""

    def cut(s):
        return s if len(s) <= n else "…" + s[-(n - 1) :]

    if len(label) > n and "/" in label:
        head, tail = label.rsplit("/", 1)
        return f"{cut(head)}/\n{cut(tail)}"
    return cut(label)


def _legend_right(ax, title: str) -> None:
    leg = ax.get_legend()
    if leg is not None:
        leg.set_bbox_to_anchor((1.02, 1))
        leg.set_loc("upper left")
        leg.set_title(title)


def _task_axis(ax, tasks) -> None:
    """Integer task ticks (never 1.5) and the label."""
    ax.set_xticks(sorted({int(t) for t in tasks}))
    ax.set_xlabel("after task")


MARKERS = "osD^vP*X"


def _run_styles(labels) -> dict:
    """Colour, marker and size per run: earlier runs drawn larger, so identical curves stay visible."""
    colors = sns.color_palette("tab10", len(labels))
    return {
        lab: dict(color=colors[k], marker=MARKERS[k % len(MARKERS)], ms=max(8 - 1.5 * k, 3), lw=max(2.6 - 0.4 * k, 1))
        for k, lab in enumerate(labels)
    }


def _style_legend(ax, styles: dict, title: str) -> None:
    handles = [plt.Line2D([], [], label=lab, **st) for lab, st in styles.items()]
    ax.legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", title=title, fontsize=8)


def _facets(n_rows: int, n_cols: int, w: float = 3.4, h: float = 2.9, **kw):
    with sns.axes_style(STYLE):
        return plt.subplots(n_rows, n_cols, figsize=(w * n_cols + 1.8, h * n_rows + 0.3), squeeze=False, **kw)


def _layer_facets(ns: pd.DataFrame, label: str, row: str | None):
    """Copy of a null-space table with short layer names, plus the panel rows / columns and the runs."""
    ns = ns.copy()
    ns["layer"] = ns["layer"].map(short)
    rows = list(dict.fromkeys(ns[row])) if row else [None]
    layers = list(dict.fromkeys(ns["layer"]))
    labels = list(dict.fromkeys(ns[label]))
    return ns, rows, layers, labels


def null_space_dims(ns: pd.DataFrame, label: str = "label", row: str | None = None, frac: bool = False):
    """Null-space dimension r (or ``frac``: r/d) per layer against task: a panel per layer (and per
    ``row`` value, e.g. the benchmark), one line per run ``label``.

    Each panel's linear y-axis fits its own layer (d in the title), so a change of a few dimensions
    out of hundreds shows; the numbers are whole dimensions, so the ticks are integers.
    """
    ns, rows, layers, labels = _layer_facets(ns, label, row)
    styles = _run_styles(labels)
    fig, axes = _facets(len(rows), len(layers))
    y = "null_frac" if frac else "null_dim"
    for i, r in enumerate(rows):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            sub = ns[(ns["layer"] == layer) & ((ns[row] == r) if row else True)]
            for lab, g in sub.groupby(label, sort=False):
                ax.plot(g["task"], g[y], label=lab, **styles[lab])
            d = ", ".join(f"d = {v}" for v in sorted(sub["d"].unique())) if len(sub) else ""
            ax.set_title(f"{layer} ({d})" if r is None else f"{r}\n{layer} ({d})", fontsize=10)
            _task_axis(ax, sub["task"] if len(sub) else [1])
            if not frac:
                ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.set_ylabel(("null-space fraction r / d" if frac else "null-space dim r") if j == 0 else "")
    _style_legend(axes[0][-1], styles, label if label != "label" else "run")
    fig.tight_layout()
    return fig


def _spectra_frame(spec: Mapping[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for key, ev in spec.items():
        m = re.fullmatch(r"(.*)/task(\d+)", key)
        if not m:
            continue
        ev = np.sort(np.asarray(ev, dtype=float))[::-1]
        lam = np.clip(ev / ev[0], 1e-18, None) if ev.size and ev[0] > 0 else np.full(ev.size, 1e-18)
        rows.append(
            pd.DataFrame(
                {
                    "layer": short(m.group(1)),
                    "task": int(m.group(2)) + 1,
                    "index": np.arange(1, ev.size + 1),
                    "eigenvalue": lam,
                }
            )
        )
    return (
        pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["layer", "task", "index", "eigenvalue"])
    )


def spectra(specs: Mapping[str, Mapping[str, np.ndarray]]):
    """Eigenvalues of each layer's accumulated input covariance (descending, / lambda_max, log y), one
    line per task: a row of panels per run of ``{label: spectra}`` (:func:`nscl.experiment.records.load_spectra`),
    a column per layer. Values below 1e-18 are drawn at 1e-18."""
    frames = {lab: _spectra_frame(spec) for lab, spec in specs.items()}
    layers = list(dict.fromkeys(layer for df in frames.values() for layer in df["layer"]))
    tasks = sorted({int(t) for df in frames.values() for t in df["task"]})
    colors = dict(zip(tasks, sns.color_palette("crest", len(tasks))))
    fig, axes = _facets(len(frames), max(len(layers), 1), w=3.6, h=2.9, sharey=True)
    for i, (lab, df) in enumerate(frames.items()):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            for t, g in df[df["layer"] == layer].groupby("task"):
                ax.plot(g["index"], g["eigenvalue"], color=colors[int(t)], lw=1.2)
            ax.set_yscale("log")
            ax.set_ylim(1e-18, 2)
            ax.set_title(f"{_title(lab)}: {layer}", fontsize=10)
            ax.set_xlabel("eigenvalue index (descending)")
            ax.set_ylabel("eigenvalue / largest" if j == 0 else "")
    handles = [plt.Line2D([], [], color=colors[t], label=str(t)) for t in tasks]
    axes[0][-1].legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", title="after task", fontsize=8)
    fig.tight_layout()
    return fig


def spectrum_cut(eigvals, cuts: Mapping[str, float], title: str | None = None):
    """One spectrum (descending, log y) with horizontal lines at the given thresholds.

    ``cuts`` maps a label (``"a=10"``) to an eigenvalue threshold; eigenvalues at or below a line are
    in that rule's null space. The numerical-rank tolerance ``d * eps * lambda_max`` is drawn dotted.
    """
    ev = np.sort(np.asarray(eigvals, dtype=float))[::-1]
    d = ev.size
    floor = d * np.finfo(np.float64).eps * ev[0]
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
    pos = ev[ev > 0]
    low = min([*cuts.values(), *(pos[-1:] if pos.size else [floor])], key=lambda v: v if v > 0 else np.inf)
    ax.plot(np.arange(1, d + 1), np.clip(ev, low / 10, None), color="k", lw=1.4, label="eigenvalues")
    colors = sns.color_palette("flare", len(cuts))
    for (lab, thr), c in zip(cuts.items(), colors):
        r = int((ev <= thr).sum())
        if thr <= 0:  # lambda_min <= 0: no line on a log axis
            continue
        ax.axhline(thr, color=c, lw=1.2, ls="--", label=f"{lab}: r = {r}")
    ax.axhline(floor, color="grey", lw=1, ls=":", label="rank tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (descending)")
    ax.set_ylabel("eigenvalue of C")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


KEPT_ENERGY_FLOOR = 1e-18  # kept-energy ratios below this are float64 round-off; drawn at the floor


def kept_energy(ns: pd.DataFrame, label: str = "label", row: str | None = None):
    """Kept-energy ratio R (Eq. 7: share of the old inputs' energy in the null space) per layer against
    task: a panel per layer (and ``row`` value), one line per run, one log y-axis fitted to the data.

    Ratios below :data:`KEPT_ENERGY_FLOOR` (round-off, or 0 for an empty null space) are drawn at the
    floor (the y label says so when there are any).
    """
    ns, rows, layers, labels = _layer_facets(ns, label, row)
    ns["kept_energy"] = ns["kept_energy"].astype(float).clip(lower=KEPT_ENERGY_FLOOR)
    styles = _run_styles(labels)
    fig, axes = _facets(len(rows), len(layers), sharey=True)
    for i, r in enumerate(rows):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            sub = ns[(ns["layer"] == layer) & ((ns[row] == r) if row else True)]
            for lab, g in sub.groupby(label, sort=False):
                ax.plot(g["task"], g["kept_energy"], label=lab, **styles[lab])
            ax.set_yscale("log")
            ax.set_title(layer if r is None else f"{r}\n{layer}", fontsize=10)
            _task_axis(ax, sub["task"] if len(sub) else [1])
            ax.set_ylabel("kept energy R" if j == 0 else "")
    vals = ns["kept_energy"].to_numpy(dtype=float)
    if len(vals):
        lo, hi = float(vals.min()), float(vals.max())
        axes[0][0].set_ylim(10 ** np.floor(np.log10(lo) - 0.2), min(10 ** np.ceil(np.log10(hi) + 0.2), 3.0))
        if lo <= KEPT_ENERGY_FLOOR:
            axes[0][0].set_ylabel(f"kept energy R (< {KEPT_ENERGY_FLOOR:.0e} drawn at it)")
    _style_legend(axes[0][-1], styles, label if label != "label" else "run")
    fig.tight_layout()
    return fig


def null_space_vs_metrics(summary: pd.DataFrame, style: str | None = None):
    """Scatter of each run's mean null-space fraction against its plasticity and its BWT (colour:
    method; marker: ``style``, e.g. the benchmark). The x-axis fits the runs, so close fractions separate.

    ``summary``: :func:`nscl.analysis.tables.null_space_summary` (index: run label; columns
    ``mean null fraction``, ``plasticity``, ``BWT``, ``method``).
    """
    df = summary.reset_index().rename(columns={"run": "label"})
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), sharex=True)
    for ax, col, ylab in zip(axes, ("plasticity", "BWT"), ("plasticity (mean diagonal, %)", "BWT (points)")):
        sns.scatterplot(
            data=df,
            x="mean null fraction",
            y=col,
            hue="method",
            style=style,
            s=70,
            ax=ax,
            legend=(col == "BWT"),
        )
        ax.set_ylabel(ylab)
        ax.set_xlabel("mean null-space fraction r / d")
    _legend_right(axes[1], "")
    fig.tight_layout()
    return fig


# ---- pruning (notebook 02) ----------------------------------------------------------------------
def pruning_activity(act: pd.DataFrame, thresholds: pd.DataFrame):
    """ECDF of the candidate units' relative activity (log10) per run and layer, one line per task,
    with each task's pruning threshold dashed: units left of it were pruned.

    ``act``: :func:`nscl.analysis.tables.activity_frame`; ``thresholds``: :func:`~nscl.analysis.tables.threshold_frame`.
    """
    act = act.assign(layer=act["layer"].map(short), x=np.log10(act["score"].astype(float).clip(lower=1e-6)))
    th = thresholds.assign(layer=thresholds["layer"].map(short))
    labels, layers = list(dict.fromkeys(act["label"])), list(dict.fromkeys(act["layer"]))
    tasks = sorted({int(t) for t in act["task"]})
    colors = dict(zip(tasks, sns.color_palette("viridis", len(tasks))))
    fig, axes = _facets(len(labels), len(layers), w=3.6, h=2.7, sharex=True)
    for i, lab in enumerate(labels):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            for t in tasks:
                x = np.sort(act[(act["label"] == lab) & (act["layer"] == layer) & (act["task"] == t)]["x"])
                if x.size:
                    ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", color=colors[t])
                for v in th[(th["label"] == lab) & (th["layer"] == layer) & (th["task"] == t)]["threshold"]:
                    if v:
                        ax.axvline(np.log10(v), ls="--", lw=1, color=colors[t])
            ax.set_title(f"{lab}: {layer}", fontsize=10)
            ax.set_xlabel("log10 relative activity")
            ax.set_ylabel("share of candidate units" if j == 0 else "")
    handles = [plt.Line2D([], [], color=colors[t], label=str(t)) for t in tasks]
    axes[0][-1].legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", title="task", fontsize=8)
    fig.tight_layout()
    return fig


def units_used(units: pd.DataFrame):
    """Share of each layer's units kept (frozen under clnp, projected under nscl_prune) after each
    task, a panel per run, one line per layer. ``units``: :func:`nscl.analysis.tables.units_frame`."""
    units = units.assign(layer=units["layer"].map(short))
    labels, layers = list(dict.fromkeys(units["label"])), list(dict.fromkeys(units["layer"]))
    colors = dict(zip(layers, sns.color_palette("tab10", len(layers))))
    fig, axes = _facets(1, len(labels), sharey=True)
    for ax, lab in zip(axes[0], labels):
        sub = units[units["label"] == lab]
        for layer, g in sub.groupby("layer", sort=False):
            ax.plot(g["task"], g["used"], marker="o", ms=4, color=colors[layer], label=layer)
        ax.set_ylim(0, 1.02)
        ax.set_title(lab, fontsize=10)
        _task_axis(ax, sub["task"])
    axes[0][0].set_ylabel("kept units / layer width")
    axes[0][-1].legend(bbox_to_anchor=(1.02, 1), loc="upper left", title="layer", fontsize=8)
    fig.tight_layout()
    return fig


# ---- low rank (notebook 03) ---------------------------------------------------------------------
def lowrank_tradeoff(grid: pd.DataFrame, reference: str = "adam_nscl"):
    """ACC, BWT and plasticity of each low-rank configuration against ``nuclear_lambda`` (a line per
    method and rank schedule), the ``reference`` run dashed. ``grid``: one row per run (index: label)
    with ``method``, ``schedule``, ``lambda``, ``ACC``, ``BWT``, ``plasticity``."""
    ref = grid.loc[reference] if reference in grid.index else None
    runs = grid[grid["method"] != reference].assign(config=lambda g: g["method"] + " " + g["schedule"])
    lams = sorted(runs["lambda"].unique())
    pos = {v: k for k, v in enumerate(lams)}
    configs = list(dict.fromkeys(runs["config"]))
    colors = dict(zip(configs, sns.color_palette("tab10", len(configs))))
    fig, axes = _facets(1, 3, w=3.2, h=3.0)
    for ax, metric, unit in zip(axes[0], ("ACC", "BWT", "plasticity"), ("%", "points", "%")):
        for c, g in runs.groupby("config", sort=False):
            g = g.sort_values("lambda")
            ax.plot([pos[v] for v in g["lambda"]], g[metric], marker="o", color=colors[c], label=c)
        if ref is not None:
            ax.axhline(ref[metric], color="k", ls="--", lw=1, label=reference)
        ax.set_xticks(range(len(lams)), [f"{v:g}" for v in lams])
        ax.set_xlabel("nuclear_lambda")
        ax.set_ylabel(f"{metric} ({unit})")
        ax.set_title(metric, fontsize=10)
    axes[0][-1].legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def singular_values(sv: pd.DataFrame):
    """Singular values of W divided by the largest (log y) against their index, a panel per run, one
    line per task. ``sv``: :func:`nscl.analysis.tables.singular_values_frame` of one layer."""
    labels = list(dict.fromkeys(sv["label"]))
    tasks = sorted({int(t) for t in sv["task"]})
    colors = dict(zip(tasks, sns.color_palette("viridis", len(tasks))))
    fig, axes = _facets(1, len(labels), w=3.2, h=2.9, sharey=True)
    for ax, lab in zip(axes[0], labels):
        for t, g in sv[sv["label"] == lab].groupby("task"):
            ax.plot(g["i"], g["sigma_rel"], color=colors[int(t)], lw=1.2)
        ax.set_yscale("log")
        ax.set_title(_title(lab), fontsize=10)
        ax.set_xlabel("singular value index")
    axes[0][0].set_ylabel("sigma / sigma_max")
    handles = [plt.Line2D([], [], color=colors[t], label=str(t)) for t in tasks]
    axes[0][-1].legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", title="after task", fontsize=8)
    fig.tight_layout()
    return fig


def null_space_by_rule(nd: pd.DataFrame):
    """Null-space dimension of each layer input against task, one panel per layer and rule (a row per
    ``rule``), one line per run: how the rule, not the run, sets the room left.
    ``nd``: :func:`nscl.analysis.tables.null_space_frame` with energies, input spaces."""
    nd = nd.assign(layer=nd["base_layer"].map(short))
    return null_space_dims(nd.drop(columns="base_layer"), label="label", row="rule")


def stability_plasticity(
    runs: pd.DataFrame,
    order: list | None = None,
    col: str = "benchmark",
    row: str | None = None,
    hue: str = "method",
    x: str = "plasticity",
    y: str = "bwt",
):
    """The stability-plasticity plane: plasticity (x, %) against BWT (y, points), one panel per ``col``
    (and ``row``) value. Small dots are runs (seeds); a large marker with ±1 std error bars is each
    ``hue`` group's mean. Up is stable (no forgetting), right is plastic.

    ``runs``: one row per complete run with ``x``, ``y``, ``hue``, ``col`` (and ``row``) columns, e.g. a
    sweep's collected table; ``order``: the ``hue`` values in legend order (default: as they appear).
    """
    df = runs
    order = order or list(dict.fromkeys(df[hue]))
    palette = dict(zip(order, sns.color_palette("tab10", len(order))))
    cols = list(dict.fromkeys(df[col]))
    rows = list(dict.fromkeys(df[row])) if row else [None]
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.6 * len(cols) + 1.8, 3.8 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i][j]
            d = df[(df[col] == c) & ((df[row] == r) if row else True)]
            if d.empty:  # no complete run here (yet)
                ax.set_title(f"{c}" if r is None else f"{c}, {r}", fontsize=10)
                ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes)
                continue
            sns.scatterplot(
                data=d, x=x, y=y, hue=hue, hue_order=order, palette=palette, alpha=0.35, s=22, legend=False, ax=ax
            )
            for m, g in d.groupby(hue, sort=False):
                sd = lambda v: v.std(ddof=1) if len(v) > 1 else 0.0  # noqa: E731
                ax.errorbar(
                    g[x].mean(),
                    g[y].mean(),
                    xerr=sd(g[x]),
                    yerr=sd(g[y]),
                    fmt="o",
                    ms=7,
                    capsize=3,
                    color=palette[m],
                    label=m,
                )
            ax.axhline(0, color="k", lw=0.8)
            ax.set_title(f"{c}" if r is None else f"{c}, {r}", fontsize=10)
            ax.set_xlabel("plasticity (%)")
            ax.set_ylabel("BWT (points)")
    handles = [plt.Line2D([], [], marker="o", ls="", color=palette[m], label=m) for m in order]
    axes[0][-1].legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


def savefig(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (folder created); returns the path. Does not close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


#: dash patterns of a method's variants, in label order (the first is solid)
DASHES = ["", (4, 2), (1, 1.5), (6, 2, 1, 2), (3, 1, 1, 1, 1, 1)]


def label_styles(labels: list[str]) -> dict[str, tuple]:
    """``{label: (colour, dashes)}`` for labels like ``adam_nscl energy=0.99``: one colour per method (the
    first word), one dash pattern per variant of it, so that eleven labels never share a look (tab10
    alone would repeat its colours)."""
    methods = list(dict.fromkeys(label.split()[0] for label in labels))
    colours = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    out = {}
    for m in methods:
        for k, label in enumerate(lab for lab in labels if lab.split()[0] == m):
            out[label] = (colours[m], DASHES[k % len(DASHES)])
    return out


def capacity_curve(frame: pd.DataFrame, order: list | None = None, title: str | None = None):
    """The capacity curve: task index on x; new-task accuracy (%, ``A[t][t]``) and each layer's input
    null-space fraction r/d on y, one panel each; one line per method label, mean ± std over seeds
    (shaded). ``frame``: :func:`nscl.analysis.tables.capacity_frame`; ``order``: labels in legend order."""
    from matplotlib.ticker import MaxNLocator

    order = order or list(dict.fromkeys(frame["label"]))
    looks = label_styles(order)
    palette, dashes = {k: c for k, (c, _) in looks.items()}, {k: d for k, (_, d) in looks.items()}
    layers = sorted(frame.loc[frame["quantity"] == "r/d", "layer"].dropna().unique())
    panels = [("new-task accuracy", None)] + [("r/d", layer) for layer in layers]
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.8, 3.6), squeeze=False)
    for ax, (quantity, layer) in zip(axes[0], panels):
        d = frame[(frame["quantity"] == quantity) & ((frame["layer"] == layer) if layer else True)]
        sns.lineplot(
            data=d,
            x="task",
            y="value",
            hue="label",
            hue_order=order,
            palette=palette,
            style="label",
            style_order=order,
            dashes=dashes,
            errorbar="sd",
            legend=False,
            ax=ax,
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("task")
        if layer is None:
            ax.set_ylabel("new-task accuracy (%)")
            ax.set_title("plasticity: accuracy just after training", fontsize=10)
        else:
            ax.set_ylabel("null-space fraction r/d")
            ax.set_ylim(0, 1.02)
            ax.axhline(0.25, color="k", lw=0.8, ls=":")
            ax.set_title(f"input of {short(layer)}", fontsize=10)
    handles = [plt.Line2D([], [], color=palette[m], dashes=dashes[m] or (None, None), label=m) for m in order]
    axes[0][-1].legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False, title="method")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


#: width of :func:`fronts` (inches): under 960 px at the package's dpi (100-110)
FRONTS_WIDTH_IN = 8.6


def fronts(front: pd.DataFrame, title: str | None = None, last: int = 10):
    """Each method's front (issue 24): top, plasticity over the last tasks (x) against BWT (y), one line
    per curve through its knob values in order, mean ± std over seeds (error bars), anchors (knob-less
    methods) as single points; bottom, ACC against the knob, one panel per curve (its own knob axis,
    log-scaled for ``sgp_scale``). ``front``: :func:`nscl.analysis.tables.front_table`."""
    curves = [c for c in dict.fromkeys(front["curve"]) if front.loc[front["curve"] == c, "knob"].notna().any()]
    anchors = front[front["knob"].isna()]
    colours = dict(zip([*curves, *anchors["curve"]], sns.color_palette("tab10", len(curves) + len(anchors))))
    n = max(len(curves), 1)
    cols = min(n, 2)
    rows = -(-n // cols)
    with sns.axes_style(STYLE):
        fig = plt.figure(figsize=(FRONTS_WIDTH_IN, 3.4 + 2.6 * rows))
        grid = fig.add_gridspec(1 + rows, cols, height_ratios=[3.4] + [2.6] * rows)
        top = fig.add_subplot(grid[0, :])
        for c in curves:
            d = front[front["curve"] == c].sort_values("x")
            top.errorbar(
                d["plasticity_last_mean"],
                d["bwt_mean"],
                xerr=d["plasticity_last_std"].fillna(0),
                yerr=d["bwt_std"].fillna(0),
                marker="o",
                ms=4,
                capsize=2,
                color=colours[c],
                label=f"{c} ({d['knob'].iloc[0]})",
            )
        for _, a in anchors.iterrows():
            top.errorbar(
                a["plasticity_last_mean"],
                a["bwt_mean"],
                xerr=0 if a["plasticity_last_std"] != a["plasticity_last_std"] else a["plasticity_last_std"],
                yerr=0 if a["bwt_std"] != a["bwt_std"] else a["bwt_std"],
                marker="s",
                ms=6,
                ls="none",
                color=colours[a["curve"]],
                label=a["curve"],
            )
        top.set_xlabel(f"plasticity: accuracy just after training, mean of the last {last} (%)")
        top.set_ylabel("BWT (points)")
        top.set_title("front: up and right is better", fontsize=10)
        top.legend(fontsize=8, frameon=False, loc="best")
        for i, c in enumerate(curves):
            ax = fig.add_subplot(grid[1 + i // cols, i % cols])
            d = front[front["curve"] == c].sort_values("x")
            ax.errorbar(
                d["x"], d["acc_mean"], yerr=d["acc_std"].fillna(0), marker="o", ms=4, capsize=2, color=colours[c]
            )
            knob = d["knob"].iloc[0]
            if knob == "sgp_scale" and (d["x"] > 0).all():
                ax.set_xscale("log")
            ax.set_xlabel("mean rank budget" if knob == "rank_schedule" else knob)
            ax.set_ylabel("ACC (%)")
            ax.set_title(c, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
