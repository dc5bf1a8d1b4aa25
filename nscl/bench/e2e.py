"""End-to-end wall time: per task, per epoch and per step, with and without null-space projection.

    python -m nscl.bench e2e [--out results/bench/e2e.json] [--device auto|cpu|cuda]
                             [--cases mlp,resnet18] [--resnet-steps 3] [--gpu-epochs 5]

Runs the real training loop (:class:`nscl.experiment.trainer.Trainer`, no run directory) and reads its per-task
timings (train, covariance pass, eigendecomposition, evaluation). "Without projection" is
``finetune`` (the same Adam, same data, no projector); "with projection" is ``adam_nscl`` from
its second task on (its first task has no null space yet, so it is unprojected too).

Cases
* ``mlp``: MLP 784-256-256 on Split Fashion-MNIST (the real data when on disk, else a synthetic
  stream of the same shape), the full 5 tasks with every training sample, 1 epoch per task,
  batch 64, on CPU. ``projected_full_run_s`` scales the training time to ``params/base.yaml``'s
  3 epochs (boundaries unchanged).
* ``resnet18``: the 10-split CIFAR-100 recipe (preset ``cifar100_10_paper``: PreAct-ResNet-18 width
  64, batch 32, official covariance / a / BN settings) on a synthetic CIFAR-shaped stream (3x32x32,
  100 classes, 10 tasks of 10 classes, 500 training images per class, no validation split, as the
  official code) -- only its first two tasks.
  On CPU: ``--resnet-steps`` steps per task (tiny tasks), the covariance pass on those samples and a
  tiny test set; the full-run time is EXTRAPOLATED (s/step x 125,600 steps plus 10 task boundaries
  with the covariance pass scaled to 5000 samples) and labelled ``extrapolated``.
  On a GPU: the first two tasks at full size for ``--gpu-epochs`` epochs each (80 in the recipe);
  s/step and the full-run time (80 epochs x 10 tasks = 125,600 steps + boundaries) are projected
  from it. Target: the whole recipe within 10 minutes on one H100/H200.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import torch

from ..experiment import config
from ..data import make_stream
from ..experiment.records import env_info, write_json
from ..experiment.trainer import Trainer

RECIPE_TASKS, RECIPE_EPOCHS, RECIPE_TRAIN_PER_TASK, RECIPE_BATCH = 10, 80, 5000, 32
RECIPE_STEPS = RECIPE_TASKS * RECIPE_EPOCHS * math.ceil(RECIPE_TRAIN_PER_TASK / RECIPE_BATCH)  # 125,600


def _time_run(cfg: dict, stream, device: torch.device) -> dict:
    """Train ``cfg`` on ``stream``; per-task seconds, steps, s/step, s/epoch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    res = Trainer(cfg, None, stream).fit()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    tasks = []
    for t, tim in enumerate(res["timing"]["per_task"]):
        n = len(stream[t].train)
        steps = math.ceil(n / cfg["batch_size"]) * cfg["epochs"]
        tasks.append({"task": t + 1, "train_samples": n, "epochs": cfg["epochs"], "steps": steps,
                      "train_s": tim["train_s"], "s_per_step": tim["train_s"] / steps,
                      "s_per_epoch": tim["train_s"] / cfg["epochs"],
                      "covariance_s": tim["covariance_s"], "eigen_s": tim["eigen_s"], "eval_s": tim["eval_s"],
                      "after_task_s": tim.get("after_task_s", 0.0),
                      "task_s": sum(tim.values())})
    return {"method": cfg["method"], "wall_s": wall, "total_s": res["timing"]["total_s"], "tasks": tasks,
            "acc": res["metrics"]["acc"]}


def mlp_case(device: torch.device) -> dict:
    base = config.resolve(["params/base.yaml"] if Path("params/base.yaml").exists() else [],
                          dict(device=str(device), quiet=True, epochs=1, batch_size=64, seed=0))
    try:
        stream = make_stream("split_fmnist", seed=0)
        data = "split_fmnist (real)"
    except FileNotFoundError:
        stream = make_stream("synthetic", seed=0, n_tasks=5, shape=(1, 28, 28), n_classes=10, train_per_class=6000)
        data = "synthetic 1x28x28 (Fashion-MNIST not on disk)"
    out = {"case": "mlp", "data": data, "model": "MLP 784-256-256", "device": str(device), "runs": {}}
    for method in ("finetune", "adam_nscl"):
        cfg = config.validate({**base, "method": method})
        out["runs"][method] = r = _time_run(cfg, stream, device)
        train1 = sum(t["train_s"] for t in r["tasks"])
        bounds = sum(t["task_s"] - t["train_s"] for t in r["tasks"])
        r["projected_full_run_s"] = {"value": train1 * 3 + bounds,
                                     "note": "measured 1-epoch run scaled to 3 epochs per task (params/base.yaml)"}
    f, a = out["runs"]["finetune"]["tasks"], out["runs"]["adam_nscl"]["tasks"]
    proj = [t["s_per_step"] for t in a[1:]]
    plain = [t["s_per_step"] for t in f[1:]]
    out["s_per_step_projected"] = sum(proj) / len(proj)
    out["s_per_step_unprojected"] = sum(plain) / len(plain)
    out["projection_overhead"] = out["s_per_step_projected"] / out["s_per_step_unprojected"]
    return out


def _cifar_stream(samples_per_task: int | None, test_per_task: int | None, tasks: int):
    s = make_stream("synthetic", seed=0, n_tasks=RECIPE_TASKS, shape=(3, 32, 32), n_classes=100,
                    train_per_class=RECIPE_TRAIN_PER_TASK // 10, test_per_class=100, val_fraction=0.0,
                    samples_per_task=samples_per_task, test_samples_per_task=test_per_task)
    return dataclasses.replace(s, tasks=s.tasks[:tasks])


def resnet_case(device: torch.device, steps: int, gpu_epochs: int) -> dict:
    cpu = device.type == "cpu"
    if cpu:
        stream = _cifar_stream(steps * RECIPE_BATCH, 2 * RECIPE_BATCH, 2)
        epochs = 1
    else:
        stream = _cifar_stream(None, None, 2)
        epochs = gpu_epochs
    out = {"case": "resnet18", "recipe": "cifar100_10_paper on synthetic 3x32x32 (first 2 of 10 tasks)",
           "device": str(device), "epochs_per_task_measured": epochs,
           "mode": "cpu: a few steps per task, full run EXTRAPOLATED" if cpu else
                   f"gpu: first two tasks at full size, {epochs} epochs each, full run projected",
           "recipe_steps": RECIPE_STEPS, "runs": {}}
    for method in ("finetune", "adam_nscl"):
        cfg = config.resolve(overrides=dict(preset="cifar100_10_paper", benchmark="synthetic", method=method,
                                            epochs=epochs, device=str(device), quiet=True, val_fraction=0.0,
                                            eval_batch_size=500, seed=0))
        r = _time_run(cfg, stream, device)
        t2 = r["tasks"][1]  # projected for adam_nscl
        per_sample_cov = t2["covariance_s"] / t2["train_samples"]
        boundary = per_sample_cov * RECIPE_TRAIN_PER_TASK + t2["eigen_s"] + t2["after_task_s"]
        # evaluation after task t covers t+1 tasks of 1000 test images: 55 task-evaluations in all
        per_eval = t2["eval_s"] / (2 * len(stream[0].test)) * 1000
        full = t2["s_per_step"] * RECIPE_STEPS + RECIPE_TASKS * boundary + 55 * per_eval
        r["projected_full_run_s"] = {
            "value": full, "extrapolated": True,
            "note": (f"task-2 s/step x {RECIPE_STEPS} steps + 10 x (covariance pass scaled to "
                     f"{RECIPE_TRAIN_PER_TASK} samples + eigendecompositions) + 55 task evaluations of 1000 images")}
        out["runs"][method] = r
    out["s_per_step_projected"] = out["runs"]["adam_nscl"]["tasks"][1]["s_per_step"]
    out["s_per_step_unprojected"] = out["runs"]["finetune"]["tasks"][1]["s_per_step"]
    out["s_per_step_adam_nscl_task1_unprojected"] = out["runs"]["adam_nscl"]["tasks"][0]["s_per_step"]
    out["projection_overhead"] = out["s_per_step_projected"] / out["s_per_step_unprojected"]
    out["target_full_run_s"] = 600.0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nscl.bench e2e", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/bench/e2e.json")
    ap.add_argument("--device", default="auto", help="auto: the ResNet case on cuda when available")
    ap.add_argument("--cases", default="mlp,resnet18")
    ap.add_argument("--resnet-steps", type=int, default=3, help="CPU: training steps per ResNet task")
    ap.add_argument("--gpu-epochs", type=int, default=5, help="GPU: epochs of each of the first two tasks")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    report = {"benchmark": "e2e", "env": env_info(dev, 0), "cases": []}
    cases = args.cases.split(",")
    if "mlp" in cases:
        report["cases"].append(mlp_case(torch.device("cpu")))
        _print(report["cases"][-1])
    if "resnet18" in cases:
        report["cases"].append(resnet_case(dev, args.resnet_steps, args.gpu_epochs))
        _print(report["cases"][-1])
    write_json(args.out, report)
    print(f"written: {args.out}")
    return 0


def _print(case: dict) -> None:
    print(f"[{case['case']} on {case['device']}] s/step projected {case['s_per_step_projected']:.4f}, "
          f"unprojected {case['s_per_step_unprojected']:.4f} (x{case['projection_overhead']:.2f})")
    for m, r in case["runs"].items():
        per = ", ".join(f"t{t['task']}: {t['task_s']:.2f}s ({t['s_per_epoch']:.2f} s/epoch)" for t in r["tasks"])
        p = r["projected_full_run_s"]
        print(f"  {m:<10} {per}; full run {'extrapolated' if p.get('extrapolated') else 'projected'} "
              f"{p['value']:.0f} s")
