"""Seaborn figures shared by the notebooks; each function returns a matplotlib ``Figure``.

Inputs are results dicts (``acc``, ``metrics``, ``null_space``), the tables of
:mod:`nscl.analysis.tables` and :func:`nscl.experiment.records.load_spectra` dicts
(``"<layer>/task<t>"`` -> ascending eigenvalues). Every figure of the notebooks is drawn here.

* :func:`accuracy_heatmaps` — annotated accuracy matrix ``A[i][j]`` per method (row: after task i).
* :func:`metrics_bars` — ACC / BWT / plasticity / forgetting per method.
* :func:`null_space_dims` — null-space dimension per layer vs task, absolute and as a fraction of d.
* :func:`spectra` — covariance eigenvalues per layer (log scale), one line per task.
* :func:`spectrum_cut` — one layer's spectrum with the ``a * lambda_min`` cut (Adam-NSCL Alg. 2).
* :func:`kept_energy` — kept-energy ratio (paper Eq. 7) per layer vs task, one shared log axis.
* :func:`null_space_vs_metrics` — mean null-space fraction of a run against its plasticity and BWT.
* :func:`stability_plasticity` — BWT against plasticity per method, mean ± std over seeds; a panel per benchmark (and per ``row`` value).
* :func:`capacity_curve` — new-task accuracy and r/d per layer vs task, a line per method (mean ± std over seeds).
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


def accuracy_heatmaps(results: Mapping[str, dict], fmt: str = ".1f", cmap: str = "viridis"):
    """One annotated heatmap per entry of ``{label: results}`` (test accuracy in %, task-aware)."""
    n = len(results)
    T_max = max(len(res["acc"]) for res in results.values())
    side = max(3.4, 0.42 * T_max + 0.6)  # 5 tasks: the default 3.6 x 3.4; 10 tasks: room for the numbers
    with sns.axes_style("white"):
        fig, axes = plt.subplots(1, n, figsize=((side + 0.2) * n + 0.6, side), squeeze=False)
    for ax, (label, res) in zip(axes[0], results.items()):
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
        ax.set_xlabel("")
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


def _run_label(df: pd.DataFrame) -> pd.Series:
    """Label a run by its method, adding the run folder when one method appears in several runs."""
    per = df.groupby("method")["run"].nunique()
    return df.apply(
        lambda r: (
            r["method"]
            if per[r["method"]] == 1
            else f"{r['method']} ({Path(r['run']).parent.name}/{Path(r['run']).name})"
        ),
        axis=1,
    )


def _grid(n: int, rows_per_run: int, max_cols: int, w: float, h: float, **kw):
    """Axes for ``n`` runs, ``max_cols`` runs per line, ``rows_per_run`` stacked panels per run."""
    ncols = max(1, min(n, max_cols))
    blocks = -(-n // ncols)
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(
            rows_per_run * blocks, ncols, figsize=(w * ncols + 1.2, h * blocks), squeeze=False, **kw
        )
    for k in range(n, blocks * ncols):  # unused slots of the last line
        for r in range(rows_per_run):
            axes[rows_per_run * (k // ncols) + r, k % ncols].set_visible(False)
    return fig, [[axes[rows_per_run * (k // ncols) + r, k % ncols] for r in range(rows_per_run)] for k in range(n)]


def _title(label: str, n: int = 30) -> str:
    """A panel title of at most ``n`` characters a line: ``notebook/run`` labels wrap at the last ``/``."""

    def cut(s):
        return s if len(s) <= n else "…" + s[-(n - 1) :]

    if len(label) > n and "/" in label:
        head, tail = label.rsplit("/", 1)
        return f"{cut(head)}/\n{cut(tail)}"
    return cut(label)


def _symlog_top(values) -> float:
    """Top of a symlog axis: the power of ten above 1.5x the largest value, so the top point is never cut."""
    m = float(np.nanmax(values)) if len(values) else 1.0
    return 10.0 ** np.ceil(np.log10(max(m, 1.0) * 1.5))


def _legend_right(ax, title: str) -> None:
    leg = ax.get_legend()
    if leg is not None:
        leg.set_bbox_to_anchor((1.02, 1))
        leg.set_loc("upper left")
        leg.set_title(title)


def _per_run_layers(ns: pd.DataFrame, label: str) -> tuple[pd.DataFrame, list, list]:
    """Copy of a null-space table with a run ``label`` column and short layer names; the run labels
    and the layer order (first appearance), shared by the per-run layer-curve figures."""
    ns = ns.copy()
    ns[label] = ns[label] if label in ns else _run_label(ns)
    ns["layer"] = ns["layer"].map(short)
    return ns, list(dict.fromkeys(ns[label])), list(dict.fromkeys(ns["layer"]))


def null_space_dims(ns: pd.DataFrame, label: str = "label", max_cols: int = 3):
    """Null-space dim per layer vs task: per run, r (top, symlog) and r/d (bottom); ``max_cols`` runs a line.

    Every panel of a row kind shares its y-axis (r: 0 up to a power of ten above the largest r, so no
    point sits on the frame; r/d: 0..1), so runs compare at a glance.
    """
    ns, labels, hue_order = _per_run_layers(ns, label)
    fig, cells = _grid(len(labels), 2, max_cols, 3.0, 5.0)
    top = _symlog_top(ns["null_dim"].to_numpy(dtype=float))
    for k, lab in enumerate(labels):
        sub = ns[ns[label] == lab]
        for row, (col, ylab) in enumerate((("null_dim", "null-space dim r"), ("null_frac", "r / d"))):
            ax = cells[k][row]
            sns.lineplot(
                data=sub,
                x="task",
                y=col,
                hue="layer",
                hue_order=hue_order,
                marker="o",
                ax=ax,
                errorbar=None,
                legend=(row == 0 and k == min(len(labels), max_cols) - 1),
            )
            if col == "null_frac":
                ax.set_ylim(-0.03, 1.03)
            else:
                ax.set_yscale("symlog", linthresh=10)
                ax.set_ylim(0, top)
            ax.set_ylabel(ylab if k % max_cols == 0 else "")
            ax.set_xticks(sorted(sub["task"].unique()))
            if row == 0:
                ax.set_title(_title(lab), fontsize=10)
                ax.set_xlabel("")
    _legend_right(cells[min(len(labels), max_cols) - 1][0], "layer")
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


def spectra(spec: Mapping[str, np.ndarray], title: str | None = None):
    """Eigenvalues of each layer's accumulated covariance (descending, / lambda_max, log y), per task."""
    df = _spectra_frame(spec)
    layers = list(dict.fromkeys(df["layer"]))
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(1, max(len(layers), 1), figsize=(3.6 * max(len(layers), 1) + 1.0, 3.2), squeeze=False)
    for k, layer in enumerate(layers):
        ax = axes[0, k]
        sub = df[df["layer"] == layer]
        sns.lineplot(
            data=sub,
            x="index",
            y="eigenvalue",
            hue="task",
            palette="crest",
            ax=ax,
            legend=(k == len(layers) - 1),
            errorbar=None,
        )
        ax.set_yscale("log")
        ax.set_ylim(1e-18, 2)
        ax.set_title(layer, fontsize=10)
        ax.set_xlabel("eigenvalue index (descending)")
        ax.set_ylabel("lambda / lambda_max" if k == 0 else "")
    if layers and axes[0, -1].get_legend() is not None:
        axes[0, -1].get_legend().set_title("after task")
    if title:
        fig.suptitle(title, fontsize=11)
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
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


KEPT_ENERGY_FLOOR = 1e-18  # kept-energy ratios below this are float64 round-off; drawn at the floor


def kept_energy(ns: pd.DataFrame, label: str = "label", max_cols: int = 3):
    """Kept-energy ratio (Eq. 7: share of old-input energy in the null space) per layer vs task, per run.

    All panels share one log y-axis (the suptitle says so); ratios below :data:`KEPT_ENERGY_FLOOR`
    (round-off, or exactly 0 for an empty null space) are drawn at the floor.
    """
    ns, labels, hue_order = _per_run_layers(ns, label)
    ns["kept_energy"] = ns["kept_energy"].astype(float).clip(lower=KEPT_ENERGY_FLOOR)
    fig, cells = _grid(len(labels), 1, max_cols, 3.0, 2.8, sharey=True)
    for k, lab in enumerate(labels):
        ax = cells[k][0]
        sub = ns[ns[label] == lab]
        sns.lineplot(
            data=sub,
            x="task",
            y="kept_energy",
            hue="layer",
            hue_order=hue_order,
            marker="o",
            ax=ax,
            errorbar=None,
            legend=(k == min(len(labels), max_cols) - 1),
        )
        ax.set_yscale("log")
        ax.set_title(_title(lab), fontsize=10)
        ax.set_xticks(sorted(sub["task"].unique()))
        ax.set_ylabel("kept energy R" if k % max_cols == 0 else "")
    top = float(ns["kept_energy"].max()) if len(ns) else 1.0
    cells[0][0].set_ylim(KEPT_ENERGY_FLOOR / 3, min(10 ** np.ceil(np.log10(top * 3)), 3.0))
    _legend_right(cells[min(len(labels), max_cols) - 1][0], "layer")
    fig.suptitle(
        f"kept energy R: one log y-axis for all panels (below {KEPT_ENERGY_FLOOR:.0e}: round-off, drawn "
        f"at {KEPT_ENERGY_FLOOR:.0e})",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def null_space_vs_metrics(summary: pd.DataFrame):
    """Scatter of each run's mean null-space fraction against its plasticity and its BWT (colour: method).

    ``summary``: :func:`nscl.analysis.tables.null_space_summary` (index: run label; columns
    ``mean null fraction``, ``plasticity``, ``BWT``, ``method``).
    """
    df = summary.reset_index().rename(columns={"run": "label"})
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), sharex=True)
    for ax, col, ylab in zip(axes, ("plasticity", "BWT"), ("plasticity (mean diagonal, %)", "BWT (points)")):
        sns.scatterplot(
            data=df, x="mean null fraction", y=col, hue="method", style="method", s=70, ax=ax, legend=(col == "BWT")
        )
        ax.set_ylabel(ylab)
        ax.set_xlim(-0.03, 1.03)
    leg = axes[1].get_legend()
    if leg is not None:
        leg.set_bbox_to_anchor((1.02, 1))
        leg.set_loc("upper left")
    fig.tight_layout()
    return fig


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


def capacity_curve(frame: pd.DataFrame, order: list | None = None, title: str | None = None):
    """The capacity curve: task index on x; new-task accuracy (%, ``A[t][t]``) and each layer's input
    null-space fraction r/d on y, one panel each; one line per method label, mean ± std over seeds
    (shaded). ``frame``: :func:`nscl.analysis.tables.capacity_frame`; ``order``: labels in legend order."""
    from matplotlib.ticker import MaxNLocator

    order = order or list(dict.fromkeys(frame["label"]))
    palette = dict(zip(order, sns.color_palette("tab10", len(order))))
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
    handles = [plt.Line2D([], [], color=palette[m], label=m) for m in order]
    axes[0][-1].legend(handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False, title="method")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
