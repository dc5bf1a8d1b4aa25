"""End-to-end wall time, task boundaries and memory: the numbers users plan a recipe with.

    python -m nscl.bench e2e [--out results/bench/e2e.json] [--device auto|cpu|cuda]
                             [--cases mlp,resnet18] [--settings finetune,official,principled,principled_fast,principled_subset]
                             [--resnet-steps 3] [--gpu-epochs 5] [--width 64] [--tasks 2] [--threads N]

Every run is the real training loop (:class:`nscl.experiment.trainer.Trainer`, no run directory) in a fresh
spawned process, so its peak host memory (``ru_maxrss``) and, on a GPU, its peak device memory
(``torch.cuda.max_memory_allocated``) are its own. Per run and task it reports train / covariance /
eigen / evaluation seconds, s/step, and:

* ``boundary_s``: the task boundary as the null-space method needs it (covariance pass +
  eigendecompositions; the covariance pass scaled to the recipe's 5000 samples per task when the
  measured task is smaller), and ``boundary_epoch_ratio`` = boundary / one training epoch of the same
  task (157 steps of 32 at that task's s/step). Target: <= 1. ``after_task_s`` (EWC Fisher for
  ``bn=ewc``) is reported beside it, not in it.
* ``checkpoint_bytes``: the size ``checkpoint.pt`` has after the last measured task (``torch.save``
  of :meth:`nscl.experiment.trainer.Trainer.checkpoint_state` into a byte counter; nothing is written).
* ``peak_host_mb`` / ``peak_device_mb``.

Settings (ResNet case; all on the 10-split CIFAR-100 recipe, preset ``cifar100_10_paper``):
``finetune`` (plain Adam, the reference step), ``official`` (the preset itself: batch-mean
covariance, raw a*lambda_min, sqrt(r) scaling, EWC on BN, official eps and block), ``principled``
(the preset's schedule with nscl's principled defaults of every faithful/principled switch:
per-sample covariance, the default null-space rule, no scaling, frozen BN, torch eps,
pre-activation block), ``principled_fast`` (principled with the
cheap boundary: ``cov_patches=16`` and ``eigen_update=nested``), ``principled_subset`` (``principled_fast``
with the covariance pass on a seeded quarter of the task, ``cov_samples=1250``).

Cases
* ``mlp``: MLP 784-256-256 on Split Fashion-MNIST (the real data when on disk, else a synthetic
  stream of the same shape), 5 tasks, every training sample, 1 epoch per task, batch 64, on CPU.
* ``resnet18``: PreAct-ResNet-18 (``--width``, 64 = the paper's) on a synthetic CIFAR-shaped stream
  (3x32x32, 10 tasks of 10 classes, 500 training images per class, no validation split) -- only its
  first ``--tasks`` tasks. On CPU: ``--resnet-steps`` steps per task (tiny tasks) and a tiny test set;
  the covariance pass is scaled to 5000 samples and the full-run time is EXTRAPOLATED
  (``extrapolated: true``). On a GPU: the first tasks at full size for ``--gpu-epochs`` epochs each;
  the full recipe (80 epochs x 10 tasks = 125,600 steps + 10 boundaries + evaluations) is
  PROJECTED from them. Target: the whole recipe within 10 minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch

from ..experiment import config
from ..experiment.records import env_info, write_json

RECIPE_TASKS, RECIPE_EPOCHS, RECIPE_TRAIN_PER_TASK, RECIPE_BATCH = 10, 80, 5000, 32
RECIPE_STEPS_PER_EPOCH = math.ceil(RECIPE_TRAIN_PER_TASK / RECIPE_BATCH)  # 157
RECIPE_STEPS = RECIPE_TASKS * RECIPE_EPOCHS * RECIPE_STEPS_PER_EPOCH  # 125,600

#: the faithful/principled switches: "principled" takes nscl's defaults of these on top of the recipe's
#: schedule (README: faithful and principled variants)
SWITCHES = (
    "covariance",
    "a_min_floor",
    "scale_sqrt_r",
    "bn",
    "eps_placement",
    "resnet_block",
    "nullspace_rule",
    "energy",
    "energy_step",
    "energy_max",
    "leak",
    "project",
)
PRINCIPLED = {k: v for k, v in config.defaults().items() if k in SWITCHES}
SETTINGS = {
    "finetune": dict(method="finetune"),
    "official": dict(method="adam_nscl"),
    "principled": dict(method="adam_nscl", **PRINCIPLED),
    "principled_fast": dict(method="adam_nscl", **PRINCIPLED, cov_patches=16, eigen_update="nested"),
    "principled_subset": dict(
        method="adam_nscl", **PRINCIPLED, cov_samples=RECIPE_TRAIN_PER_TASK // 4, cov_patches=16, eigen_update="nested"
    ),
}


class _ByteCounter(io.RawIOBase):
    """A write-only sink that only counts bytes (the size ``torch.save`` would write)."""

    def __init__(self):
        self.n = 0

    def writable(self):
        return True

    def write(self, b):
        self.n += len(b)
        return len(b)


def _stream(spec: dict):
    from ..data import make_stream

    if spec["kind"] == "mlp":
        try:
            return make_stream("split_fmnist", seed=0), "split_fmnist (real)"
        except FileNotFoundError:
            return (
                make_stream("synthetic", seed=0, n_tasks=5, shape=(1, 28, 28), n_classes=10, train_per_class=6000),
                "synthetic 1x28x28 (Fashion-MNIST not on disk)",
            )
    # only the measured tasks' classes are generated (10 per task, as the 10-split recipe)
    # (and on CPU only as many images as are used)
    train = RECIPE_TRAIN_PER_TASK // 10 if spec["samples"] is None else math.ceil(spec["samples"] / 10)
    test = 100 if spec["test"] is None else math.ceil(spec["test"] / 10)
    s = make_stream(
        "synthetic",
        seed=0,
        n_tasks=spec["tasks"],
        shape=(3, 32, 32),
        n_classes=10 * spec["tasks"],
        train_per_class=train,
        test_per_class=test,
        val_fraction=0.0,
        samples_per_task=spec["samples"],
        test_samples_per_task=spec["test"],
    )
    return s, "synthetic 3x32x32 (CIFAR-100 shaped, 10 classes per task)"


def _child(spec: dict) -> dict:
    """One run in this (fresh) process: timings, memory, checkpoint size."""
    from ..experiment.trainer import Trainer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cfg = spec["cfg"]
    device = torch.device(cfg["device"])
    stream, data = _stream(spec)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, None, stream)
    res = trainer.fit()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    counter = _ByteCounter()
    torch.save(trainer.checkpoint_state(len(stream) - 1), counter)
    tasks = []
    for t, tim in enumerate(res["timing"]["per_task"]):
        n = len(stream[t].train)
        steps_per_epoch = math.ceil(n / cfg["batch_size"])
        steps = steps_per_epoch * cfg["epochs"]
        s_step = tim["train_s"] / steps
        # the pass is linear in the samples it sees: all of the task's, or at most cov_samples of them
        m = cfg.get("cov_samples") or math.inf
        cov_full = tim["covariance_s"] / min(n, m) * min(RECIPE_TRAIN_PER_TASK, m)
        epoch = s_step * RECIPE_STEPS_PER_EPOCH
        boundary = cov_full + tim["eigen_s"]
        tasks.append(
            {
                "task": t + 1,
                "train_samples": n,
                "epochs": cfg["epochs"],
                "steps": steps,
                "train_s": tim["train_s"],
                "s_per_step": s_step,
                "s_per_epoch_measured": tim["train_s"] / cfg["epochs"],
                "covariance_s": tim["covariance_s"],
                "eigen_s": tim["eigen_s"],
                "eval_s": tim["eval_s"],
                "after_task_s": tim.get("after_task_s", 0.0),
                "task_s": sum(tim.values()),
                "recipe_epoch_s": epoch,
                "covariance_recipe_s": cov_full,
                "boundary_s": boundary,
                "boundary_epoch_ratio": boundary / epoch,
            }
        )
    out = {
        "method": cfg["method"],
        "data": data,
        "wall_s": wall,
        "total_s": res["timing"]["total_s"],
        "tasks": tasks,
        "acc": res["metrics"]["acc"],
        "null_dims": {k: v["dims"] for k, v in res["null_space"].items()},
        "checkpoint_bytes": counter.n,
        "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "peak_device_mb": (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None),
    }
    return out


def _run(spec: dict) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_child, (spec,))


def mlp_case(threads) -> dict:
    base = config.resolve(
        ["params/base.yaml"] if Path("params/base.yaml").exists() else [],
        dict(device="cpu", quiet=True, epochs=1, batch_size=64, seed=0),
    )
    out = {"case": "mlp", "model": "MLP 784-256-256", "device": "cpu", "runs": {}}
    for method in ("finetune", "adam_nscl"):
        cfg = config.validate({**base, "method": method})
        r = out["runs"][method] = _run({"kind": "mlp", "cfg": cfg, "threads": threads})
        out["data"] = r["data"]
        train1 = sum(t["train_s"] for t in r["tasks"])
        bounds = sum(t["task_s"] - t["train_s"] for t in r["tasks"])
        r["projected_full_run_s"] = {
            "value": train1 * 3 + bounds,
            "note": "measured 1-epoch run scaled to 3 epochs per task (params/base.yaml)",
        }
    f, a = out["runs"]["finetune"]["tasks"], out["runs"]["adam_nscl"]["tasks"]
    out["s_per_step_projected"] = sum(t["s_per_step"] for t in a[1:]) / len(a[1:])
    out["s_per_step_unprojected"] = sum(t["s_per_step"] for t in f[1:]) / len(f[1:])
    out["projection_overhead"] = out["s_per_step_projected"] / out["s_per_step_unprojected"]
    return out


def resnet_case(
    device: torch.device,
    steps: int,
    gpu_epochs: int,
    width: int,
    n_tasks: int,
    settings: list[str],
    threads,
    save=lambda partial: None,
) -> dict:
    cpu = device.type == "cpu"
    spec = (
        {"kind": "cifar", "samples": steps * RECIPE_BATCH, "test": 2 * RECIPE_BATCH, "tasks": n_tasks}
        if cpu
        else {"kind": "cifar", "samples": None, "test": None, "tasks": n_tasks}
    )
    epochs = 1 if cpu else gpu_epochs
    out = {
        "case": "resnet18",
        "recipe": f"cifar100_10_paper on synthetic 3x32x32 (first {n_tasks} of 10 tasks)",
        "device": str(device),
        "width": width,
        "epochs_per_task_measured": epochs,
        "mode": (
            "cpu: a few steps per task; covariance pass scaled to 5000 samples; full run EXTRAPOLATED"
            if cpu
            else f"gpu: first {n_tasks} tasks at full size, {epochs} epochs each; full run PROJECTED"
        ),
        "recipe_steps": RECIPE_STEPS,
        "runs": {},
    }
    for name in settings:
        cfg = config.resolve(
            overrides=dict(
                preset="cifar100_10_paper",
                benchmark="synthetic",
                epochs=epochs,
                device=str(device),
                quiet=True,
                val_fraction=0.0,
                eval_batch_size=500,
                seed=0,
                width=width,
                **SETTINGS[name],
            )
        )
        r = _run({**spec, "cfg": cfg, "threads": threads})
        r["setting"] = name
        r["params"] = {k: cfg[k] for k in (*SWITCHES, "a", "cov_patches", "cov_samples", "eigen_update")}
        last = r["tasks"][-1]  # projected for adam_nscl
        per_eval = last["eval_s"] / (len(r["tasks"]) * (2 * RECIPE_BATCH if cpu else 1000)) * 1000
        bound = [t["boundary_s"] + t["after_task_s"] for t in r["tasks"]]
        later = bound[1:] or bound
        full = (
            last["s_per_step"] * RECIPE_STEPS + bound[0] + (RECIPE_TASKS - 1) * sum(later) / len(later) + 55 * per_eval
        )
        r["projected_full_run_s"] = {
            "value": full,
            "extrapolated": cpu,
            "note": (
                f"last task's s/step x {RECIPE_STEPS} steps + the first boundary + 9 x the later ones "
                f"(covariance pass at {RECIPE_TRAIN_PER_TASK} samples + eigendecompositions + after_task) "
                f"+ 55 task evaluations of 1000 images"
            ),
        }
        out["runs"][name] = r
        _print_run(name, r)
        save(out)  # partial results survive a time limit
    runs = out["runs"]
    if "finetune" in runs:
        plain = runs["finetune"]["tasks"][-1]["s_per_step"]
        out["step_ratio_vs_plain"] = {n: r["tasks"][-1]["s_per_step"] / plain for n, r in runs.items()}
    out["boundary_epoch_ratio"] = {
        n: [t["boundary_epoch_ratio"] for t in r["tasks"]] for n, r in runs.items() if r["method"] != "finetune"
    }
    out["targets"] = {"boundary_epoch_ratio": 1.0, "full_run_s_on_one_h100_h200": 600.0}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m nscl.bench e2e", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="results/bench/e2e.json")
    ap.add_argument("--device", default="auto", help="auto: the ResNet case on cuda when available")
    ap.add_argument("--cases", default="mlp,resnet18")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"ResNet settings: {', '.join(SETTINGS)}")
    ap.add_argument("--resnet-steps", type=int, default=3, help="CPU: training steps per ResNet task")
    ap.add_argument("--gpu-epochs", type=int, default=5, help="GPU: epochs of each measured task")
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64 = the recipe)")
    ap.add_argument("--tasks", type=int, default=2, help="ResNet: how many of the 10 tasks to run")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    settings = args.settings.split(",")
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        ap.error(f"unknown settings {bad}; valid: {', '.join(SETTINGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    report = {
        "benchmark": "e2e",
        "env": env_info(dev, 0),
        "argv": argv,
        "cases": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    cases = args.cases.split(",")
    if "mlp" in cases:
        report["cases"].append(mlp_case(args.threads))
        c = report["cases"][-1]
        print(
            f"[mlp on cpu] s/step projected {c['s_per_step_projected']:.4f}, unprojected "
            f"{c['s_per_step_unprojected']:.4f} (x{c['projection_overhead']:.2f})"
        )
    if "resnet18" in cases:
        report["cases"].append({"case": "resnet18", "partial": True})
        idx = len(report["cases"]) - 1

        def save(partial: dict) -> None:
            report["cases"][idx] = {**partial, "partial": True}
            write_json(args.out, report)

        c = resnet_case(dev, args.resnet_steps, args.gpu_epochs, args.width, args.tasks, settings, args.threads, save)
        report["cases"][idx] = c
        if "step_ratio_vs_plain" in c:
            print("  step / plain Adam step: " + ", ".join(f"{n} {v:.2f}" for n, v in c["step_ratio_vs_plain"].items()))
    write_json(args.out, report)
    print(f"written: {args.out}")
    return 0


def _print_run(name: str, r: dict) -> None:
    per = "; ".join(
        f"t{t['task']}: {t['s_per_step']:.3f} s/step, boundary {t['boundary_s']:.1f} s = "
        f"{t['boundary_epoch_ratio']:.2f} epoch (cov {t['covariance_recipe_s']:.1f} + eigen {t['eigen_s']:.1f})"
        for t in r["tasks"]
    )
    p = r["projected_full_run_s"]
    dev = f", device {r['peak_device_mb']:.0f} MB" if r["peak_device_mb"] is not None else ""
    print(
        f"  {name:<16} {per}; full run {'extrapolated' if p['extrapolated'] else 'projected'} {p['value']:.0f} s; "
        f"checkpoint {r['checkpoint_bytes'] / 2**20:.1f} MB; peak host {r['peak_host_mb']:.0f} MB{dev}",
        flush=True,
    )
