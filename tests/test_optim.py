"""NullSpaceAdam (nscl.core.optim): Adam when nothing is projected, exact invariance of old-task outputs
when the final step is projected, and the documented failure of projecting the gradient instead."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nscl.core.covariance import Covariance
from nscl.core.models import MLP, MultiHead, projected_layers
from nscl.core.nullspace import NullSpace, Projector, compute
from nscl.core.optim import NullSpaceAdam

D, K, N1 = 20, 5, 30  # input dim, task-1 subspace dim, task-1 samples (< hidden width: layer 2 rank-deficient too)


def make_problem(seed=0):
    """A float64 two-head MLP trained on task 1 (inputs in a K-dim subspace of R^D), and task-2 data."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MultiHead(MLP(D, [48, 48], bias=False), 48, [3, 3]).double()
    basis = torch.randn(D, K, generator=g, dtype=torch.float64)
    x1 = torch.randn(N1, K, generator=g, dtype=torch.float64) @ basis.T
    y1 = torch.randint(0, 3, (N1,), generator=g)
    x2 = torch.randn(64, D, generator=g, dtype=torch.float64)  # task 2: full rank
    y2 = torch.randint(0, 3, (64,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x1, 0), y1).backward()
        opt.step()
    return model, x1, x2, y2


def layer_outputs(model, x):
    """Output of every projected layer (and the task-1 logits) on inputs ``x``."""
    outs, handles = {}, []
    for name, m in projected_layers(model).items():
        handles.append(
            m.register_forward_hook(lambda mod, inp, out, name=name: outs.__setitem__(name, out.detach().clone()))
        )
    with torch.no_grad():
        outs["logits0"] = model(x, 0).clone()
    for h in handles:
        h.remove()
    return outs


def train_task2(
    model,
    x1,
    x2,
    y2,
    method: str,
    project: str = "update",
    steps: int = 150,
    wd: float = 1e-3,
    scale_sqrt_r: bool = False,
):
    """Covariance on task-1 inputs (a_min with the rank floor), then task 2 on the backbone + head 2."""
    layers = projected_layers(model)
    cov = Covariance(layers, "per_sample")
    cov.update(model.features, [x1])
    params = list(model.backbone.parameters()) + list(model.heads[1].parameters())
    if method == "nscl":
        opt = NullSpaceAdam([{"params": params}], lr=1e-2, weight_decay=wd, project=project)
        for name, layer in layers.items():
            ns = compute(cov.matrix(name), rule="a_min", a=10.0, floor="rank")
            assert 0 < ns.r < ns.d
            opt.set_projector(layer.weight, layer.bias, Projector(ns, dtype=torch.float64, scale_sqrt_r=scale_sqrt_r))
    else:
        opt = torch.optim.Adam(params, lr=1e-2, weight_decay=wd)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)  # the PyTorch-2 default: grads are re-created by backward
        loss = F.cross_entropy(model(x2, 1), y2)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return opt, losses


def rel_change(before, after):
    return {k: ((after[k] - before[k]).norm() / before[k].norm()).item() for k in before}


@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_null_space_adam_keeps_task1_outputs_exactly(wd):
    model, x1, x2, y2 = make_problem()
    before = layer_outputs(model, x1)
    w0 = [p.detach().clone() for p in model.backbone.parameters()]
    opt, losses = train_task2(model, x1, x2, y2, "nscl", wd=wd)
    after = layer_outputs(model, x1)
    change = rel_change(before, after)
    assert set(change) == {"backbone.layers.0", "backbone.layers.1", "logits0"}
    assert max(change.values()) < 1e-10, change
    # ... and it is not because nothing moved: the weights changed and task 2 was learned
    assert all((p - q).norm() / q.norm() > 0.05 for p, q in zip(model.backbone.parameters(), w0))
    assert losses[-1] < 0.5 * losses[0]
    assert opt.stats["projected_steps"] == 2 * opt.stats["steps"] > 0


def test_plain_adam_changes_task1_outputs():
    model, x1, x2, y2 = make_problem()
    before = layer_outputs(model, x1)
    train_task2(model, x1, x2, y2, "adam")
    change = rel_change(before, layer_outputs(model, x1))
    assert min(change.values()) > 0.05, change


def test_project_grad_does_not_keep_outputs():
    """Projecting the gradient before Adam: m / sqrt(v) is element-wise, so the step leaves the null
    space again and old outputs drift (documented; only ``project="update"`` is exact)."""
    model, x1, x2, y2 = make_problem()
    before = layer_outputs(model, x1)
    opt, losses = train_task2(model, x1, x2, y2, "nscl", project="grad")
    change = rel_change(before, layer_outputs(model, x1))
    assert opt.stats["projected_steps"] > 0
    assert change["backbone.layers.0"] > 1e-2, change  # "update" stays below 1e-10
    assert losses[-1] < losses[0]


def test_step_is_projected_adam_step_despite_set_to_none():
    """The PyTorch-2 pitfall: with ``zero_grad(set_to_none=True)`` the projection must still happen.
    The NullSpaceAdam step equals torch Adam's step right-multiplied by P (and differs from it)."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 4, bias=True)
    twin = nn.Linear(6, 4, bias=True)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(10, 6)
    d = 7  # 6 inputs + bias column
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    ns = NullSpace(torch.arange(d, dtype=torch.float64), q, 3)
    proj = Projector(ns)
    opt = NullSpaceAdam(layer.parameters(), lr=1e-2, weight_decay=1e-2)
    opt.set_projector(layer.weight, layer.bias, proj)
    ref = torch.optim.Adam(twin.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(3):
        w0 = torch.cat([layer.weight, layer.bias[:, None]], 1).detach().clone()
        w0_ref = torch.cat([twin.weight, twin.bias[:, None]], 1).detach().clone()
        for m, o in ((layer, opt), (twin, ref)):
            o.zero_grad(set_to_none=True)
            m(x).pow(2).sum().backward()
            o.step()
        du = torch.cat([layer.weight, layer.bias[:, None]], 1).detach() - w0
        du_ref = torch.cat([twin.weight, twin.bias[:, None]], 1).detach() - w0_ref
        # same moments (Adam on unprojected gradients), so the step is exactly the projected Adam step
        torch.testing.assert_close(du, proj(du_ref), rtol=1e-4, atol=1e-6)
        assert (du - du_ref).norm() > 0.3 * du_ref.norm()
        twin.weight.data.copy_(layer.weight.data)  # keep the twins at the same point (same gradients)
        twin.bias.data.copy_(layer.bias.data)
    assert opt.stats["projected_steps"] == 3


def test_without_projectors_it_is_torch_adam():
    torch.manual_seed(1)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    opt_a = NullSpaceAdam(a.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2)
    x = torch.randn(8, 5)
    for _ in range(5):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad(set_to_none=True)
            m(x).sin().sum().backward()
            o.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-5, atol=1e-6)
    assert opt_a.stats == {"steps": 5, "projected_steps": 0}


def test_scale_sqrt_r_scales_the_step_and_keeps_invariance():
    model, x1, x2, y2 = make_problem()
    before = layer_outputs(model, x1)
    opt, _ = train_task2(model, x1, x2, y2, "nscl", steps=20, scale_sqrt_r=True)
    assert max(rel_change(before, layer_outputs(model, x1)).values()) < 1e-10
    lin = nn.Linear(4, 2, bias=False).double()
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    ns = NullSpace(torch.arange(4.0, dtype=torch.float64), q, 2)
    steps = []
    for scale in (False, True):
        lin.weight.data.fill_(1.0)
        o = NullSpaceAdam(lin.parameters(), lr=0.1)
        o.set_projector(lin.weight, None, Projector(ns, dtype=torch.float64, scale_sqrt_r=scale))
        lin(torch.ones(1, 4, dtype=torch.float64) * torch.arange(4)).sum().backward()
        o.step()
        steps.append(lin.weight.detach() - 1.0)
        lin.weight.grad = None
    torch.testing.assert_close(steps[1], steps[0] / 2**0.5)


def test_projector_dimension_is_checked():
    lin = nn.Linear(4, 2, bias=True)
    ns = NullSpace(torch.arange(4.0, dtype=torch.float64), torch.eye(4, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="d=4, layer needs d=5"):
        NullSpaceAdam(lin.parameters()).set_projector(lin.weight, lin.bias, Projector(ns))
    with pytest.raises(ValueError, match="project"):
        NullSpaceAdam(lin.parameters(), project="both")


@pytest.mark.parametrize("project,wd", [("grad", 0.0), ("grad", 1e-2), ("update", 0.0)])
def test_step_leaves_raw_gradients_untouched(project, wd):
    torch.manual_seed(2)
    lin = nn.Linear(6, 3, bias=False)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    opt = NullSpaceAdam(lin.parameters(), lr=1e-2, weight_decay=wd, project=project)
    opt.set_projector(lin.weight, None, Projector(NullSpace(torch.arange(6.0, dtype=torch.float64), q, 2)))
    lin(torch.randn(4, 6)).pow(2).sum().backward()
    g = lin.weight.grad.clone()
    opt.step()
    assert torch.equal(lin.weight.grad, g)


# ---- the official epsilon placement -------------------------------------------------------------
def official_reference(
    weights: dict, grad_fn, projectors: dict, lr: float, head_lr: float, betas, eps: float, wd: float, steps: int
) -> dict:
    """The official Adam-NSCL update written out independently (older PyTorch Adam form), float64:
    ``g = grad + wd w``; ``m, v`` on g; ``u = -lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``;
    ``u <- u.view(out, d) @ P`` for projected weights; ``w <- w + u``. The head has its own lr, no decay."""
    b1, b2 = betas
    w = {k: v.clone() for k, v in weights.items()}
    m = {k: torch.zeros_like(v) for k, v in w.items()}
    v2 = {k: torch.zeros_like(v) for k, v in w.items()}
    for t in range(1, steps + 1):
        grads = grad_fn(w)
        for k in w:
            decay = 0.0 if k == "head" else wd
            g = grads[k] + decay * w[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v2[k] = b2 * v2[k] + (1 - b2) * g * g
            rate = (head_lr if k == "head" else lr) * math.sqrt(1 - b2**t) / (1 - b1**t)
            u = -rate * m[k] / (v2[k].sqrt() + eps)
            if k in projectors:
                u = (u.reshape(u.shape[0], -1) @ projectors[k]).reshape(u.shape)
            w[k] = w[k] + u
    return w


def _official_case():
    """Two same-shaped convs (one bmm group, different r, sqrt(r) scaling), a third conv of another
    shape, and an unprojected head: a small fixed float64 network and its loss."""
    g = torch.Generator().manual_seed(3)
    shapes = {"c1": (4, 2, 3, 3), "c2": (4, 2, 3, 3), "c3": (3, 4, 1, 1), "head": (2, 3)}
    weights = {k: 0.3 * torch.randn(*s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    x = torch.randn(5, 2, 6, 6, generator=g, dtype=torch.float64)
    spaces = {
        k: random_null_space(int(torch.tensor(shapes[k][1:]).prod()), r, seed)
        for k, r, seed in (("c1", 5, 0), ("c2", 6, 1), ("c3", 1, 2))
    }

    def loss(w):
        h = F.conv2d(x, w["c1"], padding=1).tanh() + F.conv2d(x, w["c2"], padding=1).sin()
        h = F.conv2d(h, w["c3"]).relu().mean((2, 3))
        return (h @ w["head"].T).pow(2).sum() * 1e-3  # small gradients: sqrt(v) comparable to eps

    def grad_fn(w):
        leaves = {k: v.detach().requires_grad_(True) for k, v in w.items()}
        grads = torch.autograd.grad(loss(leaves), list(leaves.values()))
        return dict(zip(leaves, grads))

    return weights, spaces, grad_fn


def random_null_space(d: int, r: int, seed: int) -> NullSpace:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return NullSpace(torch.arange(d, dtype=torch.float64), q, r)


@pytest.mark.parametrize("placement", ["official", "torch"])
def test_official_eps_placement_reproduces_the_official_update_to_1e12(placement):
    weights, spaces, grad_fn = _official_case()
    lr, head_lr, betas, eps, wd, steps = 5e-2, 1e-1, (0.9, 0.999), 1e-4, 5e-4, 6
    dense = {k: ns.null_basis @ ns.null_basis.T / math.sqrt(ns.r) for k, ns in spaces.items()}
    expected = official_reference(weights, grad_fn, dense, lr, head_lr, betas, eps, wd, steps)

    params = {k: nn.Parameter(v.clone()) for k, v in weights.items()}
    opt = NullSpaceAdam(
        [
            dict(params=[params["c1"], params["c2"], params["c3"]], lr=lr, weight_decay=wd),
            dict(params=[params["head"]], lr=head_lr, weight_decay=0.0),
        ],
        betas=betas,
        eps=eps,
        eps_placement=placement,
        batched=True,
    )
    for k, ns in spaces.items():
        opt.set_projector(params[k], None, Projector(ns, dtype=torch.float64, scale_sqrt_r=True))
    buckets, single = opt.plan()
    assert len(buckets) == 1 and len(buckets[0].layers) == 2  # c1 and c2 share one bmm (padded 5 -> 6 columns)
    for _ in range(steps):
        grads = grad_fn({k: p.detach() for k, p in params.items()})
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()
    err = max((params[k].detach() - expected[k]).abs().max().item() for k in weights)
    moved = min((expected[k] - weights[k]).abs().max().item() for k in weights)
    assert moved > 1e-3  # every weight moved
    if placement == "official":
        assert err < 1e-12, err
    else:  # torch's m_hat / (sqrt(v_hat) + eps) is a different step
        assert err > 1e-6, err
    assert opt.stats["projected_steps"] == 3 * steps


def test_eps_placement_is_checked():
    with pytest.raises(ValueError, match="eps_placement"):
        NullSpaceAdam(nn.Linear(2, 2).parameters(), eps_placement="pytorch1.5")


# ---- batched projection ---------------------------------------------------------------------------
@pytest.mark.parametrize("scale_sqrt_r", [False, True])
def test_batched_projection_equals_layer_by_layer(scale_sqrt_r):
    """Same-shaped layers share one bmm per kind (zero-padded bases); the steps equal the per-layer ones.
    Ranks chosen so that both kinds occur, padding is needed, a bucket splits, and r=0 / r=d layers
    fall back to the per-layer path."""
    torch.manual_seed(4)
    d, out = 18, 6
    ranks = [2, 3, 8, 15, 16, 0, 18, 4]
    layers = [nn.Conv2d(2, out, 3, bias=False).double() for _ in ranks]
    twins = [nn.Conv2d(2, out, 3, bias=False).double() for _ in ranks]
    for a, b in zip(layers, twins):
        b.load_state_dict(a.state_dict())
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    opts = []
    for mods, batched in ((layers, True), (twins, False)):
        opt = NullSpaceAdam([p for m in mods for p in m.parameters()], lr=1e-2, weight_decay=1e-3, batched=batched)
        for i, (m, r) in enumerate(zip(mods, ranks)):
            opt.set_projector(
                m.weight, None, Projector(random_null_space(d, r, i), dtype=torch.float64, scale_sqrt_r=scale_sqrt_r)
            )
        opts.append(opt)
    assert NullSpaceAdam([layers[0].weight]).batched is None  # default: bmm on a GPU, per layer on CPU
    auto = NullSpaceAdam([p for m in layers for p in m.parameters()])
    for i, (m, r) in enumerate(zip(layers, ranks)):
        auto.set_projector(m.weight, None, Projector(random_null_space(d, r, i), dtype=torch.float64))
    assert auto.plan()[0] == [] and len(auto.plan()[1]) == len(ranks)
    buckets, single = opts[0].plan()
    # null k = 2, 3 | 4 | 8 (the padding limit splits them); range k = 2, 3; r = 0 and r = d alone
    assert sorted((b.kind, len(b.layers)) for b in buckets) == [("null", 2), ("range", 2)]
    assert len(single) == 4
    assert all(b.padded_flops <= 1.25 * b.flops for b in buckets)
    assert opts[1].plan()[0] == []
    for _ in range(4):
        for mods, opt in zip((layers, twins), opts):
            opt.zero_grad(set_to_none=True)
            sum(m(x).sin().sum() for m in mods).backward()
            opt.step()
    for a, b, r in zip(layers, twins, ranks):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-13)
    assert opts[0].stats == opts[1].stats == {"steps": 4, "projected_steps": 4 * len(ranks)}
