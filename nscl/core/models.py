"""Multi-head backbones: an MLP, a small CNN for 28x28 images, and the paper's PreAct-ResNet-18.

Every model is a :class:`MultiHead`: one shared ``backbone`` and one linear head per task
(task-incremental protocol, as Adam-NSCL). Backbone Linear/Conv layers are bias-free by
default, so a null space of the layer input covariance is an exact null space of the layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .protect import select_layers


class MultiHead(nn.Module):
    """Shared backbone + one ``nn.Linear`` head per task (heads carry a bias, as the official code)."""

    def __init__(self, backbone: nn.Module, feat_dim: int, n_classes: list[int]):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.heads = nn.ModuleList(nn.Linear(feat_dim, n) for n in n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """Logits of each sample's own task head.

        ``task`` is one int for the whole batch or a (B,) tensor of task indices (joint training).
        Logits are padded with ``-inf`` to the widest head when tasks in a batch differ in size.
        """
        h = self.features(x)
        if isinstance(task, int):
            return self.heads[task](h)
        tasks = task.tolist()
        if len(set(tasks)) == 1:
            return self.heads[tasks[0]](h)
        width = max(self.heads[t].out_features for t in set(tasks))
        out = h.new_full((h.shape[0], width), float("-inf"))
        for t in sorted(set(tasks)):
            idx = (task == t).nonzero(as_tuple=True)[0]
            logits = self.heads[t](h[idx])
            out[idx, : logits.shape[1]] = logits
        return out


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] x len(hidden). ``layers`` holds the Linear modules in order."""

    def __init__(self, in_dim: int, hidden: list[int], bias: bool = False):
        super().__init__()
        dims = [in_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))
        self.out_dim = dims[-1]

    def forward(self, x):
        h = x.flatten(1)
        for layer in self.layers:
            h = F.relu(layer(h))
        return h


class SmallCNN(nn.Module):
    """[conv3x3 -> BN -> ReLU -> maxpool2] per entry of ``channels``, then an MLP on the flattened map."""

    def __init__(
        self, in_shape: tuple, channels: list[int], hidden: list[int], bias: bool = False, batchnorm: bool = True
    ):
        super().__init__()
        c, h, w = in_shape
        convs, norms = [], []
        for out in channels:
            convs.append(nn.Conv2d(c, out, 3, padding=1, bias=bias))
            norms.append(nn.BatchNorm2d(out) if batchnorm else nn.Identity())
            c, h, w = out, h // 2, w // 2
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.mlp = MLP(c * h * w, hidden, bias=bias)
        self.out_dim = self.mlp.out_dim

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = F.max_pool2d(F.relu(norm(conv(x))), 2)
        return self.mlp(x)


RESNET_BLOCKS = ("preact", "official")


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, plus a (1x1 conv) shortcut after the first BN+ReLU.

    ``variant="preact"`` (He et al., "Identity mappings"): an identity shortcut adds the raw input
    ``x``. ``variant="official"`` (the Adam-NSCL code): ``bn1`` is applied to ``x`` first, so an
    identity shortcut adds ``bn1(x)`` (before the ReLU). Blocks with a 1x1-conv shortcut compute the
    same function in both variants; the identity blocks differ as soon as ``bn1`` is not the identity.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, variant: str = "preact"):
        super().__init__()
        if variant not in RESNET_BLOCKS:
            raise ValueError(f"unknown ResNet block {variant!r}; valid: {', '.join(RESNET_BLOCKS)}")
        self.variant = variant
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        pre = self.bn1(x)
        out = F.relu(pre)
        if self.shortcut is not None:
            short = self.shortcut(out)
        else:
            short = pre if self.variant == "official" else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreActResNet18(nn.Module):
    """The Adam-NSCL ResNet-18: 3x3 stem (stride 1, no max-pool), stages 64/128/256/512 with strides
    1/2/2/2, two PreActBlocks each, bias-free convs, ``bn_last`` -> ReLU -> global average pool.
    ``block``: the :class:`PreActBlock` variant (``"official"`` for the Adam-NSCL code's network)."""

    def __init__(self, in_channels: int = 3, width: int = 64, block: str = "preact"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        planes, stages, in_planes = [width, 2 * width, 4 * width, 8 * width], [], width
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(PreActBlock(in_planes, p, stride, block), PreActBlock(p, p, 1, block)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn_last = nn.BatchNorm2d(in_planes)
        self.out_dim = in_planes

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn_last(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def build_model(
    name: str,
    input_shape: tuple,
    n_classes: list[int],
    *,
    hidden=(256, 256),
    bias: bool = False,
    cnn_channels=(32, 64),
    batchnorm: bool = True,
    width: int = 64,
    resnet_block: str = "preact",
) -> MultiHead:
    """A multi-head model: backbone ``name`` (mlp / cnn / resnet18) and one head per task.

    Seed the RNG before calling for a deterministic init.
    """
    if name == "mlp":
        backbone = MLP(math.prod(input_shape), list(hidden), bias=bias)
    elif name == "cnn":
        backbone = SmallCNN(input_shape, list(cnn_channels), list(hidden), bias=bias, batchnorm=batchnorm)
    elif name == "resnet18":
        backbone = PreActResNet18(input_shape[0], width=width, block=resnet_block)
    else:
        raise ValueError(f"unknown model {name!r}")
    return MultiHead(backbone, backbone.out_dim, n_classes)


def projected_layers(model: MultiHead) -> dict[str, nn.Module]:
    """Backbone ``nn.Linear`` / ``nn.Conv2d`` layers, by qualified name (heads are never projected):
    :func:`nscl.core.protect.select_layers` with ``exclude=["heads"]``, as ``nscl.protect`` selects."""
    return select_layers(model, exclude=["heads"])


def batchnorm_layers(model: MultiHead) -> dict[str, nn.Module]:
    return {
        f"backbone.{n}": m for n, m in model.backbone.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
