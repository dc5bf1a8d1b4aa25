"""The results page (``make results``): finished comparison sweeps -> ``docs/results.md`` + one figure.

    python -m nscl results suite=results/sweeps/compare_fmnist full=results/sweeps/compare_fmnist_full \\
        -o docs/results.md [--figure docs/results_stability_plasticity.png]

Each positional argument is a sweep directory (``python -m nscl sweep run FILE``), optionally
labelled ``SIZE=DIR`` (default label: the sweep's name); the label is the *size* column of the page.
The page holds, from the complete runs only:

* per benchmark, one table with a row per method: ACC, BWT and plasticity, mean ± std over seeds
  (``n`` shown when a group has another number of seeds than the others), one column group per size;
* the issue's goals per benchmark x size (:func:`goals`): the best null-space method against
  ``joint``, the default ``adam_nscl`` against ``joint`` and ``finetune``;
* the stability-plasticity plane (:func:`nscl.analysis.plots.stability_plasticity`) as a PNG beside the page;
* the exact commands, the stream sizes and the null-space rule the runs used;
* the environment: commit(s), versions, CPU, threads, and wall / compute time per sweep.

Nothing is trained here; the page is rebuilt from the run directories as often as wanted.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Iterable, Mapping

from ..analysis import tables
from ..experiment import records as runs
from ..util import atomic_write, read_text
from . import sweep
from .sweep import spec as sweep_spec
from .sweep import state as sweep_state

METRICS = ("acc", "bwt", "plasticity")
HEAD = {"acc": "ACC", "bwt": "BWT", "plasticity": "plasticity"}
#: parameters that describe the null-space rule (shown on the page as the runs used them)
RULE_KEYS = ("nullspace_rule", "a", "a_min_floor", "energy", "energy_step", "energy_max", "leak", "rel_tol")
#: parameters that describe a stream's size (shown per benchmark x size)
SIZE_KEYS = ("samples_per_task", "test_samples_per_task", "epochs", "batch_size", "model", "hidden", "lr")
#: the issue's goals: best null-space method within this many ACC points of joint, with BWT >= this
BEST_GAP, BEST_BWT = 0.5, -0.5
#: default adam_nscl within this many points of joint and at least this many above finetune
DEFAULT_GAP, DEFAULT_GAIN = 1.0, 2.0


def parse_sweeps(args: Iterable[str]) -> dict[str, Path]:
    """``["suite=DIR", "DIR2"]`` -> ``{"suite": DIR, "<name of DIR2's sweep>": DIR2}`` (order kept)."""
    out: dict[str, Path] = {}
    for a in args:
        label, _, d = a.rpartition("=") if "=" in a else ("", "", a)
        path = Path(d).expanduser()
        if not label:
            label = sweep.manifest(path)["sweep"].get("name") or path.name
        if label in out:
            raise sweep.SweepError(f"two sweeps labelled {label!r}: label them SIZE=DIR")
        out[label] = path
    if not out:
        raise sweep.SweepError("no sweep directory given (python -m nscl results SIZE=DIR ...)")
    return out


def collect(sweeps: Mapping[str, str | os.PathLike]):
    """One row per run of every sweep (:func:`nscl.apps.sweep.collect`), with a ``size`` column (the label)."""
    import pandas as pd

    frames = []
    for label, d in sweeps.items():
        df = sweep.collect(d, write=False)
        df.insert(0, "size", label)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def table(df):
    """Mean and std over seeds of the complete runs, one row per (benchmark, size, method), in run order."""
    return tables.seed_summary(df, by=("benchmark", "size", "method"), metrics=METRICS)


def goals(summary, best_of: Iterable[str] | None = None):
    """Per (benchmark, size): the issue's two goals, measured on :func:`table`'s means.

    * best null-space method (highest mean ACC among ``best_of``, default every ``Method.null_space``
      method): ``best_gap`` = joint ACC - its ACC; goal met when ``best_gap <= 0.5`` and its BWT >= -0.5;
    * default ``adam_nscl``: goal met when it is within 1 point of joint and >= 2 points above finetune.

    A group without joint, finetune or adam_nscl gets ``None`` for the goals that need them.
    """
    import pandas as pd

    if best_of is None:
        from ..methods import null_space_methods

        best_of = null_space_methods()
    best_of = tuple(best_of)
    rows = []
    summary = summary[summary["acc_mean"].notna()]  # groups without a complete run (pending, failed)
    for (bench, size), g in summary.groupby(["benchmark", "size"], sort=False):
        acc = dict(zip(g["method"], g["acc_mean"]))
        bwt = dict(zip(g["method"], g["bwt_mean"]))
        joint, ft, nscl = acc.get("joint"), acc.get("finetune"), acc.get("adam_nscl")
        cand = {m: a for m, a in acc.items() if m in best_of}
        best = max(cand, key=cand.get) if cand else None
        row = {
            "benchmark": bench,
            "size": size,
            "joint": joint,
            "finetune": ft,
            "best": best,
            "best_acc": cand.get(best),
            "best_bwt": bwt.get(best),
            "best_gap": None if joint is None or best is None else joint - cand[best],
            "adam_nscl": nscl,
            "adam_nscl_bwt": bwt.get("adam_nscl"),
            "default_gap": None if joint is None or nscl is None else joint - nscl,
            "default_gain": None if ft is None or nscl is None else nscl - ft,
        }
        row["best_goal"] = (
            None if row["best_gap"] is None else bool(row["best_gap"] <= BEST_GAP and row["best_bwt"] >= BEST_BWT)
        )
        row["default_goal"] = (
            None
            if row["default_gap"] is None or row["default_gain"] is None
            else bool(row["default_gap"] <= DEFAULT_GAP and row["default_gain"] >= DEFAULT_GAIN)
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean, std, digits: int = 2, sign: bool = False) -> str:
    if mean != mean or mean is None:  # NaN
        return "-"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f.format(mean) + (f" ± {std:.{digits}f}" if std == std and std is not None else "")


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|", *["| " + " | ".join(r) + " |" for r in rows]]


def method_tables(summary, digits: int = 2) -> list[str]:
    """Markdown: one table per benchmark, a row per method, ACC / BWT / plasticity per size."""
    lines = []
    sizes = list(dict.fromkeys(summary["size"]))
    n_common = int(summary["n"].mode().iloc[0]) if len(summary) else 0
    for bench, g in summary.groupby("benchmark", sort=False):
        header = ["method"] + [f"{HEAD[m]} ({s})" for s in sizes for m in METRICS]
        rows = []
        for method in dict.fromkeys(g["method"]):
            row = [f"`{method}`"]
            for s in sizes:
                hit = g[(g["method"] == method) & (g["size"] == s)]
                if hit.empty:
                    row += ["-"] * len(METRICS)
                    continue
                r = hit.iloc[0]
                note = f" (n={int(r['n'])})" if int(r["n"]) != n_common else ""
                row += [
                    _cell(r[f"{m}_mean"], r[f"{m}_std"], digits, sign=(m == "bwt")) + (note if m == "acc" else "")
                    for m in METRICS
                ]
            rows.append(row)
        lines += [f"### {bench}", ""]
        lines += _md_table(header, rows, ["---"] + ["---:"] * (len(header) - 1))
        lines.append("")
    return lines


def goal_lines(gl) -> list[str]:
    """Markdown table of :func:`goals` with ✓ / ✗ per goal."""

    def yes(v):
        return "-" if v is None else ("✓" if v else "✗")

    def num(v, sign=False):
        return "-" if v is None or v != v else (f"{v:+.2f}" if sign else f"{v:.2f}")

    header = [
        "benchmark",
        "size",
        "joint",
        "best null-space method",
        "its ACC",
        "its BWT",
        "joint − best",
        f"goal 1 (≤ {BEST_GAP:g}, BWT ≥ {BEST_BWT:g})",
        "adam_nscl",
        "joint − adam_nscl",
        "adam_nscl − finetune",
        f"goal 2 (≤ {DEFAULT_GAP:g}, ≥ {DEFAULT_GAIN:g})",
    ]
    rows = [
        [
            r["benchmark"],
            r["size"],
            num(r["joint"]),
            f"`{r['best']}`" if r["best"] else "-",
            num(r["best_acc"]),
            num(r["best_bwt"], True),
            num(r["best_gap"]),
            yes(r["best_goal"]),
            num(r["adam_nscl"]),
            num(r["default_gap"]),
            num(r["default_gain"], True),
            yes(r["default_goal"]),
        ]
        for _, r in gl.iterrows()
    ]
    return _md_table(
        header, rows, ["---", "---", "---:", "---", "---:", "---:", "---:", ":-:", "---:", "---:", "---:", ":-:"]
    )


def _rel(path, start) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


def _repo_path(path, root) -> str:
    """``path`` relative to the repository root; a path in another checkout (a frozen worktree the
    sweep ran from) from its ``params/`` or ``results/`` folder on, as in this one."""
    rel = _rel(path, root)
    if rel.startswith(".."):
        parts = Path(path).parts
        for anchor in ("params", "results"):
            if anchor in parts:
                i = len(parts) - 1 - parts[::-1].index(anchor)
                return "/".join(parts[i:])
    return rel


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt_time(s: float | None) -> str:
    if s is None or s != s:
        return "-"
    return f"{s / 3600:.2f} h" if s >= 5400 else f"{s / 60:.1f} min"


def sweep_times(sweep_dir: str | os.PathLike) -> dict:
    """Wall time (first run's start to last results.json written), summed run time, runs, executor."""
    man = sweep.manifest(sweep_dir)
    starts, ends, total = [], [], 0.0
    for spec in man["specs"]:
        d = Path(spec["out_dir"])
        if (d / sweep_state.JOB).exists() and (d / runs.RESULTS).exists():
            try:
                starts.append(json.loads(read_text(d / sweep_state.JOB))["started"])
                ends.append((d / runs.RESULTS).stat().st_mtime)
                total += (runs.load(d).get("timing") or {}).get("total_s") or 0.0
            except (OSError, ValueError, KeyError, TypeError):  # a corrupted job.json: left out
                continue
    ex = man["sweep"].get("executor") or {}
    return {
        "wall_s": (max(ends) - min(starts)) if starts else None,
        "run_s": total,
        "runs": len(man["specs"]),
        "executor": ex.get("kind", "local"),
        "parallel": ex.get("parallel"),
        "threads": ex.get("threads"),
        "file": man["sweep"].get("_file"),
        "description": man["sweep"].get("description"),
    }


def _uniq(values) -> str:
    vals = [v for v in dict.fromkeys(values) if v is not None]
    return ", ".join(map(str, vals)) or "-"


def render(
    sweeps: Mapping[str, str | os.PathLike],
    figure: str | os.PathLike | None = None,
    page: str | os.PathLike | None = None,
    command: str | None = None,
    note: str | None = None,
    df=None,
) -> str:
    """The markdown page (see the module docstring); ``figure`` is linked relative to ``page``;
    ``df``: :func:`collect`'s table of the same sweeps, if already at hand."""
    df = collect(sweeps) if df is None else df
    ok = df[df["state"] == "complete"]
    summary = table(ok)
    root = sweep_spec.ROOT
    where = Path(page).resolve().parent if page else root
    lines = [
        "# Results: every method on Split and Permuted Fashion-MNIST",
        "",
        "Generated by `python -m nscl results` from finished sweeps; do not edit by hand "
        "(`make results` rebuilds it). Task-incremental (one head per task), test accuracy in percent; "
        "BWT in points (negative = forgetting); plasticity = mean accuracy on each task right after "
        "learning it (see `nscl/core/metrics.py`). Mean ± std over seeds "
        f"({_uniq(sorted(ok['seed'].unique()))}); every method with its package defaults.",
        "",
    ]
    if note:
        lines += [note, ""]
    states = df["state"].value_counts().to_dict()
    if states.get("complete", 0) != len(df):
        lines += [
            f"**Incomplete:** {len(df)} runs, "
            + ", ".join(f"{n} {s}" for s, n in states.items())
            + "; the tables use the complete ones.",
            "",
        ]
    lines += ["## Accuracy, backward transfer, plasticity", ""]
    lines += method_tables(summary)
    gl = goals(summary)
    lines += [
        "## Goals",
        "",
        f"Goal 1: the best null-space method is within {BEST_GAP:g} ACC points of `joint` with BWT ≥ "
        f"{BEST_BWT:g}. Goal 2: the default `adam_nscl` is within {DEFAULT_GAP:g} point of `joint` and "
        f"at least {DEFAULT_GAIN:g} points above `finetune`. Measured on the means above.",
        "",
    ]
    lines += goal_lines(gl) + [""]
    chance = _chance_rows(ok)
    lines += [
        "Null-space runs at chance on some task (final accuracy within the check's margin of chance): "
        + ("none." if not chance else "; ".join(chance) + "."),
        "",
    ]
    pruned = pruning_lines(ok)
    if pruned:
        lines += [
            "## Pruning: freed units and the null space they open",
            "",
            "Per layer: the share of its units (channels of a conv layer) that pruning left free after the "
            "last task (pruned and re-initialised; they output zero on the old tasks), and the dimension "
            "of the null space of the layer's *input* that constrained training (mean over tasks 1..T-1 "
            "and seeds). A unit freed in one layer is an input direction of the next with no variance on "
            "the old tasks, so the next layer's null space grows with it.",
            "",
        ] + pruned
    if figure:
        lines += [
            "## Stability–plasticity plane",
            "",
            "Each small dot is one run (seed); each large marker a method's mean with ±1 std. "
            "Up: less forgetting; right: learns each new task better.",
            "",
            f"![stability-plasticity plane]({_rel(figure, where)})",
            "",
        ]
    lines += ["## How to regenerate", "", "```bash", "make results", "# runs:"]
    times = {label: sweep_times(d) for label, d in sweeps.items()}
    for label, t in times.items():
        if t["file"]:
            lines.append(f"python -m nscl sweep run {_repo_path(t['file'], root)}")
    lines += [
        command
        or "python -m nscl results "
        + " ".join(f"{k}={_repo_path(v, root)}" for k, v in sweeps.items())
        + f" -o {_repo_path(page, root) if page else 'docs/results.md'}",
        "```",
        "",
        "Runs already complete are skipped, so the sweeps resume after an interruption; "
        "`python -m nscl sweep status DIR` shows progress.",
        "",
    ]
    lines += ["## Streams and settings", ""]
    rows = []
    for (bench, size), g in ok.groupby(["benchmark", "size"], sort=False):
        p = runs.load(g.iloc[0]["run"])["params"]
        rows.append([bench, size] + [str(p.get(k)) for k in SIZE_KEYS])
    lines += _md_table(["benchmark", "size", *SIZE_KEYS], rows, ["---"] * (2 + len(SIZE_KEYS))) + [""]
    nscl_runs = ok[ok["method"] == "adam_nscl"]
    if len(nscl_runs):
        p = runs.load(nscl_runs.iloc[0]["run"])["params"]
        rule = ", ".join(f"`{k}={p[k]}`" for k in RULE_KEYS if k in p and _rule_key_used(k, p))
        lines += [f"Null-space rule of the null-space methods (the package default at the commit below): {rule}.", ""]
    lines += ["## Environment", ""]
    env = [runs.load(r).get("env") or {} for r in ok["run"]]
    commits = _uniq(
        f"{(e.get('git') or {}).get('commit', '?')[:10]}"
        + (" (uncommitted changes)" if (e.get("git") or {}).get("dirty") else "")
        for e in env
    )
    lines += [
        f"- commit: {commits}",
        f"- nscl {_uniq(e.get('nscl') for e in env)}, Python {_uniq(e.get('python') for e in env)}, "
        f"torch {_uniq(e.get('torch') for e in env)}, torchvision {_uniq(e.get('torchvision') for e in env)}, "
        f"numpy {_uniq(e.get('numpy') for e in env)}",
        f"- platform: {_uniq(e.get('platform') for e in env)}; device: {_uniq(e.get('device') for e in env)}",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores (where the page was built); "
        f"torch threads per run: {_uniq(e.get('threads') for e in env)}",
    ]
    for label, t in times.items():
        lines.append(
            f"- sweep `{label}` ({t['runs']} runs, {t['executor']} executor, {t['parallel'] or 1} at once): "
            f"wall time {_fmt_time(t['wall_s'])}, summed run time {_fmt_time(t['run_s'])}"
        )
    return "\n".join(lines) + "\n"


PRUNING_METHODS = ("clnp", "nscl_prune")


def pruning_lines(ok, digits: int = 1) -> list[str]:
    """Markdown, per (benchmark, size) with pruning runs: per layer, the units left free (pruned and
    re-initialised, output zero for the old tasks) after the last task by ``clnp`` and ``nscl_prune``, and
    the null-space dimension of the layer's input under ``adam_nscl`` and ``nscl_prune`` (mean over the
    null spaces that constrained training, tasks 1..T-1, and over seeds). A unit freed in one layer is
    an input dimension of the next with zero variance, which that layer's null space gains."""
    lines = []
    for (bench, size), g in ok.groupby(["benchmark", "size"], sort=False):
        g = g[g["method"].isin(("adam_nscl", *PRUNING_METHODS))]
        if not g["method"].isin(PRUNING_METHODS).any():
            continue
        res = {str(r): runs.load(r) for r in g["run"]}
        method = {str(r): m for r, m in zip(g["run"], g["method"])}
        units = tables.units_frame(res)
        if units.empty:  # no pruning record (e.g. runs written before pruning kept one)
            continue
        units = units[units["task"] == units.groupby("label")["task"].transform("max")].assign(
            method=lambda u: u["label"].map(method), free_frac=lambda u: u["free"] / u["size"]
        )
        ns = tables.null_space_frame(res)
        ns = ns[ns["task"] < ns.groupby("label")["task"].transform("max")]
        free = units.groupby(["method", "layer"])["free_frac"].mean()
        null = ns.groupby(["method", "layer"])["null_dim"].mean()
        layers = list(dict.fromkeys(list(ns["layer"]) + list(units["layer"])))
        d = dict(zip(ns["layer"], ns["d"]))
        n_units = dict(zip(units["layer"], units["size"]))

        def cell(series, m, layer, fmt):
            return fmt(series[(m, layer)]) if (m, layer) in series.index else "-"

        rows = [
            [
                f"`{layer}`",
                str(d.get(layer, "-")),
                str(n_units.get(layer, "-")),
                *[cell(free, m, layer, lambda v: f"{100 * v:.{digits}f}%") for m in PRUNING_METHODS],
                *[cell(null, m, layer, lambda v: f"{v:.{digits}f}") for m in ("adam_nscl", "nscl_prune")],
            ]
            for layer in layers
        ]
        lines += [f"### {bench}, {size}", ""]
        lines += _md_table(
            [
                "layer",
                "input dim d",
                "units",
                "free after last task: `clnp`",
                "`nscl_prune`",
                "null-space dim of the input: `adam_nscl`",
                "`nscl_prune`",
            ],
            rows,
            ["---", "---:", "---:", "---:", "---:", "---:", "---:"],
        )
        lines.append("")
    return lines


def _rule_key_used(key: str, p: Mapping) -> bool:
    """Whether a rule parameter matters for the rule ``p`` uses (``a`` only for a_min, ...)."""
    rule = p.get("nullspace_rule")
    owner = {
        "a": "a_min",
        "a_min_floor": "a_min",
        "energy": "energy",
        "energy_step": "energy",
        "energy_max": "energy",
        "leak": "leak",
        "rel_tol": "rel_tol",
    }
    return key not in owner or owner[key] == rule


def _chance_rows(ok) -> list[str]:
    from ..methods import null_space_methods
    from ..analysis.chance import at_chance

    out = []
    for _, r in ok[ok["method"].isin(null_space_methods())].iterrows():
        tasks = at_chance(runs.load(r["run"]))
        if tasks:
            out.append(f"{r['name']} (tasks {', '.join(map(str, tasks))})")
    return out


def write(
    sweeps: Mapping[str, str | os.PathLike],
    page: str | os.PathLike,
    figure: str | os.PathLike | None = None,
    command: str | None = None,
    note: str | None = None,
    capacity: Mapping[str, str | os.PathLike] | None = None,
    validation: Mapping[str, str | os.PathLike] | None = None,
    fronts: Mapping[str, str | os.PathLike | list] | None = None,
    fronts_validation: Mapping[str, str | os.PathLike | list] | None = None,
) -> Path:
    """Write the page (and the figure, default ``<page stem>_stability_plasticity.png`` beside it); with
    ``capacity`` (``{label: sweep dir}``) also the capacity section (:func:`capacity_lines`, with the
    ``validation`` sweeps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis import plots

    page = Path(page)
    figure = Path(figure) if figure else page.with_name(f"{page.stem}_stability_plasticity.png")
    df = collect(sweeps)
    ok = df[df["state"] == "complete"]
    if ok.empty:
        raise sweep.SweepError(f"no complete run in {', '.join(map(str, sweeps.values()))}: nothing to report")
    fig = plots.stability_plasticity(ok, col="benchmark", row="size" if ok["size"].nunique() > 1 else None)
    tmp = figure.with_name(f".{figure.name}.tmp.png")
    plots.savefig(fig, tmp)
    plt.close(fig)
    text = render(sweeps, figure=figure, page=page, command=command, note=note, df=df)
    if capacity or fronts:
        section = capacity_lines(capacity or {}, page, validation, fronts, fronts_validation)
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    os.replace(tmp, figure)
    atomic_write(page, text)
    return page


def write_capacity(
    page: str | os.PathLike,
    capacity: Mapping[str, str | os.PathLike],
    validation: Mapping[str, str | os.PathLike] | None = None,
    fronts: Mapping[str, str | os.PathLike | list] | None = None,
    fronts_validation: Mapping[str, str | os.PathLike | list] | None = None,
) -> Path:
    """Rewrite only the capacity section (with the fronts section after it) of an existing page (from its heading to the end; appended when
    the page has none), leaving the sections built from the comparison sweeps as they are: the capacity
    sweeps can be rerun without rerunning those."""
    page = Path(page)
    if not page.exists():
        raise sweep.SweepError(f"{page} does not exist: build the whole page first (python -m nscl results DIR ...)")
    text = page.read_text()
    head = text.split(CAPACITY_HEADING, 1)[0].rstrip("\n")
    section = capacity_lines(capacity, page, validation, fronts, fronts_validation)
    atomic_write(page, head + "\n\n" + "\n".join(section) + "\n")
    return page


# ---- capacity (issue 17) -----------------------------------------------------------------------------
CAPACITY_HEADING = "## Capacity: where the null space runs out"
#: the capacity goal: a seed method at its defaults beats adam_nscl by this many ACC points, with BWT >= this,
#: mean ± std not overlapping, and beats nscl_sgp
CAPACITY_GAIN, CAPACITY_BWT = 2.0, -1.0
CAPACITY_CANDIDATES = ("nscl_prune", "nscl_lowrank")
#: the methods whose null-space threshold is chosen on the validation seeds
VALIDATED = ("adam_nscl", "nscl_sgp", *CAPACITY_CANDIDATES)


def capacity_goal(stats, candidates: Iterable[str] = CAPACITY_CANDIDATES) -> list[dict]:
    """Per candidate (a label of :func:`nscl.analysis.tables.capacity_stats`) against every ``adam_nscl``
    and ``nscl_sgp`` label of the same sweep: ACC gain, BWT, whether mean ± std overlap, and ``met``:
    gain >= :data:`CAPACITY_GAIN` over every adam_nscl, BWT >= :data:`CAPACITY_BWT`, no overlap, and
    ahead of every nscl_sgp; ``why``: the conditions it misses."""
    rows = stats.set_index("method")
    rivals = [m for m in rows.index if m.split()[0] in ("adam_nscl", "nscl_sgp")]
    out = []
    for c in candidates:
        if c not in rows.index:
            continue
        r = rows.loc[c]
        lo = r["acc_mean"] - (r["acc_std"] if r["acc_std"] == r["acc_std"] else 0.0)
        against = []
        for m in rivals:
            a = rows.loc[m]
            hi = a["acc_mean"] + (a["acc_std"] if a["acc_std"] == a["acc_std"] else 0.0)
            against.append({"rival": m, "gain": r["acc_mean"] - a["acc_mean"], "apart": lo > hi})
        nscl = [x for x in against if x["rival"].startswith("adam_nscl")]
        sgp = [x for x in against if x["rival"].startswith("nscl_sgp")]
        why = [f"less than {CAPACITY_GAIN:g} above `{x['rival']}`" for x in nscl if x["gain"] < CAPACITY_GAIN]
        why += [f"overlaps `{x['rival']}`" for x in nscl if x["gain"] >= CAPACITY_GAIN and not x["apart"]]
        why += [f"BWT below {CAPACITY_BWT:g}"] if r["bwt_mean"] < CAPACITY_BWT else []
        why += [f"below `{x['rival']}`" for x in sgp if x["gain"] <= 0]
        why += [] if nscl else ["no `adam_nscl` row to compare with"]
        out.append({"candidate": c, "bwt": r["bwt_mean"], "against": against, "met": not why, "why": why})
    return out


def _dirs(d) -> list[str]:
    return [str(x) for x in (d if isinstance(d, (list, tuple)) else [d])]


def _file_part(label: str) -> str:
    """``label`` as part of a file name beside the page (``E1/a b`` -> ``E1_a_b``)."""
    import re

    return re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("._") or "sweep"


def _seeds(results: Iterable[Mapping]) -> set:
    return {(r.get("params") or {}).get("seed") for r in results}


def _load_all(dirs) -> dict[str, dict]:
    return {str(p): runs.load(p) for p in runs.find_runs(_dirs(dirs))}


def capacity_lines(
    sweeps: Mapping[str, str | os.PathLike | list],
    page: str | os.PathLike,
    validation: Mapping[str, str | os.PathLike | list] | None = None,
    fronts: Mapping[str, str | os.PathLike | list] | None = None,
    fronts_validation: Mapping[str, str | os.PathLike | list] | None = None,
) -> list[str]:
    """The page's capacity section (then, with ``fronts``, the fronts section: :func:`fronts_lines`): per label (one sweep directory, or a list of them read as one, e.g. E1 and
    its joint reference) its table (:func:`nscl.analysis.tables.capacity_table`), its
    capacity curve (a PNG beside the page, ``<page stem>_capacity_<label>.png``), the setting of each
    null-space method chosen on that label's ``validation`` sweep (seeds 100, 101), the goal per candidate
    (:func:`capacity_goal`: the defaults and the chosen setting), how the sweep was run, and, where
    ``adam_nscl`` ran at several widths, what each seed method is worth in parameters (:func:`worth_lines`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis import plots

    page = Path(page)
    lines = [
        CAPACITY_HEADING,
        "",
        "Per method (mean ± std over seeds, complete runs): ACC and BWT at the end, plasticity = mean accuracy "
        f"just after training each of the last {tables.LAST_TASKS} tasks, and per layer the task after which "
        "its input null space first held less than a quarter of its dimensions (one value per seed; `never` if "
        f"it did not). Goal: `nscl_prune` or `nscl_lowrank`, at its defaults or at the threshold chosen on the "
        f"validation seeds 100 and 101, ≥ {CAPACITY_GAIN:g} ACC points above every `adam_nscl` row, BWT ≥ "
        f"{CAPACITY_BWT:g}, mean ± std not overlapping, and above every `nscl_sgp` row. The null-space methods run "
        "at energy 0.9 (the package default) and, in E1 and E3, also at 0.99 (where the null space runs out).",
        "",
    ]
    met: dict[str, list[str]] = {}
    loaded = {label: _load_all(d) for label, d in sweeps.items()}
    validated = {label: _load_all(d) for label, d in (validation or {}).items() if label in sweeps}
    for label, runs_v in validated.items():  # choosing on the seeds that judge it would choose on the test set
        shared = _seeds(runs_v.values()) & _seeds(loaded[label].values())
        if shared:
            raise sweep.SweepError(
                f"--validation {label}={_uniq(_dirs(validation[label]))} has seeds {', '.join(map(str, sorted(shared)))}"
                f" of the --capacity {label} sweep; validate on other seeds (e.g. 100, 101: "
                f"params/sweeps/capacity_e*_validation.yaml)"
            )
    for label, d in sweeps.items():
        dirs = _dirs(d)
        results = loaded[label]
        stats = tables.capacity_stats(results)
        infos = [sweep_times(x) for x in dirs]
        lines += [f"### {label}: {infos[0]['description'] or label}", ""]
        if stats.empty:
            lines += ["No complete run yet.", ""]
            continue
        tab = tables.capacity_table(results)
        header = list(tab.columns)
        lines += _md_table(header, tab.astype(str).values.tolist(), ["---"] + ["---:"] * (len(header) - 1))
        fig = plots.capacity_curve(tables.capacity_frame(results), title=label)
        figure = page.with_name(f"{page.stem}_capacity_{_file_part(label)}.png")
        plots.savefig(fig, figure)
        plt.close(fig)
        lines += ["", f"![capacity curve, {label}]({figure.name})", ""]
        chosen = []
        if validation and label in validation:
            choice = tables.validation_choice(validated[label], VALIDATED)
            lines.append(f"Settings chosen on the validation seeds (mean ACC; `{_uniq(_dirs(validation[label]))}`):")
            for m, c in choice.items():
                options = ", ".join(
                    f"`{lab}` {acc:.2f} (seeds {seeds})" for lab, (acc, seeds) in sorted(c["acc"].items())
                )
                lines.append(f"- `{m}`: **`{c['chosen']}`**, of {options}.")
                chosen.append(c["chosen"])
            lines.append("")
        candidates = list(
            dict.fromkeys([*CAPACITY_CANDIDATES, *(c for c in chosen if c.split()[0] in CAPACITY_CANDIDATES)])
        )
        for g in capacity_goal(stats, candidates):
            met.setdefault(label, [])
            if g["met"]:
                met[label].append(g["candidate"])
            vs = "; ".join(
                f"{x['gain']:+.2f} vs `{x['rival']}`{' (mean ± std overlap)' if x['gain'] > 0 and not x['apart'] else ''}"
                for x in g["against"]
            )
            verdict = "**met**" if g["met"] else f"not met ({'; '.join(g['why'])})"
            default = g["candidate"] in CAPACITY_CANDIDATES
            how = (
                (" (defaults, chosen on validation seeds)" if default else " (chosen on validation seeds)")
                if g["candidate"] in chosen
                else " (defaults)"
                if chosen
                else ""
            )
            lines.append(f"- `{g['candidate']}`{how}: ACC {vs}; BWT {g['bwt']:.2f}. Goal {verdict}.")
        lines.append("")
        lines += [command_line(info) for info in infos]
        lines.append("")
        lines += worth_lines(results, [r for other in loaded.values() for r in other.values()])
    hits = [f"{label} (`{'`, `'.join(c)}`)" for label, c in met.items() if c]
    if met:
        lines += [
            f"**Goal**: met in {', '.join(hits)}."
            if hits
            else f"**Goal**: not met in any of {', '.join(met)}: no seed method, at its defaults or at the "
            "setting chosen on validation seeds, beats `adam_nscl` and `nscl_sgp` by the margins above.",
            "",
        ]
    if fronts:
        lines += fronts_lines(fronts, page, fronts_validation)
    return lines


def worth_lines(results: Mapping[str, dict], pool: Iterable[dict]) -> list[str]:
    """ "Worth x k parameters", for a sweep where ``adam_nscl`` (at the package's threshold) ran at several
    widths: its width curve (:func:`nscl.analysis.tables.width_curve`) from every run of ``pool`` on the
    same stream (benchmark and task count; e.g. E2 with E1's 64-64), and for each seed method of that pool
    on the stream the parameters ``adam_nscl`` needs to match its mean ACC
    (:func:`nscl.analysis.tables.matching_parameters`), as a multiple of the seed method's own."""
    own = [r for r in results.values() if (r.get("params") or {}).get("method") == "adam_nscl"]
    if len({json.dumps(r["params"]["hidden"]) for r in own}) < 2:
        return []
    key = lambda r: (r["params"]["benchmark"], r["params"]["n_tasks"])  # noqa: E731
    same = {str(i): r for i, r in enumerate(pool) if key(r) == key(own[0])}
    curve = tables.width_curve(same, "adam_nscl")
    sizes = ", ".join(
        f"{h} {a:.2f} ({p / 1e3:.0f}k parameters)"
        for h, a, p in zip(curve["hidden"], curve["acc_mean"], curve["params"])
    )
    lines = [f"Width curve of `adam_nscl` (mean ACC): {sizes}."]
    labels = tables.capacity_labels(same)
    for label, res in tables.capacity_stats(same).set_index("method").iterrows():
        if label.split()[0] not in CAPACITY_CANDIDATES:
            continue
        p = tables.n_parameters(next(same[k] for k, lab in labels.items() if lab == label))
        match = tables.matching_parameters(curve, res["acc_mean"])
        if match is None:
            lo, hi = curve["acc_mean"].min(), curve["acc_mean"].max()
            where = "below" if res["acc_mean"] < lo else "above" if res["acc_mean"] > hi else "outside"
            lines.append(
                f"- `{label}` ({res['acc_mean']:.2f}): {where} the measured `adam_nscl` widths; not interpolated."
            )
        else:
            lines.append(
                f"- `{label}` ({res['acc_mean']:.2f} with {p / 1e3:.0f}k parameters): `adam_nscl` matches it with "
                f"about {match / 1e3:.0f}k, so it is worth ×{match / p:.2f} parameters."
            )
    return lines + [""]


# ---- CLI -----------------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser("results", help="build the results page (markdown + figure) from finished sweeps")
    p.add_argument(
        "sweeps",
        nargs="*",
        metavar="[SIZE=]DIR",
        help="sweep directories, optionally labelled; none: rewrite only the page's capacity section (--capacity)",
    )
    p.add_argument("-o", "--out", default="docs/results.md", help="page to write (default docs/results.md)")
    p.add_argument("--figure", default=None, help="figure PNG (default: <page>_stability_plasticity.png)")
    p.add_argument("--note", default=None, help="a paragraph to put under the page's introduction")
    p.add_argument(
        "--capacity",
        action="append",
        default=[],
        metavar="[LABEL=]DIR",
        help="a capacity sweep (params/sweeps/capacity_e*.yaml) for the capacity section; repeatable",
    )
    p.add_argument(
        "--validation",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="the validation-seed sweep of a capacity label (params/sweeps/capacity_e*_validation.yaml): the "
        "setting of each null-space method is chosen on it; repeatable",
    )
    p.add_argument(
        "--fronts",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="a fronts sweep (params/sweeps/fronts_*.yaml) for the fronts section; a label may be given "
        "several (read as one); repeatable",
    )
    p.add_argument(
        "--fronts-validation",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="the validation-seed sweep of a fronts label: each curve's knob value is chosen on it; repeatable",
    )
    p.set_defaults(func=cmd_results)


def cmd_results(args) -> int:
    try:
        capacity: dict[str, list] = {}
        for item in args.capacity:  # a label may be given several sweeps (E1 and its joint reference)
            for label, d in parse_sweeps([item]).items():
                capacity.setdefault(label, []).append(d)
        validation = {label: d for item in args.validation for label, d in parse_sweeps([item]).items()}
        fronts: dict[str, list] = {}
        for item in args.fronts:
            for label, d in parse_sweeps([item]).items():
                fronts.setdefault(label, []).append(d)
        fronts_validation = {label: d for item in args.fronts_validation for label, d in parse_sweeps([item]).items()}
        if set(fronts_validation) - set(fronts):
            bad = sorted(set(fronts_validation) - set(fronts))[0]
            raise sweep.SweepError(f"--fronts-validation {bad}=...: no --fronts {bad}=DIR to validate")
        unknown = sorted(set(validation) - set(capacity))
        if unknown:
            raise sweep.SweepError(f"--validation {unknown[0]}=...: no --capacity {unknown[0]}=DIR to validate")
        if not args.sweeps:
            if not capacity and not fronts:
                raise sweep.SweepError(
                    "give sweep directories, or --capacity LABEL=DIR to rewrite the capacity section"
                )
            page = write_capacity(args.out, capacity, validation, fronts, fronts_validation)
        else:
            sweeps = parse_sweeps(args.sweeps)
            page = write(
                sweeps,
                args.out,
                args.figure,
                note=args.note,
                capacity=capacity or None,
                validation=validation,
                fronts=fronts or None,
                fronts_validation=fronts_validation,
            )
    except sweep.SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(page.read_text())
    print(f"written: {page}")
    return 0


# ---- fronts (issue 24) -------------------------------------------------------------------------------
FRONTS_HEADING = "## Fronts: the trade-off each knob controls"
#: the goal per stream label: a curve of the seed's ideas, at the knob value chosen on validation seeds,
#: gains at least this many ACC points over the best of adam_nscl and the scaled projection, with BWT >= that
FRONT_GOALS = {"e1": (0.5, -2.0), "e3": (1.0, -1.0)}
#: curves of the seed's ideas (pruning or rank limitation, alone or with the scaled projector)
SEED_CURVES = ("nscl_prune", "nscl_lowrank")
RIVAL_CURVES = ("adam_nscl", "scaled")


def front_choice(front) -> dict[str, str]:
    """``{curve: knob value}`` with the highest mean ACC per curve (of a validation-seed front)."""
    out = {}
    for c, d in front[front["knob"].notna()].groupby("curve", sort=False):
        out[c] = d.loc[d["acc_mean"].idxmax(), "value"]
    return out


def rank_verdict(front) -> str:
    """Whether the rank knob's front (``nscl_lowrank``) lies above the threshold's (``adam_nscl``)
    anywhere in the (BWT, plasticity) plane, with the numbers (:func:`nscl.analysis.tables.front_above`)."""
    if not {"nscl_lowrank", "adam_nscl"} <= set(front["curve"]):
        return "The rank knob's front and the threshold's are not both in this sweep: no verdict."
    cmp = tables.front_above(front, "nscl_lowrank", "adam_nscl")
    ref = front[front["curve"] == "adam_nscl"]
    lo, hi = ref["bwt_mean"].min(), ref["bwt_mean"].max()
    inside = cmp[cmp["gap"].notna()]
    above = inside[inside["gap"] > 0]
    undominated = cmp[~cmp["dominated"]]
    pts = "; ".join(
        f"budget {r['value']}: BWT {r['bwt']:.2f}, plasticity {r['plasticity']:.2f}"
        + (
            f" vs {r['reference_plasticity']:.2f} ({r['gap']:+.2f})"
            if r["gap"] == r["gap"] and r["gap"] is not None
            else " (outside)"
        )
        for _, r in cmp.iterrows()
    )
    where = f"the threshold front spans BWT {lo:.2f} to {hi:.2f}"
    if len(above):
        best = above.loc[above["gap"].idxmax()]
        head = (
            f"**Above somewhere**: at rank budget `{best['value']}` the rank front's plasticity is "
            f"{best['gap']:+.2f} points above the threshold front's at the same BWT ({best['bwt']:.2f})"
        )
    elif len(undominated):
        head = (
            "**Not above** the threshold front at any BWT within its range "
            f"({len(cmp) - len(undominated)} of {len(cmp)} rank points are beaten in both BWT and plasticity by "
            "one threshold point)"
        )
    else:
        head = (
            "**Nowhere above**: every rank point is matched or beaten in both BWT and plasticity by a threshold point"
        )
    return f'{head} ({where}; per budget: {pts}). The seed\'s "better control" claim is {"supported" if len(above) else "refuted"} here.'


def fronts_lines(
    sweeps: Mapping[str, str | os.PathLike | list],
    page: str | os.PathLike,
    validation: Mapping[str, str | os.PathLike | list] | None = None,
) -> list[str]:
    """The page's fronts section: per label (sweep dirs read as one) the front table
    (:func:`nscl.analysis.tables.front_table`), its figure (``<page stem>_fronts_<label>.png``), the
    rank-vs-threshold verdict (:func:`rank_verdict`), pruned units' reuse (:func:`nscl.analysis.tables.reuse_table`),
    the knob value per curve chosen on the label's ``validation`` sweep, the goal per seed-idea curve
    (:data:`FRONT_GOALS`) and the sweeps' wall times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis import plots

    page = Path(page)
    lines = [
        FRONTS_HEADING,
        "",
        "One knob per method, swept on seeds 0–2: the energy threshold (`adam_nscl`), `sgp_scale` (the scaled "
        "projection), the rank budget schedule (`nscl_lowrank`, as its mean active fraction) and the pruning "
        "margin (`nscl_prune`, alone and with the scaled projector or re-pruning). Each front: plasticity (mean "
        f"accuracy just after training each of the last {tables.LAST_TASKS} tasks) against BWT, and ACC against "
        "the knob; mean ± std over seeds. Every knob value a goal is judged at is chosen on the validation "
        "seeds 100 and 101.",
        "",
    ]
    for label, d in sweeps.items():
        dirs = _dirs(d)
        results = _load_all(dirs)
        front = tables.front_table(results)
        lines += [f"### Fronts {label}", ""]
        if front.empty:
            lines += ["No complete run yet.", ""]
            continue

        def pm(mu, sd):
            return f"{mu:.2f}" if sd != sd else f"{mu:.2f} ± {sd:.2f}"

        rows = [
            [
                f"`{r['curve']}`",
                r["knob"] if isinstance(r["knob"], str) else "-",
                r["value"] or "-",
                str(r["n"]),
                pm(r["acc_mean"], r["acc_std"]),
                pm(r["bwt_mean"], r["bwt_std"]),
                pm(r["plasticity_last_mean"], r["plasticity_last_std"]),
            ]
            for _, r in front.iterrows()
        ]
        header = ["curve", "knob", "value", "n", "ACC", "BWT", f"plasticity last {tables.LAST_TASKS}"]
        lines += _md_table(header, rows, ["---", "---", "---:", "---:", "---:", "---:", "---:"])
        fig = plots.fronts(front, title=f"fronts, {label}", last=tables.LAST_TASKS)
        figure = page.with_name(f"{page.stem}_fronts_{label}.png")
        plots.savefig(fig, figure)
        plt.close(fig)
        lines += ["", f"![fronts, {label}]({figure.name})", "", rank_verdict(front), ""]
        reuse = tables.reuse_table(results)
        if not reuse.empty:
            lines.append(
                "Pruned units' capacity (`nscl_prune` curves, means over seeds): share of units free after the last "
                "task; first task after which no layer had a free unit; mean tasks a unit stayed free before a task "
                f"kept it; units re-pruning returned; share of the last {tables.LAST_TASKS} tasks' learning in units "
                "free at their start."
            )
            lines.append("")
            rrows = [
                [
                    f"`{r['curve']}`",
                    r["value"],
                    f"{r['free_last']:.3f}",
                    ", ".join("never" if x is None else str(x) for x in r["freed_used_up"]),
                    f"{r['lifetime']:.2f}",
                    f"{r['reclaimed']:.0f}",
                    f"{r['learning_free_last']:.3f}",
                ]
                for _, r in reuse.iterrows()
            ]
            lines += _md_table(
                ["curve", "margin", "free at end", "used up after task", "lifetime", "reclaimed", "learning in free"],
                rrows,
                ["---", "---:", "---:", "---:", "---:", "---:", "---:"],
            )
            lines.append("")
        chosen = {}
        if validation and label in validation:
            vfront = tables.front_table(_load_all(validation[label]))
            chosen = front_choice(vfront)
            lines.append(
                f"Knob values chosen on the validation seeds (highest mean ACC; `{_uniq(_dirs(validation[label]))}`):"
            )
            for c, v in chosen.items():
                lines.append(f"- `{c}`: {v}")
            lines.append("")
        lines += front_goal_lines(label, front, chosen)
        lines += [command_line(sweep_times(x)) for x in dirs]
        lines.append("")
    return lines


def command_line(info: Mapping) -> str:
    """The page's line for one sweep: the command that ran it, its size and its wall and run times."""
    file = _repo_path(info["file"], sweep_spec.ROOT) if info["file"] else "<sweep file>"
    return (
        f"Command: `python -m nscl sweep run {file}` ({info['runs']} runs, {info['executor']} executor, "
        f"{info['parallel'] or 1} at a time, {info['threads'] or '-'} thread(s); "
        f"wall {_fmt_time(info['wall_s'])}, run time {_fmt_time(info['run_s'])})."
    )


def front_goal_lines(label: str, front, chosen: Mapping[str, str]) -> list[str]:
    """The goal per seed-idea curve at its validation-chosen knob value (none chosen: not judged):
    ACC gain over the best rival (adam_nscl / scaled, each at its own chosen value) and BWT, against
    :data:`FRONT_GOALS` of the label (``e1``, ``e3``: the first word of the label, lower case)."""
    goal = FRONT_GOALS.get(label.split()[0].lower())
    if goal is None or not chosen:
        return []
    gain, bwt_min = goal

    def row(c):
        d = front[(front["curve"] == c) & (front["value"] == chosen.get(c))]
        return d.iloc[0] if len(d) else None

    rivals = [(c, row(c)) for c in RIVAL_CURVES if row(c) is not None]
    if not rivals:
        return ["No rival (`adam_nscl`, `scaled`) at a chosen value in this sweep: goal not judged.", ""]
    best_c, best = max(rivals, key=lambda x: x[1]["acc_mean"])
    lines = [
        f"Goal ({label}): ≥ {gain:g} ACC above the best rival at its chosen value (`{best_c}` {best['value']}: "
        f"{best['acc_mean']:.2f}), BWT ≥ {bwt_min:g}:"
    ]
    hits = []
    for c in sorted(chosen):
        if c.split()[0] not in SEED_CURVES or row(c) is None:
            continue
        r = row(c)
        why = []
        if r["acc_mean"] - best["acc_mean"] < gain:
            why.append(f"ACC {r['acc_mean'] - best['acc_mean']:+.2f} < +{gain:g}")
        if r["bwt_mean"] < bwt_min:
            why.append(f"BWT {r['bwt_mean']:.2f} < {bwt_min:g}")
        if not why:
            hits.append(c)
        lines.append(
            f"- `{c}` at {r['value']}: ACC {r['acc_mean']:.2f} ({r['acc_mean'] - best['acc_mean']:+.2f}), "
            f"BWT {r['bwt_mean']:.2f}: " + ("**met**." if not why else f"not met ({'; '.join(why)}).")
        )
    lines += ["", f"**Goal {label}**: " + (f"met by `{'`, `'.join(hits)}`." if hits else "not met by any curve."), ""]
    return lines
