"""Per-step cost of a nuclear-norm penalty: exact (SVD) vs the factorised Frobenius surrogate.

    python -m nscl.bench nuclear [--out results/bench/nuclear.json] [--repeat 10] [--device cpu|cuda|all]

For each model (MLP 784-256-256; PreAct-ResNet-18 width 64 convs, the stem skipped as in
:func:`nscl.core.lowrank.factorize`) and device, one step = forward + backward of the penalty alone:

* exact: ``sum_l torch.linalg.matrix_norm(W_l.view(out, -1), 'nuc')`` on the dense weights (an SVD
  per layer per step, and its backward);
* surrogate: ``1/2 sum_l (||A_l||^2 + ||B_l||^2)`` on the full-rank factorised layers (no SVD).

Both are equal at balanced factors (checked here on the first step). Reports the median and mean
milliseconds per step and the ratio exact / surrogate, measured in one process.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from ..core import lowrank as lr
from ..core.models import MLP, PreActResNet18
from ..experiment.records import env_info, write_json


def _models(width: int):
    yield "mlp_784_256_256", MLP(784, [256, 256])
    yield f"resnet18_w{width}_convs", PreActResNet18(3, width=width)


def _time(fn, device, repeat: int, warmup: int = 2) -> tuple[list[float], list[float]]:
    """Wall and process-CPU milliseconds per call (CPU time is robust to a shared, loaded machine)."""
    wall, cpu = [], []
    for i in range(warmup + repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def _stats(ms: list[float]) -> dict:
    return {"median": statistics.median(ms), "mean": statistics.fmean(ms), "runs": ms}


def measure(name: str, net: torch.nn.Module, device: torch.device, repeat: int, min_d: int = 32) -> dict:
    net = net.to(device)
    fac = copy.deepcopy(net)
    layers = lr.factorize(fac, None, min_d=min_d)
    dense = [m.weight for n, m in net.named_modules() if n in {k for k in layers}]
    assert len(dense) == len(layers)
    for p in net.parameters():
        p.grad = None

    def exact():
        for w in dense:
            w.grad = None
        loss = sum(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), "nuc") for w in dense)
        loss.backward()
        return loss

    def surrogate():
        for f in layers.values():
            f.A.weight.grad = f.B.weight.grad = None
        loss = lr.surrogate(layers)
        loss.backward()
        return loss

    ex, su = exact().item(), surrogate().item()
    t_exact, c_exact = _time(exact, device, repeat)
    t_sur, c_sur = _time(surrogate, device, repeat)
    med_e, med_s = statistics.median(t_exact), statistics.median(t_sur)
    return {
        "model": name,
        "device": str(device),
        "layers": len(dense),
        "weights": int(sum(w.numel() for w in dense)),
        "shapes": [list(w.reshape(w.shape[0], -1).shape) for w in dense],
        "nuclear_exact": ex,
        "surrogate_at_init": su,
        "rel_gap_at_init": abs(ex - su) / ex,
        "exact_ms": _stats(t_exact),
        "surrogate_ms": _stats(t_sur),
        "ratio_median": med_e / med_s,
        "exact_cpu_ms": _stats(c_exact),
        "surrogate_cpu_ms": _stats(c_sur),
        "ratio_cpu_median": statistics.median(c_exact) / max(statistics.median(c_sur), 1e-9),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nscl.bench nuclear", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bench/nuclear.json")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width")
    ap.add_argument("--device", default="all", help="cpu, cuda, or all (cpu + cuda when available)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = {"all": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"], "cuda": ["cuda"]}[
        args.device
    ]
    rows = []
    for dev in devices:
        device = torch.device(dev)
        for name, net in _models(args.width):
            torch.manual_seed(0)
            row = measure(name, net, device, args.repeat)
            rows.append(row)
            print(
                f"{name:<24} {dev:<5} exact {row['exact_ms']['median']:9.2f} ms  surrogate "
                f"{row['surrogate_ms']['median']:7.3f} ms  ratio {row['ratio_median']:8.1f}x (cpu-time ratio "
                f"{row['ratio_cpu_median']:.1f}x)  "
                f"(gap at init {row['rel_gap_at_init']:.1e})"
            )
    out = {"benchmark": "nuclear", "repeat": args.repeat, "env": env_info(devices[-1], 0), "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), out)
    print(f"written: {args.out}")
    return 0
