"""PreAct-ResNet-18 block variants (nscl.core.models): the official Adam-NSCL block against an independent
functional forward, and how it differs from the He et al. pre-activation block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nscl.experiment import config
from nscl.core.models import PreActBlock, PreActResNet18, build_model


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm everywhere: random affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g, dtype=m.weight.dtype)
            m.bias.data = torch.randn(n, generator=g, dtype=m.bias.dtype)
            m.running_mean = 0.5 * torch.randn(n, generator=g, dtype=m.running_mean.dtype)
            m.running_var = 0.5 + torch.rand(n, generator=g, dtype=m.running_var.dtype)


def reference_forward(net: PreActResNet18, x: torch.Tensor) -> torch.Tensor:
    """The official network written with functional ops only (eval-mode BN): in every block
    ``x <- bn1(x)``, ``out = relu(x)``, shortcut = conv(out) if the block has one else ``x``,
    ``out = conv2(relu(bn2(conv1(out)))) + shortcut``; stem conv, stages, relu(bn_last), average pool."""

    def bn(m, h):
        return (h - m.running_mean[None, :, None, None]) / torch.sqrt(
            m.running_var[None, :, None, None] + m.eps
        ) * m.weight[None, :, None, None] + m.bias[None, :, None, None]

    h = F.conv2d(x, net.conv1.weight, padding=1)
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for blk in stage:
            stride = blk.conv1.stride
            h = bn(blk.bn1, h)
            out = torch.relu(h)
            short = F.conv2d(out, blk.shortcut.weight, stride=stride) if blk.shortcut is not None else h
            out = F.conv2d(out, blk.conv1.weight, stride=stride, padding=1)
            out = F.conv2d(torch.relu(bn(blk.bn2, out)), blk.conv2.weight, padding=1)
            h = out + short
    h = torch.relu(bn(net.bn_last, h))
    return h.mean((2, 3))


def test_official_block_matches_an_independent_forward_and_differs_from_preact():
    torch.manual_seed(0)
    official = PreActResNet18(3, width=4, block="official").double().eval()
    randomize_bn(official)
    preact = PreActResNet18(3, width=4, block="preact").double().eval()
    preact.load_state_dict(official.state_dict())  # same weights, same module names
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = reference_forward(official, x)
        out_official, out_preact = official(x), preact(x)
    torch.testing.assert_close(out_official, ref, rtol=0, atol=1e-12)
    rel = ((out_preact - out_official).norm() / out_official.norm()).item()
    assert rel > 0.05, rel
    # 5 of the 8 blocks have identity shortcuts: exactly those differ; conv-shortcut blocks agree
    blocks = [b for s in (official.layer1, official.layer2, official.layer3, official.layer4) for b in s]
    assert sum(b.shortcut is None for b in blocks) == 5
    for blk in blocks:
        twin = PreActBlock(blk.bn1.num_features, blk.conv1.out_channels, blk.conv1.stride[0], "preact").double().eval()
        twin.load_state_dict(blk.state_dict())
        h = torch.randn(2, blk.bn1.num_features, 8, 8, dtype=torch.float64)
        with torch.no_grad():
            same = torch.allclose(blk(h), twin(h), rtol=0, atol=1e-12)
        assert same == (blk.shortcut is not None)


def test_with_identity_bn_the_blocks_agree():
    """The difference is bn1 on the identity path: with an identity BN both blocks compute the same."""
    torch.manual_seed(1)
    a = PreActBlock(4, 4, 1, "official").double().eval()
    b = PreActBlock(4, 4, 1, "preact").double().eval()
    b.load_state_dict(a.state_dict())
    for bn in (a.bn1, b.bn1):  # running stats (0, 1 - eps) and affine (1, 0): bn1(x) = x (torch 2.11 refuses eps=0)
        bn.running_var.fill_(1.0 - bn.eps)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-12)


def test_presets_select_the_official_block_and_eps():
    for preset in ("cifar100_10_paper", "cifar100_20_paper", "tinyimagenet_25_paper"):
        cfg = config.resolve(overrides=dict(preset=preset))
        assert cfg["resnet_block"] == "official" and cfg["eps_placement"] == "official", preset
    off = config.resolve(overrides=dict(preset="adam_nscl_official"))
    assert off["eps_placement"] == "official" and off["resnet_block"] == "preact"
    d = config.resolve()
    assert d["resnet_block"] == "preact" and d["eps_placement"] == "torch"
    model = build_model("resnet18", (3, 8, 8), [2], width=4, resnet_block="official")
    assert {m.variant for m in model.modules() if isinstance(m, PreActBlock)} == {"official"}
    with pytest.raises(config.ConfigError, match="resnet_block"):
        config.resolve(overrides=dict(resnet_block="v2"))
