"""Cost and accuracy of cheaper task boundaries against the exact computation.

    python -m nscl.bench boundary [--parts estimators,runs] [--width 16] [--samples 1250]
                                  [--patches 4,16,64] [--subsets 313,625] [--out results/bench/boundary.json]

Part ``estimators`` (one network, one task): a PreAct-ResNet-18 of base width ``--width`` is trained
for one epoch on task 1 of the synthetic CIFAR-shaped stream (``--samples`` images; with width 16
and 1250 images every layer has the same rows-per-dimension ratio as width 64 with the recipe's 5000,
so rank and estimator noise behave as at paper scale, at 1/16 of the Gram cost). Then the
covariance pass is timed for

* ``batch_mean`` (the official estimator; batch 32),
* ``per_sample`` exact (every patch of every sample),
* ``per_sample`` with ``cov_patches=k`` for each ``--patches`` value, and with ``cov_samples=m``
  for each ``--subsets`` value (both unbiased estimates of the exact one),

and each estimate's null space (the principled default rule, ``RULE``) is compared with the
exact per-sample one, layer by layer: ``r`` vs ``r_exact``, ``leak`` = the largest energy of the
exact covariance along an estimated null direction divided by the exact threshold (<= 1: every
estimated null direction is null for the exact covariance too), ``overlap`` = ||U2_exact^T U2||_F^2 / r
(1: the estimated null space lies inside the exact one), and the relative Frobenius error of the
covariance. Gram flops per layer (rows x d^2) explain the cost ratios; ``paper_scale_flops`` gives
them for the recipe's network and task size.

Part ``runs`` (ACC / BWT and null-space dimensions against the exact boundary, one seed): the
principled Adam-NSCL on (a) Split Fashion-MNIST with the small CNN (real data) and (b) the
width-reduced ResNet-18 on 3 synthetic CIFAR-shaped tasks, each with the exact boundary and with
``cov_patches``, ``cov_samples``, ``eigen_update=nested`` and ``cov_patches`` + ``nested``. Reports
per run ACC, BWT, null dims per layer and task, and the boundary time over the epoch time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

from ..experiment import config
from ..core.covariance import Covariance, input_dim
from ..data import make_stream
from ..core.nullspace import NullSpaceRule, compute
from ..experiment.records import env_info, write_json
from ..experiment.trainer import Trainer


#: the principled default selection rule (``nullspace_rule`` and its keys at their defaults), as the
#: tracker applies it after the first task
RULE = config.nullspace_rule(config.defaults()).at_task(0)


def _cifar(samples: int, tasks: int, test: int = 200):
    s = make_stream(
        "synthetic",
        seed=0,
        n_tasks=10,
        shape=(3, 32, 32),
        n_classes=100,
        train_per_class=500,
        test_per_class=100,
        val_fraction=0.0,
        samples_per_task=samples,
        test_samples_per_task=test,
    )
    return dataclasses.replace(s, tasks=s.tasks[:tasks])


def _principled(**kw) -> dict:
    base = dict(
        method="adam_nscl",
        covariance="per_sample",
        a_min_floor="rank",
        scale_sqrt_r=False,
        bn="freeze",
        quiet=True,
        device="cpu",
        seed=0,
    )
    return config.resolve(overrides={**base, **kw})


def _pass(trainer: Trainer, mode: str, patches=None, subset=None, batch: int = 250) -> tuple[Covariance, float, dict]:
    """One covariance pass over task 1 (as the trainer's boundary does), timed."""
    data = trainer.stream[0].train
    gen = torch.Generator().manual_seed(11)
    weight = 1.0
    if subset is not None and subset < len(data):
        weight = len(data) / subset
        data = data.subset(torch.randperm(len(data), generator=gen)[:subset].sort().values)
    cov = Covariance(trainer.tracker.layers, mode, patches)
    trainer.model.eval()
    xs = [x for x, _, _ in trainer.batches([(data, 0)], batch, shuffle=True, generator=gen)]
    t0, c0 = time.perf_counter(), time.process_time()
    cov.update(trainer.model.features, xs, weight=weight, generator=torch.Generator().manual_seed(12))
    seconds = time.perf_counter() - t0
    _pass.cpu_seconds = time.process_time() - c0  # process CPU time: robust to a loaded machine
    flops = {}
    for name, layer in cov.layers.items():
        rows = cov.counts[name] / weight
        flops[name] = 2 * rows * input_dim(layer) ** 2
    return cov, seconds, flops


def paper_scale_flops(patches: list[int], n: int = 5000, batch: int = 32) -> dict:
    """Gram flops (2 rows d^2, float64) of one covariance pass of the recipe's ResNet-18 (width 64,
    32x32 inputs, ``n`` samples): batch-mean (``ceil(n / batch) * L`` rows per layer), exact per-sample
    (``n * L``) and ``cov_patches=k`` (``n * min(k, L)``), per stage and in total; and the forward
    flops of the pass (float32; 2 x multiply-adds of the convolutions)."""
    from ..core.models import MultiHead, PreActResNet18, projected_layers

    net = MultiHead(PreActResNet18(3, 64), 512, [10])
    positions, macs = {}, {}

    def record(name):
        def hook(mod, inputs, out):
            positions[name] = out.shape[2] * out.shape[3]
            macs[name] = out[0].numel() * mod.weight[0].numel()

        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in projected_layers(net).items()]
    with torch.no_grad():
        net.features(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    kinds = {
        "batch_mean": lambda L: math.ceil(n / batch) * L,
        "per_sample": lambda L: n * L,
        **{f"per_sample_patches{k}": (lambda L, k=k: n * min(k, L)) for k in patches},
    }
    out = {"n": n, "batch": batch, "tflop": {}, "by_stage_tflop": {}}
    for kind, rows in kinds.items():
        by_stage: dict[str, float] = {}
        for name, layer in projected_layers(net).items():
            stage = name.split(".")[1] if ".layer" in name else "stem"
            by_stage[stage] = by_stage.get(stage, 0.0) + 2 * rows(positions[name]) * input_dim(layer) ** 2 / 1e12
        out["by_stage_tflop"][kind] = by_stage
        out["tflop"][kind] = sum(by_stage.values())
    out["forward_tflop_float32"] = 2 * n * sum(macs.values()) / 1e12
    return out


def estimators(
    width: int, samples: int, patches: list[int], subsets: list[int], rule: NullSpaceRule | None = None
) -> dict:
    cfg = _principled(
        model="resnet18", width=width, epochs=1, batch_size=32, benchmark="synthetic", val_fraction=0.0, lr=1e-3
    )
    trainer = Trainer(cfg, None, _cifar(samples, 1))
    trainer.train_task(0)
    exact, t_exact, fl_exact = _pass(trainer, "per_sample")
    c_exact = _pass.cpu_seconds
    rule = rule or RULE
    spaces = {n: compute(exact.matrix(n), rule) for n in exact.layers}
    variants = [
        ("batch_mean", dict(mode="batch_mean", batch=32)),
        *[(f"per_sample_patches{k}", dict(mode="per_sample", patches=k)) for k in patches],
        *[(f"per_sample_samples{m}", dict(mode="per_sample", subset=m)) for m in subsets],
    ]
    out = {
        "width": width,
        "samples": samples,
        "rule": dict(rule),
        "exact": {
            "seconds": t_exact,
            "cpu_seconds": c_exact,
            "gflop": sum(fl_exact.values()) / 1e9,
            "layers": {n: {"d": s.d, "r": s.r} for n, s in spaces.items()},
        },
        "variants": {},
    }
    print(f"exact per-sample pass: {t_exact:.1f} s, {sum(fl_exact.values()) / 1e9:.1f} GFLOP", flush=True)
    for name, kw in variants:
        cov, secs, flops = _pass(trainer, kw["mode"], kw.get("patches"), kw.get("subset"), kw.get("batch", 250))
        cpu_secs = _pass.cpu_seconds
        layers, dr, leaks = {}, [], []
        for n, ns_exact in spaces.items():
            c_full = exact.matrix(n)
            est = compute(cov.matrix(n), rule)
            u2 = est.null_basis
            thr = rule.threshold(ns_exact.eigvals)
            energy = torch.linalg.eigvalsh(u2.T @ c_full @ u2).max().item() if est.r else 0.0
            overlap = ((ns_exact.null_basis.T @ u2).norm() ** 2 / est.r).item() if est.r else 1.0
            rel = ((cov.matrix(n) - c_full).norm() / c_full.norm()).item()
            layers[n] = {
                "d": est.d,
                "r": est.r,
                "r_exact": ns_exact.r,
                "leak": energy / thr,
                "overlap": overlap,
                "cov_rel_err": rel,
                "gflop": flops[n] / 1e9,
            }
            dr.append(abs(est.r - ns_exact.r) / est.d)
            leaks.append(energy / thr)
        out["variants"][name] = {
            "seconds": secs,
            "cpu_seconds": cpu_secs,
            "vs_exact_time": secs / t_exact,
            "vs_exact_cpu_time": cpu_secs / c_exact,
            "gflop": sum(flops.values()) / 1e9,
            "max_abs_dr_over_d": max(dr),
            "mean_abs_dr_over_d": sum(dr) / len(dr),
            "max_leak": max(leaks),
            "layers": layers,
        }
        v = out["variants"][name]
        print(
            f"{name:<26} {secs:7.1f} s ({v['vs_exact_time']:.2f} x exact; CPU time {v['vs_exact_cpu_time']:.2f} x; "
            f"{v['gflop']:.1f} GFLOP) | "
            f"|r - r_exact|/d max {v['max_abs_dr_over_d']:.3f} mean {v['mean_abs_dr_over_d']:.3f} | "
            f"max leak {v['max_leak']:.2g}",
            flush=True,
        )
    bm, bm_cpu = out["variants"]["batch_mean"]["seconds"], out["variants"]["batch_mean"]["cpu_seconds"]
    out["vs_batch_mean_time"] = {n: v["seconds"] / bm for n, v in out["variants"].items()}
    out["vs_batch_mean_time"]["per_sample_exact"] = t_exact / bm
    out["vs_batch_mean_cpu_time"] = {n: v["cpu_seconds"] / bm_cpu for n, v in out["variants"].items()}
    out["vs_batch_mean_cpu_time"]["per_sample_exact"] = c_exact / bm_cpu
    return out


RUN_VARIANTS = {
    "exact": {},
    "patches16": dict(cov_patches=16),
    "samples25pct": "subset",
    "nested": dict(eigen_update="nested"),
    "patches16_nested": dict(cov_patches=16, eigen_update="nested"),
    "samples25pct_patches16_nested": dict(cov_samples="25%", cov_patches=16, eigen_update="nested"),
}


def runs(
    width: int,
    samples: int,
    rule: NullSpaceRule | None = None,
    cases: list[str] | None = None,
    variants: list[str] | None = None,
) -> dict:
    all_cases = {
        "cnn_split_fmnist": (
            dict(
                benchmark="split_fmnist",
                model="cnn",
                cnn_channels=[32, 64],
                hidden=[256],
                samples_per_task=2000,
                test_samples_per_task=1000,
                epochs=2,
                batch_size=64,
            ),
            1800,
        ),
        f"resnet18_w{width}_synthetic_cifar": (
            dict(
                model="resnet18",
                width=width,
                benchmark="synthetic",
                epochs=2,
                batch_size=32,
                lr=1e-3,
                val_fraction=0.0,
                eval_batch_size=500,
            ),
            samples,
        ),
    }
    out = {}
    chosen = {c: v for c, v in all_cases.items() if cases is None or any(c.startswith(p) for p in cases)}
    for case, (kw, n_train) in chosen.items():
        out[case] = {}
        stream = _cifar(samples, 3) if kw["benchmark"] == "synthetic" else None
        for name, extra in RUN_VARIANTS.items():
            if variants is not None and name not in variants and name != "exact":
                continue
            if extra == "subset":
                extra = dict(cov_samples="25%")
            if extra.get("cov_samples") == "25%":  # a quarter of the task's training samples
                extra = {**extra, "cov_samples": max(1, n_train // 4)}
            keys = {} if rule is None else dict(nullspace_rule=rule.kind, a=rule.a, a_min_floor=rule.floor)
            cfg = _principled(**kw, **extra, **keys)
            res = Trainer(cfg, None, stream).fit()
            tim = res["timing"]["per_task"]
            steps = math.ceil(n_train / cfg["batch_size"]) * cfg["epochs"]
            r = {
                "params": extra,
                "acc": res["metrics"]["acc"],
                "bwt": res["metrics"]["bwt"],
                "acc_matrix": res["acc"],
                "dims": {k: v["dims"] for k, v in res["null_space"].items()},
                "d": {k: v["d"] for k, v in res["null_space"].items()},
                "covariance_s": [t["covariance_s"] for t in tim],
                "eigen_s": [t["eigen_s"] for t in tim],
                "epoch_s": [t["train_s"] / cfg["epochs"] for t in tim],
                "boundary_epoch_ratio": [
                    (t["covariance_s"] + t["eigen_s"]) / (t["train_s"] / cfg["epochs"]) for t in tim
                ],
                "steps_per_task": steps,
            }
            out[case][name] = r
            print(
                f"{case} {name:<18} ACC {r['acc']:.2f} BWT {r['bwt']:.2f} | boundary/epoch "
                f"{', '.join(f'{x:.2f}' for x in r['boundary_epoch_ratio'])}",
                flush=True,
            )
        ex = out[case]["exact"]
        for name, r in out[case].items():
            r["d_acc"], r["d_bwt"] = r["acc"] - ex["acc"], r["bwt"] - ex["bwt"]
            r["dims_abs_diff_over_d_max"] = max(
                abs(a - b) / r["d"][k] for k in r["dims"] for a, b in zip(r["dims"][k], ex["dims"][k])
            )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m nscl.bench boundary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", default="estimators,runs")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--samples", type=int, default=1250)
    ap.add_argument("--patches", default="4,16,64")
    ap.add_argument("--subsets", default="313,625")
    ap.add_argument(
        "--rule",
        default="default",
        choices=("default", "a_min"),
        help="null-space rule: the principled default, or a_min (a=10, rank floor)",
    )
    ap.add_argument("--cases", default="cnn,resnet", help="runs part: cnn, resnet (prefixes)")
    ap.add_argument(
        "--variants",
        default=",".join(RUN_VARIANTS),
        help=f"runs part: {', '.join(RUN_VARIANTS)} (exact always runs: the reference)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="results/bench/boundary.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rule = RULE if args.rule == "default" else NullSpaceRule("a_min", a=10.0, floor="rank")
    report = {
        "benchmark": "boundary",
        "env": env_info("cpu", 0),
        "argv": argv,
        "rule": dict(rule),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    parts = args.parts.split(",")
    report["paper_scale_flops"] = flops = paper_scale_flops([int(k) for k in args.patches.split(",")])
    print(
        "paper scale (ResNet-18 width 64, 5000 samples): Gram TFLOP "
        + ", ".join(f"{k} {v:.2f}" for k, v in flops["tflop"].items())
        + f"; forward {flops['forward_tflop_float32']:.2f} TFLOP (float32)",
        flush=True,
    )
    if "estimators" in parts:
        report["estimators"] = estimators(
            args.width,
            args.samples,
            [int(k) for k in args.patches.split(",")],
            [int(m) for m in args.subsets.split(",")],
            rule,
        )
        write_json(args.out, report)
    if "runs" in parts:
        report["runs"] = {}
        for case in args.cases.split(","):  # the JSON is written after each case
            report["runs"].update(
                runs(
                    args.width, args.samples, None if args.rule == "default" else rule, [case], args.variants.split(",")
                )
            )
            write_json(args.out, report)
    write_json(args.out, report)
    print(f"written: {args.out}")
    return 0
