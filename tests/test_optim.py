"""NullSpaceAdam (nscl.optim): Adam when nothing is projected, exact invariance of old-task outputs
when the final step is projected, and the documented failure of projecting the gradient instead."""
from __future__ import annotations

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
        handles.append(m.register_forward_hook(lambda mod, inp, out, name=name: outs.__setitem__(name, out.detach().clone())))
    with torch.no_grad():
        outs["logits0"] = model(x, 0).clone()
    for h in handles:
        h.remove()
    return outs


def train_task2(model, x1, x2, y2, method: str, project: str = "update", steps: int = 150, wd: float = 1e-3,
                scale_sqrt_r: bool = False):
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
    torch.testing.assert_close(steps[1], steps[0] / 2 ** 0.5)


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
