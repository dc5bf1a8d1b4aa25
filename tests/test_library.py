"""``nscl.protect`` (nscl.core.protect; docs/library.md) on models and loops the project did not write:
torchvision's ResNet-18, a user CNN with strides, padding and dilation, an MLP in ``nn.Sequential``.

The guarantee tested: with a strict rule, task 1's outputs at every protected layer (on task 1's
inputs) stay fixed after later tasks, with ``cl.optimizer`` (Adam-NSCL) and with ``cl.wrap`` around
any optimizer; without ``end_task`` the same loop changes them. Plus the one-line errors, the report,
a checkpoint round trip, and the robust eigendecomposition.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import nscl
from nscl.core import nullspace
from nscl.core.nullspace import NullSpaceRule

STRICT = NullSpaceRule("rel_tol", rel_tol=1e-10)  # null = numerically null: exact protection


def mlp():
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


class UserCNN(nn.Module):
    """Strides, padding, dilation, a bias, BatchNorm, a Conv1d over rows, a linear classifier."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.c3 = nn.Conv2d(8, 8, 2, stride=2, padding=0, bias=False)
        self.row = nn.Conv1d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))  # 8x8 -> 4x4
        h = torch.relu(self.c2(h))  # 4x4 (dilated)
        h = torch.relu(self.c3(h))  # 2x2
        h = torch.relu(self.row(h.flatten(2)))  # (B, 8, 4) -> (B, 4, 4)
        return self.fc(h.flatten(1))


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=4)


def task_data(kind: str, t: int, n: int):
    """Task ``t``'s inputs and labels; each task lives in its own low-dimensional part of the input space,
    so every task leaves room (a null space) for the next."""
    g = torch.Generator().manual_seed(100 + t)
    if kind == "mlp":
        basis = torch.randn(6, 20, generator=g)
        x = torch.randn(n, 6, generator=g) @ basis
    else:  # images: one colour per task times a grey image
        size = 8 if kind == "cnn" else 32
        colour = torch.rand(3, generator=g)
        x = colour.view(1, 3, 1, 1) * torch.rand(n, 1, size, size, generator=g)
    return x, torch.randint(0, 4, (n,), generator=g)


def layer_outputs(model, layers, x):
    """Every protected layer's output on ``x`` (eval mode)."""
    outs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach().clone())) for n, m in layers]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


def relative_changes(before, after):
    return {n: ((after[n] - before[n]).abs().max() / before[n].abs().max().clamp_min(1e-12)).item() for n in before}


def train(model, opt, x, y, steps):
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def run_tasks(kind, model, exclude, use, close=True, tasks=3, n=8, steps=4, lr=1e-2, device="cpu"):
    """Train ``tasks`` tasks in a plain loop; returns task 1's relative output change per protected layer
    after the last task and the relative weight change of those layers."""
    model.to(device)
    cl = nscl.protect(model, exclude=exclude, rule=STRICT)
    if use == "optimizer":
        opt = cl.optimizer(lr=lr)
    else:
        opt = cl.wrap(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3))
    x1, y1 = (a.to(device) for a in task_data(kind, 0, n))
    train(model, opt, x1, y1, steps)
    if close:
        report = cl.end_task([(x1, y1)])
        assert set(report) == set(cl.layers) and all(r["null"] is not None for r in report.values())
    layers = list(cl.layers.items())
    before = layer_outputs(model, layers, x1)
    w0 = {n: m.weight.detach().clone() for n, m in layers}
    for t in range(1, tasks):
        x, y = (a.to(device) for a in task_data(kind, t, n))
        train(model, opt, x, y, steps)
        if close:
            cl.end_task([x])
    moved = {n: ((m.weight - w0[n]).norm() / w0[n].norm()).item() for n, m in layers}
    return relative_changes(before, layer_outputs(model, layers, x1)), moved, cl


MODELS = {
    "mlp": (mlp, ["4"]),
    "cnn": (UserCNN, ["fc"]),
    # the stem and stage 1 (a d = 4608 eigh of layer 4 costs minutes of one busy CPU core here)
    "resnet18": (resnet18, ["layer2", "layer3", "layer4", "fc"]),
}


@pytest.mark.parametrize("use", ["optimizer", "wrap"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_old_outputs_stay_fixed_at_every_protected_layer(kind, use):
    torch.manual_seed(0)
    make, exclude = MODELS[kind]
    change, moved, cl = run_tasks(kind if kind != "resnet18" else "resnet", make(), exclude, use)
    assert max(change.values()) <= 1e-4, change
    assert max(moved.values()) > 1e-3, f"nothing trained: {moved}"  # the guarantee is not a frozen net
    assert any(r["null"] > 0 for r in cl.report().values())


@pytest.mark.gpu
@pytest.mark.parametrize("use", ["optimizer", "wrap"])
def test_old_outputs_stay_fixed_on_the_gpu(use):
    """The same guarantee on CUDA (batched eigh, NullSpaceAdam's bmm buckets on the GPU)."""
    torch.manual_seed(0)
    change, moved, _ = run_tasks("cnn", UserCNN(), ["fc"], use, device="cuda")
    assert max(change.values()) <= 1e-4, change
    assert max(moved.values()) > 1e-3, moved


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_without_end_task_old_outputs_change(kind):
    torch.manual_seed(0)
    make, exclude = MODELS[kind]
    change, _, _ = run_tasks(kind, make(), exclude, "optimizer", close=False)
    assert max(change.values()) > 1e-2, change


def test_report_and_checkpoint_round_trip(tmp_path):
    """The report says d, null dims and kept energy per layer; a checkpoint restores null spaces and
    projectors, so a resumed optimizer takes the same projected step."""
    torch.manual_seed(0)
    model = mlp()
    cl = nscl.protect(model, exclude=["4"], rule=STRICT)
    x, y = task_data("mlp", 0, 16)
    report = cl.end_task([(x, y)])
    assert report["0"]["d"] == 21 and report["0"]["null"] == 21 - 7  # 6-dim inputs + the bias column
    assert report["0"]["kept_energy"] < 1e-9 and list(report) == ["0", "2"]
    torch.save(cl.state_dict(), tmp_path / "cl.pt")
    twin = mlp()
    twin.load_state_dict(model.state_dict())
    cl2 = nscl.protect(twin, exclude=["4"], rule=STRICT)
    cl2.load_state_dict(torch.load(tmp_path / "cl.pt", weights_only=True))
    assert cl2.report() == report
    opt, opt2 = cl.optimizer(lr=1e-2), cl2.optimizer(lr=1e-2)
    x2, y2 = task_data("mlp", 1, 16)
    train(model, opt, x2, y2, 2)
    train(twin, opt2, x2, y2, 2)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_scaled_projector_lies_between_hard_and_none():
    """``projector="scaled"`` (SGP) lets old outputs move, but less than no protection."""
    changes = {}
    for proj in ("hard", "scaled", None):
        torch.manual_seed(0)
        model = mlp()
        cl = nscl.protect(model, exclude=["4"], rule=NullSpaceRule("energy", energy=0.99), projector=proj or "hard")
        opt = cl.optimizer(lr=1e-2)
        x, y = task_data("mlp", 0, 16)
        if proj is not None:
            cl.end_task([x])
        before = layer_outputs(model, list(cl.layers.items()), x)
        train(model, opt, *task_data("mlp", 1, 16), 5)
        changes[proj] = max(relative_changes(before, layer_outputs(model, list(cl.layers.items()), x)).values())
    assert changes["hard"] < changes["scaled"] < changes[None], changes


def test_batchnorm_freeze_and_train():
    """``batchnorm="freeze"`` (default) keeps BN's statistics and affine parameters from task 2 on;
    ``"train"`` leaves them to the user's loop (then old outputs after BN are not guaranteed)."""
    for choice, frozen in (("freeze", True), ("train", False)):
        torch.manual_seed(0)
        model = UserCNN()
        cl = nscl.protect(model, exclude=["fc"], batchnorm=choice)
        x, y = task_data("cnn", 0, 8)
        cl.end_task([x])
        stats = model.bn.running_mean.clone()
        train(model, cl.optimizer(lr=1e-2), *task_data("cnn", 1, 8), 2)
        assert torch.equal(model.bn.running_mean, stats) is frozen
        assert model.bn.weight.requires_grad is not frozen


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 4)
        self.out = nn.Linear(4, 4)
        self.out.weight = self.emb.weight


@pytest.mark.parametrize(
    "model, kwargs, message",
    [
        (nn.Sequential(nn.Conv2d(8, 8, 3, groups=8)), {}, r"layer '0' is a depthwise convolution.*exclude=\['0'\]"),
        (nn.Sequential(nn.Conv2d(8, 8, 3, groups=2)), {}, r"layer '0' is a grouped \(groups=2\) convolution"),
        (nn.Sequential(nn.Conv3d(2, 2, 3), nn.Linear(2, 2)), {}, r"layer '0' \(Conv3d\).*exclude=\['0'\]"),
        (nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4)), {}, r"layer '0' \(Embedding\).*exclude"),
        (nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2)), {}, r"layer '1' \(MultiheadAttention\)"),
        (nn.Sequential(nn.Conv2d(2, 2, 3, padding="same")), {}, r"layer '0' has padding='same'.*padding=\(1, 1\)"),
        (nn.Sequential(nn.Conv2d(2, 2, 3, padding_mode="reflect")), {}, r"layer '0' pads with 'reflect'"),
        (Tied(), {}, r"layer 'emb' shares a parameter with another module \(emb.weight, out.weight\)"),
        (mlp(), {"layers": ["0", "9"]}, r"layers='9': no module of that name"),
        (mlp(), {"exclude": ["head"]}, r"exclude='head': no module of that name"),
        (mlp(), {"layers": ["1"]}, r"layers='1' is a ReLU"),
        (mlp(), {"exclude": ["0", "2", "4"]}, r"no layer to protect"),
        (mlp(), {"projector": "soft"}, r"projector='soft'; valid: hard, scaled"),
    ],
)
def test_one_line_errors_before_training(model, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        nscl.protect(model, **kwargs)
    assert "\n" not in str(err.value)


def test_refused_layers_are_fine_when_excluded_and_shared_modules_are_fine():
    """An excluded depthwise conv is left alone; one module registered under two names is one layer
    (its hooks see every call), so it is no shared weight."""
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 4, 1))
    assert list(nscl.protect(net, exclude=["0"]).layers) == ["1"]
    lin = nn.Linear(3, 3)
    assert list(nscl.protect(nn.Sequential(lin, nn.ReLU(), lin)).layers) == ["0"]


def test_wrap_refuses_null_space_adam():
    cl = nscl.protect(mlp())
    with pytest.raises(ValueError, match="projects its own steps already"):
        cl.wrap(cl.optimizer())


def test_the_trainer_selects_layers_as_protect_does():
    """One selection: the trainer's projected layers are ``select_layers(model, exclude=["heads"])``."""
    from nscl.core.models import build_model, projected_layers
    from nscl.core.protect import select_layers

    model = build_model("cnn", (1, 28, 28), [2, 2], cnn_channels=[4, 4], hidden=[8])
    assert list(projected_layers(model)) == list(select_layers(model, exclude=["heads"]))
    assert list(projected_layers(model)) == [
        n for n, m in model.backbone.named_modules(prefix="backbone") if isinstance(m, (nn.Linear, nn.Conv2d))
    ]


# ---- the robust eigendecomposition ------------------------------------------------------------------
def rank_deficient(d: int, rank: int, seed: int = 0) -> torch.Tensor:
    """A PSD covariance of ``rank`` rows in ``d`` dimensions: ``d - rank`` repeated zero eigenvalues."""
    x = torch.randn(rank, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.T @ x / rank


def check_decomposition(cov, vals, vecs, rank):
    d = cov.shape[0]
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close((vecs * vals) @ vecs.T, cov, rtol=0, atol=1e-9 * cov.abs().max().item())
    assert bool((vals[1:] >= vals[:-1] - 1e-12).all())  # ascending
    assert nullspace.numerical_rank(vals.abs()) == rank


@pytest.mark.parametrize("failing", [("torch",), ("torch", "evr"), ("torch", "evr", "ev")])
def test_eigh_falls_back_when_lapack_fails(monkeypatch, failing):
    """Where torch's ``eigh`` fails to converge (as on torchvision ResNet-18's layer 4, d = 4608 of
    rank 64), the SciPy drivers and then the SVD decompose the same rank-deficient matrix correctly."""
    import scipy.linalg

    cov = rank_deficient(576, 64)
    real_scipy = scipy.linalg.eigh

    def torch_fails(*a, **k):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    def scipy_fails(a, driver=None, **k):
        if driver in failing:
            raise scipy.linalg.LinAlgError(f"{driver} failed")
        return real_scipy(a, driver=driver, **k)

    monkeypatch.setattr(torch.linalg, "eigh", torch_fails)
    monkeypatch.setattr(scipy.linalg, "eigh", scipy_fails)
    vals, vecs = nullspace.eigh(cov[None])
    check_decomposition(cov, vals[0], vecs[0], 64)
    ns = nullspace.compute(cov, STRICT)
    assert ns.r == 576 - 64


def test_eigh_of_a_rank_deficient_covariance():
    """The path ``compute`` takes on a rank-64 matrix with 512 repeated zero eigenvalues."""
    cov = rank_deficient(576, 64, seed=1)
    vals, vecs = nullspace.eigh(cov)
    check_decomposition(cov, vals, vecs, 64)
