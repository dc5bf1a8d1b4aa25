"""CUDA checks (``pytest -m gpu``; deselected by default, run by ``make gpu-check``).

They FAIL, never skip, when selected on a machine without CUDA: a GPU check that silently does
nothing would read as a pass. Tolerances (CUDA vs CPU kernels round differently):

* the same tiny run on CUDA and CPU: every accuracy-matrix entry within 5 points, ACC within 2,
  each layer's null-space dimension within 2 % of its d;
* projection invariance on CUDA in float64: task-1 outputs of every projected layer move < 1e-9
  (relative) after 25 projected steps, with bmm groups and the batched CUDA eigh in use;
* a run killed after task 2 and resumed on CUDA completes with the uninterrupted run's results
  (accuracies within 1 point, null-space dimensions within 1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nscl.experiment import config, records
from nscl.experiment import trainer as train
from nscl.core.covariance import Covariance
from nscl.core.models import MultiHead, PreActResNet18, projected_layers
from nscl.core.nullspace import NullSpaceRule, Projector, compute_many
from nscl.core.optim import NullSpaceAdam

pytestmark = pytest.mark.gpu


def need_cuda():
    assert torch.cuda.is_available(), (
        "no CUDA device: the gpu tests need one (they were selected with -m gpu); run them on a GPU node"
    )


def tiny(**kw):
    base = dict(
        benchmark="split_digits",
        n_tasks=3,
        epochs=2,
        batch_size=32,
        hidden=[32, 32],
        quiet=True,
        seed=0,
        method="adam_nscl",
    )
    base.update(kw)
    return config.resolve(overrides=base)


def test_tiny_run_agrees_on_cuda_and_cpu():
    need_cuda()
    cpu = train.run(tiny(device="cpu"))
    gpu = train.run(tiny(device="cuda"))
    assert gpu["env"]["device"].startswith("cuda") and gpu["status"] == "complete"
    T = len(cpu["acc"])
    diffs = [abs(cpu["acc"][i][j] - gpu["acc"][i][j]) for i in range(T) for j in range(i + 1)]
    assert max(diffs) <= 5.0, (cpu["acc"], gpu["acc"])
    assert abs(cpu["metrics"]["acc"] - gpu["metrics"]["acc"]) <= 2.0
    for name, h in cpu["null_space"].items():
        g = gpu["null_space"][name]
        assert all(abs(a - b) <= 0.02 * h["d"] for a, b in zip(h["dims"], g["dims"])), (name, h["dims"], g["dims"])
    assert gpu["method_diagnostics"]["optimizer_stats"]["projected_steps"] > 0


def test_projection_invariance_on_cuda_float64():
    need_cuda()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = MultiHead(PreActResNet18(3, width=8), 64, [3, 3]).double().to(dev).eval()  # BN in eval: fixed
    # 6 task-1 images of 2x2 pixels: every layer sees fewer input rows than its d (exact null spaces)
    x1 = torch.randn(6, 3, 2, 2, dtype=torch.float64, device=dev)
    x2 = torch.randn(16, 3, 2, 2, dtype=torch.float64, device=dev)
    y2 = torch.randint(0, 3, (16,), device=dev)
    layers = projected_layers(model)
    cov = Covariance(layers, "per_sample")
    cov.update(model.features, [x1])
    names = list(layers)
    spaces = compute_many([cov.matrix(n) for n in names], [NullSpaceRule("a_min", a=10.0, floor="rank")] * len(names))
    assert all(s.eigvecs.device.type == "cuda" for s in spaces)
    outs = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o.detach().clone()))
        for n, m in layers.items()
    ]
    with torch.no_grad():
        model.features(x1)
    before = dict(outs)
    bn = {id(p) for n, p in model.named_parameters() if ".bn" in n}
    params = [p for p in model.backbone.parameters() if id(p) not in bn] + list(model.heads[1].parameters())
    opt = NullSpaceAdam(params, lr=1e-2, weight_decay=1e-3)
    for n, s in zip(names, spaces):
        assert 0 < s.r < s.d
        opt.set_projector(layers[n].weight, None, Projector(s, dtype=torch.float64, device=dev))
    assert opt.plan()[0], "no bmm group was formed"
    w0 = {n: m.weight.detach().clone() for n, m in layers.items()}
    for _ in range(25):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x2, 1), y2).backward()
        opt.step()
    with torch.no_grad():
        model.features(x1)
    for h in hooks:
        h.remove()
    for n in names:
        rel = ((outs[n] - before[n]).norm() / before[n].norm()).item()
        assert rel < 1e-9, (n, rel)
        assert (layers[n].weight - w0[n]).norm() > 1e-3 * w0[n].norm(), n
    assert opt.stats["projected_steps"] == 25 * len(names)


class Killed(Exception):
    pass


def test_killed_run_resumes_on_cuda(tmp_path):
    need_cuda()
    cfg = tiny(device="cuda")
    full = train.run(cfg, tmp_path / "full")
    killed = train.Trainer(cfg, tmp_path / "resumed")
    before = killed.method.before_task

    def die(t):
        if t == 2:
            raise Killed("simulated kill after task 2's checkpoint")
        before(t)

    killed.method.before_task = die
    with pytest.raises(Killed):
        killed.fit()
    assert records.load_checkpoint(tmp_path / "resumed")["task"] == 1
    resumed = train.run(cfg, tmp_path / "resumed")
    assert resumed["status"] == "complete"
    T = len(full["acc"])
    assert max(abs(full["acc"][i][j] - resumed["acc"][i][j]) for i in range(T) for j in range(i + 1)) <= 1.0
    for name, h in full["null_space"].items():
        assert all(abs(a - b) <= 1 for a, b in zip(h["dims"], resumed["null_space"][name]["dims"]))
    assert not (tmp_path / "resumed" / records.CHECKPOINT).exists()
