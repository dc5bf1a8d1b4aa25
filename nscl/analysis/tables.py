"""Tables (pandas) from run records: one builder per table, one seed summary.

Builders take either ``{label: results dict}`` (what :func:`nscl.apps.notebook.run_methods` returns)
or run directories / folders / globs (:func:`nscl.experiment.records.find_runs`), so notebooks, the
CLI and sweeps all read runs through the same code.

* :func:`runs_frame` — one row per run: status, tasks done, parameters, metrics (pandas-ready).
* :func:`runs_table` / :func:`metrics_table` — the short per-run displays of notebooks.
* :func:`fixed` — a table always *shown* with a fixed number of decimals (every metric table uses
  :data:`METRIC_DIGITS`), which rounding alone cannot do.
* :func:`seed_summary` / :func:`format_summary` — mean ± std over distinct seeds of complete runs
  that share every other parameter (partial runs are counted, never averaged).
* :func:`null_space_frame` — null-space dimension per run, layer and task (optionally also under
  the energy rule at other thresholds, from the stored spectra); :func:`null_space_summary`.
* :func:`units_frame`, :func:`prune_frame`, :func:`threshold_frame`, :func:`activity_frame` — pruning
  records;
  :func:`singular_values_frame` — low-rank records.
* :func:`capacity_frame`, :func:`capacity_stats`, :func:`capacity_table` — the capacity study (issue 17):
  per task plasticity and r/d per layer; per method ACC, BWT, plasticity over the last tasks, exhaustion;
  :func:`validation_choice` (a method's setting chosen on validation seeds), :func:`width_curve` and
  :func:`matching_parameters` (how many parameters a method needs to match an ACC: "worth x k").
* :func:`front_table`, :func:`front_above` — the fronts (issue 24): per method and knob value ACC, BWT,
  plasticity over the last tasks; where one front lies above another; :func:`reuse_table` — how long
  freed units last and how much learning lands in them (pruning).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from ..core.nullspace import null_dim
from ..experiment import records
from ..experiment.config import defaults

METRICS = ("acc", "bwt", "plasticity", "forgetting")
METRIC_DIGITS = 2  # decimals of every metric (ACC / BWT / plasticity / forgetting, percent points) in a table


class FixedTable(pd.DataFrame):
    """A DataFrame whose float columns are shown with a fixed number of decimals (``digits``).

    Rounding alone is not enough: pandas trims trailing zeros per column, so a rounded table shows
    ``-11.5`` in one column next to ``-4.12`` in another. Values stay numbers.
    """

    _metadata = ["digits"]
    digits: dict = {}

    @property
    def _constructor(self):
        return FixedTable

    def _formatters(self) -> dict:
        def fmt(n):
            return lambda v: "NaN" if v is None or v != v else (f"{v:.{n}f}" if isinstance(v, float) else str(v))

        return {c: fmt(n) for c, n in self.digits.items() if c in self.columns}

    def __repr__(self) -> str:
        return self.to_string(formatters=self._formatters(), max_rows=pd.get_option("display.max_rows"))

    def _repr_html_(self) -> str:
        return self.to_html(formatters=self._formatters(), notebook=True, max_rows=pd.get_option("display.max_rows"))


def fixed(
    df: pd.DataFrame, digits: int | Mapping[str, int] = METRIC_DIGITS, columns: Iterable[str] | None = None
) -> FixedTable:
    """``df`` rounded and always *shown* with ``digits`` decimals in ``columns`` (default: every float column).

    ``digits`` may map a column to its own number of decimals. Every metric table of the notebooks goes
    through here, so ACC / BWT / plasticity / forgetting read with the same precision everywhere.
    """
    if isinstance(digits, Mapping):
        per = dict(digits)
    else:
        cols = list(columns) if columns is not None else [c for c in df.columns if df[c].dtype.kind == "f"]
        per = {c: digits for c in cols}
    out = FixedTable(df.copy())
    for c, n in per.items():
        if c in out.columns:
            out[c] = out[c].astype(float).round(n)
    out.digits = per
    return out


# ---- which runs -------------------------------------------------------------------------------
def run_labels(dirs: Iterable[str | os.PathLike]) -> list[str]:
    """Short, path-free names: each directory relative to the common parent, ``/runs/`` dropped."""
    dirs = [Path(d).resolve() for d in dirs]
    if not dirs:
        return []
    common = Path(os.path.commonpath([str(d.parent) for d in dirs])) if len(dirs) > 1 else dirs[0].parent
    labels = []
    for d in dirs:
        parts = [p for p in Path(os.path.relpath(d, common)).parts if p not in ("runs", ".")]
        labels.append("/".join(parts) or d.name)
    return labels


def results_by_label(runs_or_results) -> dict[str, Mapping]:
    """``{label: results}`` from such a dict, or from run directories / folders / globs."""
    if isinstance(runs_or_results, Mapping):
        return dict(runs_or_results)
    loaded = _loaded(runs_or_results)
    return dict(zip(run_labels([r["_dir"] for r in loaded]), loaded))


def _loaded(paths) -> list[dict]:
    """Run records from run directories / folders / globs (:func:`nscl.experiment.records.load_runs`:
    a ``results.json`` that is no run record is left out with one warning), or records already loaded."""
    if isinstance(paths, (list, tuple)) and paths and all(isinstance(r, Mapping) for r in paths):
        return list(paths)
    return records.load_runs(paths if isinstance(paths, (str, os.PathLike)) else list(paths))


def one_run_per_method(runs_or_results) -> dict[str, Mapping]:
    """``{label: results}`` keeping one run per (benchmark, method): the first among those with the
    most tasks done. Figures that compare methods then show each once (notebooks 00 and 01 train the
    same split runs; 02 and 03 both train adam_nscl)."""
    best: dict[tuple, tuple[str, Mapping]] = {}
    for label, res in results_by_label(runs_or_results).items():
        p = res.get("params") or {}
        key = (p.get("benchmark"), p.get("method"))
        done = (res.get("metrics") or {}).get("tasks_done") or 0
        if key not in best or done > ((best[key][1].get("metrics") or {}).get("tasks_done") or 0):
            best[key] = (label, res)
    return dict(best.values())


def _cell(v):
    return json.dumps(v) if isinstance(v, (list, dict)) else v


# ---- one row per run --------------------------------------------------------------------------
def runs_frame(paths, params: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per run (``paths``: run directories / folders / globs, or loaded records): ``run``
    (directory), ``status``, ``tasks_done`` of ``tasks``, the parameters (``params``: a selection;
    default all, lists as JSON), the metrics and ``total_s``."""
    rows = []
    base = defaults()  # runs written before a parameter existed had its default
    for res in _loaded(paths):
        p = {**base, **(res.get("params") or {})}
        m = res.get("metrics") or {}
        row = {
            "run": res["_dir"],
            "status": res.get("status"),
            "tasks_done": m.get("tasks_done"),
            "tasks": len(res.get("tasks") or []),
        }
        row.update({k: _cell(v) for k, v in p.items() if params is None or k in params})
        row.update(m)
        row["total_s"] = (res.get("timing") or {}).get("total_s")
        rows.append(row)
    return pd.DataFrame(rows)


def runs_table(runs_or_results, digits: int = METRIC_DIGITS) -> FixedTable:
    """One row per run (index: label): method, benchmark, model, seed, tasks, ACC, BWT, plasticity, forgetting."""
    rows = []
    for lab, res in results_by_label(runs_or_results).items():
        p, m = res.get("params") or {}, res.get("metrics") or {}
        rows.append(
            {
                "run": lab,
                "method": p.get("method"),
                "benchmark": p.get("benchmark"),
                "model": p.get("model"),
                "seed": p.get("seed"),
                "tasks": m.get("tasks_done"),
                "ACC": m.get("acc"),
                "BWT": m.get("bwt"),
                "plasticity": m.get("plasticity"),
                "forgetting": m.get("forgetting"),
            }
        )
    return fixed(pd.DataFrame(rows).set_index("run"), digits, columns=["ACC", "BWT", "plasticity", "forgetting"])


def metrics_table(results: Mapping[str, dict], digits: int = METRIC_DIGITS) -> FixedTable:
    """One row per method: ACC, BWT, plasticity, forgetting (percent points), ``digits`` decimals."""
    rows = []
    for label, res in results.items():
        m = res.get("metrics") or {}
        rows.append(
            {
                "method": label,
                "ACC": m.get("acc"),
                "BWT": m.get("bwt"),
                "plasticity": m.get("plasticity"),
                "forgetting": m.get("forgetting"),
            }
        )
    return fixed(pd.DataFrame(rows).set_index("method").astype(float), digits)


# ---- over seeds ---------------------------------------------------------------------------------
def seed_summary(
    df: pd.DataFrame, by: Iterable[str] = (), metrics: Iterable[str] = METRICS, ignore: Iterable[str] = ()
) -> pd.DataFrame:
    """Mean and std over seeds, one row per group of runs that share every other parameter.

    ``df``: a :func:`runs_frame` (or a sweep's collected table: a ``state`` column then decides what
    is complete). Groups are keyed by ``by`` plus every other parameter that varies (so two
    learning rates are never pooled as if they were seeds), in order of first appearance. Only
    complete runs are averaged, one per distinct seed (``n``); ``incomplete`` counts the others and
    ``duplicates`` the repeated seeds left out.
    """
    metrics, by = list(metrics), list(by)
    if df.empty:
        return pd.DataFrame()
    skip = (
        set(records.NON_SEMANTIC)
        | set(ignore)
        | set(metrics)
        | {"run", "name", "state", "status", "error", "detail", "tasks_done", "tasks", "total_s", "out_dir"}
    )
    params = [c for c in df.columns if c in defaults() and c not in skip]
    varying = [c for c in params if c not in by and df[c].astype(str).nunique(dropna=False) > 1]
    keys = by + varying
    state = df["state"] if "state" in df else df["status"]
    complete = state == "complete"
    out = []
    for vals, g in df.groupby(keys, dropna=False, sort=False) if keys else [((), df)]:
        vals = vals if isinstance(vals, tuple) else (vals,)
        ok = g[complete.loc[g.index]]
        distinct = ok.drop_duplicates("seed") if "seed" in ok else ok
        row = dict(zip(keys, vals))
        row["label"] = " ".join(f"{k}={v}" for k, v in zip(varying, vals[len(by) :])) or "all"
        row["n"] = len(distinct)
        row["seeds"] = ",".join(map(str, sorted(distinct["seed"]))) if "seed" in distinct else ""
        row["incomplete"] = int(len(g) - len(ok))
        row["duplicates"] = int(len(ok) - len(distinct))
        for m in metrics:
            if m in distinct:
                vals_m = distinct[m].astype(float)
                row[f"{m}_mean"] = vals_m.mean() if len(vals_m) else float("nan")
                row[f"{m}_std"] = vals_m.std(ddof=1) if len(vals_m) > 1 else float("nan")
        if "total_s" in distinct:
            row["time_s_mean"] = distinct["total_s"].astype(float).mean() if len(distinct) else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def format_summary(
    summary: pd.DataFrame,
    digits: int = METRIC_DIGITS,
    metrics=("acc", "bwt", "plasticity"),
    seeds: bool = False,
    counts: bool | None = None,
) -> pd.DataFrame:
    """``mean ± std`` strings (ACC / BWT / plasticity, percent points) of :func:`seed_summary`.

    Keeps the group keys and ``n`` (distinct seeds averaged); ``seeds=True`` adds which seeds. The
    ``incomplete`` and ``duplicates`` counts come last: always with ``counts=True``, and by default
    whenever one of them is not zero, so a table never hides runs it left out. One seed gives the
    mean alone (no ``± 0``), none gives ``-``.
    """
    drop = {"label", "seeds", "incomplete", "duplicates", "time_s_mean"}
    keep_counts = [
        c
        for c in ("incomplete", "duplicates")
        if c in summary and (counts or (counts is None and (summary[c] > 0).any()))
    ]
    out = summary[[c for c in summary.columns if not c.endswith(("_mean", "_std")) and c not in drop]].copy()
    if seeds and "seeds" in summary:
        out["seeds"] = summary["seeds"]

    def num(v: float) -> str:  # no '-0.0' for a mean that rounds to zero
        text = f"{v:.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text

    for m in metrics:
        if f"{m}_mean" in summary:
            out[m.upper() if m in ("acc", "bwt") else m] = [
                "-" if mu != mu else f"{num(mu)} ± {num(sd)}" if sd == sd else num(mu)
                for mu, sd in zip(summary[f"{m}_mean"], summary[f"{m}_std"])
            ]
    for c in keep_counts:
        out[c] = summary[c]
    return out


#: what the count columns of :func:`format_summary` mean (printed under the CLI tables)
SUMMARY_LEGEND = (
    "n: distinct seeds of complete runs, averaged (mean ± sample std; one seed: the value alone)\n"
    "incomplete: failed or unfinished runs, never averaged\n"
    "duplicates: further complete runs of a seed already counted, left out"
)


# ---- null spaces ------------------------------------------------------------------------------
def _space(layer: str) -> tuple[str, str]:
    """``(base layer, space)``: a factorised layer's ``.B`` sees the layer input, its ``.A`` the bottleneck."""
    if layer.endswith(".B"):
        return layer[:-2], "input"
    if layer.endswith(".A"):
        return layer[:-2], "bottleneck"
    return layer, "input"


NULL_SPACE_COLUMNS = [
    "label",
    "run",
    "method",
    "seed",
    "layer",
    "base_layer",
    "space",
    "task",
    "d",
    "rule",
    "null_dim",
    "null_frac",
    "kept_energy",
    "rank",
]


def null_space_frame(runs_or_results, energies: Iterable[float] = ()) -> pd.DataFrame:
    """Long table: one row per run, tracked layer and task with the null-space dimension under the
    run's own rule (its kept energy, Eq. 7, and the covariance's numerical rank); with ``energies``,
    also a row per threshold under the energy rule, recomputed from the run's ``spectra.npz``."""
    energies = tuple(energies)
    rows = []
    for label, res in results_by_label(runs_or_results).items():
        p = res.get("params") or {}
        spec = records.load_spectra(res["_dir"]) if energies and res.get("_dir") else {}
        for layer, rec in (res.get("null_space") or {}).items():
            base, space = _space(layer)
            for t, r in enumerate(rec.get("dims", [])):
                common = dict(
                    label=label,
                    run=res.get("_dir"),
                    method=p.get("method"),
                    seed=p.get("seed"),
                    layer=layer,
                    base_layer=base,
                    space=space,
                    task=t + 1,
                    d=rec["d"],
                )
                rows.append(
                    {
                        **common,
                        "rule": p.get("nullspace_rule"),
                        "null_dim": r,
                        "kept_energy": rec["kept_energy"][t],
                        "rank": (rec.get("rank") or [None] * (t + 1))[t],
                    }
                )
                ev = spec.get(f"{layer}/task{t}")
                if ev is not None:
                    for e in energies:
                        rows.append(
                            {
                                **common,
                                "rule": f"energy {e:g}",
                                "null_dim": null_dim(torch.as_tensor(ev), rule="energy", energy=e),
                            }
                        )
    df = pd.DataFrame(rows, columns=NULL_SPACE_COLUMNS)
    df["null_frac"] = df["null_dim"] / df["d"].where(df["d"] > 0)
    return df


def null_space_summary(runs_or_results, digits: int = 3) -> FixedTable:
    """Per run: mean r/d and mean kept energy over layers and the null spaces that constrained training
    (after tasks 1..T-1), with plasticity and BWT."""
    res_by = results_by_label(runs_or_results)
    ns = null_space_frame(res_by)
    rows = []
    for lab, res in res_by.items():
        sub = ns[ns["label"] == lab]
        if sub.empty:
            continue
        used = sub[sub["task"] < sub["task"].max()] if sub["task"].max() > 1 else sub
        m = res.get("metrics") or {}
        rows.append(
            {
                "run": lab,
                "method": (res.get("params") or {}).get("method"),
                "mean null fraction": float(used["null_frac"].mean()),
                "mean kept energy": f"{used['kept_energy'].mean():.1e}",
                "plasticity": m.get("plasticity"),
                "BWT": m.get("bwt"),
            }
        )
    cols = ["method", "mean null fraction", "mean kept energy", "plasticity", "BWT"]
    df = pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame(columns=cols)
    return fixed(df, {"mean null fraction": digits, "plasticity": METRIC_DIGITS, "BWT": METRIC_DIGITS})


# ---- pruning and low-rank records ---------------------------------------------------------------
def _pruning_runs(results: Mapping[str, dict]):
    for label, res in results.items():
        d = res.get("method_diagnostics") or {}
        if "units" in d and "prune" in d:
            yield label, d


def units_frame(results: Mapping[str, dict]) -> pd.DataFrame:
    """Long table (label, layer, task, size, frozen, free, new, used = frozen / size) of pruning runs."""
    rows = []
    for label, d in _pruning_runs(results):
        for layer, u in d["units"].items():
            for t, (fz, fr, nw) in enumerate(zip(u["frozen"], u["free"], u["new"])):
                rows.append(
                    {
                        "label": label,
                        "layer": layer,
                        "task": t + 1,
                        "size": u["size"],
                        "frozen": fz,
                        "free": fr,
                        "new": nw,
                        "used": fz / u["size"],
                    }
                )
    return pd.DataFrame(rows)


def prune_frame(results: Mapping[str, dict]) -> pd.DataFrame:
    """One row per (label, task): threshold, val accuracy before / after pruning, drop, units pruned."""
    rows = []
    for label, d in _pruning_runs(results):
        for r in d["prune"]:
            rows.append(
                {
                    "label": label,
                    "task": r["task"] + 1,
                    "threshold": r["threshold"],
                    "val_acc": r["val_acc"],
                    "val_acc_pruned": r["val_acc_pruned"],
                    "val_drop": r["val_drop"],
                    "margin": r["margin"],
                    "probes": len(r["evaluations"]),
                    "candidates": sum(r["candidates"].values()),
                    "pruned": r["pruned_total"],
                }
            )
    return pd.DataFrame(rows)


def threshold_frame(results: Mapping[str, dict]) -> pd.DataFrame:
    """One row per (label, task, layer): the relative activity threshold that layer was pruned with
    (the one global threshold repeated, or its own under ``prune_thresholds=per_layer``), the units
    pruned there and, per layer, the val accuracy after it and its cumulative budget."""
    rows = []
    for label, d in _pruning_runs(results):
        for r in d["prune"]:
            ths = r.get("thresholds") or {n: r["threshold"] for n in r["pruned"]}
            layers = r.get("layers") or {}
            for layer, th in ths.items():
                lay = layers.get(layer, {})
                rows.append(
                    {
                        "label": label,
                        "task": r["task"] + 1,
                        "layer": layer,
                        "threshold": th,
                        "pruned": r["pruned"][layer],
                        "candidates": r["candidates"][layer],
                        "val_acc_after": lay.get("acc"),
                        "budget": lay.get("budget"),
                    }
                )
    return pd.DataFrame(rows)


def activity_frame(results: Mapping[str, dict]) -> pd.DataFrame:
    """Long table (label, layer, task, score) of the candidates' relative activity at each pruning."""
    rows = []
    for label, d in _pruning_runs(results):
        for layer, per_task in d["activity"].items():
            for t, scores in enumerate(per_task):
                rows.extend({"label": label, "layer": layer, "task": t + 1, "score": s} for s in scores)
    return pd.DataFrame(rows)


def singular_values_frame(results: Mapping[str, dict]) -> pd.DataFrame:
    """Long table (label, layer, task, i, sigma, sigma_rel) of W's singular values after each task,
    from the ``lowrank`` diagnostics of factorised runs."""
    rows = []
    for label, res in results.items():
        for layer, rec in ((res.get("method_diagnostics") or {}).get("lowrank") or {}).items():
            for t, sv in enumerate(rec["singular_values"]):
                top = sv[0] if sv and sv[0] > 0 else 1.0
                rows.extend(
                    {"label": label, "layer": layer, "task": t + 1, "i": i + 1, "sigma": s, "sigma_rel": s / top}
                    for i, s in enumerate(sv)
                )
    return pd.DataFrame(rows, columns=["label", "layer", "task", "i", "sigma", "sigma_rel"])


# ---- capacity (issue 17) -------------------------------------------------------------------------
#: plasticity is averaged over this many last tasks in :func:`capacity_table` (where exhaustion bites)
LAST_TASKS = 10


def method_label(params: Mapping, keys: Iterable[str] = ()) -> str:
    """``method`` plus each of ``keys`` whose value differs from the package default, e.g.
    ``adam_nscl energy=0.99`` (the name of one line or row across seeds)."""
    base = defaults()
    extra = []
    for k in keys:
        v = params.get(k, base[k])
        if v != base[k]:
            extra.append(f"{k}={'-'.join(map(str, v)) if isinstance(v, list) else v}")
    return " ".join([str(params.get("method")), *extra])


#: parameters that name a capacity line when they vary between the runs shown (the study's grids)
LABEL_KEYS = ("energy", "hidden", "sgp_scale")


def method_labels(results: Mapping[str, Mapping], keys: Iterable[str]) -> dict[str, str]:
    """:func:`method_label` of each run, naming only the ``keys`` that vary between the runs."""
    base = defaults()
    params = {k: r.get("params") or {} for k, r in results.items()}
    varying = [k for k in keys if len({json.dumps(p.get(k, base[k])) for p in params.values()}) > 1]
    return {k: method_label(p, varying) for k, p in params.items()}


CAPACITY_COLUMNS = ["label", "method", "seed", "task", "quantity", "layer", "value"]


def setting_keys(params: Iterable[Mapping], first: Iterable[str] = ()) -> list[str]:
    """The one "same setting" rule of the tables: ``first`` plus every other parameter (in the schema's
    order) whose value differs between ``params``, except the seed and what never changes a result
    (:data:`nscl.experiment.records.NON_SEMANTIC`) and the method (named anyway). Runs that agree on
    all of them are seeds of one setting (:func:`seed_summary` applies the same rule to a frame)."""
    base, params, first = defaults(), list(params), list(first)
    skip = {*records.NON_SEMANTIC, "method", *first}
    varying = [
        k
        for k in base
        if k not in skip and len({json.dumps(p.get(k, base[k]), sort_keys=True, default=str) for p in params}) > 1
    ]
    return first + varying


def capacity_labels(results: Mapping[str, Mapping], keys: Iterable[str] = LABEL_KEYS) -> dict[str, str]:
    """:func:`method_label` of each run naming the ``keys`` that vary, then every other parameter that
    varies (:func:`setting_keys`): runs with one label are seeds of one setting, never pooled across
    task counts, streams or any other differing parameter."""
    params = [r.get("params") or {} for r in results.values()]
    return method_labels(results, setting_keys(params, keys))


def capacity_frame(runs_or_results, keys: Iterable[str] = LABEL_KEYS) -> pd.DataFrame:
    """Long table of the capacity curves: one row per run, task and quantity, ``new-task accuracy``
    (``A[t][t]``, %) and ``r/d`` of each layer's input null space (a factorised layer's ``.B``; its
    bottleneck ``.A`` is left out). ``label``: :func:`capacity_labels` (seeds of one setting share it)."""
    rows = []
    results = results_by_label(runs_or_results)
    labels = capacity_labels(results, keys)
    for key, res in results.items():
        p = res.get("params") or {}
        common = dict(label=labels[key], method=p.get("method"), seed=p.get("seed"))
        for t, a in enumerate(_plasticity(res)):
            rows.append({**common, "task": t + 1, "quantity": "new-task accuracy", "layer": None, "value": a})
        for layer, rec in ((res.get("capacity") or {}).get("layers") or {}).items():
            base, space = _space(layer)
            if space != "input":
                continue
            for t, q in enumerate(rec["null_fraction"]):
                rows.append({**common, "task": t + 1, "quantity": "r/d", "layer": base, "value": q})
    return pd.DataFrame(rows, columns=CAPACITY_COLUMNS)


def _plasticity(res: Mapping) -> list[float]:
    """``A[t][t]`` per task done: the capacity record's, else the accuracy matrix's diagonal (a run
    recorded before the capacity record existed)."""
    cap = (res.get("capacity") or {}).get("plasticity")
    if cap is not None:
        return list(cap)
    acc = res.get("acc") or []
    return [row[t] for t, row in enumerate(acc) if t < len(row) and row[t] is not None]


def capacity_stats(runs_or_results, keys: Iterable[str] = LABEL_KEYS) -> pd.DataFrame:
    """One row per setting (:func:`capacity_labels`), complete runs only, one run per distinct seed (the
    first; ``duplicates`` counts the repeats left out): ``n``, ``seeds``, mean and std over seeds
    (``<m>_mean``, ``<m>_std``) of ``acc``, ``bwt`` and ``plasticity_last`` (mean ``A[t][t]`` over the last
    :data:`LAST_TASKS` tasks), and per input layer ``exhausted <layer>``: the task after which its null
    space first held less than a quarter of d, one per seed (None: never). A run without a capacity record
    has no exhaustion to give: left out of those lists, with one warning."""
    import warnings

    groups: dict[str, dict] = {}
    duplicates: dict[str, int] = {}
    results = results_by_label(runs_or_results)
    labels = capacity_labels(results, keys)
    for key, res in results.items():
        if res.get("status") == "complete":
            seeds = groups.setdefault(labels[key], {})
            seed = (res.get("params") or {}).get("seed")
            if seed in seeds:
                duplicates[labels[key]] = duplicates.get(labels[key], 0) + 1
            else:
                seeds[seed] = res
    rows = []
    for label, by_seed in groups.items():
        runs = list(by_seed.values())
        row = {
            "method": label,
            "n": len(runs),
            "seeds": ",".join(str(s) for s in by_seed),
            "duplicates": duplicates.get(label, 0),
        }
        values = {
            "acc": [r["metrics"]["acc"] for r in runs],
            "bwt": [r["metrics"]["bwt"] for r in runs],
            "plasticity_last": [
                sum(p[-LAST_TASKS:]) / len(p[-LAST_TASKS:]) if p else float("nan") for p in map(_plasticity, runs)
            ],
        }
        for m, v in values.items():
            v = pd.Series(v, dtype=float)
            row[f"{m}_mean"], row[f"{m}_std"] = v.mean(), (v.std(ddof=1) if len(v) > 1 else float("nan"))
        for r in runs:
            layers = (r.get("capacity") or {}).get("layers")
            if layers is None:
                warnings.warn(
                    f"{r.get('_dir') or label} has no capacity record (a run from before it was recorded): "
                    f"its exhaustion is left out of the capacity table; rerun it to have it",
                    stacklevel=2,
                )
                continue
            for layer, rec in layers.items():
                base, space = _space(layer)
                if space == "input":
                    row.setdefault(f"exhausted {base}", []).append(rec["exhausted_at"])
        rows.append(row)
    return pd.DataFrame(rows)


def capacity_table(runs_or_results, keys: Iterable[str] = LABEL_KEYS, digits: int = METRIC_DIGITS) -> pd.DataFrame:
    """:func:`capacity_stats` for reading: ``ACC``, ``BWT`` and ``plasticity last 10`` as ``mean ± std``
    (one seed: the value alone), and the exhaustion tasks per layer ascending (``never`` if it did not)."""
    stats = capacity_stats(runs_or_results, keys)

    def pm(mu, sd) -> str:
        return f"{mu:.{digits}f}" if sd != sd else f"{mu:.{digits}f} ± {sd:.{digits}f}"

    out = stats[[c for c in ("method", "n", "seeds") if c in stats]].copy()
    for m, head in (("acc", "ACC"), ("bwt", "BWT"), ("plasticity_last", f"plasticity last {LAST_TASKS}")):
        if f"{m}_mean" in stats:
            out[head] = [pm(mu, sd) for mu, sd in zip(stats[f"{m}_mean"], stats[f"{m}_std"])]
    for c in (c for c in stats.columns if c.startswith("exhausted ")):
        out[c] = [
            ", ".join([*map(str, sorted(e for e in ex if e is not None)), *["never"] * sum(e is None for e in ex)])
            if isinstance(ex, list)
            else "-"
            for ex in stats[c]
        ]
    return out


def validation_choice(runs_or_results, methods: Iterable[str], keys: Iterable[str] = LABEL_KEYS) -> dict[str, dict]:
    """Per method of ``methods`` (its runs in ``runs_or_results``, the validation seeds): the label of
    :func:`capacity_stats` with the highest mean ACC (``chosen``) and every label's ``{label: (mean ACC,
    seeds)}`` (``acc``). Settings are chosen here, on validation seeds, then reported on the test seeds."""
    stats = capacity_stats(runs_or_results, keys)
    out = {}
    for m in methods:
        rows = stats[[label.split()[0] == m for label in stats["method"]]] if not stats.empty else stats
        if rows.empty:
            continue
        best = rows.loc[rows["acc_mean"].idxmax()]
        out[m] = {
            "chosen": best["method"],
            "acc": {r["method"]: (r["acc_mean"], r["seeds"]) for _, r in rows.iterrows()},
        }
    return out


def n_parameters(res: Mapping) -> int:
    """Trainable parameters of a run's model (backbone and every task's head), rebuilt from its record."""
    from ..core.models import build_model

    p, s = res["params"], res["stream"]
    n_classes = [t["n_classes"] for t in s["tasks"]]
    kw = {k: p[k] for k in ("hidden", "bias", "cnn_channels", "batchnorm", "width", "resnet_block") if k in p}
    model = build_model(p["model"], tuple(s["input_shape"]), n_classes, **kw)
    return sum(t.numel() for t in model.parameters())


def width_curve(runs_or_results, method: str = "adam_nscl", energy: float | None = None) -> pd.DataFrame:
    """ACC against model size for one method (complete runs; ``energy``: the rule's threshold, default the
    package's): one row per ``hidden`` with ``params`` (:func:`n_parameters`), ``n`` and ACC mean / std,
    sorted by size. The width curve of the capacity study (E2)."""
    energy = defaults()["energy"] if energy is None else energy
    groups: dict[str, list] = {}
    for res in results_by_label(runs_or_results).values():
        p = res.get("params") or {}
        if res.get("status") == "complete" and p.get("method") == method and p.get("energy") == energy:
            groups.setdefault(json.dumps(p["hidden"]), []).append(res)
    rows = []
    for hidden, runs in groups.items():
        acc = pd.Series([r["metrics"]["acc"] for r in runs], dtype=float)
        rows.append(
            {
                "hidden": "-".join(map(str, json.loads(hidden))),
                "params": n_parameters(runs[0]),
                "n": len(runs),
                "acc_mean": acc.mean(),
                "acc_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
            }
        )
    cols = ["hidden", "params", "n", "acc_mean", "acc_std"]
    return pd.DataFrame(rows, columns=cols).sort_values("params", ignore_index=True)


def matching_parameters(curve: pd.DataFrame, acc: float) -> float | None:
    """Parameters a model on ``curve`` (:func:`width_curve`) needs to reach mean ACC ``acc``: linear in
    log(parameters) between the two measured sizes around it; None when ``acc`` lies outside the curve
    (no extrapolation) or the curve does not rise there."""
    import math

    pts = list(zip(curve["params"], curve["acc_mean"]))
    for (p0, a0), (p1, a1) in zip(pts, pts[1:]):
        if a1 > a0 and a0 <= acc <= a1:
            f = (acc - a0) / (a1 - a0)
            return math.exp(math.log(p0) + f * (math.log(p1) - math.log(p0)))
    return None


# ---- fronts: the trade-off each knob controls (issue 24) -----------------------------------------
#: the knob each front sweeps: ``{curve: parameter}`` (:func:`front_curve` names the curves)
FRONT_KNOBS = {
    "adam_nscl": "energy",
    "scaled": "sgp_scale",
    "nscl_lowrank": "rank_schedule",
    "nscl_prune": "prune_margin",
}

FRONT_COLUMNS = [
    "curve",
    "knob",
    "value",
    "x",
    "n",
    "seeds",
    "acc_mean",
    "acc_std",
    "bwt_mean",
    "bwt_std",
    "plasticity_last_mean",
    "plasticity_last_std",
]


def front_curve(params: Mapping) -> tuple[str, str | None]:
    """``(curve, knob)`` of a run: which front it is a point of and the parameter that moves it along.

    ``adam_nscl`` (hard projector): the energy threshold; ``scaled`` (``nscl_sgp``, or ``adam_nscl``
    with ``projector: scaled``): ``sgp_scale``; ``nscl_lowrank``: the rank budget schedule;
    ``nscl_prune``: the pruning margin. A scaled projector or a capacity-reuse variant
    (``prune_reclaim``, ``free_projector``) of nscl_prune / nscl_lowrank is a curve of its own
    (``nscl_prune scaled reclaim``). Other methods are anchor points (knob None).
    """
    m = params.get("method")
    scaled = params.get("projector") == "scaled"
    if m == "nscl_sgp" or (m == "adam_nscl" and scaled):
        return "scaled", "sgp_scale"
    if m == "adam_nscl":
        return "adam_nscl", "energy"
    if m in ("nscl_lowrank", "nscl_prune"):
        extra = ["scaled"] if scaled else []
        if m == "nscl_prune":
            extra += ["reclaim"] if params.get("prune_reclaim") else []
            fp = params.get("free_projector", "none")
            extra += [f"free={fp}"] if fp != "none" else []
        return " ".join([m, *extra]), FRONT_KNOBS[m]
    return str(m), None


def mean_budget(schedule: list, n_tasks: int) -> float:
    """Mean active rank fraction of a ``rank_schedule`` over ``n_tasks`` (entry t, the last repeats):
    one number that orders schedules along the rank front."""
    sched = list(schedule) or [1.0]
    return sum(sched[min(t, len(sched) - 1)] for t in range(n_tasks)) / max(n_tasks, 1)


def _knob_x(knob: str | None, params: Mapping, n_tasks: int) -> float | None:
    if knob is None:
        return None
    v = params.get(knob, defaults()[knob])
    return mean_budget(v, n_tasks) if knob == "rank_schedule" else float(v)


def front_table(runs_or_results) -> pd.DataFrame:
    """The fronts of a sweep: one row per (curve, knob value), complete runs only, mean and std over
    seeds of ``acc``, ``bwt`` and ``plasticity_last`` (mean ``A[t][t]`` over the last
    :data:`LAST_TASKS` tasks). ``value``: the knob as written (a schedule joined by ``-``), ``x``: it as
    a number (a schedule's :func:`mean_budget`). Rows sorted by curve, then ``x``."""
    groups: dict[tuple, list] = {}
    for res in results_by_label(runs_or_results).values():
        if res.get("status") != "complete":
            continue
        p = res.get("params") or {}
        curve, knob = front_curve(p)
        v = p.get(knob, defaults()[knob]) if knob else None
        value = "-".join(map(str, v)) if isinstance(v, list) else ("" if v is None else str(v))
        groups.setdefault((curve, knob, value), []).append(res)
    rows = []
    for (curve, knob, value), runs in groups.items():
        T = len(runs[0]["capacity"]["plasticity"])
        row = {
            "curve": curve,
            "knob": knob,
            "value": value,
            "x": _knob_x(knob, runs[0]["params"], T),
            "n": len(runs),
            "seeds": ",".join(str(r["params"]["seed"]) for r in runs),
        }
        values = {
            "acc": [r["metrics"]["acc"] for r in runs],
            "bwt": [r["metrics"]["bwt"] for r in runs],
            "plasticity_last": [
                sum(p[-LAST_TASKS:]) / len(p[-LAST_TASKS:]) for p in (r["capacity"]["plasticity"] for r in runs)
            ],
        }
        for m, v in values.items():
            v = pd.Series(v, dtype=float)
            row[f"{m}_mean"], row[f"{m}_std"] = v.mean(), (v.std(ddof=1) if len(v) > 1 else float("nan"))
        rows.append(row)
    out = pd.DataFrame(rows, columns=FRONT_COLUMNS)
    return out.sort_values(["curve", "x"], na_position="last", kind="stable").reset_index(drop=True)


def front_above(front: pd.DataFrame, curve: str, reference: str) -> pd.DataFrame:
    """Where ``curve`` lies above ``reference`` in the (BWT, plasticity) plane: per point of ``curve``,
    the reference front's plasticity at the same BWT (linear interpolation between its points sorted
    by BWT; NaN outside its BWT range), ``gap`` = the point's plasticity minus it (> 0: above), and
    ``dominated``: whether some reference point is at least as good in both BWT and plasticity.
    Columns: ``value, bwt, plasticity, reference_plasticity, gap, dominated``."""
    cols = ["value", "bwt", "plasticity", "reference_plasticity", "gap", "dominated"]
    ref = front[front["curve"] == reference].sort_values("bwt_mean")
    pts = front[front["curve"] == curve]
    rb, rp = ref["bwt_mean"].to_numpy(float), ref["plasticity_last_mean"].to_numpy(float)
    rows = []
    for _, r in pts.iterrows():
        b, p = float(r["bwt_mean"]), float(r["plasticity_last_mean"])
        inside = len(rb) > 0 and rb.min() <= b <= rb.max()
        at = float(np.interp(b, rb, rp)) if inside else None
        dominated = bool(((rb >= b) & (rp >= p)).any()) if len(rb) else False
        rows.append([r["value"], b, p, at, (p - at) if at is not None else None, dominated])
    return pd.DataFrame(rows, columns=cols)


def reuse_table(runs_or_results) -> pd.DataFrame:
    """Pruned units' capacity per nscl_prune curve and knob value (complete runs, means over seeds):
    ``free_last`` (share of units free after the last task, all layers), ``freed_used_up`` (first task
    after which no layer had a free unit, None: never), ``lifetime`` (mean number of tasks a unit was
    free before a task kept it), ``reclaimed`` (units re-pruning returned, all tasks and layers) and
    ``learning_free_last`` (share of the last :data:`LAST_TASKS` tasks' learning in units free at their
    start, mean over wires)."""
    groups: dict[tuple, list] = {}
    for res in results_by_label(runs_or_results).values():
        p = res.get("params") or {}
        if res.get("status") != "complete" or p.get("method") != "nscl_prune":
            continue
        curve, knob = front_curve(p)
        groups.setdefault((curve, str(p.get(knob))), []).append(res["capacity"])
    rows = []
    for (curve, value), caps in groups.items():
        free_last, used_up, life, recl, learn = [], [], [], [], []
        for c in caps:
            free, size = c.get("free_units") or {}, c.get("units") or {}
            free_last.append(sum(v[-1] for v in free.values()) / max(sum(size.values()), 1))
            T = max((len(v) for v in free.values()), default=0)
            empty = [t + 1 for t in range(T) if all(v[t] == 0 for v in free.values() if len(v) > t)]
            used_up.append(empty[0] if empty else None)
            lt = [x for v in (c.get("free_lifetime") or {}).values() for x in v]
            life.append(sum(lt) / len(lt) if lt else float("nan"))
            recl.append(sum(sum(v) for v in (c.get("reclaimed_units") or {}).values()))
            shares = [
                x for v in (c.get("learning_in_free_units") or {}).values() for x in v[-LAST_TASKS:] if x is not None
            ]
            learn.append(sum(shares) / len(shares) if shares else float("nan"))
        rows.append(
            {
                "curve": curve,
                "value": value,
                "n": len(caps),
                "free_last": float(np.mean(free_last)),
                "freed_used_up": used_up,
                "lifetime": float(np.nanmean(life)) if not all(x != x for x in life) else float("nan"),
                "reclaimed": float(np.mean(recl)),
                "learning_free_last": float(np.nanmean(learn)) if not all(x != x for x in learn) else float("nan"),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["curve", "value", "n", "free_last", "freed_used_up", "lifetime", "reclaimed", "learning_free_last"],
    )
