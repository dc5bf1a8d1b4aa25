"""Measure how much the torch thread count changes a run (README, "Guarantees": why ``threads`` is
run-invariant): every pair ``threads=1`` / ``threads=2`` of the ``params/ci.yaml`` setting on Split
Fashion-MNIST and split_digits for adam_nscl, finetune, clnp and nscl_lowrank.

    OMP_NUM_THREADS=2 python scripts/thread_invariance.py        # prints one line per pair and the maxima

Per pair: whether the accuracy matrices and null-space dimensions are identical, the largest eigenvalue
difference relative to the layer's largest eigenvalue, the largest kept-energy difference (R is a
fraction in [0, 1]) and the largest weight difference (absolute).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nscl.experiment import config, trainer  # noqa: E402

BENCHMARKS = ("split_fmnist", "split_digits")
METHODS = ("adam_nscl", "finetune", "clnp", "nscl_lowrank")


def one(benchmark: str, method: str, threads: int) -> trainer.Trainer:
    files = [ROOT / "params" / "base.yaml", ROOT / "params" / "ci.yaml"]
    cfg = config.resolve(files, {"benchmark": benchmark, "method": method, "threads": threads})
    tr = trainer.Trainer(cfg)
    tr.fit()
    return tr


def compare(a: trainer.Trainer, b: trainer.Trainer) -> dict:
    ha, hb = a.tracker.history, b.tracker.history
    eig = max(  # per layer and task: the largest eigenvalue difference over the largest eigenvalue
        float(abs(a.tracker.spectra[k] - b.tracker.spectra[k]).max() / abs(a.tracker.spectra[k]).max())
        for k in a.tracker.spectra
    )
    kept = max(abs(x - y) for layer in ha for x, y in zip(ha[layer]["kept_energy"], hb[layer]["kept_energy"]))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    weights = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())
    return {
        "acc_same": a.acc == b.acc,
        "dims_same": all(ha[layer]["dims"] == hb[layer]["dims"] for layer in ha),
        "eig_rel": eig,
        "kept_abs": kept,
        "weights_abs": weights,
    }


def main() -> None:
    rows = []
    for benchmark in BENCHMARKS:
        for method in METHODS:
            r = compare(one(benchmark, method, 1), one(benchmark, method, 2))
            rows.append(r)
            print(
                f"{benchmark:<13} {method:<13} "
                + " ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                flush=True,
            )
    print(
        f"all {len(rows)} pairs: accuracy matrices identical {sum(r['acc_same'] for r in rows)}/{len(rows)}, "
        f"null-space dims identical {sum(r['dims_same'] for r in rows)}/{len(rows)}; max eigenvalue difference "
        f"{max(r['eig_rel'] for r in rows):.2g} of the largest, max kept-energy difference "
        f"{max(r['kept_abs'] for r in rows):.2g}, max weight difference {max(r['weights_abs'] for r in rows):.2g}"
    )


if __name__ == "__main__":
    main()
