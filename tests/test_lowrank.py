"""Rank limitation: identities, exact factorisation, rank budget, and exact protection by nscl_lowrank."""

import pytest
import torch
import torch.nn as nn

from nscl.core import lowrank as lr
from nscl.experiment import config
from nscl.core.models import MLP, PreActResNet18, SmallCNN
from nscl.core.nullspace import Projector, compute
from nscl.core.optim import NullSpaceAdam
from nscl.experiment.trainer import Trainer


def _linear(W, bias=None):
    layer = nn.Linear(W.shape[1], W.shape[0], bias=bias is not None, dtype=W.dtype)
    with torch.no_grad():
        layer.weight.copy_(W)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


@pytest.mark.parametrize("shape,rank", [((5, 3), 3), ((20, 7), 7), ((64, 64), 64), ((30, 100), 10), ((1, 9), 1)])
def test_nuclear_identity_at_balanced_factors(shape, rank):
    g = torch.Generator().manual_seed(sum(shape))
    W = torch.randn(shape[0], rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, shape[1], generator=g, dtype=torch.float64
    )
    f = lr.Factorized.from_dense(_linear(W))
    nuc = torch.linalg.matrix_norm(W, "nuc")
    torch.testing.assert_close(f.weight(), W, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lr.surrogate([f]), nuc, rtol=1e-10, atol=0)
    # any other factorisation of the same W (A R, B R^-T) costs strictly more: it is a minimum
    R = torch.eye(f.K, dtype=torch.float64) + 0.3 * torch.randn(f.K, f.K, generator=g, dtype=torch.float64)
    A, B = f.factors()
    A2, B2 = A @ R, B @ torch.linalg.inv(R).T
    torch.testing.assert_close(A2 @ B2.T, W, rtol=1e-8, atol=1e-8)
    assert 0.5 * (A2.pow(2).sum() + B2.pow(2).sum()) > nuc * (1 + 1e-6)


def test_full_rank_factorised_layers_reproduce_dense_outputs():
    torch.manual_seed(0)
    x = torch.randn(4, 50)
    dense = nn.Linear(50, 20, bias=True)
    torch.testing.assert_close(lr.Factorized.from_dense(dense)(x), dense(x), rtol=1e-5, atol=1e-5)
    xi = torch.randn(2, 6, 11, 11)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=2, dilation=2, bias=False)
    fc = lr.Factorized.from_dense(conv)
    assert isinstance(fc.B, nn.Conv2d) and fc.B.out_channels == 10 and fc.A.kernel_size == (1, 1)
    torch.testing.assert_close(fc(xi), conv(xi), rtol=1e-5, atol=1e-5)
    # a truncated factorisation is NOT the dense layer (the check above can fail)
    assert (lr.Factorized.from_dense(conv, K=3)(xi) - conv(xi)).abs().max() > 1e-2


@pytest.mark.parametrize(
    "build,shape,n_dense",
    [
        (lambda: MLP(64, [40, 40]), (3, 1, 8, 8), 0),
        (lambda: SmallCNN((1, 8, 8), [8, 16], [32]), (3, 1, 8, 8), 1),  # first conv d=9 stays dense
        (lambda: PreActResNet18(3, width=4), (2, 3, 8, 8), 4),  # stem (d=27) + 3 shortcuts (d=4,8,16)
    ],
)
def test_factorize_whole_backbone_is_exact_and_skips_small_d(build, shape, n_dense):
    torch.manual_seed(1)
    net = build().eval()
    x = torch.randn(*shape)
    before = net(x)
    layers = lr.factorize(net, None, min_d=32)
    assert layers
    dense = [
        m
        for m in net.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not any(m is f.A or m is f.B for f in layers.values())
    ]
    assert len(dense) == n_dense
    torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-5)


def test_truncation_rebalances_and_maps_bottleneck_features():
    g = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(torch.randn(12, 6, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(20, 6, generator=g, dtype=torch.float64))
    S = torch.tensor([5.0, 3.0, 1.0, 1e-3, 1e-4, 1e-6], dtype=torch.float64)
    W = U * S @ V.T
    f = lr.Factorized.from_dense(_linear(W), 6)
    with torch.no_grad():  # an unbalanced factorisation of the same W
        R = torch.diag(torch.tensor([2.0, 0.5, 3.0, 1.0, 0.2, 1.0], dtype=torch.float64))
        f.A.weight.copy_(f.A.weight @ R)
        f.B.weight.copy_(torch.linalg.inv(R) @ f.B.weight)
    x = torch.randn(7, 20, generator=g, dtype=torch.float64)
    z_old = f.B(x)
    r, M = f.truncate(1e-2)
    assert r == 3 and f.active == 3
    torch.testing.assert_close(f.weight(), U[:, :3] * S[:3] @ V[:, :3].T, rtol=1e-10, atol=1e-10)
    A, B = f.factors()
    torch.testing.assert_close(A.T @ A, B.T @ B, rtol=1e-10, atol=1e-10)  # balanced
    torch.testing.assert_close(lr.surrogate([f]), S[:3].sum(), rtol=1e-10, atol=0)
    torch.testing.assert_close(f.B(x)[:, :3], z_old @ M.T, rtol=1e-8, atol=1e-10)


def test_budget():
    assert [lr.budget([0.25, 0.5, 1.0], t, 64) for t in range(5)] == [16, 32, 64, 64, 64]
    assert lr.budget([0.0], 0, 10) == 1 and lr.budget([2.0], 0, 10) == 10


def test_exact_protection_derivation_layer_level():
    """Both projections exact => Delta(A B^T) x_old = 0 after many large steps; B alone is not enough."""
    torch.manual_seed(0)
    d, out, K, n_old = 30, 12, 12, 10
    x_old = torch.randn(n_old, 4) @ torch.randn(4, d)  # old inputs span a 4-dim subspace
    x_new = torch.randn(64, d)

    def train(project_A: bool, project_B: bool):
        torch.manual_seed(1)
        f = lr.Factorized.from_dense(nn.Linear(d, out, bias=False), K)
        with torch.no_grad():
            f.mask[8:] = 0
        y_old, z_old = f(x_old).detach(), (f.B(x_old) * f.mask).detach()
        cx = x_old.double().T @ x_old.double() / n_old
        cz = z_old.double().T @ z_old.double() / n_old
        f.activate(K, Projector(compute(cx, rule="a_min", a=10.0, floor="rank")) if project_B else None)
        with torch.no_grad():  # the new components' A columns must move too
            f.A.weight[:, 8:] = 0.1 * torch.randn(out, 4)
        opt = NullSpaceAdam(f.parameters(), lr=0.05)
        if project_B:
            opt.set_projector(f.B.weight, None, Projector(compute(cx, rule="a_min", a=10.0, floor="rank")))
        if project_A:
            opt.set_projector(f.A.weight, None, Projector(compute(cz, rule="a_min", a=10.0, floor="rank")))
        target = torch.randn(64, out)
        for _ in range(100):
            opt.zero_grad()
            ((f(x_new) - target) ** 2).mean().backward()
            opt.step()
        moved = (f(x_new).detach() - target).pow(2).mean()
        return (f(x_old).detach() - y_old).abs().max().item() / y_old.abs().max().item(), moved

    both, loss_both = train(True, True)
    assert both < 1e-5
    assert loss_both < 0.9  # it did learn the new task
    only_b, _ = train(False, True)
    only_a, _ = train(True, False)
    assert only_b > 1e-2 and only_a > 1e-2


def _old_feature_drift(cfg):
    """Train a run; return the relative change of task 0's features between the end of task 0 and the end."""
    trainer = Trainer(cfg)
    x0 = torch.cat([x for x, _, _ in trainer.batches([(trainer.stream[0].train, 0)], shuffle=False)])
    snap, budgets = {}, []
    after_task, after_step = trainer.method.after_task, trainer.method.after_step

    def at(t):
        after_task(t)
        trainer.model.eval()
        with torch.no_grad():
            snap[t] = trainer.model.features(x0).clone()

    def ast(t):  # the rank budget holds after every optimiser step
        after_step(t)
        for f in trainer.method.layers.values():
            b = lr.budget(cfg["rank_schedule"], t, f.K)
            budgets.append((f.active, torch.linalg.matrix_rank(f.weight().detach()).item(), b))

    trainer.method.after_task, trainer.method.after_step = at, ast
    res = trainer.fit()
    trainer.model.eval()
    with torch.no_grad():
        end = trainer.model.features(x0)
    return (end - snap[0]).abs().max().item() / snap[0].abs().max().item(), res, budgets


@pytest.mark.parametrize("refresh", [False, True])
def test_nscl_lowrank_keeps_old_outputs_exactly_lowrank_does_not(tiny_cfg, refresh):
    # 27 training samples per task < every layer's d (64): all null spaces are exact
    kw = dict(
        n_tasks=3,
        samples_per_task=30,
        hidden=[64, 64],
        epochs=2,
        lr=0.01,
        rank_schedule=[0.5, 0.75, 1.0],
        nuclear_lambda=1e-3,
        refresh_bottleneck=refresh,
    )
    drift, res, budgets = _old_feature_drift(tiny_cfg(method="nscl_lowrank", **kw))
    assert drift < 1e-4
    assert res["metrics"]["bwt"] == pytest.approx(0.0, abs=1e-9)
    assert res["method_diagnostics"]["optimizer_stats"]["projected_steps"] > 0
    assert budgets and all(a == b and rk <= b for a, rk, b in budgets)
    base_drift, base_res, _ = _old_feature_drift(tiny_cfg(method="lowrank", **kw))
    assert base_drift > 1e-2
    # records: per layer per task; the budget grows as scheduled and is never exceeded
    for r in res["method_diagnostics"]["lowrank"].values():
        assert r["active_rank"] == [32, 48, 64]
        assert all(e <= a for e, a in zip(r["effective_rank"], r["active_rank"]))
        assert all(s >= n - 1e-6 for s, n in zip(r["surrogate"], r["nuclear_norm"]))
        assert len(r["bottleneck_null_dim"]) == 3 and r["bottleneck_null_dim"][0] >= 32
    keys = set(res["null_space"])
    assert {"backbone.layers.0.B", "backbone.layers.0.A", "backbone.layers.1.B", "backbone.layers.1.A"} <= keys
    dims = res["null_space"]["backbone.layers.1.B"]["dims"]
    assert len(dims) == 3 and all(0 <= v <= 64 for v in dims)


@pytest.mark.parametrize("model", ["cnn", "resnet18"])
def test_conv_backbones_budget_and_protection(tiny_cfg, model):
    kw = dict(
        model=model,
        cnn_channels=[8, 16],
        width=4,
        samples_per_task=60,
        epochs=1,
        lr=0.01,
        rank_schedule=[0.5, 1.0],
        n_tasks=2,
        hidden=[32],
        nullspace_rule="rel_tol",
        rel_tol=1e-6,
    )
    drift, res, budgets = _old_feature_drift(tiny_cfg(method="nscl_lowrank", **kw))
    base_drift, _, _ = _old_feature_drift(tiny_cfg(method="lowrank", **kw))
    assert budgets and all(a == b and rk <= b for a, rk, b in budgets)
    # near-exact null spaces (rel_tol 1e-6): old features stay put through BN, shortcuts and dense stem
    assert drift < 1e-3 and base_drift > 0.1
    assert any(n.endswith(".A") for n in res["null_space"])


def test_truncation_inside_a_run_keeps_budget(tiny_cfg):
    cfg = tiny_cfg(
        method="nscl_lowrank",
        truncate_tol=0.7,
        rank_schedule=[0.5, 1.0],
        n_tasks=2,
        hidden=[40, 40],
        nuclear_lambda=1e-3,
    )
    res = Trainer(cfg).fit()
    for r in res["method_diagnostics"]["lowrank"].values():
        assert all(a <= b for a, b in zip(r["active_rank"], [20, 40]))
        assert r["active_rank"][0] < 20  # sigma < 0.7 sigma_max were dropped
        assert r["effective_rank"] == r["active_rank"]
        sv = r["singular_values"][0]
        assert min(s for s in sv if s > 1e-6 * sv[0]) >= 0.7 * sv[0] - 1e-6


def test_refreshed_bottleneck_covariance_equals_accumulated_when_b_is_unchanged(tiny_cfg):
    """S_z = M B^T S_x B M reproduces the tracker's own accumulated bottleneck sums after task 1."""
    from nscl.apps import notebook as nb

    tr = nb.train_until(tiny_cfg(method="nscl_lowrank", n_tasks=2, hidden=[40, 40], rank_schedule=[0.5]), tasks=1)
    before = {n: tr.tracker.covariance_sum(f"{n}.A").clone() for n in tr.method.layers}
    tr.method.refresh_bottleneck()
    for n in tr.method.layers:
        torch.testing.assert_close(
            tr.tracker.covariance_sum(f"{n}.A"), before[n], rtol=1e-5, atol=1e-6 * before[n].abs().max()
        )


def test_params_registered():
    cfg = config.resolve(overrides={"method": "nscl_lowrank", "rank_schedule": [0.25, 1.0]})
    assert cfg["rank_schedule"] == [0.25, 1.0]
    with pytest.raises(config.ConfigError):
        config.resolve(overrides={"rank_shedule": [0.5]})


def test_killed_run_resumes_to_identical_results(tiny_cfg, tmp_path, kill_at_task):
    """Masks (model buffers), records and the truncation-mapped bottleneck covariance survive a resume."""
    from nscl.experiment import records, trainer

    cfg = tiny_cfg(
        method="nscl_lowrank", n_tasks=3, rank_schedule=[0.5, 0.75, 1.0], truncate_tol=0.05, nuclear_lambda=1e-3
    )
    full = trainer.run(cfg, tmp_path / "full")
    killed = kill_at_task(trainer.Trainer(cfg, tmp_path / "resumed"))
    with pytest.raises(kill_at_task.Killed):
        killed.fit()
    resumed = trainer.run(cfg, tmp_path / "resumed")
    for key in ("acc", "null_space", "method_diagnostics"):
        assert resumed[key] == full[key], key
    assert records.load(tmp_path / "resumed")["status"] == "complete"
