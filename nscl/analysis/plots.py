"""Seaborn figures shared by the notebooks; each function returns a matplotlib ``Figure``.

Inputs are results dicts (``acc``, ``metrics``, ``null_space``), the tables of
:mod:`nscl.analysis.tables` and :func:`nscl.experiment.records.load_spectra` dicts
(``"<layer>/task<t>"`` -> ascending eigenvalues). Every figure of the notebooks is drawn here.

One message per figure, readable where it is shown. JupyterLab shows a figure as a PNG drawn at the
figure's dpi (:data:`DISPLAY_DPI`, set on every figure) and cropped to its content
(``bbox_inches="tight"``), in an output area about 968 px wide: a wider PNG is scaled down, and its
text with it. So every figure is at most :data:`MAX_WIDTH_PX` wide there (panels wrap into rows), and
every text (ticks, legends, cell numbers) has capital letters at least :data:`MIN_TEXT_PX` high;
:func:`savefig` writes the same pixels. ``tests/test_plots.py`` renders each figure as the notebook
does and holds these rules, and: panels of a readable size, no overlapping titles, integer task ticks,
labelled axes, no raw column names, and no line that hides another in its panel.

Panels of one line per run or method draw runs with identical values once, labelled together in the
panel's own legend below it (``adam_nscl, nscl_prune``): on a layer where every method keeps the same
null space, one line says so instead of nine drawn over each other. Null-space figures take a panel
per layer with a linear axis fitted to it, so a change of a few dimensions out of hundreds shows.

* :func:`accuracy_heatmaps` — accuracy matrix ``A[i][j]`` per method (row: after task i), wrapped; cell
  numbers where cells are big enough for them, else a colour bar.
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
* :func:`savefig` — write the PNG the notebook shows (same dpi, tight box) and return its path.
"""

from __future__ import annotations

import functools
import os
import re
import textwrap
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import transforms
from matplotlib.textpath import TextPath
from matplotlib.ticker import MaxNLocator

STYLE = "whitegrid"

#: dpi of every figure: JupyterLab's inline backend draws the PNG at ``fig.dpi`` (matplotlib's default 100)
DISPLAY_DPI = 100
#: widest PNG that JupyterLab's output area (968 px beside an open file browser) shows unscaled
MAX_WIDTH_PX = 960
#: smallest height of a capital letter, in pixels at the size the figure is shown
MIN_TEXT_PX = 9
#: figure width the layouts aim at (the tight box adds up to 0.2 in of padding)
FIG_WIDTH_IN = 9.3
#: smallest font size (pt): its capitals are 9.1 px high at 100 dpi
SMALL = 9
#: font sizes of every figure, whatever the user's matplotlib or seaborn settings
RC = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": SMALL,
    "legend.title_fontsize": SMALL,
    "figure.titlesize": 11,
}


def _readable(draw):
    """Draw with the fonts of :data:`RC` and return the figure at :data:`DISPLAY_DPI`."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            fig = draw(*args, **kwargs)
        fig.set_dpi(DISPLAY_DPI)
        return fig

    return wrapper


def short(layer: str) -> str:
    """``backbone.layers.0`` -> ``layers.0`` (axis labels)."""
    return layer[len("backbone.") :] if layer.startswith("backbone.") else layer


def _acc_array(acc) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in acc], dtype=float)


def _text_in(text: str, size: float = SMALL) -> float:
    """Width of ``text`` in inches at font ``size``."""
    return TextPath((0, 0), text, size=size).get_extents().width / 72


def _cols(n: int, panel_w: float, extra_w: float = 0.0, max_cols: int | None = None) -> int:
    """How many panels of ``panel_w`` inches fit beside ``extra_w`` inches within :data:`FIG_WIDTH_IN`."""
    fit = int((FIG_WIDTH_IN - extra_w) // panel_w)
    return max(1, min(n, fit, max_cols or n))


def _grid(rows: list, cols: list, w: float, h: float, extra_w: float = 0.0, **kw):
    """A figure with a panel per (row value, column value): each row value's panels wrapped into lines of
    as many ``w`` x ``h`` inch panels as fit; returns the figure and ``{(row, col): axes}``."""
    ncols = _cols(len(cols), w, extra_w)
    lines = -(-len(cols) // ncols)
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(
            len(rows) * lines, ncols, figsize=(w * ncols + extra_w, h * len(rows) * lines), squeeze=False, **kw
        )
    used, out = set(), {}
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            at = (i * lines + j // ncols, j % ncols)
            out[(r, c)] = axes[at]
            used.add(at)
    for at in np.ndindex(axes.shape):
        if at not in used:
            axes[at].set_visible(False)
    return fig, out


def _wrap(text: str, width_in: float) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at the small font."""
    chars = max(12, int(width_in / _text_in("abcdefghij_") * 11))
    return "\n".join(textwrap.wrap(text, chars, break_on_hyphens=False)) or text


def _title(label: str, width_in: float = 3.0) -> str:
    """A panel title that fits ``width_in`` inches: long ``notebook/run`` labels wrap at ``/`` or ``_``."""
    n = max(12, int(width_in / _text_in("abcdefghij_", 10) * 11))
    if len(label) <= n:
        return label
    if "/" in label:
        head, tail = label.rsplit("/", 1)
        return "\n".join(s if len(s) <= n else "…" + s[-(n - 1) :] for s in (head + "/", tail))
    return "…" + label[-(n - 1) :]


def _task_axis(ax, tasks) -> None:
    """Integer task ticks (never 1.5, at most about ten) and the label."""
    ts = sorted({int(t) for t in tasks})
    step = max(1, -(-len(ts) // 10))
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, step) if s >= step)
    ax.set_xticks([t for t in ts if step == 1 or t % step == 0] or ts[:1])
    ax.set_xlabel("after task")


MARKERS = "osD^vP*Xph"
#: dash patterns of a method's variants, in label order (the first is solid)
DASHES = ["", (4, 2), (1, 1.5), (6, 2, 1, 2), (3, 1, 1, 1, 1, 1)]


def label_styles(labels: list[str]) -> dict[str, tuple]:
    """``{label: (colour, dashes)}`` for labels like ``adam_nscl energy=0.99``: one colour per method (the
    first word), one dash pattern per variant of it, so that eleven labels never share a look (tab10
    alone would repeat its colours)."""
    methods = list(dict.fromkeys(label.split()[0] for label in labels))
    palette = sns.color_palette("tab10" if len(methods) <= 10 else "tab20", len(methods))
    colours = dict(zip(methods, palette))
    out = {}
    for m in methods:
        for k, label in enumerate(lab for lab in labels if lab.split()[0] == m):
            out[label] = (colours[m], DASHES[k % len(DASHES)])
    return out


def _looks(labels: list) -> dict:
    """``{label: (colour, dashes)}`` with a colour per label (tab10, tab20 beyond ten labels)."""
    labels = list(labels)
    palette = sns.color_palette("tab10" if len(labels) <= 10 else "tab20", len(labels))
    return {lab: (palette[k], "") for k, lab in enumerate(labels)}


def _groups(series: list[tuple]) -> list[tuple]:
    """``[(label, x, y, extra)]`` -> ``[([labels], x, y, extra)]``: runs with identical values (to 1e-9)
    merged, in first-appearance order, so that no line is drawn on top of an identical one."""
    out: dict = {}
    for lab, x, y, extra in series:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        key = (tuple(x), tuple(np.round(np.nan_to_num(y, nan=-1e300), 9)))
        if key in out:
            out[key][0].append(lab)
        else:
            out[key] = ([lab], x, y, extra)
    return list(out.values())


def _label_lines(labs, width_in: float) -> str:
    return _wrap(", ".join(map(str, labs)), width_in - 0.7)


def _look(looks: Mapping, label, k: int) -> dict:
    """Line properties of ``label``, the ``k``-th of ``looks``: its colour and dashes, and a marker of its own."""
    colour, dashes = looks[label]
    return dict(
        color=colour,
        dashes=dashes or (None, None),
        marker=MARKERS[k % len(MARKERS)],
        mfc="white" if k % 2 else colour,
        lw=1.7,
        ms=6,
    )


def _lines(ax, series: list[tuple], looks: Mapping, width_in: float, title=None, band=False, extra=(), legend=True):
    """Draw ``[(label, x, y, std)]`` in one panel ``width_in`` wide, runs with identical values once,
    with the panel's own legend below it when ``legend`` (``extra``: more handles, e.g. a reference).

    A line has the look of its first label (:func:`_look`: unique per label, so that no two lines in a
    panel look alike); ``band``: a ±std band (``std`` may be None)."""
    index = {lab: k for k, lab in enumerate(looks)}
    handles = []
    for labs, x, y, sd in _groups(series):
        (h,) = ax.plot(
            x,
            y,
            markevery=max(1, -(-len(x) // 10)),
            label=_label_lines(labs, width_in),
            **_look(looks, labs[0], index[labs[0]]),
        )
        if band and sd is not None:
            sd = np.nan_to_num(np.asarray(sd, dtype=float))
            ax.fill_between(x, y - sd, y + sd, color=h.get_color(), alpha=0.15, lw=0)
        handles.append(h)
    if legend:
        below = transforms.offset_copy(ax.transAxes, fig=ax.figure, y=-0.5, units="inches")
        ax.legend(
            handles=[*handles, *extra],
            loc="upper center",
            bbox_to_anchor=(0.5, 0),
            bbox_transform=below,
            title=title,
            frameon=False,
            handlelength=2.6,
        )


def _legend_lines(panels: Mapping, width_in: float, extra: int = 0) -> int:
    """The most legend lines below any panel of ``{key: series}`` (:func:`_lines`)."""
    return max(
        (sum(len(_label_lines(g[0], width_in).splitlines()) for g in _groups(s)) + extra for s in panels.values()),
        default=1,
    )


def _line_panels(panels: Mapping, rows, cols, looks, title=None, w=4.4, h=2.6, band=False, extra=(), **kw):
    """A :func:`_grid` of line panels ``{(row, col): [(label, x, y, std)]}`` drawn by :func:`_lines`, each
    ``w`` x ``h`` inches; returns the figure and the axes. Finish it with :func:`_layout`.

    A panel where runs share a line gets its own legend below it, which says which; the other panels
    share one legend of every label (in an empty panel slot, else below the first of them). Every panel
    has room below it for a legend of every label, so the figure's size depends on the number of
    labels, never on their values (nbval compares the ``<Figure size ...>`` of the stored outputs)."""
    merged = {key for key, s in panels.items() if any(len(g[0]) > 1 for g in _groups(s))}
    worst = sum(len(_label_lines([lab], w).splitlines()) for lab in looks) + len(extra)
    legend_h = 0.6 + 0.19 * worst + (0.2 if title else 0)
    fig, axes = _grid(rows, cols, w, h + legend_h, **kw)
    for key, ax in axes.items():
        _lines(ax, panels.get(key, []), looks, w, title, band, extra, legend=key in merged)
    unmerged = [ax for key, ax in axes.items() if key not in merged]
    if unmerged:
        handles = [plt.Line2D([], [], label=lab, **_look(looks, lab, k)) for k, lab in enumerate(looks)]
        fig._nscl_legend = ([*handles, *extra], title, unmerged[0])
    return fig, axes


def _layout(fig) -> None:
    """``tight_layout``, and the shared legend (:func:`_line_panels`, or ``(handles, title, None)``): in the
    first empty panel slot when it fits there, else below the given panel, else in rows below the panels
    (the figure grows)."""
    handles, title, below = getattr(fig, "_nscl_legend", ((), None, None))
    if not handles:
        fig.tight_layout()
        _drop_empty(fig)
        return
    width, height = fig.get_size_inches()
    need = 0.35 + 0.2 * len(handles) + (0.2 if title else 0)
    empty = [ax for ax in fig.axes if not ax.get_visible()]
    if empty and empty[0].get_position().height * height + 0.5 >= need:
        fig.tight_layout()
        box = empty[0].get_position()
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(box.x0, box.y1), title=title, frameon=False)
        _drop_empty(fig)
        return
    if below is not None:
        offset = transforms.offset_copy(below.transAxes, fig=fig, y=-0.5, units="inches")
        below.legend(
            handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=offset, title=title,
            frameon=False, handlelength=2.6,
        )  # fmt: skip
        fig.tight_layout()
        _drop_empty(fig)
        return
    label_w = _legend_w([h.get_label() for h in handles], 1.0)
    ncol = max(1, min(len(handles), int((width - 0.3) // label_w)))
    extra_h = 0.35 + 0.2 * -(-len(handles) // ncol) + (0.2 if title else 0)
    fig.set_size_inches(width, height + extra_h)
    bottom = extra_h / (height + extra_h)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, bottom), ncol=ncol, title=title, frameon=False)
    _drop_empty(fig)


def _drop_empty(fig) -> None:
    """Remove the empty slots of a wrapped grid of panels (``fig.axes`` is then the panels)."""
    for ax in [ax for ax in fig.axes if not ax.get_visible()]:
        fig.delaxes(ax)


def _first_col(ax) -> bool:
    return ax.get_subplotspec().colspan.start == 0


def _legend_fig_right(fig, handles, title: str, extra_w: float) -> None:
    """Lay the panels out and put one legend in the ``extra_w`` inches right of them."""
    right = 1 - extra_w / fig.get_figwidth()
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(right, 0.98), title=title, frameon=False)
    _drop_empty(fig)


def _legend_w(labels, pad: float = 0.75) -> float:
    """Width (in) of a legend of ``labels`` at the small font, with its handles."""
    return max((_text_in(str(s)) for s in labels), default=0.5) + pad


def _legend_right(ax, title: str) -> None:
    leg = ax.get_legend()
    if leg is not None:
        leg.set_bbox_to_anchor((1.02, 1))
        leg.set_loc("upper left")
        leg.set_title(title)


#: heatmap layout (inches): room for the y tick labels and label, the gap between panels, the title
_HEAT_LEFT, _HEAT_GAP, _HEAT_TOP, _HEAT_BOTTOM = 0.55, 0.2, 0.6, 0.55


@_readable
def accuracy_heatmaps(results: Mapping[str, dict], fmt: str = ".1f", cmap: str = "viridis", max_cols: int = 4):
    """One heatmap per entry of ``{label: results}`` (test accuracy in %, task-aware), wrapped into as many
    columns (at most ``max_cols``) as fit the notebook's width.

    Each cell shows its number (``fmt``; whole numbers beyond 6 tasks) when a cell is wide enough for it
    at a readable size; with too many tasks for that (about 25) the numbers give way to a colour bar."""
    n = len(results)
    T_max = max(len(res["acc"]) for res in results.values())
    fmt = fmt if T_max <= 6 else ".0f"
    cell = _text_in(format(100.0, fmt)) + 0.1  # the widest number, "100.0", and a margin
    annotate = bool(T_max * cell + _HEAT_LEFT + _HEAT_GAP <= FIG_WIDTH_IN)
    extra = 0.0
    if not annotate:  # a colour bar instead of the numbers; two columns of panels when there are several
        extra = 0.9
        cols = min(n, 2, max_cols)
        cell = min(0.3, ((FIG_WIDTH_IN - extra) / cols - _HEAT_LEFT - _HEAT_GAP) / T_max)
    cell = max(cell, 2.1 / T_max)  # panels of at least 2.1 in: room for the title over a small matrix
    panel_w = T_max * cell + _HEAT_LEFT + _HEAT_GAP
    ncols = _cols(n, panel_w, extra, max_cols)
    nrows = -(-n // ncols)
    panel_h = T_max * cell + _HEAT_TOP + _HEAT_BOTTOM
    with sns.axes_style("white"):
        fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols + extra, panel_h * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    every = int(np.ceil(0.26 / cell))  # tick labels at least 0.26 in apart ("30" is 0.15 in wide)
    every = next(s for s in (1, 2, 5, 10, every) if s >= every)
    mesh, cm = None, plt.get_cmap(cmap)
    for ax, (label, res) in zip(axes.flat, results.items()):
        a = _acc_array(res["acc"])
        T = a.shape[0]
        ticks = [str(t) if t % every == 0 or every == 1 else "" for t in range(1, T + 1)]
        mesh = ax.imshow(
            np.ma.masked_invalid(a), cmap=cm, vmin=0, vmax=100, extent=(0.5, T + 0.5, T + 0.5, 0.5), aspect="equal"
        )
        if annotate:  # dark text on light cells, light on dark (relative luminance)
            for (i, j), v in np.ndenumerate(a):
                if not np.isnan(v):
                    r, g, b, _ = cm(v / 100)
                    ink = "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.4 else "white"
                    ax.text(j + 1, i + 1, format(v, fmt), ha="center", va="center", fontsize=SMALL, color=ink)
        ax.set_xticks(range(1, T + 1), ticks)
        ax.set_yticks(range(1, T + 1), ticks)
        ax.tick_params(length=0)
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(axis="y", rotation=0)
        m = res.get("metrics") or {}
        sub = f"ACC {m['acc']:.2f}  BWT {m['bwt']:+.2f}" if m.get("bwt") is not None else ""
        ax.set_title(f"{_title(label, panel_w - 0.4)}\n{sub}", fontsize=10)
        ax.set_xlabel("tested on task j")
        ax.set_ylabel("after task i")
    if annotate:
        fig.tight_layout()
    else:
        fig.tight_layout(rect=(0, 0, 1 - extra / fig.get_figwidth(), 1))
        cax = fig.add_axes((1 - 0.7 / fig.get_figwidth(), 0.25, 0.15 / fig.get_figwidth(), 0.5))
        fig.colorbar(mesh, cax=cax, label="test accuracy (%)")
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


@_readable
def metrics_bars(data, title: str | None = None):
    """Bars per method: ACC and plasticity (left, %), BWT and forgetting (right, points, own scale).

    ``data``: ``{label: results}`` or a :func:`nscl.analysis.tables.runs_frame` table (several seeds give error bars).
    """
    long = _metrics_long(data)
    hue_order = list(dict.fromkeys(long["label"]))
    extra = _legend_w(hue_order)
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(FIG_WIDTH_IN - 0.3, 3.4))
    for ax, names, ylab in zip(axes, (["ACC", "plasticity"], ["BWT", "forgetting"]), ("accuracy (%)", "points")):
        sub = long[long["metric"].isin(names)]
        sns.barplot(
            data=sub,
            x="metric",
            y="value",
            hue="label",
            hue_order=hue_order,
            palette=[c for c, _ in _looks(hue_order).values()],
            order=names,
            errorbar="sd",
            ax=ax,
            legend=False,
        )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("metric")
        ax.set_ylabel(ylab)
    axes[0].set_ylim(0, 100)
    if title:
        fig.suptitle(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, label=lab) for lab, (c, _) in _looks(hue_order).items()]
    _legend_fig_right(fig, handles, "", extra)
    return fig


def _layer_facets(ns: pd.DataFrame, label: str, row: str | None):
    """Copy of a null-space table with short layer names, plus the panel rows / columns and the runs."""
    ns = ns.copy()
    ns["layer"] = ns["layer"].map(short)
    rows = list(dict.fromkeys(ns[row])) if row else [None]
    layers = list(dict.fromkeys(ns["layer"]))
    labels = list(dict.fromkeys(ns[label]))
    return ns, rows, layers, labels


def _layer_series(ns: pd.DataFrame, label: str, row: str | None, y: str, rows, layers) -> dict:
    """``{(row, layer): [(run, task, y, None)]}`` for :func:`_line_panels`."""
    out = {}
    for r in rows:
        for layer in layers:
            sub = ns[(ns["layer"] == layer) & ((ns[row] == r) if row else True)].sort_values("task", kind="stable")
            out[(r, layer)] = [(lab, g["task"], g[y], None) for lab, g in sub.groupby(label, sort=False)]
    return out


@_readable
def null_space_dims(ns: pd.DataFrame, label: str = "label", row: str | None = None, frac: bool = False):
    """Null-space dimension r (or ``frac``: r/d) per layer against task: a panel per layer (and per
    ``row`` value, e.g. the benchmark), one line per run ``label``; runs with identical values share
    one line and one legend entry.

    Each panel's linear y-axis fits its own layer (d in the title), so a change of a few dimensions
    out of hundreds shows; the numbers are whole dimensions, so the ticks are integers.
    """
    ns, rows, layers, labels = _layer_facets(ns, label, row)
    y = "null_frac" if frac else "null_dim"
    panels = _layer_series(ns, label, row, y, rows, layers)
    h = 2.6 if row is None else 3.0  # room for the two-line titles
    fig, axes = _line_panels(panels, rows, layers, _looks(labels), label if label != "label" else "run", h=h)
    for (r, layer), ax in axes.items():
        sub = ns[(ns["layer"] == layer) & ((ns[row] == r) if row else True)]
        d = ", ".join(f"d = {v}" for v in sorted(sub["d"].unique())) if len(sub) else ""
        ax.set_title(f"{layer} ({d})" if r is None else f"{r}\n{layer} ({d})")
        _task_axis(ax, sub["task"] if len(sub) else [1])
        if not frac:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(("null-space fraction r / d" if frac else "null-space dim r") if _first_col(ax) else "")
    _layout(fig)
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


def _task_handles(colors: Mapping) -> list:
    return [plt.Line2D([], [], color=c, lw=2, label=str(t)) for t, c in colors.items()]


@_readable
def spectra(specs: Mapping[str, Mapping[str, np.ndarray]]):
    """Eigenvalues of each layer's accumulated input covariance (descending, / lambda_max, log y), one
    line per task: a row of panels per run of ``{label: spectra}`` (:func:`nscl.experiment.records.load_spectra`),
    a column per layer. Values below 1e-18 are drawn at 1e-18."""
    frames = {lab: _spectra_frame(spec) for lab, spec in specs.items()}
    layers = list(dict.fromkeys(layer for df in frames.values() for layer in df["layer"])) or [""]
    tasks = sorted({int(t) for df in frames.values() for t in df["task"]})
    colors = dict(zip(tasks, sns.color_palette("crest", len(tasks))))
    extra = _legend_w(["after task"], 0.3)
    fig, axes = _grid(list(frames), layers, 3.6, 3.0, extra, sharey=True)
    for (lab, layer), ax in axes.items():
        df = frames[lab]
        for t, g in df[df["layer"] == layer].groupby("task"):
            ax.plot(g["index"], g["eigenvalue"], color=colors[int(t)], lw=1.2)
        ax.set_yscale("log")
        ax.set_ylim(1e-18, 2)
        ax.set_title(_title(f"{lab}: {layer}", 3.4))
        ax.set_xlabel("eigenvalue index (descending)")
        ax.set_ylabel("eigenvalue / largest" if _first_col(ax) else "")
    _legend_fig_right(fig, _task_handles(colors), "after task", extra)
    return fig


#: threshold lines of :func:`spectrum_cut`: colours far apart (tab10 without grey) and a dash pattern each
_CUT_COLOURS = [3, 0, 2, 1, 4, 9, 6, 8, 5]
_CUT_DASHES = [(5, 2), (8, 2, 2, 2), (2, 1.5), (10, 3), (4, 1, 1, 1, 1, 1), (1, 3)]


@_readable
def spectrum_cut(eigvals, cuts: Mapping[str, float], title: str | None = None):
    """One spectrum (descending, log y) with horizontal lines at the given thresholds.

    ``cuts`` maps a label (``"a=10"``) to an eigenvalue threshold; eigenvalues at or below a line are
    in that rule's null space. The numerical-rank tolerance ``d * eps * lambda_max`` is drawn dotted
    grey. Each threshold has its own colour and dash pattern, and the labels sit apart in the legend.
    """
    ev = np.sort(np.asarray(eigvals, dtype=float))[::-1]
    d = ev.size
    floor = d * np.finfo(np.float64).eps * ev[0]
    labels = [f"{lab}: r = {int((ev <= thr).sum())}" for lab, thr in cuts.items()]
    extra = _legend_w([*labels, "rank tolerance"], 0.9)
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(8.6, 3.6))  # not from the labels: their r values come from training
    pos = ev[ev > 0]
    low = min([*cuts.values(), *(pos[-1:] if pos.size else [floor])], key=lambda v: v if v > 0 else np.inf)
    handles = ax.plot(np.arange(1, d + 1), np.clip(ev, low / 10, None), color="k", lw=1.6, label="eigenvalues")
    palette = sns.color_palette("tab10", 10)
    for k, ((lab, thr), text) in enumerate(zip(cuts.items(), labels)):
        colour, dashes = palette[_CUT_COLOURS[k % len(_CUT_COLOURS)]], _CUT_DASHES[k % len(_CUT_DASHES)]
        line = plt.Line2D([], [], color=colour, lw=1.6, dashes=dashes, label=text)
        if thr > 0:  # lambda_min <= 0: no line on a log axis
            ax.axhline(thr, color=colour, lw=1.6, dashes=dashes)
        handles.append(line)
    ax.axhline(floor, color="0.45", lw=1.4, ls=":")
    handles.append(plt.Line2D([], [], color="0.45", lw=1.4, ls=":", label="rank tolerance"))
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (descending)")
    ax.set_ylabel("eigenvalue of C")
    if title:
        ax.set_title(title)
    _legend_fig_right(fig, handles, "", extra)
    return fig


KEPT_ENERGY_FLOOR = 1e-18  # kept-energy ratios below this are float64 round-off; drawn at the floor


@_readable
def kept_energy(ns: pd.DataFrame, label: str = "label", row: str | None = None):
    """Kept-energy ratio R (Eq. 7: share of the old inputs' energy in the null space) per layer against
    task: a panel per layer (and ``row`` value), one line per run (identical runs share one), one log
    y-axis fitted to the data.

    Ratios below :data:`KEPT_ENERGY_FLOOR` (round-off, or 0 for an empty null space) are drawn at the
    floor (the y label says so when there are any).
    """
    ns, rows, layers, labels = _layer_facets(ns, label, row)
    ns["kept_energy"] = ns["kept_energy"].astype(float).clip(lower=KEPT_ENERGY_FLOOR)
    panels = _layer_series(ns, label, row, "kept_energy", rows, layers)
    fig, axes = _line_panels(
        panels,
        rows,
        layers,
        _looks(labels),
        label if label != "label" else "run",
        h=2.6 if row is None else 3.0,
        sharey=True,
    )
    vals = ns["kept_energy"].to_numpy(dtype=float)
    ylab = "kept energy R"
    if len(vals) and vals.min() <= KEPT_ENERGY_FLOOR:
        ylab = f"kept energy R\n(< {KEPT_ENERGY_FLOOR:.0e} drawn at it)"
    for (r, layer), ax in axes.items():
        sub = ns[(ns["layer"] == layer) & ((ns[row] == r) if row else True)]
        ax.set_yscale("log")
        ax.set_title(layer if r is None else f"{r}\n{layer}")
        _task_axis(ax, sub["task"] if len(sub) else [1])
        ax.set_ylabel(ylab if _first_col(ax) else "")
    if len(vals):
        lo, hi = float(vals.min()), float(vals.max())
        next(iter(axes.values())).set_ylim(
            10 ** np.floor(np.log10(lo) - 0.2), min(10 ** np.ceil(np.log10(hi) + 0.2), 3.0)
        )
    _layout(fig)
    return fig


@_readable
def null_space_vs_metrics(summary: pd.DataFrame, style: str | None = None):
    """Scatter of each run's mean null-space fraction against its plasticity and its BWT (colour:
    method; marker: ``style``, e.g. the benchmark). The x-axis fits the runs, so close fractions separate.

    ``summary``: :func:`nscl.analysis.tables.null_space_summary` (index: run label; columns
    ``mean null fraction``, ``plasticity``, ``BWT``, ``method``).
    """
    df = summary.reset_index().rename(columns={"run": "label"})
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(FIG_WIDTH_IN - 0.2, 3.6), sharex=True)
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
@_readable
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
    extra = _legend_w(["task"], 0.4)
    fig, axes = _grid(labels, layers, 3.6, 2.8, extra, sharex=True)
    for (lab, layer), ax in axes.items():
        for t in tasks:
            x = np.sort(act[(act["label"] == lab) & (act["layer"] == layer) & (act["task"] == t)]["x"])
            if x.size:
                ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", color=colors[t])
            for v in th[(th["label"] == lab) & (th["layer"] == layer) & (th["task"] == t)]["threshold"]:
                if v:
                    ax.axvline(np.log10(v), ls="--", lw=1, color=colors[t])
        ax.set_title(_title(f"{lab}: {layer}", 3.4))
        ax.set_xlabel("log10 relative activity")
        ax.set_ylabel("share of candidate units" if _first_col(ax) else "")
    _legend_fig_right(fig, _task_handles(colors), "task", extra)
    return fig


@_readable
def units_used(units: pd.DataFrame):
    """Share of each layer's units kept (frozen under clnp, projected under nscl_prune) after each
    task, a panel per run, one line per layer (layers with identical shares share one).
    ``units``: :func:`nscl.analysis.tables.units_frame`."""
    units = units.assign(layer=units["layer"].map(short))
    labels, layers = list(dict.fromkeys(units["label"])), list(dict.fromkeys(units["layer"]))
    panels = {
        (None, lab): [
            (layer, g["task"], g["used"], None)
            for layer, g in units[units["label"] == lab].groupby("layer", sort=False)
        ]
        for lab in labels
    }
    fig, axes = _line_panels(panels, [None], labels, _looks(layers), "layer", w=3.1, h=2.9, sharey=True)
    for (_, lab), ax in axes.items():
        ax.set_ylim(0, 1.05)
        ax.set_title(_title(lab, 2.9))
        _task_axis(ax, units.loc[units["label"] == lab, "task"])
        ax.set_ylabel("kept units / layer width" if _first_col(ax) else "")
    _layout(fig)
    return fig


# ---- low rank (notebook 03) ---------------------------------------------------------------------
@_readable
def lowrank_tradeoff(grid: pd.DataFrame, reference: str = "adam_nscl"):
    """ACC, BWT and plasticity of each low-rank configuration against ``nuclear_lambda`` (a line per
    method and rank schedule; configurations with identical values share one), the ``reference`` run
    dashed. ``grid``: one row per run (index: label) with ``method``, ``schedule``, ``lambda``, ``ACC``,
    ``BWT``, ``plasticity``."""
    ref = grid.loc[reference] if reference in grid.index else None
    runs = grid[grid["method"] != reference].assign(config=lambda g: g["method"] + " " + g["schedule"])
    lams = sorted(runs["lambda"].unique())
    pos = {v: k for k, v in enumerate(lams)}
    configs = list(dict.fromkeys(runs["config"]))
    metrics = [("ACC", "%"), ("BWT", "points"), ("plasticity", "%")]
    panels = {}
    for metric, _ in metrics:
        series = []
        for c, g in runs.groupby("config", sort=False):
            g = g.sort_values("lambda")
            series.append((c, [pos[v] for v in g["lambda"]], g[metric], None))
        panels[(None, metric)] = series
    extra = [plt.Line2D([], [], color="k", ls="--", lw=1, label=reference)] if ref is not None else []
    fig, axes = _line_panels(panels, [None], [m for m, _ in metrics], _looks(configs), w=4.5, h=2.8, extra=extra)
    for (metric, unit), ax in zip(metrics, axes.values()):
        if ref is not None:
            ax.axhline(ref[metric], color="k", ls="--", lw=1)
        ax.set_xticks(range(len(lams)), [f"{v:g}" for v in lams])
        ax.set_xlabel("nuclear_lambda")
        ax.set_ylabel(f"{metric} ({unit})")
        ax.set_title(metric)
    _layout(fig)
    return fig


@_readable
def singular_values(sv: pd.DataFrame):
    """Singular values of W divided by the largest (log y) against their index, a panel per run, one
    line per task. ``sv``: :func:`nscl.analysis.tables.singular_values_frame` of one layer."""
    labels = list(dict.fromkeys(sv["label"]))
    tasks = sorted({int(t) for t in sv["task"]})
    colors = dict(zip(tasks, sns.color_palette("viridis", len(tasks))))
    extra = _legend_w(["after task"], 0.3)
    fig, axes = _grid([None], labels, 3.4, 3.0, extra, sharey=True)
    for (_, lab), ax in axes.items():
        for t, g in sv[sv["label"] == lab].groupby("task"):
            ax.plot(g["i"], g["sigma_rel"], color=colors[int(t)], lw=1.2)
        ax.set_yscale("log")
        ax.set_title(_title(lab, 2.8))
        ax.set_xlabel("singular value index")
        ax.set_ylabel("sigma / sigma_max" if _first_col(ax) else "")
    _legend_fig_right(fig, _task_handles(colors), "after task", extra)
    return fig


@_readable
def null_space_by_rule(nd: pd.DataFrame):
    """Null-space dimension of each layer input against task, one panel per layer and rule (a row per
    ``rule``), one line per run: how the rule, not the run, sets the room left.
    ``nd``: :func:`nscl.analysis.tables.null_space_frame` with energies, input spaces."""
    nd = nd.assign(layer=nd["base_layer"].map(short))
    return null_space_dims(nd.drop(columns="base_layer"), label="label", row="rule")


@_readable
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
    (and ``row``) value, wrapped to the notebook's width. Small dots are runs (seeds); a large marker
    with ±1 std error bars is each ``hue`` group's mean. Up is stable (no forgetting), right is plastic.

    ``runs``: one row per complete run with ``x``, ``y``, ``hue``, ``col`` (and ``row``) columns, e.g. a
    sweep's collected table; ``order``: the ``hue`` values in legend order (default: as they appear).
    """
    df = runs
    order = order or list(dict.fromkeys(df[hue]))
    palette = {k: c for k, (c, _) in _looks(order).items()}
    cols = list(dict.fromkeys(df[col]))
    rows = list(dict.fromkeys(df[row])) if row else [None]
    extra = _legend_w(order, 0.5)
    if _cols(len(cols), 3.9, extra) < _cols(len(cols), 3.9):  # a legend on the right would cost a column
        extra = 0.0
    fig, axes = _grid(rows, cols, 3.9, 3.5, extra)
    for (r, c), ax in axes.items():
        d = df[(df[col] == c) & ((df[row] == r) if row else True)]
        ax.set_title(f"{c}" if r is None else f"{c}, {r}")
        ax.set_xlabel("plasticity (%)")
        ax.set_ylabel("BWT (points)")
        if d.empty:  # no complete run here (yet)
            ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes)
            continue
        sns.scatterplot(
            data=d, x=x, y=y, hue=hue, hue_order=order, palette=palette, alpha=0.35, s=22, legend=False, ax=ax
        )
        ax.set_xlabel("plasticity (%)")
        ax.set_ylabel("BWT (points)")
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
    handles = [plt.Line2D([], [], marker="o", ls="", color=palette[m], label=m) for m in order]
    if extra:
        _legend_fig_right(fig, handles, "", extra)
    else:  # in an empty panel slot, or below the panels
        fig._nscl_legend = (handles, None, None)
        _layout(fig)
    return fig


def savefig(fig, path: str | os.PathLike, dpi: int = DISPLAY_DPI) -> Path:
    """Write ``fig`` as PNG (folder created) as the notebook shows it (its dpi, tight box); returns the
    path. Does not close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


@_readable
def capacity_curve(frame: pd.DataFrame, order: list | None = None, title: str | None = None):
    """The capacity curve: task index on x; new-task accuracy (%, ``A[t][t]``) and each layer's input
    null-space fraction r/d on y, a panel each (two a line); one line per method label, mean ± std over
    seeds (shaded). Labels with identical means in a panel (e.g. every method at one energy on the first
    layer, whose inputs no method changes) share one line and one legend entry.
    ``frame``: :func:`nscl.analysis.tables.capacity_frame`; ``order``: labels in legend order."""
    order = order or list(dict.fromkeys(frame["label"]))
    looks = label_styles(order)
    layers = sorted(frame.loc[frame["quantity"] == "r/d", "layer"].dropna().unique())
    keys = [("new-task accuracy", None)] + [("r/d", layer) for layer in layers]
    panels = {}
    for quantity, layer in keys:
        d = frame[(frame["quantity"] == quantity) & ((frame["layer"] == layer) if layer else True)]
        stats = d.groupby(["label", "task"])["value"].agg(["mean", "std"]).reset_index()
        panels[(None, (quantity, layer))] = [
            (lab, g["task"], g["mean"], g["std"])
            for lab in order
            if len(g := stats[stats["label"] == lab].sort_values("task"))
        ]
    fig, axes = _line_panels(panels, [None], keys, looks, "method", w=4.5, h=3.0, band=True)
    for (_, (quantity, layer)), ax in axes.items():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("task")
        if layer is None:
            ax.set_ylabel("new-task accuracy (%)")
            ax.set_title("plasticity: accuracy just after training")
        else:
            ax.set_ylabel("null-space fraction r/d")
            ax.set_ylim(0, 1.02)
            ax.axhline(0.25, color="k", lw=0.8, ls=":")
            ax.set_title(f"input of {short(layer)}")
    if title:
        fig.suptitle(title)
    _layout(fig)
    return fig
