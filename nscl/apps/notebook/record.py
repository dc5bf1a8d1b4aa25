"""A notebook's record: ``<output_dir>/results.json`` beside the output notebook, its figure files, and
a run's description without paths.

* :func:`save_results` writes per method its metrics, accuracy matrix, null-space summary, the tasks
  at chance and the run directory (relative to ``output_dir``), plus the notebook parameters, figure
  files and any ``extra`` values. ``nscl suite`` puts each output notebook in its ``output_dir``, so
  this file lies beside it. :func:`load_results` reads one back.
* :func:`figure_path` is ``<output_dir>/figures/<name>.png``; :func:`describe` prints a run's stream
  and schedule; :func:`metrics_record` rounds metrics for ``extra``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from ...analysis.chance import at_chance
from ...experiment import records
from ...util import read_text

NOTEBOOK_RESULTS_SCHEMA = "nscl.notebook/1"


def _rel(path, root) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:  # other drive (Windows)
        return str(path)


def _summary(res: dict, output_dir: Path | None) -> dict:
    ns = {
        layer: {"d": rec["d"], "dims": rec["dims"], "kept_energy": rec["kept_energy"]}
        for layer, rec in (res.get("null_space") or {}).items()
    }
    run_dir = res.get("_dir") or None
    return {
        "status": res.get("status"),
        "method": (res.get("params") or {}).get("method"),
        "metrics": res.get("metrics"),
        "acc": res.get("acc"),
        "at_chance": at_chance(res),
        "null_space": ns,
        "run_dir": _rel(run_dir, output_dir) if run_dir and output_dir else run_dir,
        "total_s": (res.get("timing") or {}).get("total_s"),
    }


def save_results(
    output_dir: str | os.PathLike,
    results: Mapping[str, dict],
    cfg: Mapping | None = None,
    figures: Iterable[str | os.PathLike] = (),
    extra: Mapping | None = None,
) -> Path:
    """Write the notebook-level ``<output_dir>/results.json`` aggregating the notebook's runs.

    ``results`` maps a label (usually the method) to a run's results dict (as returned by
    :func:`nscl.apps.notebook.run_methods` / :func:`nscl.experiment.records.load`); run directories
    are found under ``<output_dir>/runs/<label>`` when the dict does not say where it was loaded from.
    """
    output_dir = Path(output_dir)
    methods = {}
    for label, res in results.items():
        res = dict(res)
        if not res.get("_dir") and (output_dir / "runs" / label / records.RESULTS).exists():
            res["_dir"] = str(output_dir / "runs" / label)
        methods[label] = _summary(res, output_dir)
    record = {
        "schema": NOTEBOOK_RESULTS_SCHEMA,
        "methods": methods,
        "params": {k: v for k, v in (cfg or {}).items() if k != "output_dir"},
        "figures": [_rel(f, output_dir) for f in figures],
        "extra": dict(extra or {}),
    }
    path = output_dir / records.RESULTS
    records.write_json(path, record)
    return path


def load_results(path: str | os.PathLike) -> dict:
    """Read a notebook-level ``results.json`` (a file or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / records.RESULTS
    return json.loads(read_text(p))


def metrics_record(results: Mapping[str, dict], digits: int = 4) -> dict:
    """``{label: metrics}`` rounded, for a notebook record's ``extra``."""
    return {
        label: {k: round(v, digits) if isinstance(v, float) else v for k, v in res["metrics"].items()}
        for label, res in results.items()
    }


def figure_path(cfg: Mapping, name: str) -> Path:
    """``<output_dir>/figures/<name>.png`` (folder created)."""
    d = Path(cfg["output_dir"]) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.png"


def describe(res: Mapping) -> str:
    """One paragraph on a run's stream, model and schedule (no paths, stable across machines)."""
    s, p = res.get("stream") or {}, res.get("params") or {}
    names = s.get("class_names") or []
    tasks = []
    for t in s.get("tasks", []):
        cls = " vs ".join(names[c] if c < len(names) else str(c) for c in t.get("classes", []))
        tasks.append(f"  task {t['index'] + 1}: {cls} ({t['n_train']} train, {t['n_val']} val, {t['n_test']} test)")
    model = {
        "mlp": f"MLP hidden {p.get('hidden')}",
        "cnn": f"small CNN channels {p.get('cnn_channels')}",
        "resnet18": f"ResNet-18 width {p.get('width')}",
    }.get(p.get("model"), p.get("model"))
    head = (
        f"{s.get('benchmark', p.get('benchmark'))}: {len(tasks)} tasks, one head per task; {model}; "
        f"{p.get('epochs')} epoch(s) per task, batch {p.get('batch_size')}, lr {p.get('lr')}, seed {p.get('seed')}"
    )
    return "\n".join([head, *tasks])
